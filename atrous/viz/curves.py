"""Training curves of a run: the training loss and the validation score per epoch, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atrous.viz.fields import _pyplot, _save


def plot_training_curves(history: list[dict[str, Any]], path: str | Path, *, score: str) -> Path:
    """Draw ``train_loss`` and the validation ``score`` column per epoch, side by side.

    Args:
        history: one row per epoch with ``epoch``, ``train_loss`` and ``score`` (and
            ``val_pixel_acc`` when ``score`` is ``"val_miou"``, drawn on the same axes).
        path: the ``.png`` to write, atomically.
        score: the column of the right-hand plot; a score other than mIoU is drawn on a log scale.

    Returns:
        The path written.
    """
    path = Path(path)
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Loss")
    score_ax.plot(epochs, [row[score] for row in history], marker="o", color="tab:green")
    if score == "val_miou":
        score_ax.plot(epochs, [row["val_pixel_acc"] for row in history], marker=".", color="tab:gray")
        score_ax.set(ylim=(0, 1))
        score_ax.legend(["mIoU", "pixel acc"], loc="lower right")
    else:
        score_ax.set(yscale="log")
    score_ax.set(xlabel="epoch", ylabel="validation", title=score.replace("_", " "))
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
