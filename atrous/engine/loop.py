"""The run engine: one training loop for every task, resumable at any step.

A :class:`Job` says what to train (model, optimizer, batches, one step, validation, what a
checkpoint records); :func:`run_job` runs it in epochs of steps with everything a run needs
around it: a start-up line, a progress bar with an ETA that leaves out one-off tuning,
checkpoints at the end of every epoch and every few minutes in between, SIGINT/SIGTERM that
save the current step and exit, a stop with no non-finite weights saved when the loss or the
gradient stops being finite, and exact resume: batch ``b`` of epoch ``e`` is a function of
(seed, e, b) only, and weights, optimizer, loop counters, RNG states and the backend's
formulation choices are all restored, so a resumed run ends bit-identical to one that never
stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from atrous._checks import check_float, check_int, int_range, is_int, is_number
from atrous.engine import distributed
from atrous.engine.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from atrous.engine.history import TensorBoardLogger
from atrous.engine.progress import Eta, clock_text, describe_run, epoch_line, progress_bar, quiet_on_closed_pipe
from atrous.engine.run_dir import KEEP_LAST, RunDir, newest_checkpoint

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # saved on, then exit 128 + the signal number


class TrainingDiverged(RuntimeError):
    """The loss, the gradient or the weights stopped being finite; nothing from that step on was saved."""

    exit_code = 1


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after saving its current step.

    Attributes:
        exit_code: 130 for SIGINT, 143 for SIGTERM (128 + the signal number).
        checkpoint: the save written on the way out, or None without a run folder.
    """

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"; resume with --resume {checkpoint.parent.parent}" if checkpoint is not None else ""
        super().__init__(f"{name} received: stopped after saving the current step{where}")
        self.exit_code, self.checkpoint = 128 + signum, checkpoint


@dataclass
class CheckpointEvery:
    """When to save during an epoch (a save also ends every epoch).

    Attributes:
        minutes: wall-clock minutes of training between saves (None: never by time).
        steps: optimizer steps between saves (None: never by count).
    """

    minutes: float | None = 5.0
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.minutes is not None:
            check_float(self.minutes, "checkpoint minutes", low=0, low_open=True)
        if self.steps is not None:
            check_int(self.steps, "checkpoint steps", low=1)


@dataclass
class LoopState:
    """Where a run is: saved with every checkpoint, validated when read back.

    Attributes:
        epoch: epochs completed.
        batch: batches done in the current epoch.
        step: optimizer steps done in all.
        loss_sum: sum of the current epoch's batch losses so far.
        history: one row per completed epoch.
        best: the best validation score so far (higher is better), or None.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None

    @classmethod
    def from_dict(cls, values: Any, *, source: str, epochs: int, steps_in: Callable[[int], int]) -> LoopState:
        """A state read from a checkpoint, checked against the run's own schedule."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: field 'loop' must be an object")

        def field_of(name, ok, allowed):  # a field of the file: a wrong type is a wrong value of the file
            value = values.get(name)
            if not ok(value):
                raise ValueError(f"{source}: field loop.{name} must be {allowed}, got {value!r}")
            return value

        epoch = field_of("epoch", lambda v: is_int(v) and 0 <= v <= epochs, int_range(0, epochs))
        limit = steps_in(epoch) if epoch < epochs else 0
        batch = field_of("batch", lambda v: is_int(v) and 0 <= v <= limit, int_range(0, limit))
        done = sum(steps_in(e) for e in range(epoch)) + batch
        step = field_of("step", lambda v: is_int(v) and v == done, f"{done} (epochs and batches done)")
        loss_sum = field_of("loss_sum", lambda v: is_number(v) and math.isfinite(v), "a finite number")
        history = field_of("history", lambda v: isinstance(v, list) and len(v) == epoch
                           and all(isinstance(r, dict) for r in v), f"a list of {epoch} rows")
        best = field_of("best", lambda v: v is None or is_number(v) and not math.isnan(v), "a number or null")
        return cls(epoch, batch, step, float(loss_sum), history, best)


class Job(Protocol):
    """What :func:`run_job` trains. ``model`` is what checkpoints hold (unwrapped from DDP).

    A job may also have ``prepare(log)``, which :func:`execute` calls once before the first step
    (segmentation draws its generated scenes ahead there).
    """

    kind: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int

    def steps_in(self, epoch: int) -> int: ...

    def batches(self, epoch: int, start: int) -> Iterator[Any]: ...

    def step(self, batch: Any, step: int) -> float: ...

    def lr(self, step: int) -> float: ...

    def evaluate(self) -> dict[str, float]: ...

    def score(self, row: dict[str, Any]) -> float: ...

    def meta(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    def write_outputs(self, folder: Path, history: list[dict[str, Any]]) -> None: ...


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, step: int, lr: float,
                   clip: float = 0.0) -> float:
    """Backward and update, unless the loss or gradient is not finite; returns the loss.

    The check comes before ``optimizer.step()``, so the weights never take a non-finite update
    from this step (a finite but huge update shows up as a non-finite loss one step later).

    Raises:
        TrainingDiverged: naming the step and the learning rate.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf) if params else torch.zeros(())
    value = loss.item()
    if not (math.isfinite(value) and math.isfinite(float(norm))):
        what = f"the loss is {value}" if not math.isfinite(value) else f"the gradient norm is {float(norm)}"
        raise TrainingDiverged(_diverged(step, lr, what))
    optimizer.step()
    if not all(bool(torch.isfinite(p).all()) for p in params):  # a finite gradient, an update too large
        raise TrainingDiverged(_diverged(step, lr, "the update made the weights non-finite"))
    return value


def _diverged(step: int, lr: float, what: str) -> str:
    return (f"training diverged at step {step} (learning rate {lr:.3g}): {what}; nothing from this step on is "
            f"saved; start again with a lower learning rate")


class _StopRequests:
    """SIGINT/SIGTERM during the loop: remembered, acted on at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now, unsaved
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def saved_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """The config a run continues with, and where it was read: its newest save's, else its marker's."""
    from atrous.engine.run_dir import MARKER, read_marker

    folder = newest_checkpoint(run_dir, "last")
    if folder is not None:
        return read_checkpoint_meta(folder).get("meta", {}).get("config"), str(folder / "checkpoint.json")
    config = read_marker(run_dir).get("config")
    if config is None:
        raise ValueError(f"cannot resume {str(run_dir)!r}: it has no checkpoint and its {MARKER} records no config")
    return config, str(Path(run_dir) / MARKER)


def read_state(run_dir: Path, job: Job) -> tuple[LoopState, dict[str, Any] | None]:
    """The loop state of the newest complete save (and its record), or a fresh state if there is none."""
    folder = newest_checkpoint(run_dir, "last")
    if folder is None:
        return LoopState(), None
    record = read_checkpoint_meta(folder)
    source = str(folder / "checkpoint.json")
    loop = record.get("meta", {}).get("loop")
    done = loop.get("epoch") if isinstance(loop, dict) else None
    if is_int(done) and job.epochs < done <= 10**6:
        raise ValueError(f"{source}: the run has done {done} epochs (loop.epoch); asking for {job.epochs} "
                         f"cannot shorten it")
    state = LoopState.from_dict(loop, source=source, epochs=job.epochs, steps_in=job.steps_in)
    for row in state.history:
        try:
            score = float(job.score(row))
        except (KeyError, TypeError, ValueError):
            score = math.nan
        if math.isnan(score):
            raise ValueError(f"{source}: field loop.history holds a row without a numeric score: {row!r:.200}")
    load_checkpoint(folder, job.model, optimizer=job.optimizer)
    return state, record


def run_job(
    job: Job,
    run: RunDir | None,
    state: LoopState,
    *,
    context=None,
    progress: bool = False,
    every: CheckpointEvery | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> LoopState:
    """Train ``job`` from ``state`` to its last epoch.

    Args:
        job: what to train.
        run: the run folder to save into, or None (nothing saved; SIGINT then raises KeyboardInterrupt).
        state: where to start (:class:`LoopState` fresh or from :func:`read_state`).
        context: the :mod:`~atrous.engine.distributed` context (rank 0 writes).
        progress: show a progress bar.
        every: when to save within an epoch.
        log: receives each epoch's line.
        on_epoch: receives each epoch's row.

    Raises:
        TrainingDiverged: a non-finite loss or gradient.
        TrainingInterrupted: SIGINT/SIGTERM, after the current step was saved.
    """
    from atrous.ops.backend import export_choices

    every = every or CheckpointEvery()
    context = context or distributed.DistributedContext()
    log = quiet_on_closed_pipe(log)
    writes = run is not None and context.is_main
    total = sum(job.steps_in(e) for e in range(job.epochs))
    eta = Eta()

    def save(best: bool = False) -> Path | None:
        if not writes:
            return None
        meta = {**job.meta(), "loop": asdict(state), "backend_choices": export_choices()}
        if best:
            run.save("best", lambda folder: save_checkpoint(folder, job.model, meta=meta), keep=1)
        return run.save("last", lambda folder: save_checkpoint(folder, job.model, optimizer=job.optimizer, meta=meta),
                        keep=KEEP_LAST)

    if writes and state.history:  # outputs of a resumed run, in case the last ones were not written
        job.write_outputs(run.path, state.history)
    last_save, board = time.monotonic(), None
    with contextlib.ExitStack() as cleanup, _StopRequests() as stop:
        cleanup.callback(lambda: board is not None and board.close())
        while state.epoch < job.epochs:
            steps, epoch_start = job.steps_in(state.epoch), time.monotonic()
            bar = progress_bar(steps, state, job.epochs, progress and context.is_main)
            for batch in job.batches(state.epoch, state.batch):
                began = time.perf_counter()
                loss = job.step(batch, state.step)
                state.step, state.batch, state.loss_sum = state.step + 1, state.batch + 1, state.loss_sum + loss
                eta.add(time.perf_counter() - began)
                if bar is not None:
                    left = eta.left(total - state.step, job.epochs - state.epoch)
                    bar.set_postfix(loss=f"{state.loss_sum / state.batch:.4g}", lr=f"{job.lr(state.step):.2e}",
                                    run_eta=clock_text(left))
                    bar.update()
                due = (every.steps is not None and state.step % every.steps == 0) or (
                    every.minutes is not None and time.monotonic() - last_save >= 60 * every.minutes)
                flags = distributed.all_reduce_sum(torch.tensor([float(stop.signum or 0), float(due)]), context)
                if flags[0] > 0:
                    if bar is not None:
                        bar.close()
                    if run is None and not context.enabled:
                        raise KeyboardInterrupt
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, save())
                if flags[1] > 0 and state.batch < steps:
                    save()
                    last_save = time.monotonic()
            if bar is not None:
                bar.close()
            began = time.perf_counter()
            scores = job.evaluate()
            eta.validation = time.perf_counter() - began
            row = {"epoch": state.epoch + 1, "step": state.step, "train_loss": state.loss_sum / max(state.batch, 1),
                   **scores, "lr": job.lr(state.step), "seconds": round(time.monotonic() - epoch_start, 2)}
            state.history.append(row)
            state.epoch, state.batch, state.loss_sum = state.epoch + 1, 0, 0.0
            score = job.score(row)
            improved = state.best is None or score > state.best
            if improved:
                state.best = score
            save(best=improved)
            last_save = time.monotonic()
            if writes:
                job.write_outputs(run.path, state.history)
                if board is None:
                    board = TensorBoardLogger(run.path)
                board.log(row)
            log(epoch_line(row, job.epochs))
            if on_epoch is not None:
                on_epoch(row)
            stopping = distributed.all_reduce_sum(torch.tensor([float(stop.signum or 0)]), context)[0] > 0
            if stopping and state.epoch < job.epochs:
                if run is None and not context.enabled:
                    raise KeyboardInterrupt
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, newest_checkpoint(run.path) if run else None)
    return state


def execute(
    make_job: Callable[[Any], Job],
    config: Any,
    out: Path,
    *,
    kind: str,
    load_config: Callable[..., Any],
    resume: bool,
    overwrite: bool,
    progress: bool,
    every: CheckpointEvery | None,
    log: Callable[[str], None],
    context,
    precision: Callable[[Job], str],
    extend: dict[str, Any] | None = None,
) -> LoopState:
    """A whole run: validate, build, open (or create) the run folder, restore, train, record.

    Everything that can be checked (arguments, data, model) is built before the folder is
    created, so a failed start leaves nothing behind. Resuming reads the config and state of the
    run's newest complete checkpoint (a run with none starts from step 0 with the config its
    marker recorded at creation; ``config.json`` is a copy for people) with ``extend`` applied
    (``{"epochs": N}`` or ``{"steps": N}``: train longer), restores the RNG
    states and replays the backend choices the run recorded; a fresh run replays this
    machine's tuning record (:mod:`atrous.engine.tuning`), so two fresh runs choose alike.
    """
    from atrous.engine import tuning
    from atrous.engine.checkpoint import set_rng_state
    from atrous.engine.run_dir import check_new_run_dir, check_resumable, write_text
    from atrous.ops.backend import export_choices, replay_choices

    log = quiet_on_closed_pipe(log)
    out = Path(distributed.broadcast_object(str(out), context))
    if resume:
        check_resumable(out, kind)
        values, source = saved_config(out)
        config = load_config(values, source=source)
        if extend:  # the one setting a resumed run may change: how long it trains
            config = replace(config, **extend)
    else:
        check_new_run_dir(out, overwrite=overwrite)
    try:
        job = make_job(config)
    except ValueError as error:
        if not resume:
            raise
        raise ValueError(f"{source}: {error}") from None  # the saved config names a model or data that fails
    run = RunDir(out, kind, create=not resume, overwrite=overwrite, config=config.to_dict(), announce=log) \
        if context.is_main else None
    try:
        distributed.barrier(context)
        state, record = read_state(out, job) if resume else (LoopState(), None)
        if run is not None:
            write_text(run.path / "config.json", json.dumps(config.to_dict(), indent=1))
        if record is not None:
            set_rng_state(record.get("rng", {}), source=str(newest_checkpoint(out) / "checkpoint.json"))
            choices = record.get("meta", {}).get("backend_choices", {})
        else:
            choices = tuning.load()
        replayed = replay_choices(choices if isinstance(choices, dict) else {})
        if context.is_main:
            log(describe_run(run, job, device=context.device, precision=precision(job), replayed=replayed))
        if hasattr(job, "prepare") and state.epoch < job.epochs:
            job.prepare(log if context.is_main else lambda _: None)
        try:
            state = run_job(job, run, state, context=context, progress=progress, every=every, log=log if context.is_main else lambda _: None)
        finally:
            if context.is_main:
                tuning.store(export_choices())
    finally:
        if run is not None:
            run.close()
    return state
