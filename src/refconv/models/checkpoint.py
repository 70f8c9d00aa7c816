"""``load_checkpoint``: the one way weights go into a model, for classifiers, detectors and segmenters alike.

It owns every decision a load makes, so the callers (``get_model(weights=...)``, the engine's start weights and
artefacts, a detector's ``weights``, ``refconv.pretrained.load``) cannot drift apart:

- the **format check** first (:func:`refconv.convert.check_state_dict_format`: RefConv weights for a plain model
  or the reverse is an error naming the fix);
- the **stem adaptation** (``adapt_in_chans``): a stem kernel for another number of input channels is adapted
  with :func:`~refconv.models.surgery.adapt_input_weight`;
- the **head re-initialisation** (``new_head``): class-dependent tensors of another size, under the model's
  classifier(s) or the ``heads`` the caller names (a detector's class-dependent layers), are dropped and keep
  their fresh initialisation;
- everything else must match: missing, unexpected or differently shaped keys are one error, and nothing is
  loaded when a check fails.

:func:`rebuild_converted` turns a stock model back into the RefConv model a checkpoint's conversion record
describes, before its weights load.
"""

from __future__ import annotations

import glob
import logging
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..convert import check_state_dict_format, conversion_config, convert
from ..errors import CheckpointError
from .surgery import adapt_input_weight, classifier_names, first_conv_names

__all__ = ["load_checkpoint", "load_state_dict_checked", "rebuild_converted"]

_log = logging.getLogger(__name__)
_SHOW = 5  # keys listed in an error message


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" ... ({len(items)} in all)" if len(items) > _SHOW else "")


def _adapt_stem(model: nn.Module, sd: dict[str, Tensor], model_sd: Mapping[str, Tensor], source: str) -> None:
    for name in first_conv_names(model):
        key = name + ".weight"
        if key in sd and key in model_sd:
            got, want = sd[key].shape, model_sd[key].shape
            if len(got) == len(want) and got[1] != want[1] and got[:1] == want[:1] and got[2:] == want[2:]:
                _log.info("%s: adapting '%s' from %d to %d input channels", source, key, got[1], want[1])
                sd[key] = adapt_input_weight(sd[key], int(want[1]))


def _shape_error(model: nn.Module, sd: Mapping[str, Tensor], model_sd: Mapping[str, Tensor], keys: list[str],
                 source: str, what: str, hint: str) -> CheckpointError:
    detail = [f"'{k}' {tuple(sd[k].shape)} in the file vs {tuple(model_sd[k].shape)} in the model" for k in keys]
    stems = {n + ".weight" for n in first_conv_names(model)}
    stem = next((k for k in keys if k in stems and sd[k].ndim > 1 and sd[k].ndim == model_sd[k].ndim), None)
    hint = " " + hint if hint else (
        f" The checkpoint's input layer '{stem}' takes {sd[stem].shape[1]} channels, the model's "
        f"{model_sd[stem].shape[1]}: pass --in-chans {sd[stem].shape[1]} to match it, or build the model with "
        "get_model(..., in_chans=N, weights=FILE), which adapts the stem."
        if stem is not None and sd[stem].shape[1] != model_sd[stem].shape[1]
        else " It was saved from another architecture or variant."
    )
    return CheckpointError(f"{source} does not fit {what}: {len(keys)} shape mismatch(es): {_listing(detail)}.{hint}")


def _drop_head(sd: dict[str, Tensor], model_sd: Mapping[str, Tensor], heads: Sequence[str], head_mismatch: list[str],
               *, source: str, strict: bool, new_head: bool) -> list[str]:
    """Drop the class-dependent tensors of another size (``new_head`` or not ``strict``); returns what was dropped.

    Raises:
        CheckpointError: a classifier of another size where neither allows it.
    """
    head_unexpected = [k for k in sd if k not in model_sd and _under(k, heads)]
    if not (head_mismatch or head_unexpected):
        return []
    if new_head or not strict:
        dropped = head_mismatch + head_unexpected
        for k in dropped:
            del sd[k]
        (_log.info if new_head else _log.warning)(
            "%s: classifier of another size dropped (%s): re-initialised, the model's new head is trained.", source, ", ".join(dropped))
        return dropped
    if not head_mismatch:
        return []
    k = head_mismatch[0]
    n_file, n_model = int(sd[k].shape[0]), int(model_sd[k].shape[0])
    detail = [f"'{k}' {tuple(sd[k].shape)} in the file vs {tuple(model_sd[k].shape)} in the model" for k in head_mismatch]
    raise CheckpointError(
        f"{source}: classifier mismatch: the checkpoint has {n_file} classes, the model {n_model} "
        f"({_listing(detail)}). Pass --num-classes {n_file} (num_classes={n_file}) to use its head, or "
        "load with strict=False to drop the head and train a new one."
    )


def _check_keys(sd: Mapping[str, Tensor], model_sd: Mapping[str, Tensor], fresh: list[str], *, source: str,
                strict: bool, what: str, hint: str) -> None:
    # BatchNorm's num_batches_tracked is absent from old checkpoints and filled in by BatchNorm itself.
    missing = [k for k in model_sd if k not in sd and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in model_sd]
    if not any(k in model_sd for k in sd):
        raise CheckpointError(
            f"{source}: none of its {len(sd)} keys match {what} (e.g. {_listing(sorted(sd))}; it has "
            f"{_listing(list(model_sd))}). It belongs to another architecture.{' ' + hint if hint else ''}"
        )
    if not (missing or unexpected):
        return
    parts = [f"missing from the file: {_listing(missing)}"] if missing else []
    parts += [f"not in the model: {_listing(unexpected)}"] if unexpected else []
    message = f"{source} does not match the keys of {what}; " + "; ".join(parts) + "."
    if strict:
        raise CheckpointError(message + (" " + hint if hint else " It was saved from another architecture or variant; "
                                         "load with strict=False to load the matching keys only."))
    warnings.warn(message + " Loading the matching keys only (strict=False).", stacklevel=4)


@torch.no_grad()
def load_checkpoint(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str = "the state_dict",
    strict: bool = True,
    new_head: bool = False,
    adapt_in_chans: bool = False,
    heads: Sequence[str] | None = None,
    what: str = "the model",
    hint: str = "",
) -> list[str]:
    """Load ``state`` into ``model`` after checking it fits; nothing is loaded when a check fails.

    Args:
        model: the model to fill (plain, or converted for RefConv weights).
        state: keys without wrapper prefixes (:func:`refconv.models.read_state_dict` strips them).
        source: what to call the weights in messages (a file name).
        strict: every key must match. ``False`` drops a classifier of another size (a new head is trained)
            and tolerates missing/unexpected keys with a warning; other shape mismatches stay errors.
        new_head: the caller asked for this model's number of classes: class-dependent tensors of another size
            in the weights are dropped quietly and keep their fresh initialisation (fine-tuning).
        adapt_in_chans: the caller asked for this model's input channels: a stem kernel for another number of
            channels is adapted with :func:`~refconv.models.surgery.adapt_input_weight`.
        heads: the modules whose tensors depend on the class count; default: the model's classifier(s)
            (:func:`~refconv.models.surgery.classifier_names`). A detector passes its class-dependent layers.
        what: what to call the model in messages (a detector's trunk...).
        hint: the sentence that ends every message of a mismatch (what to pass instead), in place of the
            default ones.

    Returns:
        Keys of the model left at their initial values (a dropped head).

    Raises:
        CheckpointError: see the module docstring (a format mismatch is its subclass
            :class:`~refconv.errors.StateDictFormatError`).
    """
    check_state_dict_format(model, state, source=source)
    model_sd = model.state_dict()
    sd = dict(state)
    if adapt_in_chans:
        _adapt_stem(model, sd, model_sd, source)
    heads = list(heads) if heads is not None else classifier_names(model)
    mismatched = [k for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    in_head = [k for k in mismatched if _under(k, heads) and sd[k].shape[1:] == model_sd[k].shape[1:]]
    other = [k for k in mismatched if k not in in_head]
    if other:
        raise _shape_error(model, sd, model_sd, other, source, what, hint)
    dropped = _drop_head(sd, model_sd, heads, in_head, source=source, strict=strict, new_head=new_head)
    fresh = [k for k in model_sd if dropped and k not in sd and _under(k, heads)
             and not k.endswith("num_batches_tracked")]  # a dropped head is re-initialised on purpose
    _check_keys(sd, model_sd, fresh, source=source, strict=strict, what=what, hint=hint)
    model.load_state_dict(sd, strict=False)
    return fresh


#: The name :func:`load_checkpoint` had before it served every model kind.
load_state_dict_checked = load_checkpoint


def rebuild_converted(model: nn.Module, layers: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """Re-apply a recorded per-layer conversion (``conversion_config`` output) to a stock model, in place.

    Each layer gets exactly its recorded ``map_k`` and ``groups``; RT starts at zero (a checkpoint is about to
    overwrite it). Layer names are matched literally (glob characters escaped).

    Raises:
        CheckpointError: a recorded layer that this architecture does not have.
    """
    by_k: dict[int, list[str]] = {}
    for name, spec in layers.items():
        by_k.setdefault(int(spec["map_k"]), []).append(name)
    for map_k, names in sorted(by_k.items()):
        convert(
            model,
            map_k=map_k,
            groups=lambda name, conv: int(layers[name]["groups"]),
            init="zeros",
            include=[glob.escape(n) for n in names],
        )
    got = conversion_config(model)
    if set(got) != set(layers):
        missing = sorted(set(layers) - set(got))[:5]
        raise CheckpointError(
            f"cannot rebuild the RefConv model: layers {missing} recorded in the checkpoint do not exist in this "
            "architecture. Check --model matches the run that wrote the checkpoint."
        )
    return model
