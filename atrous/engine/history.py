"""What a run leaves behind besides checkpoints: metrics.json, metrics.csv, curves.png, TensorBoard."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

from atrous._files import atomic_write


def write_metrics(
    run_dir: Path, history: list[dict[str, Any]], *, config: dict, best: dict[str, Any] | None = None,
    extra: dict | None = None,
) -> None:
    """Write ``metrics.json`` (history, best and last epoch, config) and ``metrics.csv`` (one row per epoch)."""
    record = {"config": config, "history": history, "best": best, "last": history[-1] if history else None}
    record.update(extra or {})
    text = json.dumps(record, indent=1)
    atomic_write(run_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / "metrics.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def plot_curves(run_dir: Path, history: list[dict[str, Any]], *, score: str) -> Path | None:
    """Training loss and the validation ``score`` column per epoch as ``curves.png``
    (:func:`atrous.viz.plot_training_curves`); skipped without matplotlib, which a run does not need."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    from atrous.viz import plot_training_curves

    return plot_training_curves(history, run_dir / "curves.png", score=score)


class TensorBoardLogger:
    """Scalars to ``run_dir/tensorboard`` when the tensorboard package is installed; else nothing."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
