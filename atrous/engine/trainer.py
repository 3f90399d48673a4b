"""Training loop for semantic segmentation: poly schedule, per-epoch validation, exact resume.

The DeepLab recipe (Chen et al. 2017): cross-entropy with the ignore label left out, SGD with
momentum or AdamW, learning rate ``lr * (1 - step / total) ** 0.9``. A checkpoint is written
after every epoch; ``resume`` restores weights, optimizer, step and RNG state, and the data
order is a function of (seed, epoch), so a resumed run continues exactly as if never stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from atrous.engine import distributed
from atrous.engine.checkpoint import atomic_write, load_checkpoint, read_checkpoint_meta, save_checkpoint
from atrous.engine.config import TrainConfig
from atrous.engine.evaluate import evaluate
from atrous.engine.history import TensorBoardLogger, plot_curves, write_metrics
from atrous.engine.preprocess import MEAN, STD, normalize
from atrous.engine.prior import with_background_prior
from atrous.engine.run_dir import BEST, LAST, prepare_run_dir


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The training set (with augmentation) and the validation set named by ``config.data``."""
    from atrous.data import build_dataset
    from atrous.data.transforms import train_transform

    transform = None
    if config.crop_size is not None or config.scale_range != (1.0, 1.0) or config.flip:
        if config.crop_size is None:
            raise ValueError("crop_size is needed when scale_range or flip augment the training images")
        transform = train_transform(config.crop_size, scale_range=config.scale_range, flip=config.flip)
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
    return train_set, val_set


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    from atrous.models import create, list_models

    if config.model not in list_models(task="segmentation"):
        raise ValueError(
            f"unknown segmentation model {config.model!r}; choose one of: {', '.join(list_models(task='segmentation'))}"
        )
    return create(config.model, num_classes=num_classes, **config.model_kwargs)


def poly_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    return config.peak_lr * (1 - min(step, total_steps) / total_steps) ** config.poly_power


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.peak_lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.peak_lr, weight_decay=config.weight_decay)


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
) -> torch.Tensor:
    """One optimizer step on a batch ``images (N, 3, H, W)`` in [0, 1], ``masks (N, H, W)``; returns the loss.

    ``autocast``: run the forward under ``torch.autocast`` in this dtype (the loss in float32).
    ``background_weight``: loss weight of class 0 (see :func:`segmentation_loss`).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
        logits = model(normalize(images))
    loss = segmentation_loss(logits.float(), masks, background_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _train_loader(dataset: Dataset, config: TrainConfig, context, epoch: int) -> DataLoader:
    """This process's loader for one epoch: a shard of a (seed, epoch)-determined order."""
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is the global batch and must be a multiple of the "
            f"{context.world_size} processes"
        )
    per_process = config.batch_size // context.world_size
    if context.enabled:
        sampler = DistributedSampler(dataset, context.world_size, context.rank, shuffle=True, seed=config.seed)
        sampler.set_epoch(epoch)
    else:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_size=per_process, sampler=sampler, num_workers=config.workers, drop_last=True)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``, writing checkpoints and metrics into ``out``.

    Args:
        config: the run's settings (ignored when resuming, except ``epochs``).
        out: the run folder.
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: replace an existing run in ``out``.
        progress: show a progress bar.
        epochs: when resuming, train up to this many epochs instead of the saved count.

    Returns:
        The contents of ``metrics.json``.
    """
    context = distributed.setup(config.device)
    try:
        result = _train(config, Path(out), resume, overwrite, progress, epochs, context)
        # Leave together: a process that tears its group down while rank 0 still writes the last
        # checkpoint can make gloo abort on the way out.
        distributed.barrier(context)
        return result
    finally:
        distributed.teardown(context)


def _train(config, run_dir, resume, overwrite, progress, epochs, context) -> dict[str, Any]:
    start_epoch, step, history = 0, 0, []
    run_dir = Path(distributed.broadcast_object(str(run_dir), context))
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, dry_run=True)
    distributed.barrier(context)
    if resume:
        config = TrainConfig.from_dict(read_checkpoint_meta(run_dir / LAST)["meta"]["config"])
        if epochs is not None:
            config.epochs = epochs
    if context.is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        text = json.dumps(config.to_dict(), indent=1)
        atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(text))
    torch.manual_seed(config.seed)
    train_set, val_set = build_datasets(config)
    num_classes = train_set.num_classes
    model = build_model(config, num_classes).to(context.device)
    optimizer = build_optimizer(config, model)
    if resume:
        meta = load_checkpoint(run_dir / LAST, model, optimizer=optimizer, restore_rng=True)
        start_epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        if meta["num_classes"] != num_classes:
            raise ValueError(f"checkpoint in {run_dir} has {meta['num_classes']} classes, the data has {num_classes}")
    trained = wrap_for_distributed(model, context)
    steps_per_epoch = len(_train_loader(train_set, config, context, 0))
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size}; "
            f"lower --batch-size or add data"
        )
    total_steps = steps_per_epoch * config.epochs
    autocast = autocast_dtype(config.precision, context.device)
    board = TensorBoardLogger(run_dir) if context.is_main else None
    best = max((row["val_miou"] for row in history), default=-math.inf)
    run_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        loader = _train_loader(train_set, config, context, epoch)
        trained.train()
        bar = _progress_bar(len(loader), epoch, config.epochs, progress and context.is_main)
        loss_sum, batches = torch.zeros((), dtype=torch.float64), 0
        for images, masks in loader:
            lr = poly_lr(config, step, total_steps)
            loss = train_step(
                trained, optimizer, images.to(context.device), masks.to(context.device), lr, autocast,
                config.background_weight,
            )
            step += 1
            loss_sum += loss.double().cpu()
            batches += 1
            if bar is not None:
                elapsed = time.perf_counter() - run_start
                done = (epoch - start_epoch) * steps_per_epoch + batches
                remaining = elapsed / done * ((config.epochs - start_epoch) * steps_per_epoch - done)
                bar.set_postfix(loss=f"{loss_sum.item() / batches:.4f}", lr=f"{lr:.2e}", run_eta=_clock(remaining))
                bar.update()
        if bar is not None:
            bar.close()
        totals = distributed.all_reduce_sum(torch.tensor([float(loss_sum), batches], dtype=torch.float64), context)
        scores = evaluate(
            with_background_prior(model, config.background_weight), val_set, batch_size=config.batch_size,
            device=context.device, context=context,
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": float(totals[0] / max(totals[1], 1)),
            "val_miou": scores["miou"],
            "val_pixel_acc": scores["pixel_acc"],
            "lr": poly_lr(config, step, total_steps),
            "seconds": round(time.perf_counter() - epoch_start, 2),
        }
        history.append(row)
        if context.is_main:
            _save(run_dir, model, optimizer, config, train_set, epoch + 1, step, history, scores, best)
            best = max(best, scores["miou"])
            board.log(row)
            print(
                f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f}  val mIoU {row['val_miou']:.4f}  "
                f"pixel acc {row['val_pixel_acc']:.4f}  ({row['seconds']:.1f} s)",
                flush=True,
            )
    if board is not None:
        board.close()
    return {"history": history, "best": max(history, key=lambda r: r["val_miou"]) if history else None}


def _save(run_dir, model, optimizer, config, train_set, epoch, step, history, scores, best) -> None:
    meta = {
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "num_classes": train_set.num_classes,
        "class_names": list(train_set.class_names),
        "data": config.data,
        "mean": MEAN,
        "std": STD,
        "epoch": epoch,
        "step": step,
        "history": history,
        "config": config.to_dict(),
    }
    # Best first: if the process dies between the two writes, "last" still points one epoch back.
    if scores["miou"] > best:
        save_checkpoint(run_dir / BEST, model, meta=meta)
    save_checkpoint(run_dir / LAST, model, optimizer=optimizer, meta=meta)
    write_metrics(run_dir, history, config=config.to_dict(), extra={"class_names": meta["class_names"]})
    plot_curves(run_dir, history)


def _progress_bar(total: int, epoch: int, epochs: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True, leave=False)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"
