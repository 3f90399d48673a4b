"""What a run shows while it trains: the start-up line, the progress bar with its ETA, one line
per epoch, and printing that survives its reader going away (``atrous train | head -1``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from atrous.engine.loop import Job, LoopState
    from atrous.engine.run_dir import RunDir


class Eta:
    """Seconds left: the median time of recent steps (the first ones after a start tune backends
    and are left out) times the steps left, plus the last validation's time per epoch left."""

    def __init__(self, skip: int = 2) -> None:
        self.skip, self.durations, self.validation = skip, [], 0.0

    def add(self, seconds: float) -> None:
        if self.skip > 0:
            self.skip -= 1
            return
        self.durations = (self.durations + [seconds])[-50:]

    def left(self, steps: int, epochs: int) -> float | None:
        if not self.durations:
            return None
        ordered = sorted(self.durations)
        return ordered[len(ordered) // 2] * steps + self.validation * epochs


def clock_text(seconds: float | None) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}:"]
    for key, value in row.items():
        if key not in ("epoch", "step") and isinstance(value, float):
            parts.append(f"{key.replace('_', ' ')} {value:.4g}")
    return "  ".join(parts)


def progress_bar(total: int, state: LoopState, epochs: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=state.batch, desc=f"epoch {state.epoch + 1}/{epochs}", unit="step",
                dynamic_ncols=True, leave=False)


def quiet_on_closed_pipe(write: Callable[[str], None] = print) -> Callable[[str], None]:
    """``write``, but silent once its reader has gone (``atrous train | head -1`` must not stop the run)."""
    closed = False

    def log(line: str) -> None:
        nonlocal closed
        if closed:
            return
        try:
            write(line)
        except BrokenPipeError:
            closed = True

    return log


def describe_run(run: RunDir | None, job: Job, *, device: torch.device, precision: str, replayed: int) -> str:
    """The start-up line: folder, model, data, steps, device, threads, precision, backend mode."""
    from atrous.ops.autotune import fixed

    total = sum(job.steps_in(e) for e in range(job.epochs))
    backend = "fixed (deterministic)" if fixed() else f"auto, {replayed} recorded choices replayed"
    where = f"run folder {run.path}" if run is not None else "no run folder"
    return (f"{where} | {job.describe()} | {total:,} steps ({job.epochs} epochs) | device {device}, "
            f"{torch.get_num_threads()} threads, {precision} | backend {backend}")
