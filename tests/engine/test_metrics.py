"""Metrics against a direct NumPy count of TP/FP/FN."""

import math

import numpy as np
import pytest
import torch

from atrous.engine.metrics import ConfusionMatrix


def test_matches_direct_counts():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 9, 7))
    target[0, :2] = 255
    prediction = rng.integers(0, 4, size=(3, 9, 7))
    cm = ConfusionMatrix(5)
    cm.update(torch.from_numpy(prediction[:2]), torch.from_numpy(target[:2]))
    cm.update(torch.from_numpy(prediction[2:]), torch.from_numpy(target[2:]))
    result = cm.summary()
    valid = target != 255
    for c in range(4):
        tp = np.sum((prediction == c) & (target == c) & valid)
        fp = np.sum((prediction == c) & (target != c) & valid)
        fn = np.sum((prediction != c) & (target == c) & valid)
        assert result["iou"][c] == pytest.approx(tp / (tp + fp + fn))
    assert math.isnan(result["iou"][4])  # class 4 never occurs
    assert result["miou"] == pytest.approx(np.mean(result["iou"][:4]))
    assert result["pixel_acc"] == pytest.approx(np.mean(prediction[valid] == target[valid]))


def test_perfect_prediction_and_bad_labels():
    target = torch.tensor([[[0, 1], [2, 255]]])
    cm = ConfusionMatrix(3)
    cm.update(target.clamp(max=2), target)
    assert cm.summary()["miou"] == 1.0
    with pytest.raises(ValueError, match="label 7 is outside the 3 classes"):
        cm.update(torch.zeros(1, 1, 1), torch.full((1, 1, 1), 7))
