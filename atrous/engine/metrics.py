"""Segmentation metrics from a confusion matrix: per-class IoU, mean IoU, pixel accuracy.

IoU_c = TP_c / (TP_c + FP_c + FN_c) (the PASCAL VOC measure, Everingham et al. 2010); pixels
with the ignore label are left out everywhere; classes absent from both the labels and the
predictions have no IoU (NaN) and do not count in the mean.
"""

from __future__ import annotations

import math

import torch


class ConfusionMatrix:
    """Accumulates a ``(num_classes, num_classes)`` matrix; rows are labels, columns predictions.

    Args:
        num_classes: number of classes.
        ignore_index: label value excluded from every count.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            prediction: ``(N, H, W)`` predicted class indices.
            target: ``(N, H, W)`` labels; ``ignore_index`` pixels are skipped.
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        valid = target != self.ignore_index
        target, prediction = target[valid].long().cpu(), prediction[valid].long().cpu()
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(f"label {int(target.max())} is outside the {self.num_classes} classes")
        codes = target * self.num_classes + prediction
        self.matrix += torch.bincount(codes, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def merge(self, other: torch.Tensor) -> None:
        """Add another matrix (e.g. all-reduced from other processes)."""
        self.matrix += other.to(self.matrix)

    def iou(self) -> list[float]:
        """Per-class IoU; NaN for classes seen neither in labels nor predictions."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return [float(t / u) if u > 0 else math.nan for t, u in zip(tp, union)]

    def summary(self) -> dict:
        """``{"miou", "pixel_acc", "iou", "confusion"}`` as plain Python values."""
        ious = self.iou()
        present = [v for v in ious if not math.isnan(v)]
        total = int(self.matrix.sum())
        return {
            "miou": sum(present) / len(present) if present else math.nan,
            "pixel_acc": float(self.matrix.diag().sum()) / total if total else math.nan,
            "iou": ious,
            "confusion": self.matrix.tolist(),
        }
