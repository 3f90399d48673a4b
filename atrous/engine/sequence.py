"""Training loop for sequence tasks: the adding problem, copy memory and mu-law audio.

The synthetic tasks and their losses follow Bai, Kolter & Koltun (2018), "An empirical
evaluation of generic convolutional and recurrent networks for sequence modeling": mean squared
error on the last step for the adding problem, cross-entropy over every step for copy memory.
Audio modelling follows WaveNet (van den Oord et al. 2016): cross-entropy of the next mu-law
sample, scored only where the output sees a full receptive field. Synthetic batches are drawn
fresh at every step; the evaluation batch is fixed by the seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atrous.data.sequence import adding_problem, copy_memory, one_hot_symbols

TASKS = ("adding", "copy", "audio")
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


@dataclass
class SequenceTrainConfig:
    """Settings of :func:`train_sequence`.

    Attributes:
        task: ``"adding"``, ``"copy"`` or ``"audio"``.
        steps: optimiser steps.
        batch_size: sequences per step.
        length: ``T`` for adding/copy; for audio, the outputs scored per window.
        lr: learning rate.
        optimizer: ``"adam"``, ``"rmsprop"`` or ``"sgd"``.
        grad_clip: max gradient norm (0 disables clipping).
        eval_size: sequences in the fixed evaluation batch (synthetic tasks).
        log_every: steps between evaluations.
        seed: seeds the training batches and (with seed + 1) the evaluation batch.
    """

    task: str = "adding"
    steps: int = 1000
    batch_size: int = 32
    length: int = 600
    lr: float = 2e-3
    optimizer: str = "adam"
    grad_clip: float = 0.0
    eval_size: int = 256
    log_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("steps", "batch_size", "length", "eval_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip!r}")


def synthetic_batch(
    task: str, batch_size: int, length: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A model-ready batch of a synthetic task.

    Returns:
        adding: ``x (B, 2, T)``, ``y (B,)``; copy: ``x (B, 10, T + 20)`` one-hot,
        ``y (B, T + 20)`` int64.
    """
    if task == "adding":
        return adding_problem(batch_size, length, generator=generator)
    if task == "copy":
        x, y = copy_memory(batch_size, length, generator=generator)
        return one_hot_symbols(x), y
    raise ValueError(f"task must be 'adding' or 'copy' for synthetic batches, got {task!r}")


def task_loss(task: str, output: torch.Tensor, target: torch.Tensor, *, scored: int | None = None) -> torch.Tensor:
    """The task's loss.

    Args:
        task: ``"adding"``, ``"copy"`` or ``"audio"``.
        output: adding ``(B, 1, T)``; copy ``(B, 10, T + 20)``; audio ``(B, classes, W)`` logits.
        target: adding ``(B,)``; copy ``(B, T + 20)``; audio ``(B, W)`` next-sample ids.
        scored: audio only: score the last ``scored`` steps (default all).
    """
    if task == "adding":
        return F.mse_loss(output[:, 0, -1], target)
    if task == "copy":
        return F.cross_entropy(output, target)
    if task == "audio":
        n = scored or target.shape[-1]
        return F.cross_entropy(output[:, :, -n:], target[:, -n:])
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _endless(loader) -> Iterator:
    while True:
        yield from loader


def train_sequence(
    model: nn.Module,
    config: SequenceTrainConfig,
    *,
    audio_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[list[dict], torch.optim.Optimizer]:
    """Train ``model`` on a sequence task.

    Args:
        model: adding: ``(B, 2, T) -> (B, 1, T)``; copy: ``(B, 10, T + 20) -> (B, 10, T + 20)``;
            audio: ``(B, W)`` ids ``-> (B, classes, W)`` logits.
        config: the settings.
        audio_batches: for ``task="audio"``, an iterable of ``(x (B, W), y (B, W))`` id batches
            (e.g. a DataLoader over :class:`~atrous.data.sequence.WavFolderDataset`); cycled.
        on_log: called with each history record.

    Returns:
        ``(history, optimizer)``; each record holds ``step``, ``loss`` (mean over the last
        ``log_every`` steps), ``eval_loss`` (synthetic tasks) and ``seconds``.
    """
    if config.task == "audio" and audio_batches is None:
        raise ValueError("task='audio' needs audio_batches (e.g. a DataLoader over WavFolderDataset)")
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    evaluation = None
    if config.task != "audio":
        held_out = torch.Generator().manual_seed(config.seed + 1)
        evaluation = synthetic_batch(config.task, config.eval_size, config.length, held_out)
    batches = _endless(audio_batches) if config.task == "audio" else None
    history: list[dict] = []
    running, count, start = 0.0, 0, time.perf_counter()
    for step in range(1, config.steps + 1):
        model.train()
        if batches is not None:
            x, y = next(batches)
        else:
            x, y = synthetic_batch(config.task, config.batch_size, config.length, generator)
        loss = task_loss(config.task, model(x), y, scored=config.length)
        if not math.isfinite(loss.item()):
            raise ValueError(f"training diverged at step {step}: loss is {loss.item()}; lower lr (got {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        running, count = running + loss.item(), count + 1
        if step % config.log_every == 0 or step == config.steps:
            record = {"step": step, "loss": running / count, "seconds": round(time.perf_counter() - start, 3)}
            if evaluation is not None:
                record["eval_loss"] = evaluate_synthetic(model, config.task, *evaluation)
            history.append(record)
            if on_log is not None:
                on_log(record)
            running, count = 0.0, 0
    model.eval()
    return history, optimizer


@torch.no_grad()
def evaluate_synthetic(model: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 256) -> float:
    """Mean task loss of ``model`` (in eval mode) over a fixed batch, in chunks of ``chunk`` sequences."""
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        xs, ys = x[i : i + chunk], y[i : i + chunk]
        total += task_loss(task, model(xs), ys).item() * xs.shape[0]
    return total / x.shape[0]
