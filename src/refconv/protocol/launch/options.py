"""How a study's cells run and with what resources: :class:`LaunchOptions`, from a YAML ``launcher:`` block
with the command-line flags laid over it, refused before anything is submitted when Slurm would refuse it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ...errors import ConfigError

__all__ = ["LAUNCHERS", "RESOURCE_KEYS", "LaunchOptions", "parse_launcher_block", "launch_options"]

LAUNCHERS = ("local", "submitit-local", "slurm")
RESOURCE_KEYS = ("partition", "account", "qos", "time", "cpus_per_task", "gpus_per_node", "nodes", "mem_gb",
                 "array_parallelism", "max_requeues", "slurm_extra")
# sbatch options the launcher sets itself: a --slurm-extra naming one would silently break dependencies, arrays,
# the preemption signal or the logs.
_OWNED_SBATCH = {"array", "dependency", "output", "error", "signal", "open-mode", "job-name", "wckey", "requeue",
                 "kill-on-invalid-dep", "ntasks-per-node"}


@dataclass(frozen=True)
class LaunchOptions:
    """How and with what resources a study's cells run. Defaults fit one GPU per cell.

    ``time_min`` is the job's time limit in minutes; ``extra`` are further ``sbatch`` options (``--slurm-extra
    constraint=a100``); ``max_requeues`` bounds preemptions/time-outs per cell; ``wait=False`` returns right after
    submitting (``refconv sweep status`` / ``report`` read the directory later); ``parallel`` is the local
    launcher's process count.
    """

    launcher: str = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 24 * 60
    cpus_per_task: int = 8
    gpus_per_node: int = 1
    nodes: int = 1
    mem_gb: float | None = 32.0
    array_parallelism: int = 64
    max_requeues: int = 3
    extra: tuple[tuple[str, str], ...] = ()
    wait: bool = True
    poll_s: float = 10.0
    parallel: int = 1
    processes_per_node: int | None = None  # None: one per GPU (CPU DDP, e.g. gloo in tests: set it)

    @property
    def tasks_per_node(self) -> int:
        """One process per GPU (the engine's DDP path) when a cell has several; one otherwise."""
        if self.processes_per_node is not None:
            return self.processes_per_node
        return max(1, self.gpus_per_node) if (self.gpus_per_node > 1 or self.nodes > 1) else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d


def _pos_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"launcher: {what} must be an integer >= {minimum}, got {value!r}.")
    return value


def _extra_pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{what}: give KEY=VALUE (an sbatch option without its dashes, e.g. "
                                  f"constraint=a100), got {item!r}.")
            k, v = item.split("=", 1)
            items.append((k.strip(), v.strip()))
    else:
        raise ConfigError(f"{what}: a mapping of sbatch options (constraint: a100), got {value!r}.")
    out = []
    for k, v in items:
        key = k.lstrip("-").replace("_", "-")
        if not key or not all(c.isalnum() or c == "-" for c in key):
            raise ConfigError(f"{what}: {k!r} is not an sbatch option name (e.g. constraint, exclude, mail-type).")
        if key in _OWNED_SBATCH:
            raise ConfigError(f"{what}: --{key} is set by the launcher itself (arrays, dependencies, the preemption "
                              "signal, logs); remove it.")
        out.append((key, v))
    return tuple(out)


def parse_launcher_block(block: Any, where: str = "launcher") -> dict[str, Any]:
    """Validate a study YAML's ``launcher:`` block (resources only; which launcher is a flag) into
    :class:`LaunchOptions` keyword arguments.

    Raises:
        ConfigError: unknown keys, or values Slurm would refuse (non-positive counts, a time limit under a minute).
    """
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}: a mapping of resources (partition:, time:, gpus_per_node: ...), got {block!r}.")
    unknown = sorted(set(block) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RESOURCE_KEYS)} "
                          "(time in minutes; which launcher runs the cells is the --launcher flag).")
    out: dict[str, Any] = {}
    for k in ("partition", "account", "qos"):
        if block.get(k) is not None:
            if not isinstance(block[k], str) or not block[k].strip() or any(c.isspace() for c in block[k]):
                raise ConfigError(f"{where}: {k} must be one word (a Slurm {k} name), got {block[k]!r}.")
            out[k] = block[k]
    if block.get("time") is not None:
        out["time_min"] = _pos_int(block["time"], "time (minutes)")
    for k in ("cpus_per_task", "nodes", "array_parallelism"):
        if block.get(k) is not None:
            out[k] = _pos_int(block[k], k)
    for k in ("gpus_per_node", "max_requeues"):
        if block.get(k) is not None:
            out[k] = _pos_int(block[k], k, minimum=0)
    if block.get("mem_gb") is not None:
        mem = block["mem_gb"]
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0:
            raise ConfigError(f"{where}: mem_gb must be a number > 0, got {mem!r}.")
        out["mem_gb"] = float(mem)
    if block.get("slurm_extra") is not None:
        out["extra"] = _extra_pairs(block["slurm_extra"], f"{where}: slurm_extra")
    return out


def launch_options(launcher: str | None = None, block: Mapping[str, Any] | None = None, **flags: Any) -> LaunchOptions:
    """Options from a YAML ``launcher:`` block with command-line flags laid over it (``None`` flags: not given).

    ``flags`` take :class:`LaunchOptions` names (``time_min``, ``extra`` as ``KEY=VALUE`` strings ...).
    """
    launcher = launcher or "local"
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}.")
    kwargs = parse_launcher_block(block)
    given = {k: v for k, v in flags.items() if v is not None}
    if "extra" in given:
        merged = dict(kwargs.get("extra", ()))
        merged.update(_extra_pairs(list(given.pop("extra")), "--slurm-extra"))
        kwargs["extra"] = tuple(merged.items())
    check = {("time" if k == "time_min" else k): v for k, v in given.items()
             if k in ("time_min", "cpus_per_task", "nodes", "array_parallelism", "gpus_per_node", "max_requeues",
                      "mem_gb", "partition", "account", "qos")}
    kwargs.update(parse_launcher_block(check, "command line"))
    kwargs.update({k: v for k, v in given.items() if k in ("wait", "poll_s", "parallel")})
    return LaunchOptions(launcher=launcher, **kwargs)
