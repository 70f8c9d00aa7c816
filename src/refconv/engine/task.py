"""Tasks: what :func:`refconv.engine.run` trains, behind one small interface.

Why a seam here: classification, detection and segmentation differ in their data, model builder, loss, metric,
fold check and export, and in nothing else. Everything else a run does (config, loop, optimiser and schedule,
AMP, DDP, EMA, checkpoints, exact resume, Ctrl-C, NaN handling, the run directory) is the engine's and is
written once. A task is a class with the methods of :class:`Task`; the runner builds one per run
(``task_class(cfg.task)(cfg)``) and calls it.

Tasks register themselves (``@register_task("name")``, :mod:`refconv.engine.task_registry`): classification here,
detection and segmentation in :mod:`refconv.downstream.tasks`, which the engine never imports itself (the
registry imports it by name, from the package root's list, when a run asks for one of its tasks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.loader import build_loader
from ..errors import ConfigError, DataError
from .loop import autocast, evaluate, to_device, topk_correct
from .task_registry import register_task, task_class, task_names

if TYPE_CHECKING:
    from .config import RunConfig
    from .distributed import DistInfo
    from .progress import Reporter
    from .sampling import ResumableSampler

__all__ = ["Task", "StepOutput", "ClassificationTask", "register_task", "task_class", "task_names", "rank0_first"]

T = TypeVar("T")


def rank0_first(info: DistInfo, build: Callable[[], T]) -> T:
    """``build()`` on rank 0, then on the other ranks (what downloads or generates files does it once)."""
    from . import distributed as dist_utils

    if not info.is_main:
        dist_utils.barrier()
    built = build()
    if info.is_main:
        dist_utils.barrier()
    return built


@dataclass
class StepOutput:
    """One training step's forward: the loss to minimise, the items it saw and (when the task has one) how
    many it classified right (``correct`` stays on the device: the loop only syncs at sync points)."""

    loss: Tensor
    count: int
    correct: Tensor | None = None


class Task(ABC):
    """What a run trains. Built with the validated config; :meth:`build_data` then :meth:`build_model` are
    called once, in that order, before the loop.

    Class attributes:
        name: the ``task`` config value. command: the ``refconv`` command that runs it (for messages).
        score: the metric (higher is better) that picks ``best.pt``; a key of :meth:`final_metrics`.
        MIN_EPOCHS: 0 allows "evaluate, fold and export the starting weights" runs.
        NON_RECIPE_OPTIONS: ``task_options`` keys that do not change results (left out of the config hash).
        collate_fn: how the default :meth:`loaders` batch items (None: stacking).
    """

    name: ClassVar[str]
    command: ClassVar[str]
    score: ClassVar[str]
    MIN_EPOCHS: ClassVar[int] = 1
    NON_RECIPE_OPTIONS: ClassVar[frozenset[str]] = frozenset()
    collate_fn: ClassVar[Callable[[list[Any]], Any] | None] = None
    max_steps: int | None = None  # caps the steps of every epoch (smoke tests)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.train_ds: Dataset
        self.test_ds: Dataset
        self.deploy_params = 0
        self.start_weights: str | None = None
        self.conversion_kwargs: dict[str, Any] | None = None

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        """Check (and complete) the task's keys of ``cfg``; raise :class:`ConfigError` naming the fix."""

    # ---- data and model
    @abstractmethod
    def build_data(self, info: DistInfo) -> list[str]:
        """Build ``self.train_ds`` / ``self.test_ds``; return warnings for the log."""

    @abstractmethod
    def data_name(self) -> str: ...

    @abstractmethod
    def describe_data(self) -> str:
        """The data part of the start-up line."""

    def loaders(self, sampler: ResumableSampler, test_sampler: Any, per_rank_batch: int,
                info: DistInfo) -> tuple[Any, Any, str]:
        """``(train iterable, test iterable, input pipeline name)``; training order comes from ``sampler``.

        The default reads items one by one through the one loader builder (:func:`refconv.data.build_loader`),
        batched by the task's ``collate_fn``; workers are not persistent, because the engine makes a new
        iterator at a resumable sampler position every epoch."""
        cfg = self.cfg
        kwargs = dict(batch_size=per_rank_batch, workers=cfg.workers, collate_fn=self.collate_fn,
                      persistent_workers=False)
        return (build_loader(self.train_items(), train=True, seed=cfg.seed + info.rank, sampler=sampler, **kwargs),
                build_loader(self.test_ds, train=False, sampler=test_sampler, **kwargs), "loader")

    def train_items(self) -> Dataset:
        """The training set as the item-by-item loader reads it (the classification task seeds each item's
        augmentation: :class:`~refconv.engine.sampling.SeededItems`)."""
        return self.train_ds

    @abstractmethod
    def build_model(self, *, ckpt: dict[str, Any] | None, reporter: Reporter) -> nn.Module:
        """The model to train, on the CPU. ``ckpt``: the checkpoint a resume loads next (its weights are loaded
        by the engine; starting weights need not exist any more)."""

    # ---- training and evaluation (``amp``: the autocast dtype or None)
    @abstractmethod
    def step(self, model: nn.Module, batch: Any, *, device: torch.device, amp: torch.dtype | None,
             channels_last: bool) -> StepOutput: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: torch.dtype | None,
                 channels_last: bool) -> dict[str, Any]:
        """The task's metrics over ``loader``, exact over all ranks."""

    def final_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """What ``final`` / ``folded_metrics`` of the result keep of an evaluation."""
        return dict(metrics)

    def epoch_row(self, train: dict[str, Any], test: dict[str, Any] | None, ema_test: dict[str, Any] | None) -> dict:
        """The task's columns of one ``metrics.jsonl`` row (test columns only on evaluated epochs)."""
        row: dict[str, Any] = {"train_loss": train["loss"]}
        for prefix, metrics in (("test_", test), ("ema_test_", ema_test)):
            if metrics is not None:
                row.update({prefix + k: v for k, v in self.final_metrics(metrics).items()})
        return row

    def best_entry(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": epoch, self.score: metrics[self.score]}

    @classmethod
    def format_metrics(cls, m: dict[str, Any]) -> str:
        return f"{cls.score} {m[cls.score]:.4f}"

    # ---- deployable outputs
    @abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """Checkpoint entries that rebuild the model without the data (``arch`` at least)."""

    @abstractmethod
    def sample(self, device: torch.device) -> Any:
        """A few test inputs: what the fold check and the ONNX export run on."""

    @abstractmethod
    def fold(self, model: nn.Module, sample: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The folded stock model and the equivalence report (:func:`~refconv.engine.artifacts.fold_model`)."""

    @abstractmethod
    def weights_meta(self, fold_report: dict[str, Any] | None) -> dict[str, Any]:
        """The ``.json`` sidecar of the deployable weights."""

    @abstractmethod
    def export_onnx(self, model: nn.Module, path: Path, sample: Any) -> dict[str, Any]: ...

    def run_facts(self) -> dict[str, Any]:
        """Facts about the model the task learnt while building it (a downstream run: where its backbone came
        from), known after :meth:`build_model`. Recorded once for every place a run is read from: the
        result's ``extra`` (``done.json``), the start-of-run line and the summary (:meth:`fact_rows`)."""
        return {}

    @classmethod
    def fact_rows(cls, facts: dict[str, Any]) -> list[tuple[str, str]]:
        """``(label, value)`` rows saying :meth:`run_facts` in words (none by default)."""
        return []

    def resume_command(self, run_dir: Path) -> str:
        return f"refconv {self.command} --resume {run_dir}"


# ---------------------------------------------------------------------------------------------- classification
@register_task("classification")
class ClassificationTask(Task):
    """Image classification on timm / torchvision models (``refconv train``): cross-entropy, top-1 / top-5."""

    name = "classification"
    command = "train"
    score = "top1"

    @classmethod
    def validate_config(cls, cfg: RunConfig) -> None:
        if cfg.task_options:
            raise ConfigError(f"task_options {sorted(cfg.task_options)} are not classification settings; "
                              "classification takes none (they are for refconv detect / segment).")

    def build_data(self, info: DistInfo) -> list[str]:
        from ..data import build_dataset

        cfg = self.cfg

        def datasets() -> tuple:
            common = dict(data_dir=cfg.data_dir, image_size=cfg.image_size, in_chans=cfg.in_chans,
                          download=cfg.download, seed=cfg.data_seed)
            train = build_dataset(cfg.data, "train", augment=cfg.augment, subset=cfg.subset_train, **common)
            test = build_dataset(cfg.data, "test", augment=False, subset=cfg.subset_test, **common)
            return train, test

        (self.train_ds, self.data_info), (self.test_ds, _) = rank0_first(info, datasets)  # a download happens once
        warnings = self._check_data_means_something()
        self.num_classes = cfg.num_classes or self.data_info.num_classes
        if self.num_classes < self.data_info.num_classes:
            raise ConfigError(
                f"num_classes={self.num_classes} is smaller than the {self.data_info.num_classes} classes of "
                f"{cfg.data}: labels would be out of range. Use --num-classes {self.data_info.num_classes} (or leave "
                "it unset)."
            )
        return warnings

    def _check_data_means_something(self) -> list[str]:
        """Refuse data a classifier learns nothing from; return warnings for a subset larger than the data.

        A 1-class image folder trains to "100 %" top-1 and exits 0: a result that means nothing, so refuse it.
        ``--subset-train 100000`` on a 60,000-image set silently used 60,000: say so (the run is still valid).
        """
        cfg, info = self.cfg, self.data_info
        if info.num_classes < 2:
            names = ", ".join(repr(c) for c in info.class_names[:3]) or "none"
            raise DataError(
                f"{cfg.data} has {info.num_classes} class ({names}): a classifier cannot learn anything from it and "
                "its top-1 would be a meaningless 100%. Add at least one more class (for an image folder: another "
                "class folder under train/ and val/)."
            )
        warnings = []
        for key, ds, split in (("subset_train", self.train_ds, "training"), ("subset_test", self.test_ds, "test")):
            asked, have = getattr(cfg, key), len(ds)  # type: ignore[arg-type]
            if asked is not None and asked > have:
                warnings.append(f"--{key.replace('_', '-')} {asked:,} is more than the {have:,} {split} images of "
                                f"{cfg.data}: using all {have:,}.")
        return warnings

    def data_name(self) -> str:
        return self.data_info.name

    def describe_data(self) -> str:
        d = self.data_info
        return (f"{d.name} ({len(self.train_ds)} train / {len(self.test_ds)} test images, {self.num_classes} "
                f"classes, {d.in_chans}x{d.image_size}x{d.image_size})")

    def loaders(self, sampler: ResumableSampler, test_sampler: Any, per_rank_batch: int,
                info: DistInfo) -> tuple[Any, Any, str]:
        """``input_pipeline="auto"`` keeps tensor datasets resident on the training device and augments whole
        batches (:mod:`refconv.data.resident`: the per-item pipeline's distribution, a fraction of its cost);
        other datasets, or ``"loader"``, go through a ``DataLoader`` item by item. Both take their order from
        ``sampler``, so either resumes exactly."""
        from ..data.resident import ResidentLoader, resident_images

        cfg, device = self.cfg, info.device
        if cfg.input_pipeline != "loader":
            train_res = resident_images(self.train_ds, device=device, channels_last=cfg.channels_last)
            test_res = resident_images(self.test_ds, device=device, channels_last=cfg.channels_last)
            if train_res is not None and test_res is not None:
                return (ResidentLoader(train_res, sampler, per_rank_batch, seed=cfg.seed, rank=info.rank),
                        ResidentLoader(test_res, test_sampler, per_rank_batch), "resident")
            if cfg.input_pipeline == "resident":
                raise ConfigError(
                    f"input_pipeline='resident' needs a tensor dataset (fashion-mnist, cifar10, cifar100); {cfg.data} "
                    "is read item by item. Use --input-pipeline auto (or loader)."
                )
        return super().loaders(sampler, test_sampler, per_rank_batch, info)

    def train_items(self) -> Dataset:
        """Each item's augmentation seeded by (seed, epoch, index), so a run resumed mid-epoch (an interrupt, an
        unreadable image replaced) draws what the uninterrupted run drew, with any number of workers."""
        from .sampling import SeededItems

        return SeededItems(self.train_ds, self.cfg.seed)

    def build_model(self, *, ckpt: dict[str, Any] | None, reporter: Reporter) -> nn.Module:
        from .modeling import (
            apply_conversion,
            check_input_size,
            convert_kwargs,
            count_params,
            create_stock_model,
            load_start_weights,
        )

        cfg, d = self.cfg, self.data_info
        resume = ckpt is not None
        model = create_stock_model(cfg.model, num_classes=self.num_classes, in_chans=d.in_chans,
                                   pretrained=cfg.pretrained and not resume)
        check_input_size(model, cfg.model, in_chans=d.in_chans, image_size=d.image_size)
        self.deploy_params = count_params(model)[1]
        self.start_weights = cfg.weights
        if cfg.weights and not resume:
            self.start_weights = load_start_weights(model, cfg.weights)
        if cfg.method == "refconv":
            if not (cfg.weights or cfg.pretrained):
                reporter.log("warning: method 'refconv' without --weights/--pretrained converts a randomly initialised "
                             "model: the frozen basis will be random. Pass the baseline's weights for the paper's "
                             "protocol.")
            self.conversion_kwargs = convert_kwargs(cfg)
            apply_conversion(model, self.conversion_kwargs)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        return model

    def step(self, model: nn.Module, batch: Any, *, device: torch.device, amp: torch.dtype | None,
             channels_last: bool) -> StepOutput:
        images, targets = to_device(*batch, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
            loss = self.loss_fn(logits, targets)
        return StepOutput(loss, targets.shape[0], topk_correct(logits.detach().float(), targets, (1,))[0])

    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: torch.dtype | None,
                 channels_last: bool) -> dict[str, Any]:
        return evaluate(model, loader, device=device, amp=amp, channels_last=channels_last)

    def final_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: metrics[k] for k in ("loss", "top1", "top5", "correct1")}

    def epoch_row(self, train: dict[str, Any], test: dict[str, Any] | None, ema_test: dict[str, Any] | None) -> dict:
        row: dict[str, Any] = {"train_loss": train["loss"], "train_top1": train["top1"]}
        if test is not None:
            row.update({"test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
                        "test_correct": test["correct1"], "test_images": test["images"],
                        "eval_images_per_s": test["images_per_s"]})
        if ema_test is not None:
            row.update({"ema_test_loss": ema_test["loss"], "ema_test_top1": ema_test["top1"],
                        "ema_test_top5": ema_test["top5"], "ema_test_correct": ema_test["correct1"]})
        return row

    def best_entry(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": epoch, "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"]}

    @classmethod
    def format_metrics(cls, m: dict[str, Any]) -> str:
        return f"loss {m['loss']:.4f}  top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%"

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"arch": self.cfg.model, "model_kwargs": {"num_classes": self.num_classes,
                                                         "in_chans": self.data_info.in_chans},
                "image_size": self.data_info.image_size}

    def sample(self, device: torch.device) -> Any:
        return next(iter(build_loader(self.test_ds, batch_size=min(8, len(self.test_ds)), train=False)))[0].to(device)

    def fold(self, model: nn.Module, sample: Any) -> tuple[nn.Module, dict[str, Any]]:
        from .artifacts import fold_model

        return fold_model(model, sample)

    def weights_meta(self, fold_report: dict[str, Any] | None) -> dict[str, Any]:
        cfg, d = self.cfg, self.data_info
        meta = {"model": cfg.model, "num_classes": self.num_classes, "in_chans": d.in_chans,
                "image_size": d.image_size, "mean": list(d.mean), "std": list(d.std), "data": d.name,
                "method": cfg.method, "run_dir": str(cfg.run_dir()), "format": "plain"}
        if fold_report is not None:
            meta.update(fold_max_abs_err=fold_report["max_abs_err"], folded_from="refconv")
        return meta

    def export_onnx(self, model: nn.Module, path: Path, sample: Any) -> dict[str, Any]:
        from .export import export_onnx

        return export_onnx(model, path, sample[:2].cpu(), opset=self.cfg.onnx_opset)
