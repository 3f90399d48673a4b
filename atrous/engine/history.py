"""What a run leaves behind besides checkpoints: metrics.json, metrics.csv, curves.png, TensorBoard."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from atrous.engine.checkpoint import atomic_write

COLUMNS = ("epoch", "train_loss", "val_miou", "val_pixel_acc", "lr", "seconds")


def write_metrics(run_dir: Path, history: list[dict[str, Any]], *, config: dict, extra: dict | None = None) -> None:
    """Write ``metrics.json`` (history, best and last epoch, config) and ``metrics.csv``."""
    best = max(history, key=lambda row: row["val_miou"]) if history else None
    record = {"config": config, "history": history, "best": best, "last": history[-1] if history else None}
    record.update(extra or {})
    text = json.dumps(record, indent=1)
    atomic_write(run_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / "metrics.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> Path | None:
    """Training loss and validation mIoU per epoch as ``curves.png`` (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Loss")
    miou_ax.plot(epochs, [row["val_miou"] for row in history], marker="o", color="tab:green")
    miou_ax.plot(epochs, [row["val_pixel_acc"] for row in history], marker=".", color="tab:gray", label="pixel acc")
    miou_ax.set(xlabel="epoch", ylabel="validation", title="Validation mIoU", ylim=(0, 1))
    miou_ax.legend(["mIoU", "pixel acc"], loc="lower right")
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "curves.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


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
        for key in ("train_loss", "val_miou", "val_pixel_acc", "lr"):
            self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
