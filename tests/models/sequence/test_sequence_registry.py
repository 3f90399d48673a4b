"""Every registered sequence model: shape, finiteness, gradients, causality, receptive field.

Driven by the registry, so a new sequence model must add its tiny arguments to the shared table
(``tests/tiny_models.py``) and is then tested automatically. The receptive field is checked with a
gradient probe, independent of the models' closed forms.
"""

import pytest
import torch
from tiny_models import SEQUENCE, create_tiny

from atrous.models import create, list_models


def tiny_input(name: str, model, length: int, batch: int = 2) -> torch.Tensor:
    channels = model.in_channels
    return torch.randn(batch, channels, length, generator=torch.Generator().manual_seed(0))


def test_every_sequence_model_has_tiny_arguments():
    assert set(list_models("sequence")) == set(SEQUENCE)


@pytest.mark.parametrize("name", list_models("sequence"))
def test_shape_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_tiny(name)
    x = tiny_input(name, model, 20)
    y = model(x)
    assert y.shape[0] == 2 and y.shape[2] == 20
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", list_models("sequence"))
def test_causal_and_receptive_field_by_gradient_probe(name):
    """d y[t] / d x[s] is nonzero exactly for t - receptive_field < s <= t."""
    torch.manual_seed(0)
    model = create_tiny(name).double()
    # Positive weights and inputs keep every ReLU open, so the probe measures the wiring: with random
    # weights the single path to the field's first sample can be closed by one dead unit.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_()
    length = model.receptive_field + 10
    x = tiny_input(name, model, length).double().abs().requires_grad_(True)
    t = length - 3
    model(x)[:, :, t].sum().backward()
    touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero().flatten()
    assert touched.max().item() == t  # never the future
    assert touched.min().item() == t - model.receptive_field + 1


@pytest.mark.parametrize("name", list_models("sequence"))
def test_changing_a_sample_never_changes_earlier_outputs(name):
    torch.manual_seed(0)
    model = create_tiny(name).eval()
    x = tiny_input(name, model, 30)
    for t in (0, 11, 29):
        changed = x.clone()
        changed[:, :, t] += 1.0
        before, after = model(x), model(changed)
        torch.testing.assert_close(after[:, :, :t], before[:, :, :t], atol=0, rtol=0)
        assert not torch.equal(after[:, :, t], before[:, :, t])


@pytest.mark.parametrize("name", list_models("sequence"))
def test_unknown_arguments_are_named(name):
    with pytest.raises(TypeError, match="bogus"):
        create(name, bogus=1)
