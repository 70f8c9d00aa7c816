"""Training engine: the recipe, the loop, checkpoints, DDP, exports and ``run(config) -> RunResult``.

Everything that is not RefConv-specific comes from well-kept libraries (timm's optimizer and scheduler
factories and EMA, torchvision / refconv.data transforms, safetensors, tqdm, rich); the RefConv-specific
parts are the method (convert -> Refocusing Learning -> fold), RT's parameter group and the checks that a
folded model computes what the trained RefConv model computed. ::

    from refconv.engine import RunConfig, run

    base = run(RunConfig(model="tv/mobilenet_v3_small", epochs=2, out="runs/base"))
    ref = run(RunConfig(method="refconv", weights=str(base.run_dir), epochs=2, out="runs/ref"))
    print(ref.final["top1"], ref.folded_path)
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .config import METHODS, RunConfig, config_diff, config_hash, load_yaml, make_config, packaged_configs

if TYPE_CHECKING:
    from .callbacks import Callback, EpochEvent, StepEvent, installed
    from .loop import NonFiniteLossError, evaluate, train_one_epoch
    from .rundir import load_run_config
    from .runner import RunInterrupted, RunResult, run

# The config is plain data (no torch): the CLI builds its parser from it without importing torch.
lazy_exports(__name__, {
    **dict.fromkeys(("NonFiniteLossError", "evaluate", "train_one_epoch"), ".loop"),
    **dict.fromkeys(("RunInterrupted", "RunResult", "run"), ".runner"),
    **dict.fromkeys(("Callback", "StepEvent", "EpochEvent", "installed"), ".callbacks"),
    "load_run_config": ".rundir",
})

__all__ = [
    "RunConfig",
    "RunResult",
    "RunInterrupted",
    "NonFiniteLossError",
    "METHODS",
    "run",
    "Callback",
    "StepEvent",
    "EpochEvent",
    "installed",
    "make_config",
    "load_yaml",
    "load_run_config",
    "config_hash",
    "config_diff",
    "packaged_configs",
    "train_one_epoch",
    "evaluate",
]
