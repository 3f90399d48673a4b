"""Semantic segmentation training: the DeepLab recipe as a job for the run engine.

The DeepLab recipe (Chen et al. 2017): cross-entropy with the ignore label left out, SGD with
momentum or AdamW, learning rate ``lr * (1 - step / total) ** 0.9``, validation after every
epoch. Fine-tuning from released weights adds a pretrained model or backbone to start from, the
auxiliary head's loss (weighted 0.5, as in torchvision's reference recipe) and, as usual for small
batches, frozen BatchNorm and a lower learning rate for the backbone. The data order is a function
of (seed, epoch) and each training item's augmentation a function of (seed, epoch, index), so any
batch can be recomputed without the ones before it: the run engine (:mod:`atrous.engine.loop`)
resumes mid-epoch exactly.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from atrous.engine import distributed
from atrous.engine.config import DEFAULT_AUX_WEIGHT, TrainConfig
from atrous.engine.evaluate import evaluate
from atrous.engine.finetune import batchnorm_eval, build_optimizer, check_weights_file, freeze_batchnorm
from atrous.engine.history import plot_curves, write_metrics
from atrous.engine.loop import optimizer_step
from atrous.engine.preprocess import MEAN, STD, normalize
from atrous.engine.prior import with_background_prior

MAX_PARAMETERS = 10**9  # a model_kwargs asking for more is refused before anything is allocated


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The training set (with augmentation) and the validation set named by ``config.data``."""
    from atrous.data import build_dataset
    from atrous.data.transforms import train_transform

    transform, generator = None, torch.Generator()
    if config.crop_size is not None or config.scale_range != (1.0, 1.0) or config.flip:
        if config.crop_size is None:
            raise ValueError("crop_size is needed when scale_range or flip augment the training images")
        transform = train_transform(config.crop_size, scale_range=config.scale_range, flip=config.flip,
                                    generator=generator)
    sizes = {"train": config.train_images, "val": config.val_images}
    datasets = []
    for split in ("train", "val"):
        kwargs: dict[str, Any] = {"num_classes": config.num_classes}
        if config.data == "digits":
            kwargs["seed"] = config.seed
            if sizes[split] is not None:
                kwargs["num_images"] = sizes[split]
        datasets.append(build_dataset(config.data, split, transform=transform if split == "train" else None, **kwargs))
    train_set, val_set = datasets
    if train_set.num_classes != val_set.num_classes:
        raise ValueError(
            f"train split has {train_set.num_classes} classes but val split has {val_set.num_classes}; "
            f"pass --num-classes to fix the count"
        )
    return SeededItems(train_set, generator, config.seed), val_set


class SeededItems(Dataset):
    """Item ``epoch * N + i`` is item ``i`` with its augmentation drawn from a generator seeded by (seed, epoch, i).

    So an item never depends on which items came before it, in this process or a worker.
    """

    def __init__(self, dataset: Dataset, generator: torch.Generator, seed: int) -> None:
        self.dataset, self.generator, self.seed = dataset, generator, seed
        self.num_classes, self.class_names = dataset.num_classes, dataset.class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, len(self.dataset))
        self.generator.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + index) % 2**63)
        return self.dataset[index]


def build_model(config: TrainConfig, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    """The model of ``config``, after checking on the meta device that its size is sane.

    Args:
        config: the run's settings.
        num_classes: output channels.
        pretrained: load ``config.weights`` / ``config.backbone_weights`` (a run that starts); a
            resumed run passes False, its checkpoint holds the weights.
    """
    from atrous.models import WeightsWarning, create, list_models

    if config.model not in list_models(task="segmentation"):
        raise ValueError(
            f"unknown segmentation model {config.model!r}; choose one of: {', '.join(list_models(task='segmentation'))}"
        )
    check_model_size(config.model, num_classes=num_classes, **config.model_kwargs)
    files = {}
    if pretrained:
        files = {name: str(check_weights_file(getattr(config, name), name))
                 for name in ("weights", "backbone_weights") if getattr(config, name) is not None}
    with warnings.catch_warnings():  # a partial load's warning: the run logs model.weights_report instead
        warnings.simplefilter("ignore", WeightsWarning)
        return create(config.model, num_classes=num_classes, **files, **config.model_kwargs)


def check_model_size(name: str, **kwargs: Any) -> int:
    """Build ``name`` on the meta device (no memory) and return its parameter count.

    Raises:
        ValueError: the arguments do not build a model, or ask for more than :data:`MAX_PARAMETERS`.
    """
    from atrous.models import create

    try:
        with torch.device("meta"):
            probe = create(name, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"model {name!r}: {error}") from None
    except (RuntimeError, OverflowError, MemoryError):  # sizes past what a tensor can even describe
        raise ValueError(f"model {name!r} with {kwargs} would have more parameters than a tensor can hold; "
                         f"the limit is {MAX_PARAMETERS:,}") from None
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"model {name!r} with {kwargs} would have {count:,} parameters; the limit is {MAX_PARAMETERS:,}")
    return count


def poly_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    return config.peak_lr * (1 - min(step, total_steps) / total_steps) ** config.poly_power


def training_loss(outputs: torch.Tensor | dict[str, torch.Tensor], masks: torch.Tensor, background_weight: float = 1.0,
                  aux_weight: float = DEFAULT_AUX_WEIGHT) -> torch.Tensor:
    """:func:`segmentation_loss` of a model's training output, in float32.

    Args:
        outputs: logits ``(N, K, H, W)``, or ``{"out": logits, "aux": aux_logits}`` from a model with an
            auxiliary head, whose loss is then ``loss(out) + aux_weight * loss(aux)`` (torchvision's recipe).
        masks: ``(N, H, W)`` class indices, 255 ignored.
        background_weight: loss weight of class 0 in both terms.
        aux_weight: weight of the auxiliary term.
    """
    if not isinstance(outputs, dict):
        return segmentation_loss(outputs.float(), masks, background_weight)
    loss = segmentation_loss(outputs["out"].float(), masks, background_weight)
    return loss + aux_weight * segmentation_loss(outputs["aux"].float(), masks, background_weight)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, background_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over ``(N, K, H, W)`` logits, ignoring label 255.

    ``background_weight`` scales the loss of class 0 pixels (the mean is over the weights, as
    in ``F.cross_entropy``); below 1 it keeps a dominant background from drowning small objects.
    """
    weight = None
    if background_weight != 1.0:
        weight = torch.ones(logits.shape[1], device=logits.device, dtype=logits.dtype)
        weight[0] = background_weight
    return F.cross_entropy(logits, masks, weight=weight, ignore_index=255)


def wrap_for_distributed(model: nn.Module, context) -> nn.Module:
    """DistributedDataParallel around ``model`` when running under torchrun, else ``model``.

    On CUDA, BatchNorm becomes SyncBatchNorm so statistics span the global batch; on CPU
    (gloo) PyTorch has no SyncBatchNorm, so batch statistics stay per process.
    """
    if not context.enabled:
        return model
    if context.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[context.device.index])
    return nn.parallel.DistributedDataParallel(model)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training runs its forward in under ``torch.autocast``, or None for float32.

    ``"auto"`` picks bfloat16 only where the hardware has it: on CPU oneDNN's bf16 kernels (AVX512-BF16
    or AMX; about 1.5x faster training of ``context_net`` on one such core), on CUDA
    compute capability 8.0 or newer (Ampere on). Elsewhere bf16 is emulated and slower, so auto stays float32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        native = torch.cuda.get_device_capability(device)[0] >= 8  # Ampere on; older GPUs emulate bf16
    elif device.type == "cpu":
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    else:
        native = False
    return torch.bfloat16 if native else None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    lr: float,
    autocast: torch.dtype | None = None,
    background_weight: float = 1.0,
    *,
    step: int = 0,
    aux_weight: float = DEFAULT_AUX_WEIGHT,
) -> float:
    """One optimizer step on a batch ``images (N, 3, H, W)`` in [0, 1], ``masks (N, H, W)``; returns the loss.

    ``lr``: the scheduled learning rate; a parameter group with an ``lr_scale`` (the backbone's, see
    :func:`build_optimizer`) gets ``lr * lr_scale``.
    ``autocast``: run the forward under ``torch.autocast`` in this dtype (the loss in float32).
    ``background_weight``: loss weight of class 0 (see :func:`segmentation_loss`).
    ``aux_weight``: weight of an auxiliary head's loss (see :func:`training_loss`).

    Raises:
        TrainingDiverged: the loss or gradient is not finite (the weights are left as they were).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
        outputs = model(normalize(images))
    loss = training_loss(outputs, masks, background_weight, aux_weight)
    return optimizer_step(model, optimizer, loss, step=step, lr=lr)


def epoch_order(size: int, config: TrainConfig, context, epoch: int) -> list[int]:
    """This process's item order for one epoch: its shard of a (seed, epoch)-determined permutation.

    Under torchrun the shards follow ``DistributedSampler``; alone, a permutation from a
    generator seeded by (seed, epoch).
    """
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is the global batch and must be a multiple of the "
            f"{context.world_size} processes"
        )
    if not context.enabled:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        return torch.randperm(size, generator=generator).tolist()
    generator = torch.Generator().manual_seed(config.seed + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    per_rank = -(-size // context.world_size)
    order += order[: per_rank * context.world_size - size]  # pad to equal shards, as DistributedSampler does
    return order[context.rank :: context.world_size]


class SegmentationJob:
    """``config`` as a job for :func:`~atrous.engine.loop.run_job`; builds and checks everything up front.

    ``pretrained``: load the weights files of ``config`` (a run that starts from step 0); a resumed
    run's own checkpoint replaces whatever the model starts with, so it reads none.
    """

    kind = "segmentation"

    def __init__(self, config: TrainConfig, context, *, pretrained: bool = True) -> None:
        self.config, self.context = config, context
        self.train_set, self.val_set = build_datasets(config)
        for dataset in (self.train_set.dataset, self.val_set):  # every file read once, before a run folder exists
            if hasattr(dataset, "validate"):
                dataset.validate()
        self.num_classes = self.train_set.num_classes
        torch.manual_seed(config.seed)
        self.model = build_model(config, self.num_classes, pretrained=pretrained).to(context.device)
        if config.aux_weight is not None and getattr(self.model, "aux_classifier", None) is None:
            raise ValueError(f"aux_weight (--aux-weight) {config.aux_weight:g} weighs an auxiliary head's loss and "
                             f"{config.model} was built without one; add model_kwargs aux_loss=True "
                             f"(--model-arg aux_loss=True) or leave it out")
        if config.freeze_bn and freeze_batchnorm(self.model) == 0:
            raise ValueError(f"freeze_bn (--freeze-bn): {config.model} has no BatchNorm layers to freeze; leave it off")
        self.optimizer = build_optimizer(config, self.model)
        self.trained = wrap_for_distributed(self.model, context)
        self.per_process = config.batch_size // context.world_size
        self.epochs = config.epochs
        self.steps_per_epoch = len(epoch_order(len(self.train_set), config, context, 0)) // self.per_process
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(self.train_set)} images, fewer than one batch of {config.batch_size}; "
                f"lower --batch-size or add data"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.autocast = autocast_dtype(config.precision, context.device)

    def steps_in(self, epoch: int) -> int:
        return self.steps_per_epoch

    def prepare(self, log) -> None:
        """Say what a weights file loaded (and left out); draw generated training scenes ahead, on every
        core (a scene drawn between steps costs the step its time; docs/data_loading.md)."""
        report = getattr(self.model, "weights_report", None)
        if report is not None:
            log(str(report))
        scenes = self.train_set.dataset
        if not getattr(scenes, "caching", False):
            return
        began = time.perf_counter()
        drawn = scenes.fill_cache()
        if drawn:
            log(f"drew {drawn:,} training scenes ahead in {time.perf_counter() - began:.1f} s")

    def lr(self, step: int) -> float:
        return poly_lr(self.config, step, self.total_steps)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from atrous.data.loader import batch_stream

        size = len(self.train_set)
        order = epoch_order(size, self.config, self.context, epoch)[: self.steps_per_epoch * self.per_process]
        keys = [epoch * size + index for index in order[start * self.per_process :]]
        return batch_stream(self.train_set, keys, self.per_process, workers=self.config.workers)

    def step(self, batch, step: int) -> float:
        images, masks = batch
        self.trained.train()
        if self.config.freeze_bn:
            batchnorm_eval(self.trained)
        device = self.context.device
        return train_step(self.trained, self.optimizer, images.to(device), masks.to(device), self.lr(step),
                          self.autocast, self.config.background_weight, step=step + 1,
                          aux_weight=self.config.aux_loss_weight)

    def evaluate(self) -> dict[str, float]:
        scores = evaluate(
            with_background_prior(self.model, self.config.background_weight), self.val_set,
            batch_size=self.config.batch_size, device=self.context.device, context=self.context,
        )
        return {"val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"]}

    def score(self, row: dict[str, Any]) -> float:
        return row["val_miou"]

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.config.model, "model_kwargs": self.config.model_kwargs, "num_classes": self.num_classes,
            "class_names": list(self.train_set.class_names), "data": self.config.data, "mean": MEAN, "std": STD,
            "config": self.config.to_dict(),
        }

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        started = "".join(f" | started from {name.replace('_', ' ')} {getattr(self.config, name)}"
                          for name in ("weights", "backbone_weights") if getattr(self.config, name) is not None)
        return (f"{self.config.model} ({params:,} parameters, {self.num_classes} classes){started} | data "
                f"{self.config.data}: {len(self.train_set):,} train / {len(self.val_set):,} val images, "
                f"batch {self.config.batch_size}")

    def write_outputs(self, folder: Path, history: list[dict[str, Any]]) -> None:
        best = max(history, key=self.score)
        write_metrics(folder, history, config=self.config.to_dict(), best=best,
                      extra={"class_names": list(self.train_set.class_names)})
        plot_curves(folder, history, score="val_miou")


def train(
    config: TrainConfig | None,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    epochs: int | None = None,
    every=None,
    log=print,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` into the run folder ``out``.

    Args:
        config: the run's settings; None (or anything) when resuming: the run keeps its own.
        out: the run folder.
        resume: continue the run in ``out`` from its newest checkpoint.
        overwrite: replace an existing atrous run in ``out``.
        progress: show a progress bar.
        epochs: when resuming, train up to this many epochs instead of the saved count.
        every: a :class:`~atrous.engine.loop.CheckpointEvery` (default: every 5 minutes).
        log: receives the start-up line and each epoch's line.

    Returns:
        ``{"history": [...], "best": best row}``.

    Raises:
        TrainingDiverged, TrainingInterrupted: see :func:`~atrous.engine.loop.run_job`.
    """
    from atrous.engine.loop import execute, saved_config
    from atrous.engine.run_dir import check_resumable, newest_checkpoint

    if resume:
        check_resumable(Path(out), "segmentation")
        saved, source = saved_config(Path(out))
        device = saved.get("device", "auto") if isinstance(saved, dict) else "auto"
        if not isinstance(device, str):
            raise ValueError(f"{source}: field config.device must be a string, got {device!r}")
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    else:
        device = config.device
    # A resumed run restores its checkpoint's weights; one whose first save never happened starts again from step 0
    pretrained = not resume or newest_checkpoint(Path(out), "last") is None
    context = distributed.setup(device)
    try:
        state = execute(
            lambda cfg: SegmentationJob(cfg, context, pretrained=pretrained), config, Path(out), kind="segmentation",
            load_config=TrainConfig.from_dict, resume=resume, overwrite=overwrite, progress=progress,
            extend={"epochs": epochs} if epochs is not None else None, every=every, log=log, context=context,
            precision=lambda job: str(job.autocast or torch.float32).removeprefix("torch."),
        )
        # Leave together: a process that tears its group down while rank 0 still writes the last
        # checkpoint can make gloo abort on the way out.
        distributed.barrier(context)
    finally:
        distributed.teardown(context)
    return {"history": state.history, "best": max(state.history, key=lambda r: r["val_miou"]) if state.history else None}
