"""A sweep as data: the schema of a sweep YAML, its loading and its validation into a :class:`SweepSpec`.

A sweep YAML names a shared recipe (``base``), a baseline (trained here, or ``weights:`` a file, a finished run
or a pretrained model of the registry), seeds, budgets E (epochs) and RefConv settings (a list and/or a grid).

Why a separate schema rather than a list of engine configs: a comparison is only fair when every arm
shares the recipe and the starting weights, so the sweep owns exactly the keys that define the comparison
(``method``, ``epochs``, ``seed``, ``weights``, ``out``) and refuses them anywhere else.

::

    name: my-sweep                      # default: the file name
    base: {model: timm/mobilenetv3_small_100, data: fashion-mnist, image_size: 32, batch_size: 128,
           warmup_epochs: 0}            # RunConfig keys shared by every run
    baseline: {epochs: 6, warmup_epochs: 1}   # RunConfig keys of the baseline run, or {weights: PATH or NAME}
    seeds: 2                            # N (seeds 0..N-1) or a list
    budgets: [1, 3]                     # E, epochs of every arm
    settings:                           # RefConv settings (RunConfig keys valid for method refconv)
      - {name: authors}
      - {name: zero-init, init: zeros}
    grid: {map_k: [1, 3], basis: [pretrained, random]}   # optional: cartesian product, named automatically
    controls: [continue, finetune]      # default
    parallel: 1                         # processes (int or "auto")
    time_budget_minutes: 60             # refuse a larger estimate unless --yes
    ci: t                               # t | bootstrap
    confidence: 0.95
    launcher: {partition: gpu, time: 240, gpus_per_node: 1}   # resources for --launcher slurm (docs/cluster.md)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import RunConfig
from ..engine.config import NON_RECIPE_KEYS, config_hash, make_config
from ..errors import ConfigError
from .cells import Arm
from .spec import packaged_specs, read_spec, resolve_spec
from .sweep_checks import (as_mapping, auto_name, check_run_keys, expand_grid, int_list, unknown_keys_error,
                           validated)

__all__ = ["SweepSpec", "Setting", "TOP_LEVEL_KEYS", "REFCONV_KEYS", "CONTROLS", "DEFAULT_TIME_BUDGET_MIN",
           "load_sweep", "parse_sweep", "packaged_sweeps", "resolve_sweep_path", "expand_grid"]

TOP_LEVEL_KEYS = ("name", "description", "base", "baseline", "seeds", "budgets", "settings", "grid", "controls",
                  "warmup_share", "parallel", "time_budget_minutes", "ci", "confidence", "launcher")
CONTROLS = ("continue", "finetune")
# The reviewers' control: the plain model trained once, from scratch, for the baseline's epochs + E in one schedule.
SCRATCH = "scratch"
CONTROL_METHODS = CONTROLS + (SCRATCH,)
# RunConfig keys that only change RefConv itself: a setting that changes them is compared at equal recipe.
REFCONV_KEYS = ("map_k", "groups", "max_group_size", "init", "include", "exclude", "layers", "basis",
                "refocus_lr_mult", "refocus_weight_decay", "refocus_impl", "refocus_precond")
# Keys the sweep sets itself, per cell: nobody else may.
_SWEEP_OWNED = {
    "method": "the sweep sets it per arm (settings are refconv, controls are listed under 'controls')",
    "epochs": "the budget E comes from 'budgets' (and the baseline's from 'baseline: {epochs: N}')",
    "seed": "seeds come from 'seeds' (the baseline's from 'baseline: {seed: N}')",
    "out": "run directories live under the sweep's --out",
    "overwrite": "pass --overwrite to `refconv sweep` instead",
    "weights": "the arms start from the baseline; give 'baseline: {weights: PATH}' to start from a checkpoint",
}
# Keys that define the data and the architecture: every run of a comparison shares them, so only 'base' sets them.
_SHARED_ONLY = ("model", "data", "data_dir", "download", "num_classes", "in_chans", "image_size", "subset_train",
                "subset_test", "data_seed")
_SHARED_REASONS = {k: "the data and model are shared by every run: set it in 'base'" for k in _SHARED_ONLY}
_RESERVED_NAMES = ("baseline",) + CONTROL_METHODS
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")
_LR_KEYS = ("lr", "base_lr", "lr_base_size", "finetune_lr_mult")
DEFAULT_TIME_BUDGET_MIN = 60.0


@dataclass(frozen=True)
class Setting:
    """One named RefConv setting: RunConfig overrides applied on top of ``base`` for method ``refconv``."""

    name: str
    overrides: dict[str, Any]
    source: str  # "settings[i]" or "grid"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": dict(self.overrides), "source": self.source}


@dataclass
class SweepSpec:
    """A validated sweep: everything that defines it, in plain JSON-able values (see the module docstring)."""

    name: str
    base: dict[str, Any]
    baseline: dict[str, Any]
    seeds: list[int]
    budgets: list[int]
    settings: list[Setting]
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    # named controls beyond the plain ones: {name: {"method": continue|finetune, "overrides": {...}}}
    control_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # every arm warms up for this share of its own budget (the authors: 5 of 105 epochs); None: base's warmup_epochs
    warmup_share: float | None = None
    parallel: int | str = 1
    time_budget_minutes: float = DEFAULT_TIME_BUDGET_MIN
    ci: str = "t"
    confidence: float = 0.95
    description: str = ""
    source: str | None = None
    warnings: list[str] = field(default_factory=list)
    launcher: dict[str, Any] = field(default_factory=dict)  # cluster resources (refconv.protocol.launch)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["settings"] = [s.to_dict() for s in self.settings]
        return json.loads(json.dumps(d, default=str))

    @property
    def baseline_weights(self) -> str | None:
        """The checkpoint the arms start from when the baseline is not trained here."""
        return self.baseline.get("weights")

    def base_config(self, **runtime: Any) -> RunConfig:
        """The shared recipe as a :class:`RunConfig`; ``runtime`` adds non-recipe keys (data_dir, workers...)."""
        extra = {k: v for k, v in runtime.items() if v is not None}
        return make_config(self.base, extra, source="base")

    @property
    def per_seed_baselines(self) -> bool:
        """Whether every seed trains its own baseline (the seed's spread then includes the start)."""
        return bool(self.baseline.get("per_seed"))

    def baseline_recipe(self) -> dict[str, Any]:
        """The baseline's own RunConfig keys (without the sweep's ``per_seed`` flag)."""
        return {k: v for k, v in self.baseline.items() if k not in ("per_seed", "weights")}

    def control_method(self, name: str) -> str:
        """``continue`` / ``finetune`` / ``scratch`` of a control arm."""
        return self.control_specs.get(name, {}).get("method", name)

    def control_arm(self, name: str, budget: int) -> Arm:
        """A control's arm at budget E: ``scratch`` trains the stock model from scratch for the baseline's epochs + E
        with the baseline's recipe, in one schedule; the others train on from the baseline for E epochs."""
        if name == SCRATCH:
            recipe = {k: v for k, v in self.baseline_recipe().items() if k != "epochs"}
            return Arm(f"e{budget}/{name}", "baseline", int(self.baseline["epochs"]) + budget, recipe)
        spec = self.control_specs.get(name, {})
        return Arm(f"e{budget}/{name}", spec.get("method", name), budget, dict(spec.get("overrides", {})))

    def arms(self) -> list[Arm]:
        """Every arm of the sweep, per budget: the settings (refconv) then the controls. With ``warmup_share``
        each arm warms up for that share of its own epochs (unless it sets ``warmup_epochs`` itself)."""
        out: list[Arm] = []
        for e in self.budgets:
            out += [Arm(f"e{e}/{s.name}", "refconv", e, dict(s.overrides)) for s in self.settings]
            out += [self.control_arm(c, e) for c in self.controls]
        if self.warmup_share is None:
            return out
        return [dataclasses.replace(a, overrides={"warmup_epochs": round(self.warmup_share * a.epochs, 6),
                                                  **a.overrides}) for a in out]

    def arm_lr(self, name: str) -> float | None:
        """The recipe learning rate of a setting or a (non-scratch) control, for lr matching (None: scratch)."""
        if name == SCRATCH:
            return None
        setting = next((s for s in self.settings if s.name == name), None)
        if setting is not None:
            return make_config(self.base, setting.overrides, {"method": "refconv"}).recipe_lr()
        spec = self.control_specs.get(name, {})
        return make_config(self.base, spec.get("overrides", {}),
                           {"method": spec.get("method", name), "pretrained": True}).recipe_lr()

    def lr_matched_control(self, setting: str) -> str | None:
        """The control that trains at the setting's recipe lr (``continue`` for a setting at the recipe's rate,
        ``finetune`` for one at finetune's): the comparison that holds everything but refocusing equal."""
        lr = self.arm_lr(setting)
        for c in self.controls:
            other = self.arm_lr(c)
            if other is not None and lr is not None and abs(other - lr) <= 1e-9 * max(abs(lr), 1e-12):
                return c
        return None


# ---------------------------------------------------------------------------------------------- loading
def packaged_sweeps() -> dict[str, Path]:
    """The sweeps shipped in ``refconv/configs/sweeps`` by name (file stem)."""
    return packaged_specs("sweep")


def resolve_sweep_path(name_or_path: str | os.PathLike) -> Path:
    """A sweep YAML path, or the name of a packaged sweep (``fashion-mnist-small``, ``ablations``)."""
    return resolve_spec(name_or_path, "sweep")


def load_sweep(name_or_path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML (a path or a packaged sweep name, :mod:`refconv.protocol.spec`). A packaged
    sweep is recorded by its name, not by where this machine installed it, so a recorded study's command reruns it
    anywhere."""
    data, path, packaged = read_spec(name_or_path, "sweep")
    return parse_sweep(data, source=packaged or str(path), default_name=path.stem)


def parse_sweep(data: Mapping[str, Any], *, source: str = "", default_name: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping (as read from YAML) into a :class:`SweepSpec`.

    Every error names the section and the key, and lists what is allowed; RunConfig values are checked by
    :func:`refconv.engine.make_config`, so a sweep is refused before anything trains.

    Raises:
        ConfigError: unknown or misplaced keys, bad values, empty or duplicate settings.
    """
    where = source or "the sweep config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must hold a mapping (base:, baseline:, seeds:, budgets:, settings:...), got "
                          f"{type(data).__name__}.")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise unknown_keys_error(unknown, where, TOP_LEVEL_KEYS)
    warnings: list[str] = []
    base = as_mapping(data.get("base"), "base")
    check_run_keys(base, "base", {**_SWEEP_OWNED, "pretrained": "hub weights start the baseline: put "
                                                                 "'pretrained: true' under 'baseline'"})
    base_cfg = validated("base", base)
    base = {k: getattr(base_cfg, k) for k in base}  # values as coerced by the engine
    baseline = _parse_baseline(as_mapping(data.get("baseline"), "baseline"), base, base_cfg)
    seeds = _parse_seeds(data)
    if len(seeds) < 2:
        warnings.append(f"only {len(seeds)} seed: results are reported without confidence intervals, and no setting "
                        "can be said to beat a control. Use seeds: 2 or more for a statistical claim.")
    if "budgets" not in data:
        raise ConfigError("the sweep needs 'budgets': a list of epoch budgets E, e.g. [1, 3].")
    budgets = sorted(int_list(data["budgets"], "budgets", minimum=1))
    controls, control_specs = _parse_controls(data.get("controls", list(CONTROLS)), base, baseline)
    settings = _parse_settings(data, base, warnings)
    parallel, tb, ci, conf = _parse_options(data)
    if ci == "bootstrap" and len(seeds) < 10:
        warnings.append(f"ci: bootstrap with {len(seeds)} seeds gives intervals that are too narrow (a percentile "
                        "bootstrap needs many pairs); ci: t is the honest choice for a handful of seeds.")
    share = data.get("warmup_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1):
        raise ConfigError(f"warmup_share must be a fraction of each arm's budget in [0, 1) (the authors: 0.05), got "
                          f"{share!r}.")
    if share is None:
        _check_warmups(base, budgets, settings, control_specs)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"name must be a short identifier (letters, digits, . _ = + , -), got {name!r}.")
    spec = SweepSpec(name=name, description=str(data.get("description") or "").strip(), base=base, baseline=baseline,
                     seeds=seeds, budgets=budgets, settings=settings, controls=controls,
                     control_specs=control_specs, warmup_share=None if share is None else float(share),
                     parallel=parallel,
                     time_budget_minutes=tb, ci=ci, confidence=conf, source=source or None, warnings=warnings,
                     launcher=_parse_launcher(data.get("launcher")))
    for st in spec.settings:
        if any(k in st.overrides for k in _LR_KEYS) and spec.lr_matched_control(st.name) is None:
            warnings.append(f"setting {st.name!r} trains at lr {spec.arm_lr(st.name):.4g}, which no control does: it has "
                            "no lr-matched control. Add one (e.g. {name: ..., method: continue, base_lr: ...}).")
    return spec


def _check_warmups(base: dict[str, Any], budgets: list[int], settings: list[Setting],
                   control_specs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a warm-up that does not fit the smallest budget: the arm would never leave it (its lr never reaches
    the recipe's), in the base recipe or in any setting or control that sets its own."""
    arms = [("base", {})] + [(f"setting {s.name!r}", s.overrides) for s in settings] + \
        [(f"control {n!r}", c.get("overrides", {})) for n, c in control_specs.items()]
    for where, overrides in arms:
        warm = float(overrides.get("warmup_epochs", base.get("warmup_epochs", RunConfig.warmup_epochs)))
        if warm and warm >= budgets[0]:
            raise ConfigError(
                f"warmup_epochs={warm:g} ({where}) does not fit the smallest budget E={budgets[0]}: the arm would never "
                f"leave warm-up. Use a warm-up shorter than the budget (the authors warm up 5 % of it, e.g. "
                f"warmup_epochs: {0.05 * budgets[0]:g}), or 0."
            )


def _parse_launcher(block: Any) -> dict[str, Any]:
    """The ``launcher:`` block as written (validated now: a typo fails before anything is submitted)."""
    from .launch import parse_launcher_block

    parse_launcher_block(block)
    return dict(block or {})


def _parse_baseline(baseline: dict[str, Any], base: dict[str, Any], base_cfg: RunConfig) -> dict[str, Any]:
    """``{"weights": name or absolute path}`` for given starting weights, else the baseline's own RunConfig keys
    (``per_seed: true``: one baseline per seed, trained here)."""
    if "per_seed" in baseline:
        if "weights" in baseline:
            raise ConfigError("baseline: 'per_seed: true' trains one baseline per seed here, which given 'weights' "
                              "cannot do. Remove 'weights' (and give 'epochs'), or remove 'per_seed'.")
        if not isinstance(baseline["per_seed"], bool):
            raise ConfigError(f"baseline.per_seed must be true or false, got {baseline['per_seed']!r}.")
        per_seed = baseline.pop("per_seed")
        parsed = _parse_baseline(baseline, base, base_cfg)
        return {**parsed, "per_seed": True} if per_seed else parsed
    if "weights" not in baseline:
        check_run_keys(baseline, "baseline", {
            **{k: v for k, v in _SWEEP_OWNED.items() if k not in ("epochs", "seed", "weights")}, **_SHARED_REASONS})
        if "epochs" not in baseline:
            raise ConfigError("baseline needs 'epochs' (how long to train the baseline here), or 'weights: PATH' to "
                              "start every arm from an existing checkpoint.")
        cfg = validated("baseline", base, baseline, {"method": "baseline"})
        return {k: getattr(cfg, k) for k in baseline}
    others = [k for k in baseline if k != "weights"]
    if others:
        raise ConfigError(f"baseline: 'weights' starts the arms from an existing checkpoint and cannot be combined "
                          f"with training keys ({', '.join(others)}). Remove them, or remove 'weights' to train "
                          "the baseline here.")
    w = baseline["weights"]
    if not isinstance(w, (str, os.PathLike)) or not str(w):
        raise ConfigError(f"baseline.weights must be a path or a pretrained model's name, got {w!r}.")
    from ..models import pretrained

    if pretrained.is_pretrained_name(w):  # fmnist/...: its card must fit 'base'; its SHA-256 is checked
        pretrained.check_compatible(str(w), model=base_cfg.model, data=base_cfg.data, image_size=base_cfg.image_size,
                                    in_chans=base_cfg.in_chans, num_classes=base_cfg.num_classes)
        pretrained.weights_path(str(w))
        # The name, not the file it resolves to: results then say which model the arms started from and stay
        # valid on another machine (the engine and the fingerprint resolve the name themselves).
        return {"weights": str(w)}
    path = Path(w).expanduser()
    if not path.exists():
        raise ConfigError(f"baseline.weights {str(w)!r} does not exist. Give a weights file, a finished run "
                          "directory or a pretrained model (`refconv pretrained` lists them).")
    return {"weights": str(path.resolve())}


def _parse_seeds(data: Mapping[str, Any]) -> list[int]:
    if "seeds" not in data:
        raise ConfigError("the sweep needs 'seeds': a count (e.g. 3) or a list of seeds.")
    seeds = data["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {seeds}.")
        return list(range(seeds))
    return int_list(seeds, "seeds", minimum=0)


def _parse_controls(value: Any, base: dict[str, Any], baseline: Mapping[str, Any]
                    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Control names, and the specs of named controls: ``continue``, ``finetune``, ``scratch`` (the reviewers'
    control), or ``{name: continue-lr-x3, method: continue, base_lr: 0.6}`` (a control with its own recipe keys,
    e.g. an lr-tuned one)."""
    entries = [value] if isinstance(value, (str, Mapping)) else list(value or [])
    controls: list[str] = []
    specs: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            entry = dict(entry)
            name, method = entry.pop("name", None), entry.pop("method", None)
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED_NAMES:
                raise ConfigError(f"controls[{i}]: a named control needs 'name' (a new identifier, not "
                                  f"{', '.join(_RESERVED_NAMES)}), got {name!r}.")
            if method not in CONTROLS:
                raise ConfigError(f"controls[{i}] ({name}): 'method' must be one of {', '.join(CONTROLS)}, got {method!r}.")
            check_run_keys(entry, f"controls[{i}] ({name})", {**_SWEEP_OWNED, **_SHARED_REASONS})
            cfg = validated(f"controls[{i}] ({name})", base, entry, {"method": method, "pretrained": True})
            specs[name] = {"method": method, "overrides": {k: getattr(cfg, k) for k in entry}}
            controls.append(name)
        elif entry in CONTROL_METHODS:
            controls.append(entry)
        else:
            raise ConfigError(f"unknown control {entry!r}; controls are {', '.join(CONTROL_METHODS)} or a mapping "
                              "{name: ..., method: continue|finetune, <recipe keys>}.")
    if SCRATCH in controls and "epochs" not in baseline:
        raise ConfigError("the 'scratch' control trains from scratch for the baseline's epochs + E, but the baseline "
                          "is given ('weights:'), so its budget is unknown. Train the baseline here (baseline: "
                          "{epochs: N}) or remove 'scratch'.")
    if not controls:
        raise ConfigError("controls is empty: a RefConv gain is only claimed against a control (continue and/or "
                          "finetune).")
    if len(set(controls)) != len(controls):
        raise ConfigError(f"controls repeats a value: {controls}.")
    return controls, specs


def _parse_settings(data: Mapping[str, Any], base: dict[str, Any], warnings: list[str]) -> list[Setting]:
    """The explicit settings, then the grid's; each validated as a refconv run on ``base``, named, and unique both
    by name and by resolved configuration. Appends a warning for a setting that changes the shared recipe."""
    raw: list[tuple[str | None, dict[str, Any], str]] = []
    settings_v = data.get("settings") or []
    if not isinstance(settings_v, list):
        raise ConfigError(f"settings must be a list of mappings (e.g. - {{name: zero-init, init: zeros}}), got "
                          f"{type(settings_v).__name__}.")
    for i, entry in enumerate(settings_v):
        entry = as_mapping({"name": entry} if isinstance(entry, str) else entry, f"settings[{i}]")
        name = entry.pop("name", None)
        raw.append((None if name is None else str(name), entry, f"settings[{i}]"))
    grid = as_mapping(data.get("grid"), "grid")
    raw += [(name, overrides, "grid") for name, overrides in (expand_grid(grid) if grid else [])]
    if not raw:
        raise ConfigError("the sweep has no RefConv setting: add 'settings' (e.g. - {name: authors}) or a 'grid'.")
    forbidden = {**_SWEEP_OWNED, "pretrained": "every arm starts from the baseline's weights", **_SHARED_REASONS}
    settings: list[Setting] = []
    seen_cfg: dict[str, str] = {}
    for name, overrides, where_s in raw:
        label = f"{where_s} ({name})" if name else where_s
        check_run_keys(overrides, label, forbidden)
        cfg = validated(label, base, overrides, {"method": "refconv", "weights": "baseline"})
        overrides = {k: getattr(cfg, k) for k in overrides}
        name = name or auto_name(overrides)
        if not _NAME_RE.match(name):
            raise ConfigError(f"{label}: setting name {name!r} must start with a letter or digit and hold only letters, "
                              "digits and . _ = + , - (it names a directory).")
        if name in _RESERVED_NAMES:
            raise ConfigError(f"{label}: setting name {name!r} is reserved (baseline and control arms use it).")
        if any(s.name == name for s in settings):
            raise ConfigError(f"two settings are named {name!r}: names must be unique.")
        key = config_hash(cfg)
        if key in seen_cfg:
            raise ConfigError(f"settings {seen_cfg[key]!r} and {name!r} are the same run (same configuration after "
                              "defaults). Remove one.")
        seen_cfg[key] = name
        # lr keys are judged against the controls' rates once they are known (parse_sweep: _lr_warnings)
        recipe_changes = [k for k in overrides if k not in REFCONV_KEYS and k not in NON_RECIPE_KEYS and k not in _LR_KEYS]
        if recipe_changes:
            warnings.append(f"setting {name!r} changes {', '.join(recipe_changes)}, which the controls keep at the base "
                            "value: its comparison with them is not at an equal recipe.")
        settings.append(Setting(name, overrides, where_s))
    return settings


def _parse_options(data: Mapping[str, Any]) -> tuple[int | str, float, str, float]:
    """How to run and how to judge: ``(parallel, time_budget_minutes, ci, confidence)``."""
    parallel = data.get("parallel", 1)
    if not (parallel == "auto" or (isinstance(parallel, int) and not isinstance(parallel, bool) and parallel >= 1)):
        raise ConfigError(f"parallel must be an integer >= 1 or 'auto', got {parallel!r}.")
    tb = data.get("time_budget_minutes", DEFAULT_TIME_BUDGET_MIN)
    if isinstance(tb, bool) or not isinstance(tb, (int, float)) or not tb > 0:
        raise ConfigError(f"time_budget_minutes must be a number > 0, got {tb!r}.")
    ci = data.get("ci", "t")
    if ci not in ("t", "bootstrap"):
        raise ConfigError(f"ci must be 't' (paired Student t) or 'bootstrap', got {ci!r}.")
    conf = data.get("confidence", 0.95)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 < conf < 1:
        raise ConfigError(f"confidence must be in (0, 1), e.g. 0.95, got {conf!r}.")
    return parallel, float(tb), ci, float(conf)
