"""What a recorded result ran on: library versions and the machine, in one place for every report.

The demo, the sweep and ``refconv analyze`` write this dict into their results so a reader can tell whether a
number was measured with the same software on a comparable machine; keeping one function means every report
lists the same facts under the same keys.
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["environment"]


def environment(**extra: Any) -> dict[str, Any]:
    """Python, torch, torchvision, timm and refconv versions, the platform, CPU threads and cores, and the CUDA
    device's name (``False`` without one); ``extra`` adds entries (e.g. the device a model ran on)."""
    import torch
    import torchvision

    from . import __version__

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else False, "refconv": __version__,
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return {**env, **extra}
