"""Yu & Koltun's context module: identity initialisation, widths, field and gridding."""

import pytest
import torch
from probes import support_width

import atrous
from atrous.models.segmentation import ContextModule


def test_basic_module_is_the_identity_at_init():
    module = ContextModule(5)
    x = torch.rand(2, 5, 23, 31)  # non-negative, as the ReLUs pass it through
    assert torch.equal(module(x), x)


def test_large_module_is_a_group_identity_plus_small_noise():
    torch.manual_seed(0)
    exact = ContextModule(3, "large", init_noise=0.0)
    x = torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(exact(x), x)
    noisy = ContextModule(3, "large")
    assert not torch.equal(noisy(x), x)
    torch.testing.assert_close(noisy(x), x, atol=0.1, rtol=0.1)


def test_large_module_widths_follow_the_paper():
    module = ContextModule(4, "large")
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 32, 64, 128, 128, 4]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1]


def test_context_module_field_is_67():
    module = ContextModule(2)
    assert module.receptive_field == 67
    assert atrous.receptive_field(module, (2, 96, 96)).size == (67, 67)
    # Gradient probe with positive weights, so every ReLU is open and no tap cancels.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(0.01, 1.0) if p.ndim > 1 else p.zero_()
    assert support_width(module, torch.rand(1, 2, 81, 81)) == 67


def test_gridding_net_reads_a_sublattice():
    # Rates sharing the factor 3 reach only every third feature pixel; HDC rates reach all.
    def reached(rates):
        module = ContextModule(1, rates=rates)
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(1.0) if p.ndim > 1 else p.zero_()
        x = torch.ones(1, 1, 81, 81, requires_grad=True)
        module(x)[0, 0, 40, 40].backward()
        row = x.grad[0, 0, 40] > 0
        return int(row.sum()), int(row.nonzero().max() - row.nonzero().min() + 1)

    assert reached((3, 3, 3, 6, 6, 6, 6)) == (23, 67)
    assert reached((1, 2, 5, 9, 2, 5, 9)) == (67, 67)


@pytest.mark.parametrize("kwargs, match", [
    ({"variant": "huge"}, "variant"), ({"rates": ()}, "rates"), ({"rates": (1, 0)}, "rates"),
    ({"variant": "large", "rates": (1, 2)}, "rates"), ({"init_noise": -1.0}, "init_noise"),
])
def test_context_module_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContextModule(4, **kwargs)


def test_normalised_module_is_the_identity_in_eval_mode_at_init():
    module = ContextModule(3, norm=True).eval()
    x = torch.rand(1, 3, 17, 17)
    # Fresh running statistics (mean 0, variance 1): each of the 7 BatchNorms divides by sqrt(1 + eps).
    torch.testing.assert_close(module(x), x * (1 + 1e-5) ** -3.5)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()) == 7


@pytest.mark.parametrize("norm", [True, False])
def test_residual_module_is_the_identity_at_init_and_learns(norm):
    torch.manual_seed(0)
    module = ContextModule(3, norm=norm, residual=True)
    x = torch.rand(2, 3, 17, 17)
    torch.testing.assert_close(module(x), x, rtol=0, atol=0)  # train mode: branches are exactly zero
    assert module.receptive_field == 67
    # Every 3x3 conv still gets a gradient, so the zero branches can grow.
    module(x).square().sum().backward()
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 7
    if norm:
        norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(n.weight.grad.abs().sum() > 0 for n in norms)
    else:
        assert all(c.weight.grad.abs().sum() > 0 for c in convs)
    with pytest.raises(ValueError, match="residual=True needs variant='basic'"):
        ContextModule(3, "large", residual=True)
