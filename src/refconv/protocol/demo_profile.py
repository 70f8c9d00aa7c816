"""What defines a demo: :class:`DemoProfile`, read from its YAML (``configs/demo``, or one's own file).

A profile is data, like a sweep or a downstream study (:mod:`refconv.protocol.spec`): the packaged ones are
``tiny`` (tests), ``quick`` (the README's first command), ``quick-scratch``, ``full`` and ``full-scratch``; a user
copies one and passes its path to ``refconv demo --profile``. The profile a demo ran with is stored in its
``demo.json`` and compared on rerun.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.config import make_config
from ..errors import ConfigError
from .spec import known_keys, packaged_specs, read_spec

__all__ = ["DemoProfile", "PROFILES", "load_profile", "profile"]


@dataclass(frozen=True)
class DemoProfile:
    """Everything that defines a demo; stored in ``demo.json`` and compared on rerun."""

    name: str
    models: tuple[str, ...]
    seeds: int
    baseline_epochs: int  # 0 with ``starts``: nothing is trained before the arms
    arm_epochs: int
    # Registry names the arms start from, one per model (``fmnist/mobilenetv3_small_100``); empty: a baseline of
    # ``baseline_epochs`` is trained here from scratch.
    starts: tuple[str, ...] = ()
    data: str = "fashion-mnist"
    image_size: int = 32
    subset_train: int | None = None
    subset_test: int | None = None
    batch_size: int = 128
    base_lr: float = 0.1
    warmup_epochs: float = 1.0
    arm_warmup_epochs: float = 0.0
    finetune_lr_mult: float = 0.1
    bn_recalibrate_batches: int = 0  # fresh BN statistics before every evaluation (the fair protocol)
    # A second RefConv arm beside the authors' defaults: the best setting the recorded studies found
    # (name, RunConfig overrides); empty: the authors' arm only.
    best_setting: tuple[str, dict[str, Any]] | tuple[()] = ()
    # RunConfig keys of the authors' RefConv arm (``refocus_impl`` / ``refocus_precond`` from the CLI)
    refconv_overrides: dict[str, Any] = field(default_factory=dict)
    # analyses (refconv.analysis.AnalysisConfig keys)
    analysis: dict[str, Any] = field(default_factory=dict)
    analysis_batch_size: int = 128
    latency_repeats: int = 20

    def to_dict(self) -> dict[str, Any]:
        # JSON round trip: the form stored in demo.json (tuples become lists), so comparisons are like for like.
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoProfile:
        """A profile from its YAML / ``demo.json`` form (lists become tuples); unknown keys are refused."""
        d = dict(known_keys(cls, data, "demo profile"))
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"demo profile {d.get('name', '')!r} lacks {', '.join(missing)}: a profile names at least "
                              f"{', '.join(required)} (see src/refconv/configs/demo/tiny.yaml).")
        for key in ("models", "starts"):  # one name or a list of names
            if isinstance(d.get(key), str):
                d[key] = [d[key]]
            if not isinstance(d.get(key, []), (list, tuple)) or not all(isinstance(m, str) for m in d.get(key, [])):
                raise ConfigError(f"demo profile: {key} is a list of names, e.g. [timm/mobilenetv3_small_100]; got "
                                  f"{d[key]!r}.")
        for key in ("models", "starts", "best_setting"):
            if key in d:
                d[key] = tuple(d[key] or ())
        return cls(**d)


def load_profile(name_or_path: str | os.PathLike) -> DemoProfile:
    """A demo profile from its YAML: a packaged name (``configs/demo``: ``tiny``, ``quick``, ``quick-scratch``,
    ``full``, ``full-scratch``) or a path to one's own copy; unknown keys are refused."""
    data, path, _ = read_spec(name_or_path, "demo")
    return DemoProfile.from_dict({"name": path.stem, **data})


PROFILES: dict[str, DemoProfile] = {name: load_profile(name) for name in sorted(packaged_specs("demo"))}


def profile(name: str | os.PathLike, *, seeds: int | None = None, models: Sequence[str] | None = None,
            starts: Sequence[str] | None = None, refocus_impl: str | None = None,
            refocus_precond: str | None = None) -> DemoProfile:
    """A profile (a packaged name or a YAML path: :func:`load_profile`) with optional overrides of the seed count,
    the models, the pretrained starts and how the authors' RefConv arm refocuses (``refocus_impl``,
    ``refocus_precond``: docs/method.md).

    With a pretrained profile, ``models`` picks the shipped entries of those architectures (``starts`` names
    entries directly); a model the registry has no entry for is refused, naming the ``*-scratch`` profiles.
    """
    p = PROFILES[str(name)] if str(name) in PROFILES else load_profile(name)
    changes: dict[str, Any] = {}
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}.")
        changes["seeds"] = seeds
    if starts:
        from ..models import pretrained

        entries = [pretrained.entry(s) for s in starts]  # unknown names list the registry
        changes["starts"] = tuple(e.name for e in entries)
        changes["baseline_epochs"] = 0
        changes["models"] = tuple(e.model for e in entries)
        sizes = {e.image_size for e in entries}
        if len(sizes) > 1:
            raise ConfigError(f"the starts {', '.join(starts)} have different input sizes {sorted(sizes)}: run them "
                              "in separate demos.")
        changes["image_size"] = sizes.pop()
    elif models and p.starts:
        changes.update(starts=tuple(_start_for(m, p) for m in models), models=tuple(models))
    elif models:
        changes["models"] = tuple(models)
    refocus = {k: v for k, v in (("refocus_impl", refocus_impl), ("refocus_precond", refocus_precond)) if v}
    if refocus:
        make_config({"method": "refconv", "weights": "start", **refocus})  # one-line error for a bad combination
        changes["refconv_overrides"] = refocus
    return dataclasses.replace(p, **changes) if changes else p


def _start_for(model: str, p: DemoProfile) -> str:
    """The shipped converged entry of ``model`` at the profile's input size (snapshots are not starts)."""
    from ..models import pretrained

    for name in pretrained.names():
        e = pretrained.entry(name)
        if e.snapshot_epoch is None and pretrained.same_model(model, e.model) and e.image_size == p.image_size \
                and e.data == p.data:
            return name
    raise ConfigError(
        f"the registry has no pretrained {p.data} model {model!r} at {p.image_size} px for profile {p.name!r} to start "
        f"from (it has: {', '.join(pretrained.names())}). Pick one of those with --models, or train a baseline here "
        f"from scratch with --profile {p.name}-scratch."
    )
