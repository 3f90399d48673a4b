"""Analytic receptive fields against closed forms from the papers and against backpropagation."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous import CausalConv1d, DilatedConv1d, DilatedConv2d, DilatedStack
from atrous.analysis import empirical_receptive_field, receptive_field


def stack2d(rates, kernel=3):
    return nn.Sequential(*(nn.Conv2d(1, 1, kernel, padding=rate * (kernel // 2), dilation=rate) for rate in rates))


def test_rates_1_2_4_8_table():  # Yu & Koltun 2016 / tutorial table: 3, 7, 15, 31
    field = receptive_field(stack2d((1, 2, 4, 8)), (1, 64, 64))
    assert [row.size for row in field.layers] == [(3, 3), (7, 7), (15, 15), (31, 31)]
    assert field.size == (31, 31) and field.stride == (1, 1) and field.padding == (15, 15)


def test_rates_to_16_and_plain_stack():
    assert receptive_field(stack2d((1, 2, 4, 8, 16)), (1, 80, 80)).size == (63, 63)
    assert receptive_field(stack2d([1] * 32), (1, 16, 16)).size == (65, 65)


def wavenet(blocks):
    rates = [2**i for i in range(10)] * blocks
    return nn.Sequential(*(CausalConv1d(1, 1, 2, dilation=rate) for rate in rates))


@pytest.mark.parametrize("blocks, expected", [(1, 1024), (3, 3070)])
def test_wavenet_blocks(blocks, expected):
    field = receptive_field(wavenet(blocks), (1, 4096))
    assert field.size == (expected,)
    assert field.padding == (expected - 1,)  # causal: output t sees t - (size - 1) .. t


def test_context_module():  # Yu & Koltun 2016 Table 1: 3, 5, 9, 17, 33, 65, 67, 67
    rates = (1, 1, 2, 4, 8, 16, 1)
    layers = [nn.Conv2d(2, 2, 3, padding=r, dilation=r) for r in rates] + [nn.Conv2d(2, 2, 1)]
    field = receptive_field(nn.Sequential(*layers), (2, 96, 96))
    assert [row.size[0] for row in field.layers] == [3, 5, 9, 17, 33, 65, 67, 67]


def test_general_formula_with_strides():
    torch.manual_seed(0)
    rng = random.Random(1)
    specs = [(rng.randint(1, 4), rng.randint(1, 2), rng.randint(1, 3)) for _ in range(6)]
    model = nn.Sequential(*(nn.Conv1d(1, 1, k, stride=s, dilation=d, padding=(k - 1) * d // 2) for k, s, d in specs))
    expected, jump = 1, 1
    for k, s, d in specs:  # 1 + sum (k - 1) d prod(previous strides)
        expected += (k - 1) * d * jump
        jump *= s
    field = receptive_field(model, (1, 2000))
    assert field.size == (expected,) and field.stride == (jump,)


def test_dilated_stack_and_cost():
    stack = DilatedStack(4, (1, 2, 4), dims=2)
    field = receptive_field(stack, (4, 20, 20))
    assert field.size == (15, 15)
    assert field.params == sum(p.numel() for p in stack.parameters()) == 3 * (4 * 4 * 9 + 4)
    assert [row.macs for row in field.layers] == [20 * 20 * 4 * 4 * 9] * 3  # out elements x C_in x k^2
    grouped = receptive_field(nn.Conv2d(4, 8, 3, stride=2, groups=2), (4, 11, 11))
    assert grouped.layers[0].macs == 5 * 5 * 8 * 2 * 9


def test_upsampling_gives_fractional_stride():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=4, padding=1), nn.Upsample(scale_factor=8, mode="nearest"))
    field = receptive_field(model, (1, 32, 32))
    assert field.stride == (0.5, 0.5) and field.size == (3, 3)


class ASPPLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.branch = DilatedConv2d(2, 2, 3, dilation=3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.stem(x)
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([self.branch(x), pooled], dim=1)


def test_global_pooling_is_whole_input_and_flagged():
    field = receptive_field(ASPPLike(), (1, 24, 24))
    assert field.size == (24, 24) and all(field.whole)
    assert field.stride == (2, 2)  # the local branch's stride survives the merge
    assert any(row.op == "global_pool" for row in field.layers)


class Misaligned(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(1, 1, 3), nn.Conv1d(1, 1, 3)

    def forward(self, x):
        return self.a(F.pad(x, (2, 0))) + self.b(F.pad(x, (0, 2)))


def test_misaligned_branches_warn():
    with pytest.warns(UserWarning, match="misaligned"):
        field = receptive_field(Misaligned(), (1, 30))
    assert field.size == (5,)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(1, 1, 3, padding=2, dilation=2), nn.Conv1d(1, 1, 5, stride=2)

    def forward(self, x):
        if x.sum() >= 0:  # data-dependent: fx cannot trace this
            x = F.relu(self.a(x)) + x
        return self.b(x)


def test_hook_fallback_matches_empirical():
    field = receptive_field(Untraceable(), (1, 64))
    assert field.method == "hooks"
    measured = empirical_receptive_field(Untraceable(), (1, 64))
    assert (field.size, field.stride, field.padding) == (measured.size, measured.stride, measured.padding) == ((9,), (2,), (2,))  # 1 + 2*2 + 4; only a pads (2)


class Residual(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return x + torch.relu(self.conv(x))


def random_network(rng: random.Random, dims: int) -> nn.Module:
    conv = (nn.Conv1d, nn.Conv2d)[dims - 1]
    dilated = (DilatedConv1d, DilatedConv2d)[dims - 1]
    pool = {"max": (nn.MaxPool1d, nn.MaxPool2d)[dims - 1], "avg": (nn.AvgPool1d, nn.AvgPool2d)[dims - 1]}
    layers, total_stride = [], 1
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["conv", "dilated", "pool", "residual"])
        stride = rng.choice([1, 1, 2]) if total_stride < 4 else 1
        total_stride *= stride
        k, d = rng.randint(1, 4), rng.randint(1, 3)
        if kind == "conv":
            layers.append(conv(2, 2, k, stride=stride, dilation=d, padding=rng.randint(0, (k - 1) * d)))
        elif kind == "dilated":
            layers.append(dilated(2, 2, k, stride=stride, dilation=d, padding=rng.choice(["same", "valid"])))
        elif kind == "pool":
            k = max(k, 2)
            name = rng.choice(["max", "avg"])
            extra = {"dilation": d} if name == "max" else {}
            layers.append(pool[name](k, stride=stride, padding=rng.randint(0, k // 2), **extra))
        else:
            k = rng.choice([1, 3, 5])
            layers.append(Residual(conv(2, 2, k, dilation=d, padding=(k - 1) * d // 2)))
        layers.append(nn.ReLU())
    return nn.Sequential(conv(1, 2, 1), *layers)


@pytest.mark.parametrize("seed", range(12))
def test_analytic_equals_empirical_on_random_networks(seed):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    dims = 1 if seed % 3 else 2
    model = random_network(rng, dims)
    probe = receptive_field(model, (1, *(64,) * dims))
    # room for the centre output's field and its neighbour's without touching a border
    side = int(3 * max(probe.size) + 8 * max(probe.stride) + 8)
    side = max(side, 24)
    analytic = receptive_field(model, (1, *(side,) * dims))
    measured = empirical_receptive_field(model, (1, *(side,) * dims))
    assert measured.size == analytic.size
    assert measured.stride == analytic.stride
    assert measured.padding == analytic.padding


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        receptive_field("resnet", (3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        receptive_field(nn.Conv2d(1, 1, 3), (32, 32, 32, 32, 32))
    with pytest.raises(ValueError, match="could not be run"):
        receptive_field(nn.Conv2d(3, 1, 3), (4, 32, 32))


def _support_of_output(model: nn.Module, length: int, index: int) -> list[int]:
    """Inputs that output ``index`` depends on, by backpropagation through positive weights."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    x = torch.zeros(1, 1, length, requires_grad=True)
    out = model(x)
    out[0, 0, index].backward()
    return torch.nonzero(x.grad[0, 0]).flatten().tolist()


@pytest.mark.parametrize("padding", [0, 2, 5])
def test_padding_convention_is_tensorflows(padding):
    # output i's field spans -padding + i * stride .. that + size - 1 (TensorFlow's receptive_field
    # convention), checked against the inputs each output away from the borders really reads
    model = nn.Sequential(nn.Conv1d(1, 1, 5, stride=3, padding=padding),
                          nn.Conv1d(1, 1, 3, stride=2, padding=1, dilation=2))
    length = 80
    field = receptive_field(model, (1, length))
    (size,), (stride,), (pad,) = field.size, field.stride, field.padding
    assert (size, stride) == (5 + 2 * 2 * 3, 6)
    outputs = model(torch.zeros(1, 1, length)).shape[-1]
    inside = [i for i in range(outputs) if -pad + i * stride >= 0 and -pad + i * stride + size <= length]
    assert len(inside) >= 5
    for index in inside:
        support = _support_of_output(model, length, index)
        assert (support[0], support[-1]) == (-pad + index * stride, -pad + index * stride + size - 1), index


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_field_of_a_model_in_another_dtype(dtype):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, dilation=2), nn.MaxPool2d(2), nn.Conv2d(2, 1, 3)).to(dtype)
    field = receptive_field(model, (1, 32, 32))
    assert field.size == (5 + 1 + 2 * 2, 5 + 1 + 2 * 2) and field.stride == (2, 2)
    assert field.size == receptive_field(model.float(), (1, 32, 32)).size


def test_ops_are_named_whole():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3))
    assert [row.op for row in receptive_field(model, (1, 40, 40)).layers] == [
        "conv", "max_pool", "avg_pool", "adaptive_pool"]
    assert [row.op for row in receptive_field(nn.MaxPool1d(3), (1, 9)).layers] == ["max_pool"]
    assert [row.op for row in receptive_field(nn.AvgPool3d(2), (1, 4, 4, 4)).layers] == ["avg_pool"]


def test_resnet50_field_427_is_what_backprop_measures():
    # ResNet-50 (torchvision layout) sees 427 pixels at stride 32: the analytic rules against the
    # inputs the centre output really depends on, through the model's residual and shortcut paths
    from atrous.models import create

    model = create("resnet50", width_multiplier=1 / 32)
    analytic = receptive_field(model, (3, 512, 512))
    measured = empirical_receptive_field(model, (3, 512, 512))
    assert analytic.size == measured.size == (427, 427)
    assert analytic.stride == measured.stride == (32, 32)
    assert analytic.padding == measured.padding
