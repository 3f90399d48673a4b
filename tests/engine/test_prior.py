"""Logit adjustment: a background-weighted loss, undone at inference, gives the unweighted posterior."""

import pytest
import torch
from torch import nn

from atrous.engine.prior import BackgroundPrior, with_background_prior
from atrous.engine.trainer import segmentation_loss


class Constant(nn.Module):
    """Logits that are one learned vector at every pixel: the loss minimiser has a closed form."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])


@pytest.mark.parametrize("background_weight", [0.3, 2.0])
def test_adjusted_weighted_fit_recovers_class_frequencies(background_weight):
    generator = torch.Generator().manual_seed(0)
    masks = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), 4 * 9 * 9, replacement=True, generator=generator)
    masks = masks.view(4, 9, 9)
    masks[0, 0] = 255  # ignored pixels count for nothing
    frequencies = torch.bincount(masks[masks != 255], minlength=3).double()
    frequencies /= frequencies.sum()
    model = Constant(3)
    images = torch.zeros(4, 3, 9, 9, dtype=torch.float64)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = segmentation_loss(model(images), masks, background_weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    weighted = model(images)[0, :, 0, 0].softmax(0)
    # the weighted fit is biased: p_w(c) proportional to w_c * frequency(c)
    weights = torch.tensor([background_weight, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(weighted, weights * frequencies / (weights * frequencies).sum(), atol=1e-8, rtol=0)
    adjusted = BackgroundPrior(model, background_weight)(images)[0, :, 0, 0].softmax(0)
    torch.testing.assert_close(adjusted, frequencies, atol=1e-8, rtol=0)


def test_unweighted_models_are_left_alone_and_bad_weights_refused():
    model = Constant(3)
    assert with_background_prior(model, 1.0) is model
    assert isinstance(with_background_prior(model, 0.3), BackgroundPrior)
    for bad in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="background_weight must be a finite number > 0"):
            BackgroundPrior(model, bad)
