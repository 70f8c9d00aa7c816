"""Deployable outputs: folded ``.safetensors`` with a sidecar description, and optional ONNX.

A folded file holds exactly the stock model's state_dict (same keys, shapes, dtypes), so
``stock_model.load_state_dict(safetensors.torch.load_file(path), strict=True)`` works with no refconv
installed. The sidecar JSON (``<stem>.json``, also copied into the safetensors header metadata) names the
model, class count and input channels, so ``refconv eval --weights folded.safetensors`` can rebuild the
model without being told.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn

from ..errors import CheckpointError
from ..models.weights import read_sidecar, sidecar_path
from .checkpoint import atomic_write_bytes

__all__ = [
    "save_weights",
    "read_sidecar",
    "sidecar_path",
    "compare_outputs",
    "export_onnx",
]


def save_weights(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state_dict as safetensors (atomically) plus the sidecar JSON ``meta``.

    Tensors are copied to contiguous CPU tensors first: safetensors refuses shared storage (tied weights),
    and the file must load ``strict=True`` with every key present.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    header = {f"refconv.{k}": json.dumps(v) for k, v in meta.items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": "pt", **header}))
    atomic_write_bytes(sidecar_path(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def compare_outputs(a: Tensor | Mapping[str, Tensor], b: Tensor | Mapping[str, Tensor]) -> dict[str, float]:
    """How far outputs ``b`` are from ``a`` (one tensor, or a dict of them: a segmenter's, a detector's head):
    ``max_abs_err`` over every tensor, ``scale`` the largest ``|a|``, ``rel_err`` = their ratio (in float64)."""
    a_map = a if isinstance(a, Mapping) else {"out": a}
    b_map = b if isinstance(b, Mapping) else {"out": b}
    err = scale = 0.0
    for k, va in a_map.items():
        err = max(err, float((va.double() - b_map[k].double()).abs().max()))
        scale = max(scale, float(va.double().abs().max()))
    return {"max_abs_err": err, "rel_err": err / max(scale, 1e-12), "scale": scale}


def export_onnx(model: nn.Module, path: str | Path, sample: Tensor, *, opset: int | None = None) -> dict[str, Any]:
    """Export ``model`` (eval mode, CPU, fp32) to ONNX and check onnxruntime reproduces its outputs.

    Uses the TorchScript-based exporter (seconds, not tens of seconds, for a ConvNet; weights inside the file)
    and falls back to the dynamo exporter where that one is gone. ``path`` is written only after the parity
    check ran, so a failed export leaves nothing behind.

    Returns:
        ``{"path", "max_abs_err", "opset"}``.

    Raises:
        CheckpointError: onnx/onnxruntime missing (install ``refconv[onnx]``) or the export failed.
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'refconv[onnx]'.") from None

    path = Path(path)
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    sample = sample.to("cpu", torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    torch.onnx.export(model, (sample,), str(tmp_path), dynamo=False,
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
                except (TypeError, NotImplementedError, RuntimeError) as legacy_exc:
                    if "dynamo" not in str(legacy_exc).lower() and not isinstance(legacy_exc, TypeError):
                        raise
                    torch.onnx.export(model, (sample,), str(tmp_path), dynamo=True, external_data=False,
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **names)
        except Exception as exc:
            raise CheckpointError(f"ONNX export of the folded model failed: {type(exc).__name__}: {exc}") from None
        data = tmp_path.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(sample).numpy()
    got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    err = float(abs(got - expected).max())
    atomic_write_bytes(path, data)
    return {"path": str(path), "max_abs_err": err, "opset": int(onnx.load_from_string(data).opset_import[0].version)}
