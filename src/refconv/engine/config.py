"""The run configuration: one flat dataclass, loadable from YAML, overridable from the command line.

Configuration is data: a run is fully described by a :class:`RunConfig`, written resolved into the run
directory, and hashed (:func:`config_hash`) so that ``--resume`` and the finished-run cache can tell "the same
run" from "a different run in the same directory". Keys that only change *how* a run is executed (worker
count, log cadence, output path...) are left out of the hash, so resuming with more workers is allowed.

The defaults are the authors' recipe (SGD momentum 0.9, lr 0.1 per 512 images scaled linearly, weight decay
4e-5, linear warm-up then cosine) at a size that runs on a laptop; ``configs/authors-imagenet.yaml`` holds
the full ImageNet schedule.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .task_registry import task_class

__all__ = [
    "RunConfig",
    "METHODS",
    "AMP_MODES",
    "NON_RECIPE_KEYS",
    "load_yaml",
    "read_yaml",
    "make_config",
    "config_hash",
    "config_diff",
    "packaged_configs",
    "packaged_pretraining_recipes",
    "resolve_config_path",
]

METHODS = ("baseline", "refconv", "continue", "finetune")
LAYER_SELECTIONS = ("all", "depthwise", "dense", "no-stem")
AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "bar", "plain", "none")
DEVICES = ("auto", "cpu", "cuda")
INPUT_PIPELINES = ("auto", "resident", "loader")

REFOCUS_IMPLS = ("explicit", "implicit")
PRECONDITIONERS = ("exact", "normalized", "geometry", "isotropic")  # refconv.precondition.PRECONDITIONERS
IMPLICIT_OPTIMIZERS = ("sgd", "nesterov", "momentum")  # refconv.implicit.EXACT_OPTIMIZERS

# Keys that do not change what a run computes: excluded from the config hash (resume/cache identity).
NON_RECIPE_KEYS = frozenset(
    {
        "out",
        "overwrite",
        "data_dir",
        "download",
        "workers",
        "progress",
        "log_every_steps",
        "checkpoint_every_steps",
        "snapshot_epochs",
        "eval_every_epochs",
        "export_onnx",
        "onnx_opset",
    }
)


@dataclass
class RunConfig:
    """Everything that defines a training run. Field comments give the CLI flag (``_`` becomes ``-``).

    The learning rate is ``lr`` when given, else ``base_lr * batch_size / lr_base_size`` (linear scaling,
    the authors' 0.1 per 512); ``finetune`` multiplies the result by ``finetune_lr_mult``. ``batch_size``
    is the *global* batch: with ``torchrun`` each of the W processes gets ``batch_size / W``, so a
    multi-GPU run follows the same recipe as a single-process one.
    """

    # ---- task: what is trained (refconv.engine.task): the model builder, loss step, metric, data and export
    task: str = "classification"  # classification | detection | segmentation (refconv detect / segment)
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's own keys, checked by the task
    # ---- model
    model: str = "tv/mobilenet_v3_small"  # "timm/<name>" or "tv/<name>"; detection/segmentation: the torchvision arch
    num_classes: int | None = None  # default: the dataset's
    in_chans: int | None = None  # default: the dataset's (e.g. 1 for Fashion-MNIST)
    pretrained: bool = False  # hub weights (needs network)
    weights: str | None = None  # .safetensors / .pth / timm or tv checkpoint / previous run dir
    # ---- data
    data: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | imagefolder
    data_dir: str | None = None
    image_size: int | None = None  # default: the dataset's native size
    augment: bool = True  # training-time augmentation (the paper's transforms for ImageNet)
    download: bool = False
    subset_train: int | None = None  # first-N (seeded) subset, for quick runs
    subset_test: int | None = None
    data_seed: int = 0  # seeds the subset choice: fixed across training seeds, so every run sees the same images
    workers: int = 0
    # auto: tensor datasets (Fashion-MNIST, CIFAR) resident on the training device, batches augmented at once
    # (refconv.data.resident); image folders through a DataLoader. loader: the per-item DataLoader for all.
    input_pipeline: str = "auto"
    # ---- method
    method: str = "baseline"  # baseline | refconv | continue | finetune
    map_k: int = 3
    groups: int | None = None  # RT groups; None = authors' rule Cin*Cout/g^2
    max_group_size: int | None = None  # cap kernels per RT group (refconv.capped_groups)
    init: str = "default"  # default | zeros
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    layers: str = "all"  # all | depthwise | dense | no-stem: which eligible convs (after include/exclude) convert
    basis: str = "pretrained"  # pretrained | random: re-initialise the converted kernels (the "is the prior needed" ablation)
    # explicit: train RT's weight (RefConv layers, folded at the end); implicit: train the stock model's kernels with
    # the exactly equivalent preconditioned update (refconv.implicit: plain speed, nothing to fold; SGD family only)
    refocus_impl: str = "explicit"
    # exact (what training RT does) | normalized (M / lambda_max) | geometry (all-ones kernel's M) | isotropic
    # (trace(M)/K * I): refconv.precondition; geometry and isotropic need refocus_impl implicit
    refocus_precond: str = "exact"
    # ---- recipe
    epochs: int = 10
    batch_size: int = 128  # global batch
    lr: float | None = None  # explicit lr; None = base_lr * batch_size / lr_base_size
    base_lr: float = 0.1
    lr_base_size: int = 512
    finetune_lr_mult: float = 0.1
    refocus_lr_mult: float = 1.0  # lr multiplier of RefConv's refocus_weight
    refocus_weight_decay: float | None = None  # None = weight_decay
    opt: str = "momentum"  # timm optimizer name; "momentum" = SGD, momentum, no Nesterov (authors)
    momentum: float = 0.9
    weight_decay: float = 4e-5
    fused_optimizer: bool = True  # torch's fused kernels for SGD / Adam / AdamW (same update, one kernel)
    filter_bias_and_bn: bool = True  # no weight decay on biases and norm parameters (timm's default)
    sched: str = "cosine"  # timm scheduler name
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    # recompute BatchNorm running statistics on this many training batches before every evaluation (0: off), so
    # every arm is scored with fresh statistics however far its weights moved since they were last updated
    bn_recalibrate_batches: int = 0
    grad_clip: float | None = None  # max gradient norm
    ema: bool = False
    ema_decay: float = 0.9998
    # ---- hardware / reproducibility
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    channels_last: bool = True  # NHWC: 1.3-3x faster steps on CPU (oneDNN) and on tensor cores; --no-channels-last
    compile: bool = False  # torch.compile the model once per run (pays off on long runs: see docs/engine.md)
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only)
    seed: int = 0
    deterministic: bool = True  # torch.use_deterministic_algorithms(warn_only=True)
    # ---- outputs
    out: str | None = None  # run directory; default runs/<data>-<model>-<method>-s<seed>
    overwrite: bool = False
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
    eval_every_epochs: int = 1  # evaluate the test split every N epochs (and always after the last)
    snapshot_epochs: list[int] = field(default_factory=list)  # keep checkpoints/epoch-<N>.pt (under-trained starts)
    log_every_steps: int = 20
    progress: str = "auto"  # auto | bar | plain | none
    export_onnx: bool = False
    onnx_opset: int | None = None

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes`` applied (unknown keys raise :class:`ConfigError`)."""
        return make_config(self.to_dict(), changes)

    def recipe_lr(self) -> float:
        """The learning rate this config trains with (linear scaling, then the finetune multiplier)."""
        lr = self.lr if self.lr is not None else self.base_lr * self.batch_size / self.lr_base_size
        if self.method == "finetune":
            lr *= self.finetune_lr_mult
        return lr

    def run_dir(self) -> Path:
        """The run directory: ``out`` or a name derived from the config."""
        if self.out:
            return Path(self.out)
        model = self.model.replace("/", "-")
        return Path("runs") / f"{self.data}-{model}-{self.method}-s{self.seed}"

    def validate(self) -> RunConfig:
        """Check values that a type alone does not constrain; returns ``self``.

        The task checks its own keys last (:meth:`refconv.engine.task.Task.validate_config`), and may fill
        ``task_options`` with its defaults, so the resolved config written into a run names every setting.
        """
        task = task_class(self.task)  # a name no task module registers is a ConfigError
        _choice("method", self.method, METHODS)
        _choice("amp", self.amp, AMP_MODES)
        _choice("progress", self.progress, PROGRESS_MODES)
        _choice("device", self.device, DEVICES)
        _choice("input_pipeline", self.input_pipeline, INPUT_PIPELINES)
        _choice("init", self.init, ("default", "zeros"))
        _choice("layers", self.layers, LAYER_SELECTIONS)
        _choice("basis", self.basis, ("pretrained", "random"))
        _choice("refocus_impl", self.refocus_impl, REFOCUS_IMPLS)
        _choice("refocus_precond", self.refocus_precond, PRECONDITIONERS)
        for key in ("batch_size", "lr_base_size", "map_k", "eval_every_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}.")
        min_epochs = task.MIN_EPOCHS
        if self.epochs < min_epochs:
            raise ConfigError(f"epochs must be >= {min_epochs}, got {self.epochs}.")
        for key in ("workers", "checkpoint_every_steps", "log_every_steps", "warmup_epochs", "label_smoothing",
                    "weight_decay", "min_lr", "warmup_lr", "bn_recalibrate_batches"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}.")
        for key in ("subset_train", "subset_test", "num_classes", "in_chans", "image_size", "groups",
                    "max_group_size"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1 (or null for the default), got {v}.")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}. Leave it unset to scale base_lr by batch size.")
        if self.label_smoothing >= 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}.")
        bad = [e for e in self.snapshot_epochs if not isinstance(e, int) or not 1 <= e <= self.epochs]
        if bad:
            raise ConfigError(f"snapshot_epochs must be epochs in 1..{self.epochs}, got {bad}.")
        if self.map_k % 2 == 0:
            raise ConfigError(f"map_k must be odd (RT pads by map_k // 2), got {self.map_k}. Use 3.")
        if self.groups is not None and self.max_group_size is not None:
            raise ConfigError("give groups or max_group_size, not both (max_group_size caps the authors' rule).")
        if self.method in ("continue", "finetune") and not (self.weights or self.pretrained) \
                and self.task == "classification":
            raise ConfigError(
                f"method '{self.method}' trains on from a trained model, but no weights were given. Pass "
                "--weights PATH|RUN_DIR (e.g. the baseline run directory) or --pretrained."
            )
        if self.weights and "/" in self.weights and not Path(self.weights).expanduser().exists() \
                and self.task == "classification":
            _check_pretrained_start(self)
        if self.method == "refconv":
            _check_refocus_impl(self)
        task.validate_config(self)
        return self


def _check_refocus_impl(cfg: RunConfig) -> None:
    """The implementation / preconditioner combinations that are the same training as RT's, or are defined."""
    if cfg.refocus_impl == "explicit" and cfg.refocus_precond in ("geometry", "isotropic"):
        raise ConfigError(
            f"refocus_precond={cfg.refocus_precond!r} replaces RT's preconditioner by one no RT weight produces: it "
            "exists only in the preconditioned form. Add --refocus-impl implicit."
        )
    if cfg.refocus_impl == "implicit" and cfg.opt.lower() not in IMPLICIT_OPTIMIZERS:
        raise ConfigError(
            f"--refocus-impl implicit is exact only for the SGD family ({', '.join(IMPLICIT_OPTIMIZERS)}), not "
            f"opt={cfg.opt!r}: Adam-type optimisers normalise per coordinate of RT's weight. Use --opt momentum, or "
            "--refocus-impl explicit."
        )


def _check_pretrained_start(cfg: RunConfig) -> None:
    """``--weights fmnist/...``: the name must be in the registry and its card must fit the run's model, input
    size, channels and classes; checked here, before any data is read or directory written."""
    from ..models import pretrained

    if pretrained.is_pretrained_name(cfg.weights):
        pretrained.check_compatible(cfg.weights, model=cfg.model, data=cfg.data, image_size=cfg.image_size,
                                    in_chans=cfg.in_chans, num_classes=cfg.num_classes)


def warmup_warning(warmup_epochs: float, epochs: int, *, where: str = "", budget: str | None = None,
                   fix: str = "Pass --warmup-epochs 0 (or fewer than --epochs), or train for more epochs.") -> str | None:
    """The warning for a warm-up at least as long as the training, or None.

    Linear warm-up over ``warmup_epochs`` with only ``epochs <= warmup_epochs`` of training never reaches the
    peak learning rate the recipe (and the start-up line) announces: a short run then silently trains at a
    fraction of its lr. One place for the rule, used by ``refconv train`` and the sweep.
    """
    if warmup_epochs < epochs:
        return None
    budget = budget or f"the {epochs} training epoch(s)"
    return (f"warmup_epochs={warmup_epochs:g}{where} is >= {budget}: the learning rate never leaves warm-up, so "
            f"it never reaches the peak it was set to. {fix}")

def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}.{hint}")


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def coerce_value(key: str, value: Any, source: str, hints: Mapping[str, Any] | None = None) -> Any:
    """Check/convert one value to the field's type (YAML and argparse both hand us plain scalars).

    ``hints``: the type hints of another config dataclass (a task's options); default :class:`RunConfig`'s.
    """
    hint = (hints or _HINTS)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    where = f" (from {source})" if source else ""
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and base is not str):
        if optional:
            return None
        if typing.get_origin(base) is list:
            return []
        raise ConfigError(f"{key} cannot be null{where}.")
    try:
        if typing.get_origin(base) is dict:
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise TypeError
            return dict(value)
        if typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                value = [v for v in str(value).split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if item is int:
                if not all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().isdigit()
                           for v in value):
                    raise TypeError
                return [int(v) for v in value]
            if not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    tname = getattr(base, "__name__", str(base))
    if typing.get_origin(base) is dict:
        tname = "a mapping of keys to values"
    if typing.get_origin(base) is list:
        tname = f"a list of {typing.get_args(base)[0].__name__}s"
    raise ConfigError(f"{key} must be {tname}"
                      f"{' or null' if optional else ''}, got {value!r}{where}.")


def _check_keys(data: Mapping[str, Any], source: str) -> None:
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), list(_FIELDS), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{f' in {source}' if source else ''}.{hint} "
                "See `refconv train --help` or docs/engine.md for the keys."
            )


def packaged_yaml(subdir: str = "") -> dict[str, Path]:
    """The YAML files shipped in ``refconv/configs[/subdir]`` by name (file stem)."""
    root = resources.files("refconv") / "configs"
    if subdir:
        root = root / subdir
    out: dict[str, Path] = {}
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.endswith((".yaml", ".yml")):
                out[entry.name.rsplit(".", 1)[0]] = Path(str(entry))
    return out


def packaged_configs() -> dict[str, Path]:
    """The recipes shipped in ``refconv/configs`` by name (file stem)."""
    return packaged_yaml()


def resolve_packaged(name_or_path: str | Path, shipped: dict[str, Path], kind: str, noun: str) -> Path:
    """A YAML path, or the name of one of the ``shipped`` files; an error names the packaged ones otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    close = difflib.get_close_matches(str(name_or_path), list(shipped), n=2)
    raise ConfigError(
        f"{kind} {str(name_or_path)!r} is neither a file nor a packaged {noun}. Packaged: "
        f"{', '.join(sorted(shipped)) or '(none)'}" + (f"; did you mean {close[0]!r}?" if close else ".")
    )


def packaged_pretraining_recipes() -> dict[str, Path]:
    """The recipes of the pretrained-model registry (``refconv/configs/pretrained``), named ``pretrained/<stem>``."""
    return {f"pretrained/{name}": path for name, path in packaged_yaml("pretrained").items()}


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a packaged recipe (``fashion-mnist``, ``authors-imagenet``,
    ``pretrained/fmnist-mobilenetv3_small_100``...)."""
    shipped = {**packaged_configs(), **packaged_pretraining_recipes()}
    return resolve_packaged(name_or_path, shipped, "config", "recipe")


def read_yaml(path: Path, kind: str = "config file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (empty: ``{}``), with errors that name the file, the line and the
    fix. The one YAML reader of refconv: recipes and sweeps (``kind`` names which in the errors) share it."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{kind} {path} is not valid YAML ({problem}{where}). Fix the syntax there (e.g. "
                          "an unclosed bracket or quote, or tabs used for indentation).") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {kind} {path}: {exc.strerror}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict of config keys, with errors that name the file and the key."""
    path = resolve_config_path(name_or_path)
    data = read_yaml(path)
    _check_keys(data, str(path))
    return data


def make_config(*layers: Mapping[str, Any] | RunConfig | str | Path | None, source: str = "") -> RunConfig:
    """Merge config layers left to right (later wins) into a validated :class:`RunConfig`.

    Each layer is a mapping of keys, a :class:`RunConfig`, or a YAML path / packaged recipe name. ``None``
    layers are skipped, so ``make_config(yaml_path_or_none, cli_overrides)`` works as is.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, RunConfig):
            data, src = layer.to_dict(), source
        elif isinstance(layer, (str, Path)):
            data, src = load_yaml(layer), str(layer)
        else:
            data, src = dict(layer), source
            _check_keys(data, src)
        for key, value in data.items():
            merged[key] = coerce_value(key, value, src)
    return RunConfig(**merged).validate()


def _recipe(cfg: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The keys that define what a run computes. A classification run leaves out the task keys, so its hash
    is what it was before tasks existed (recorded runs stay cached); the task's non-recipe options (e.g.
    where its data lives) are left out too."""
    data = cfg.to_dict() if isinstance(cfg, RunConfig) else dict(cfg)
    if data.get("task", "classification") == "classification" and not data.get("task_options"):
        data.pop("task", None)
        data.pop("task_options", None)
    elif isinstance(data.get("task_options"), Mapping):
        skip = task_class(data["task"]).NON_RECIPE_OPTIONS
        data.update({f"task_options.{k}": v for k, v in data.pop("task_options").items() if k not in skip})
    data = {k: v for k, v in data.items() if k not in _ADDED_KEYS or v != _ADDED_KEYS[k]}  # older runs' hashes hold
    return {k: v for k, v in sorted(data.items()) if k not in NON_RECIPE_KEYS}


# Recipe keys added after runs were recorded, at the default that computes what those runs did: out of the hash.
_ADDED_KEYS = {"refocus_impl": "explicit", "refocus_precond": "exact", "bn_recalibrate_batches": 0}


def config_hash(cfg: RunConfig | Mapping[str, Any]) -> str:
    """Short stable hash of the keys that change what a run computes."""
    blob = json.dumps(_recipe(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_diff(old: RunConfig | Mapping[str, Any], new: RunConfig | Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for recipe keys that differ (what a refused resume reports)."""
    a, b = _recipe(old), _recipe(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
