"""What a run leaves behind besides checkpoints: metrics.json, metrics.csv, curves.png, TensorBoard."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from atrous.engine.checkpoint import atomic_write

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
    """Training loss and the validation ``score`` column per epoch as ``curves.png`` (skipped without matplotlib)."""
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
    miou_ax.plot(epochs, [row[score] for row in history], marker="o", color="tab:green")
    if score == "val_miou":
        miou_ax.plot(epochs, [row["val_pixel_acc"] for row in history], marker=".", color="tab:gray")
        miou_ax.set(ylim=(0, 1))
        miou_ax.legend(["mIoU", "pixel acc"], loc="lower right")
    else:
        miou_ax.set(yscale="log")
    miou_ax.set(xlabel="epoch", ylabel="validation", title=score.replace("_", " "))
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
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
