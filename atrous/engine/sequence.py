"""Training loop for sequence tasks: the adding problem, copy memory and mu-law audio.

The synthetic tasks and their losses follow Bai, Kolter & Koltun (2018), "An empirical
evaluation of generic convolutional and recurrent networks for sequence modeling": mean squared
error on the last step for the adding problem, cross-entropy over every step for copy memory.
Audio modelling follows WaveNet (van den Oord et al. 2016): cross-entropy of the next mu-law
sample, scored only where the output sees a full receptive field. The batch of step ``s`` is a
function of (seed, s) alone (so the run engine resumes at any step exactly); the evaluation
batch is fixed by the seed. One "epoch" of the run engine is ``log_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous._checks import check_float, check_int
from atrous.data.sequence import adding_problem, copy_memory, one_hot_symbols
from atrous.engine.loop import optimizer_step

TASKS = ("adding", "copy", "audio")
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
MODELS = ("tcn", "wavenet")
# 2: the evaluation batch has a generator of its own (version 1 seeded it with seed + 1)
SEQUENCE_CONFIG_VERSION = 2
MAX_BATCH_SAMPLES = 2**26  # time steps in one batch (x up to 10 channels: 2.7 GB of float32)
# Bai et al. (2018): adding T=600 (k=8, 8 levels, 24 hidden, Adam 2e-3); copy T=1000 (k=8, 8 levels,
# 10 hidden, dropout 0.05, RMSprop 5e-4, clip 1.0). Audio: WaveNet, Adam 2e-3, 256 scored samples a window.
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "adding": {"length": 600, "lr": 2e-3, "optimizer": "adam", "grad_clip": 0.0, "model": "tcn"},
    "copy": {"length": 1000, "lr": 5e-4, "optimizer": "rmsprop", "grad_clip": 1.0, "model": "tcn"},
    "audio": {"length": 256, "lr": 2e-3, "optimizer": "adam", "grad_clip": 0.0, "model": "wavenet"},
}
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "adding": {"in_channels": 2, "out_channels": 1, "hidden": 24, "levels": 8, "kernel_size": 8, "dropout": 0.0,
               "init_std": 0.01},
    "copy": {"in_channels": 10, "out_channels": 10, "hidden": 10, "levels": 8, "kernel_size": 8, "dropout": 0.05,
             "init_std": 0.01},
    "audio": {"blocks": 3, "layers": 10, "residual_channels": 64, "gate_channels": 128, "skip_channels": 64},
}


@dataclass
class SequenceTrainConfig:
    """Settings of a sequence run (:func:`train_sequence`, ``atrous train-seq``).

    Attributes:
        task: ``"adding"``, ``"copy"`` or ``"audio"``.
        steps: optimiser steps.
        batch_size: sequences per step.
        length: ``T`` for adding/copy; for audio, the outputs scored per window.
        lr: learning rate.
        optimizer: ``"adam"``, ``"rmsprop"`` or ``"sgd"``.
        grad_clip: max gradient norm (0 disables clipping).
        eval_size: sequences in the fixed evaluation batch (synthetic tasks).
        log_every: steps between evaluations (an "epoch" of the run engine).
        seed: seeds the initialisation, the training batches and the evaluation batch.
        model: ``"tcn"`` or ``"wavenet"`` (audio).
        model_kwargs: arguments of the model builder.
        data: audio only: a folder of mono WAV files.
        config_version: 1 for runs saved before it existed, whose evaluation generator was seeded
            with ``seed + 1`` (at seed 0 that is step 1's training batch).
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
    model: str = "tcn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    config_version: int = SEQUENCE_CONFIG_VERSION

    def __post_init__(self) -> None:
        check_int(self.config_version, "config_version", low=1, high=SEQUENCE_CONFIG_VERSION)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        limits = {"steps": 10**9, "batch_size": 65_536, "length": 10**7, "eval_size": 10**6, "log_every": 10**9}
        for name, high in limits.items():
            check_int(getattr(self, name), name, low=1, high=high)
        check_int(self.seed, "seed", low=0, high=2**32 - 1)
        for name in ("batch_size", "eval_size"):  # one batch must fit in memory: (size, channels, length)
            if getattr(self, name) * self.length > MAX_BATCH_SAMPLES:
                raise ValueError(f"{name} x length must be at most {MAX_BATCH_SAMPLES:,} samples, "
                                 f"got {getattr(self, name)} x {self.length}")
        check_float(self.lr, "lr", low=0, high=1e3, low_open=True)
        check_float(self.grad_clip, "grad_clip", low=0, high=1e3)  # 0 disables clipping
        if (self.model == "wavenet") != (self.task == "audio"):
            raise ValueError(f"task {self.task!r} needs model {'wavenet' if self.task == 'audio' else 'tcn'}, "
                             f"got {self.model!r} (a TCN does not output mu-law classes; WaveNet models audio only)")
        if self.task == "audio" and not isinstance(self.data, str):
            raise ValueError("task 'audio' needs data, a folder of mono WAV files")
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise TypeError(f"model_kwargs must be a dict with string keys, got {self.model_kwargs!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> SequenceTrainConfig:
        """A saved config; errors name ``source`` and the field."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: the config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        values = {"config_version": 1, **values}  # saved before the field existed
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


def sequence_config(task: str, *, model_kwargs: dict[str, Any] | None = None, **overrides: Any) -> SequenceTrainConfig:
    """The recipe of ``atrous train-seq --task TASK``: :data:`TASK_PRESETS` and :data:`MODEL_PRESETS`.

    Args:
        task: ``"adding"``, ``"copy"`` or ``"audio"``.
        model_kwargs: model arguments, each taking precedence over the task's preset.
        **overrides: any other :class:`SequenceTrainConfig` field.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    preset = dict(TASK_PRESETS[task])
    model = overrides.get("model", preset["model"])
    base = MODEL_PRESETS[task] if model == preset["model"] else {}
    return SequenceTrainConfig(task=task, **{**preset, **overrides}, model_kwargs={**base, **(model_kwargs or {})})


def evaluation_seed(config: SequenceTrainConfig) -> int:
    """The evaluation batch's generator seed, outside the range of every training step's seed.

    Training step ``s`` draws from ``seed * 1_000_003 + s`` (below 2**53 for every valid seed and
    step); counting down from 2**63 keeps the held-out batch apart from all of them.
    """
    return config.seed + 1 if config.config_version == 1 else 2**63 - 1 - config.seed


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


class SequenceJob:
    """A sequence task as a job for :func:`~atrous.engine.loop.run_job`.

    Args:
        config: the settings.
        model: a model to train in place; default: built from ``config.model``/``model_kwargs``.
    """

    kind = "sequence"

    def __init__(self, config: SequenceTrainConfig, model: nn.Module | None = None) -> None:
        from atrous.models import create

        self.config = config
        torch.manual_seed(config.seed)
        if model is None:
            from atrous.engine.trainer import check_model_size

            check_model_size(config.model, **config.model_kwargs)
            model = create(config.model, **config.model_kwargs)
        self.model = model
        self.optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.lr)
        self.epochs = -(-config.steps // config.log_every)
        self.evaluation = None
        self.audio = None
        if config.task == "audio":
            from atrous.data.sequence import WavFolderDataset

            window = model.receptive_field - 1 + config.length
            self.audio = WavFolderDataset(config.data, window, items=config.steps * config.batch_size, seed=config.seed)
        else:
            held_out = torch.Generator().manual_seed(evaluation_seed(config))
            self.evaluation = synthetic_batch(config.task, config.eval_size, config.length, held_out)

    def steps_in(self, epoch: int) -> int:
        return min(self.config.log_every, self.config.steps - epoch * self.config.log_every)

    def lr(self, step: int) -> float:
        return self.config.lr

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of step ``step`` (0-based), a function of (seed, step) alone."""
        config = self.config
        if self.audio is not None:
            items = [self.audio[step * config.batch_size + i] for i in range(config.batch_size)]
            return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        return synthetic_batch(config.task, config.batch_size, config.length, generator)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = epoch * self.config.log_every
        return (self.batch(step) for step in range(first + start, first + self.steps_in(epoch)))

    def step(self, batch, step: int) -> float:
        x, y = batch
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        self.model.train()
        loss = task_loss(self.config.task, self.model(x), y, scored=self.config.length)
        return optimizer_step(self.model, self.optimizer, loss, step=step + 1, lr=self.config.lr,
                              clip=self.config.grad_clip)

    def evaluate(self) -> dict[str, float]:
        if self.evaluation is None:
            return {}
        return {"eval_loss": evaluate_synthetic(self.model, self.config.task, *self.evaluation)}

    def score(self, row: dict[str, Any]) -> float:
        return -row.get("eval_loss", row["train_loss"])

    def meta(self) -> dict[str, Any]:
        meta = {"model": self.config.model, "model_kwargs": self.config.model_kwargs, "task": self.config.task,
                "config": self.config.to_dict(),
                "receptive_field": self.model.receptive_field}
        if self.audio is not None:
            meta["sample_rate"] = self.audio.sample_rate
        return meta

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (f"{self.config.model} ({params:,} parameters, receptive field {self.model.receptive_field}) | "
                f"task {self.config.task}, batch {self.config.batch_size}, length {self.config.length}")

    def write_outputs(self, folder: Path, history: list[dict[str, Any]]) -> None:
        from atrous.engine.history import plot_curves, write_metrics

        score = "eval_loss" if "eval_loss" in history[-1] else "train_loss"
        best = max(history, key=self.score)
        params = sum(p.numel() for p in self.model.parameters())
        write_metrics(folder, history, config=self.config.to_dict(), best=best,
                      extra={"task": self.config.task, "model": self.config.model, "parameters": params,
                             "final": history[-1]})
        plot_curves(folder, history, score=score)


def train_sequence(
    model: nn.Module,
    config: SequenceTrainConfig,
    *,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[list[dict], torch.optim.Optimizer]:
    """Train ``model`` in place on a synthetic sequence task, with no run folder.

    Args:
        model: adding: ``(B, 2, T) -> (B, 1, T)``; copy: ``(B, 10, T + 20) -> (B, 10, T + 20)``.
        config: the settings.
        on_log: called with each history record (every ``log_every`` steps).

    Returns:
        ``(history, optimizer)``; each record holds ``step``, ``train_loss`` (mean over the last
        ``log_every`` steps), ``eval_loss`` and ``seconds``.
    """
    from atrous.engine.loop import LoopState, run_job

    job = SequenceJob(config, model)
    state = run_job(job, None, LoopState(), log=lambda _line: None, on_epoch=on_log)
    model.eval()
    return state.history, job.optimizer


def train_sequence_run(
    config: SequenceTrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    steps: int | None = None,
    every=None,
    log=print,
) -> list[dict]:
    """A sequence run in the run folder ``out`` (``atrous train-seq``); see :func:`atrous.engine.trainer.train`.

    ``steps``: when resuming, train up to this many steps instead of the saved count.

    Returns:
        The history, one row per ``log_every`` steps.
    """
    from atrous.engine import distributed
    from atrous.engine.loop import execute

    state = execute(
        SequenceJob, config, Path(out), kind="sequence", load_config=SequenceTrainConfig.from_dict, resume=resume,
        overwrite=overwrite, progress=progress, extend={"steps": steps} if steps is not None else None,
        every=every, log=log,
        context=distributed.DistributedContext(), precision=lambda job: "float32",
    )
    return state.history


@torch.no_grad()
def evaluate_synthetic(model: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 256) -> float:
    """Mean task loss of ``model`` (in eval mode) over a fixed batch, in chunks of ``chunk`` sequences."""
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        xs, ys = x[i : i + chunk], y[i : i + chunk]
        total += task_loss(task, model(xs), ys).item() * xs.shape[0]
    return total / x.shape[0]
