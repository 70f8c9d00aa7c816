"""``publish(run_dir, name)``: turn a finished pretraining run into a registry entry (weights + model card).

A pretrained model is only worth shipping when anyone can tell what it is and redo it, so publishing checks
the run against its registry entry before anything is copied: same architecture, classes, channels, input
size and dataset; the full training and test sets (no ``subset_*``); and the entry's packaged recipe, key
for key (keys that do not change what a run computes, like ``--out`` or ``--workers``, may differ). Only then
are the run's deployable weights copied under the registry root, loaded back ``strict=True`` into the stock
model, hashed, and described by a card: JSON for programs (also the weights' sidecar, so ``refconv eval``
knows the model), Markdown for people, and a PNG of the test top-1 per epoch.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, PretrainedError
from ..models import pretrained as registry
from .checkpoint import atomic_copy, atomic_write_bytes
from .config import config_diff, config_hash, make_config

__all__ = ["publish", "plateau", "PLATEAU_FRACTION", "PLATEAU_TOLERANCE_PT"]

PLATEAU_FRACTION = 0.2  # "converged": the last 20 % of the epochs ...
PLATEAU_TOLERANCE_PT = 0.3  # ... raised the best test top-1 by at most this many points


def plateau(test_top1: list[float]) -> dict[str, Any]:
    """How much the last :data:`PLATEAU_FRACTION` of the epochs raised the best test top-1.

    Returns ``{"last_epochs", "gain_pt", "converged"}``; ``gain_pt`` is None (and ``converged`` False) for a
    run too short to have a "before".
    """
    n = len(test_top1)
    k = max(1, round(PLATEAU_FRACTION * n))
    if n <= k:
        return {"last_epochs": k, "gain_pt": None, "converged": False}
    gain = max(test_top1[-k:]) - max(test_top1[:-k])
    return {"last_epochs": k, "gain_pt": round(gain, 4), "converged": gain <= PLATEAU_TOLERANCE_PT}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); the run is damaged: train it again.") from None


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no metrics.jsonl: not a refconv run directory, or a damaged one.")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise CheckpointError(f"{path} is empty: the run trained no epoch.")
    return rows


def _train_images(run_dir: Path) -> int | None:
    """The training-set size the run logged (``(N train / M test images``), when its log is there."""
    log = run_dir / "log.txt"
    if not log.is_file():
        return None
    match = re.search(r"\((\d+) train / (\d+) test images", log.read_text(errors="replace"))
    return int(match.group(1)) if match else None


MACHINE_FILE = "machine.txt"  # written into the run directory by tools/pretrain.sh on the training machine


def describe_host() -> str:
    """This host in words (GPU name when there is one, CPU cores, OS): what ``machine.txt`` holds."""
    import torch

    parts = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else []
    parts += [f"{os.cpu_count()} CPU cores", platform.platform(terse=True)]
    return ", ".join(parts)


def _machine(run_dir: Path, extra: dict[str, Any]) -> str:
    """What the run trained on: the run's ``machine.txt`` when the training host wrote one, else what the run
    itself recorded (device and process count). Never this host: publishing often happens elsewhere."""
    path = run_dir / MACHINE_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    return (f"{extra.get('world_size', 1)} process(es) on {extra.get('device', '?')} (the run recorded no machine "
            "description; pass --machine)")


def _versions() -> dict[str, str]:
    import torch

    from .. import __version__

    out = {"refconv": __version__, "torch": torch.__version__}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def _check_run(entry: registry.PretrainedEntry, cfg: Any, meta: dict[str, Any], weights: Path, *,
               allow_subset: bool, allow_recipe_diff: bool) -> dict[str, Any]:
    """Refuse a run that is not what the entry says; returns the recipe comparison for the card."""
    want = {"model": entry.model, "num_classes": entry.num_classes, "in_chans": entry.in_chans,
            "image_size": entry.image_size, "data": entry.data}
    got = {"model": cfg.model, "num_classes": meta.get("num_classes"), "in_chans": meta.get("in_chans"),
           "image_size": meta.get("image_size"), "data": cfg.data}
    wrong = [f"{k} {got[k]!r} (the entry: {want[k]!r})" for k in want
             if (not registry.same_model(str(got[k]), want[k]) if k == "model" else got[k] != want[k])]
    for key in ("mean", "std"):  # the normalisation the card (and timm's data config) will promise
        ran = meta.get(key)
        if ran is not None and [round(float(v), 4) for v in ran] != [round(float(v), 4) for v in getattr(entry, key)]:
            wrong.append(f"{key} {ran} (the entry: {list(getattr(entry, key))})")
    if wrong:
        raise PretrainedError(
            f"run {weights.parent} does not fit {entry.name!r}: {'; '.join(wrong)}. Publish a run of its recipe: "
            f"`{entry.train_command()}`."
        )
    if meta.get("format", "plain") != "plain":
        raise PretrainedError(f"{weights} holds {meta.get('format')} weights; a registry entry ships plain (folded) "
                              "weights that load strict=True into the stock model.")
    subsets = {k: getattr(cfg, k) for k in ("subset_train", "subset_test") if getattr(cfg, k) is not None}
    if subsets and not allow_subset:
        raise PretrainedError(
            f"run {weights.parent} used {', '.join(f'{k}={v}' for k, v in subsets.items())}: a registry entry is "
            "trained on the full training set and scored on the full test set. Train with the entry's recipe "
            f"(`{entry.train_command()}`), or pass --allow-subset to publish anyway (the card says so)."
        )
    recipe = make_config(entry.recipe)
    diff = config_diff(recipe, cfg)
    if diff and not allow_recipe_diff:
        shown = ", ".join(f"{k}: {a!r} in the recipe, {b!r} in the run" for k, (a, b) in list(diff.items())[:6])
        raise PretrainedError(
            f"run {weights.parent} was not trained with the recipe of {entry.name!r}, {entry.recipe} ({shown}). Train it with "
            f"`{entry.train_command()}` (only --out, --workers, --data-dir and other non-recipe keys may differ), or "
            "pass --allow-recipe-diff to publish anyway (the card lists the differences)."
        )
    return {"name": entry.recipe, "command": entry.train_command(), "matches": not diff,
            "differences": {k: {"recipe": a, "run": b} for k, (a, b) in diff.items()},
            "config_hash": config_hash(cfg), "config": {k: v for k, v in cfg.to_dict().items()
                                                        if k not in ("out", "data_dir", "overwrite")}}


def _snapshot(e: registry.PretrainedEntry, run_dir: Path) -> tuple[Any, Path, dict[str, Any], list[dict[str, Any]],
                                                                    dict[str, Any]]:
    """What a snapshot entry publishes from ``run_dir``: its config, the epoch's checkpoint, a sidecar, the history
    up to that epoch and a ``done``-like record whose ``final`` is that epoch's full test-set evaluation."""
    n = int(e.snapshot_epoch or 0)
    cfg = make_config(run_dir / "config.yaml")
    ckpt = run_dir / "checkpoints" / f"epoch-{n}.pt"
    if not ckpt.is_file():
        raise CheckpointError(
            f"{run_dir} has no {ckpt.relative_to(run_dir)}: {e.name!r} is the recipe's epoch-{n} snapshot, kept only "
            f"when the run has snapshot_epochs [{n}] (the recipe sets it). Train it with `{e.train_command()}`."
        )
    history = _history(run_dir)
    if len(history) < n or "test_top1" not in history[n - 1]:
        raise CheckpointError(f"{run_dir}/metrics.jsonl has no test evaluation of epoch {n}: the run is damaged; "
                              f"train it again with `{e.train_command()}`.")
    row = history[n - 1]
    final = {"epoch": n, "top1": row["test_top1"], "top5": row["test_top5"], "loss": row["test_loss"],
             "correct1": row["test_correct"]}
    best = max(history[:n], key=lambda r: r["test_top1"])
    done = {"final": final, "best": {"epoch": best["epoch"], "top1": best["test_top1"]},
            "wall_time_s": sum(r.get("epoch_time_s") or 0.0 for r in history[:n]), "extra": {}}
    meta = {"model": e.model, "num_classes": e.num_classes, "in_chans": e.in_chans, "image_size": e.image_size,
            "mean": list(e.mean), "std": list(e.std), "data": e.data, "method": cfg.method, "format": "plain",
            "snapshot_epoch": n}
    return cfg, ckpt, meta, history[:n], done


def _plot(path: Path, name: str, curve: list[dict[str, Any]]) -> bool:
    """The test (and running train) top-1 per epoch as a PNG; False when matplotlib cannot draw."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except Exception:  # pragma: no cover - matplotlib is a dependency, but a broken backend must not block
        return False
    epochs = [r["epoch"] for r in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(epochs, [r["test_top1"] for r in curve], marker="o", ms=3, label="test top-1 (full test set)")
    if all(r.get("train_top1") is not None for r in curve):
        ax.plot(epochs, [r["train_top1"] for r in curve], ls="--", label="train top-1 (running, augmented)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, metadata={"Software": None, "Creation Time": None})  # no timestamps: same curve, same bytes
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _markdown(card: dict[str, Any], plotted: bool) -> str:
    name, e = card["name"], registry.entry(card["name"])
    t = card["test"]
    pl = card["plateau"]
    gain = "n/a (too few epochs)" if pl["gain_pt"] is None else f"{pl['gain_pt']:+.2f} pt"
    snap = card.get("snapshot")
    conv = ("no, on purpose: an under-trained snapshot" if snap else
            "yes" if pl["converged"] else "NO: rerun with more epochs")
    recipe = card["recipe"]
    lines = [
        f"# {name}",
        "",
        f"{e.summary}." if e.summary else "",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{card['model']}` ({card['params']:,} parameters), {card['num_classes']} classes |",
        f"| data | {card['data']}: {card.get('train_images') or '?'} training images, {t['images']:,} test images, "
        f"input {card['in_chans']}x{card['image_size']}x{card['image_size']}, mean {card['mean']}, std {card['std']} |",
        f"| recipe | `{recipe['command']}` ({'exactly the entry recipe' if recipe['matches'] else 'DIFFERS from the entry recipe: ' + ', '.join(recipe['differences'])}) |",
        f"| epochs | {card['epochs']}" + (f" (snapshot after epoch {snap['epoch']} of the recipe's {snap['of_epochs']})"
                                           if snap else "") + " |",
        f"| wall time | {_duration(card['wall_time_s'])} ({_duration(card['train_time_s'])} in training epochs) |",
        f"| machine | {card['machine']} |",
        f"| **test top-1** ({'full test set' if card['full_data'] else 'a SUBSET of the data'}) | **{t['top1']:.2f} %** ({t['correct']:,} / {t['images']:,}); top-5 {t['top5']:.2f} % |",
        f"| best epoch | {card['best']['top1']:.2f} % at epoch {card['best']['epoch']} (the shipped weights are the last epoch's{' of the snapshot' if snap else ''}) |",
        f"| train top-1 | {card['train_top1']:.2f} % (running average over the last epoch, augmented, training mode) |",
        f"| converged | {conv}: the last {pl['last_epochs']} epoch(s) raised the best test top-1 by {gain} |",
        f"| weights | `{card['weights_file']}`, {card['size_bytes'] / 1e6:.1f} MB, SHA-256 `{card['sha256']}` |",
        f"| published | {card['published_at']} with refconv {card['versions'].get('refconv')}, torch {card['versions'].get('torch')}"
        + (f", timm {card['versions']['timm']}" if "timm" in card["versions"] else "") + " |",
        "",
        "## Use",
        "",
        "```bash",
        "refconv pretrained                                   # list, with test top-1 and weights status",
        f"refconv eval --weights {name}",
        f"{e.refconv_command()}   # RefConv from it, with its recipe",
        "```",
        "",
        "```python",
        "import refconv",
        f"model = refconv.pretrained.load({name!r})             # eval mode, SHA-256 checked",
    ]
    if card["model"].startswith("timm/"):
        lines += [
            "",
            "import timm                                            # the timm way, strict loading",
            f"model = timm.create_model(**refconv.pretrained.timm_kwargs({name!r}))",
        ]
    lines += ["```", "", "## Test top-1 per epoch", ""]
    if plotted:
        lines += [f"![test top-1 per epoch]({Path(card['weights_file']).with_suffix('.png').name})", ""]
    lines += ["| epoch | lr | train loss | train top-1 | test loss | test top-1 |", "|---:|---:|---:|---:|---:|---:|"]
    for r in card["curve"]:
        lines.append(f"| {r['epoch']} | {r['lr']:.3g} | {r['train_loss']:.4f} | {r['train_top1']:.2f} | "
                     f"{r['test_loss']:.4f} | {r['test_top1']:.2f} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def publish(
    run_dir: str | Path,
    name: str,
    *,
    root: str | os.PathLike | None = None,
    machine: str | None = None,
    allow_subset: bool = False,
    allow_recipe_diff: bool = False,
    overwrite: bool = False,
    plot: bool = True,
) -> dict[str, Any]:
    """Make the registry entry ``name`` from the finished run ``run_dir``; returns the card.

    Args:
        root: registry root to write into (default :func:`refconv.models.pretrained.registry_root`: the
            package's ``refconv/weights``, or ``$REFCONV_PRETRAINED_DIR``).
        machine: what the run trained on, in words; default: the run's ``machine.txt`` (written on the
            training host by ``tools/pretrain.sh``), else the device the run recorded.
        allow_subset / allow_recipe_diff: publish a run on a data subset / with another recipe anyway; the
            card records it.
        overwrite: replace weights the entry already has.
        plot: also write the PNG of the curve.

    Raises:
        UnknownPretrainedError: ``name`` is not in the registry.
        CheckpointError: an unfinished or damaged run.
        PretrainedError: a run that does not fit the entry (model, size, classes, data, subset, recipe),
            existing weights without ``overwrite``.
    """
    e = registry.entry(name)
    run_dir = Path(run_dir)
    cfg, weights_src, meta, history, done = _read_run(e, run_dir)
    recipe = _check_run(e, cfg, meta, weights_src, allow_subset=allow_subset, allow_recipe_diff=allow_recipe_diff)
    files = registry.entry_files(name, root)
    params = _write_weights(e, files, weights_src, meta, overwrite=overwrite)
    card = _card(e, cfg, run_dir, files, weights_src, history, done, recipe=recipe, params=params, machine=machine)
    plotted = plot and _plot(files["plot"], e.name, card["curve"])
    if not plotted and files["plot"].exists():
        files["plot"].unlink()  # never leave another run's curve beside these weights
    atomic_write_bytes(files["card"], (json.dumps(card, indent=2) + "\n").encode())
    atomic_write_bytes(files["markdown"], _markdown(card, plotted).encode())
    registry.weights_path(name, root)  # the entry now verifies end to end
    return card


def _read_run(e: registry.PretrainedEntry, run_dir: Path) -> tuple[Any, Path, dict[str, Any], list[dict[str, Any]],
                                                                 dict[str, Any]]:
    """``(config, weights file, sidecar, history, done.json)`` of a finished run (or of its snapshot epoch)."""
    from .export import read_sidecar
    from .modeling import RUN_DONE_FILE, resolve_run_weights

    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory: pass the run directory `refconv train --out` wrote.")
    if e.snapshot_epoch is not None:
        return _snapshot(e, run_dir)
    weights_src = resolve_run_weights(run_dir)  # refuses unfinished runs, naming how to finish them
    done = _read_json(run_dir / RUN_DONE_FILE)
    return make_config(run_dir / "config.yaml"), weights_src, read_sidecar(weights_src), _history(run_dir), done


def _write_weights(e: registry.PretrainedEntry, files: dict[str, Path], weights_src: Path, meta: dict[str, Any], *,
                   overwrite: bool) -> int:
    """Copy (or, from a training checkpoint, write) the entry's weights; check they load ``strict=True`` into
    the stock model; return its parameter count."""
    from ..models import read_state_dict
    from .export import save_weights
    from .modeling import create_stock_model, load_format_checked

    if files["weights"].exists() and not overwrite:
        raise PretrainedError(f"{e.name!r} already has weights ({files['weights']}); pass --overwrite to replace them "
                              "with this run's.")
    files["weights"].parent.mkdir(parents=True, exist_ok=True)
    model = create_stock_model(e.model, num_classes=e.num_classes, in_chans=e.in_chans)
    if e.snapshot_epoch is None:
        atomic_copy(weights_src, files["weights"])
    else:  # a training checkpoint: its model state, written as the stock model's safetensors
        load_format_checked(model, read_state_dict(weights_src), str(weights_src))
        save_weights(model, files["weights"], meta)
    load_format_checked(model, read_state_dict(files["weights"]), str(files["weights"]))  # the promise: strict
    return sum(p.numel() for p in model.parameters())


def _card(e: registry.PretrainedEntry, cfg: Any, run_dir: Path, files: dict[str, Path], weights_src: Path,
          history: list[dict[str, Any]], done: dict[str, Any], *, recipe: dict[str, Any], params: int,
          machine: str | None) -> dict[str, Any]:
    """The model card (``.json``): what the weights are, how they were trained and what they score."""
    curve = [{k: r.get(k) for k in ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5",
                                    "epoch_time_s")} for r in history]
    final, last = done["final"], history[-1]
    extra = done.get("extra", {})
    card: dict[str, Any] = {
        "card_version": registry.CARD_VERSION,
        "name": e.name,
        # the sidecar keys refconv eval reads to rebuild the model
        "model": e.model, "num_classes": e.num_classes, "in_chans": e.in_chans, "image_size": e.image_size,
        "mean": list(e.mean), "std": list(e.std), "data": e.data, "format": "plain", "method": cfg.method,
        "weights_file": files["weights"].name,
        "sha256": registry.sha256_file(files["weights"]),
        "size_bytes": files["weights"].stat().st_size,
        "params": params,
        "recipe": recipe,
        "epochs": len(history),
        "snapshot": None if e.snapshot_epoch is None else {
            "epoch": e.snapshot_epoch, "of_epochs": cfg.epochs, "checkpoint": str(weights_src),
            "note": "an under-trained snapshot of the recipe's run, kept by its snapshot_epochs"},
        "train_images": _train_images(run_dir),
        "full_data": cfg.subset_train is None and cfg.subset_test is None,
        "test": {"top1": final["top1"], "top5": final["top5"], "loss": final["loss"], "correct": final["correct1"],
                 "images": last.get("test_images")},
        "test_top1": final["top1"],
        "train_top1": last.get("train_top1"),
        "train_top1_note": "running average over the last epoch's batches, with augmentation, in training mode",
        "best": done.get("best", {}),
        "plateau": plateau([r["test_top1"] for r in history]),
        "curve": curve,
        "wall_time_s": done.get("wall_time_s"),
        "wall_time_note": "the run's last process (a resumed run counts only its last segment); see train_time_s",
        "train_time_s": sum(r.get("epoch_time_s") or 0.0 for r in history),
        "machine": machine or _machine(run_dir, extra),
        "train_device": extra.get("device"),
        "world_size": extra.get("world_size"),
        "source_run": str(run_dir),
        "published_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": _versions(),
    }
    return card
