"""Empirical and effective receptive fields against closed forms (Luo et al. 2016)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atrous import DilatedConv1d, DilatedConv2d
from atrous.analysis import effective_receptive_field, empirical_receptive_field, gridding, receptive_field
from atrous.viz import plot_erf


def test_empirical_support_shows_the_gridding_holes():
    rates = (2, 4)
    model = nn.Sequential(*(DilatedConv1d(1, 1, 3, dilation=r) for r in rates))
    measured = empirical_receptive_field(model, (1, 61))
    support = measured.support.numpy()
    reached = gridding(rates).coverage > 0
    centre = 30
    np.testing.assert_array_equal(support[centre - 6 : centre + 7], reached)
    assert support.sum() == reached.sum() and measured.size == (13,)


def test_linear_erf_is_the_convolution_of_the_kernels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1, bias=False), nn.Conv1d(1, 1, 3, padding=2, dilation=2, bias=False))
    weights = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])]
    with torch.no_grad():
        for conv, w in zip(model, weights):
            conv.weight.copy_(w.view(1, 1, 3))
    erf = effective_receptive_field(model, torch.randn(1, 1, 31))
    dilated = np.zeros(5)
    dilated[::2] = weights[1].numpy()
    expected = np.abs(np.convolve(weights[0].numpy(), dilated))  # y = w2 * (w1 * x): gradient is the full kernel
    np.testing.assert_allclose(erf.numpy()[15 - 3 : 15 + 4], expected, rtol=1e-6)
    assert erf.numpy()[: 15 - 3].sum() == 0 and erf.numpy()[15 + 4 :].sum() == 0


def test_erf_inside_the_analytic_field_and_plot(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(DilatedConv2d(1, 4, 3, dilation=1), nn.ReLU(), DilatedConv2d(4, 1, 3, dilation=3))
    path = tmp_path / "erf.png"
    erf = effective_receptive_field(model, (1, 33, 33))
    assert plot_erf(erf, path) == path
    field = receptive_field(model, (1, 33, 33))
    rows, cols = torch.nonzero(erf, as_tuple=True)
    assert erf.shape == (33, 33) and erf[16, 16] >= 0
    assert rows.max() - rows.min() + 1 <= field.size[0] and cols.max() - cols.min() + 1 <= field.size[1]
    with Image.open(path) as image:
        image.load()
        assert image.size[0] > 100


def test_empirical_errors():
    with pytest.raises(TypeError, match="model"):
        empirical_receptive_field(None, (1, 10))
    with pytest.raises(ValueError, match="input"):
        effective_receptive_field(nn.Conv1d(1, 1, 3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("weights, shown", [("random init", "weights: random init"),
                                            ("runs/ctx/best", "weights: runs/ctx/best"),
                                            (None, "weights: not stated")])
def test_erf_plot_title_says_which_weights(tmp_path, plot_titles, weights, shown):
    titles = plot_titles
    model = nn.Sequential(DilatedConv1d(1, 1, 3, dilation=2))
    plot_erf(effective_receptive_field(model, (1, 21)), tmp_path / "erf.png", weights=weights)
    assert len(titles) == 1 and titles[0].endswith(shown)


def test_erf_of_a_float64_model_matches_float32():
    torch.manual_seed(0)
    model = nn.Sequential(DilatedConv2d(1, 2, 3, dilation=2), nn.ReLU(), DilatedConv2d(2, 1, 3))
    erf32 = effective_receptive_field(model, (1, 17, 17))
    erf64 = effective_receptive_field(model.double(), (1, 17, 17))
    assert erf64.dtype == torch.float64
    torch.testing.assert_close(erf64.float(), erf32, rtol=1e-5, atol=1e-6)


def test_erf_plot_refuses_an_empty_weights_label(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        plot_erf(np.ones(5), tmp_path / "erf.png", weights=" ")
