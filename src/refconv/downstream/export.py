"""Checking that a folded detector/segmenter computes what the RefConv one did, and ONNX export.

Detectors end in non-differentiable post-processing (score threshold, top-k, NMS): two networks whose raw
outputs differ by 1e-7 can keep different members of a group of *tied* scores, which says nothing about the
fold. So equivalence is checked where it is well defined, on the network's raw outputs (SSD's per-anchor
class logits and box regressions; a segmenter's logits), relative to their scale, and the post-processed
detections are compared in a way that is blind to the order of ties: sorted scores per image must agree,
and every detection must have a partner with the same label, a score within tolerance and the same box.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.checkpoint import atomic_write_bytes
from ..engine.export import compare_outputs
from ..errors import CheckpointError

__all__ = [
    "SegmentationLogits",
    "compare_detections",
    "compare_masks",
    "compare_outputs",
    "export_onnx",
    "network_outputs",
    "output_equivalence",
]


@torch.no_grad()
def network_outputs(model: nn.Module, task: str, images: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
    """The raw outputs before any post-processing, in eval mode.

    Detection (SSD): the transform (resize + normalise), backbone and head, i.e. ``cls_logits`` and
    ``bbox_regression`` per anchor. Segmentation: the output dict (``out``, and ``aux`` when present).
    """
    if task == "detection":
        images_t, _ = model.transform(list(images))
        features = model.backbone(images_t.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        return dict(model.head(list(features.values())))
    return dict(model(images))


def compare_detections(
    a: Sequence[dict[str, Tensor]], b: Sequence[dict[str, Tensor]], *, score_tol: float = 1e-4, box_tol: float = 1e-2
) -> dict[str, Any]:
    """Compare two detectors' post-processed outputs, blind to the order of tied scores.

    Returns:
        ``count_equal`` (same number of detections per image), ``max_score_err`` (sorted scores),
        ``max_box_err`` over matched detections, ``unmatched`` (detections with no partner of the same label,
        a score within ``score_tol`` and a box within ``box_tol`` pixels), ``detections`` (total in ``a``).
    """
    count_equal = True
    max_score = max_box = 0.0
    unmatched = total = 0
    for da, db in zip(a, b):
        na, nb = len(da["scores"]), len(db["scores"])
        total += na
        if na != nb:
            count_equal = False
            unmatched += abs(na - nb)
            continue
        if na == 0:
            continue
        sa, sb = da["scores"].double().sort(descending=True).values, db["scores"].double().sort(descending=True).values
        max_score = max(max_score, float((sa - sb).abs().max()))
        same = (da["labels"][:, None] == db["labels"][None, :]) & (
            (da["scores"].double()[:, None] - db["scores"].double()[None, :]).abs() <= score_tol
        )
        dist = (da["boxes"].double()[:, None, :] - db["boxes"].double()[None, :, :]).abs().amax(-1)
        dist = torch.where(same, dist, torch.full_like(dist, float("inf")))
        best = dist.min(1).values
        matched = best <= box_tol
        unmatched += int((~matched).sum())
        if matched.any():
            max_box = max(max_box, float(best[matched].max()))
    return {"count_equal": count_equal, "max_score_err": max_score, "max_box_err": max_box,
            "unmatched": unmatched, "detections": total}


@torch.no_grad()
def output_equivalence(
    reference: nn.Module, other: nn.Module, task: str, images: Tensor | Sequence[Tensor]
) -> dict[str, Any]:
    """How closely ``other`` reproduces ``reference`` (both put in eval mode): raw outputs, and detections."""
    reference.eval()
    other.eval()
    ref_out, other_out = network_outputs(reference, task, images), network_outputs(other, task, images)
    res: dict[str, Any] = compare_outputs(ref_out, other_out)
    if task == "detection":
        res["detections"] = compare_detections(reference(list(images)), other(list(images)))
    else:
        res["masks"] = compare_masks(ref_out["out"], other_out["out"])
    return res


def compare_masks(a: Tensor, b: Tensor) -> dict[str, int]:
    """Compare two segmenters' masks (the argmax of ``(N, C, H, W)`` logits): ``pixels`` and ``pixels_equal``.

    An exact fold leaves every pixel equal except where two classes tie to within the logits' rounding.
    """
    same = a.argmax(1) == b.argmax(1)
    return {"pixels": same.numel(), "pixels_equal": int(same.sum())}


class SegmentationLogits(nn.Module):
    """A segmenter returning only its main logits (``out``), the graph ONNX exports. Adds no state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def _export(module: nn.Module, args: tuple, path: Path, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the TorchScript exporter
            kwargs.pop("dynamic_axes", None)
            torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, **kwargs)


def export_onnx(model: nn.Module, task: str, path: str | Path, sample: Tensor | Sequence[Tensor]) -> dict[str, Any]:
    """Export a plain (folded) detector/segmenter to ONNX and check onnxruntime against PyTorch.

    Detection: the whole detector, post-processing included (torchvision's SSD exports with the TorchScript
    exporter), for one image of ``sample[0]``'s size: outputs ``boxes``, ``scores``, ``labels``. Segmentation:
    the main logits for a normalised batch, batch and spatial size dynamic. ``path`` is written only after the
    parity check ran.

    Returns:
        ``{"path", "max_abs_err"}`` for segmentation; for detection the :func:`compare_detections` fields too.

    Raises:
        CheckpointError: onnx/onnxruntime missing, or the export failed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'refconv[onnx]'.") from None
    path = Path(path)
    model = copy.deepcopy(model).cpu().float().eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        try:
            if task == "detection":
                image = sample[0].cpu().float()
                _export(model, ([image],), tmp_path, input_names=["image"],
                        output_names=["boxes", "scores", "labels"], opset_version=17)
            else:
                x = sample.cpu().float()
                _export(SegmentationLogits(model).eval(), (x,), tmp_path, input_names=["images"],
                        output_names=["logits"], opset_version=17,
                        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                      "logits": {0: "batch", 2: "height", 3: "width"}})
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"ONNX export of {type(model).__name__} failed: {type(exc).__name__}: {exc}") from None
        data = tmp_path.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        if task == "detection":
            got = session.run(None, {"image": image.numpy()})
            ort_det = [{"boxes": torch.from_numpy(got[0]), "scores": torch.from_numpy(got[1]),
                        "labels": torch.from_numpy(got[2])}]
            info = compare_detections(model([image]), ort_det)
            info["max_abs_err"] = max(info["max_score_err"], info["max_box_err"])
        else:
            expected = model(x)["out"].numpy()
            got = session.run(None, {"images": x.numpy()})[0]
            info = {"max_abs_err": float(abs(got - expected).max())}
    atomic_write_bytes(path, data)
    return {"path": str(path), **info}
