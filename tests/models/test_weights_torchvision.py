"""torchvision's and timm's checkpoints in atrous's models: the same outputs as theirs.

Oracles: torchvision's and timm's own models with random weights (their BatchNorms given random
scales and data statistics, so a misplaced BatchNorm tensor shows), evaluated in float64; for output
strides torchvision's ResNet-18/34 cannot build, the closed form that a dilated network computes
the undilated one's outputs on every ``32 / OS``-th position; for VGG-16's fc6 and fc7, their
``Linear`` layers applied to the flattened (dilated) 7x7 neighbourhood, exactly (see ``_STEPS``).
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import calibrated

from atrous.models import IMAGENET_MEAN, WeightsWarning, create, load_backbone_weights, load_weights
from atrous.models._layouts import classification_backbone
from atrous.ops.autotune import deterministic_backend

TIGHT = {"rtol": 1e-9, "atol": 1e-9}  # float64


@pytest.fixture(autouse=True)
def _plain_convolutions():
    """atrous's convs run as plain PyTorch, as torchvision's do, and ``auto`` times no formulation
    (it would, once per new shape, on these full-size models)."""
    with deterministic_backend():
        yield


_BASE = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0))  # a period no layer's size divides
_TWICE = _BASE.repeat(2)


def _pattern(shape: torch.Size, offset: int, base: torch.Tensor = _TWICE) -> torch.Tensor:
    """Pseudo-random values of ``shape``: a fixed random vector (twice over in ``base``), repeated,
    from a start set by ``offset`` (randn of 100M+ values, or a full-size model's own
    initialisation, takes seconds)."""
    period = base.numel() // 2
    numel, start = shape.numel(), offset * 7919 % period
    if numel > period:
        base = base[:period].repeat(2 + numel // period)
    return base[start:start + numel].view(shape)


def _theirs(build, /, **kwargs) -> torch.nn.Module:
    """A torchvision (or timm) model with random weights: built on the meta device, filled with
    ``_pattern`` scaled by 1 / sqrt(fan-in), then its BatchNorms calibrated (``calibrated``)."""
    with torch.device("meta"):
        model = build(**kwargs)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for index, parameter in enumerate(model.parameters()):
            scale = parameter[0].numel() ** -0.5 if parameter.ndim > 1 else 0.1
            parameter.copy_(_pattern(parameter.shape, index) * scale)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return calibrated(model, torch.randn(2, 3, 41, 41))


def _save(state: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def _allocated(name: str, **kwargs) -> torch.nn.Module:
    """``create(name)`` without its (for full-size models, slow) random initialisation."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create(name, **kwargs)
    return model.to_empty(device="cpu").eval()


def _resnet_features(resnet: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's / timm's ResNet up to ``layer4`` (no pooling, no ``fc``)."""
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(resnet, name)(x)
    return x


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_classification_weights_at_every_output_stride(torchvision_models, tmp_path, depth):
    torch.manual_seed(depth)
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    theirs = _theirs(getattr(torchvision_models, f"resnet{depth}"), weights=None)
    state = theirs.state_dict()
    pth, safetensors = _save(state, tmp_path / "w.pth"), _save(state, tmp_path / "w.safetensors")
    with torch.no_grad():
        expected = _resnet_features(theirs.double(), x)  # (1, C, 2, 2)
    for output_stride, path in ((8, pth), (16, safetensors), (32, pth)):
        if output_stride == 8:
            model = create(f"resnet{depth}", output_stride=8, weights=path)
            report = model.weights_report
        else:  # the same loader, without create's (slow, here useless) random initialisation
            model = _allocated(f"resnet{depth}", output_stride=output_stride)
            report = load_weights(model, path)
        assert set(report.skipped) == {"fc.weight", "fc.bias"} and not report.initialised and not report.partial
        with torch.no_grad():
            out = model.double().eval()(x)
        # Dilation keeps every field: the undilated net's outputs sit on every (32 / OS)-th position.
        step = 32 // output_stride
        torch.testing.assert_close(out[..., ::step, ::step], expected, **TIGHT)
        if depth == 50 and output_stride == 8:  # torchvision dilates bottleneck ResNets itself
            with torch.device("meta"):
                dilated = torchvision_models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
            dilated.to_empty(device="cpu").load_state_dict(state)
            with torch.no_grad():
                torch.testing.assert_close(out, _resnet_features(dilated.double().eval(), x), **TIGHT)


def test_timm_resnet_weights(torchvision_models, tmp_path):
    import timm

    with torch.device("meta"):  # timm's ResNet-50 has torchvision's keys and shapes
        timm50 = {k: v.shape for k, v in timm.create_model("resnet50", pretrained=False).state_dict().items()}
        tv50 = {k: v.shape for k, v in torchvision_models.resnet50(weights=None).state_dict().items()}
    assert timm50 == tv50
    torch.manual_seed(0)
    theirs = _theirs(timm.create_model, model_name="resnet18", pretrained=False)
    ours = create("resnet18", output_stride=8, weights=_save(theirs.state_dict(), tmp_path / "timm.safetensors"))
    assert ours.weights_report.mean == IMAGENET_MEAN == tuple(theirs.pretrained_cfg["mean"])
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs.double().forward_features(x)
        torch.testing.assert_close(ours.double().eval()(x)[..., ::4, ::4], expected, **TIGHT)


def _deeplabv3_with_rates(builder):
    """torchvision's DeepLab v3 whose ``DeepLabHead`` has ASPP rates 2, 3, 5."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    model = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    model.classifier = DeepLabHead(2048, 21, atrous_rates=(2, 3, 5))
    return model


@pytest.fixture(scope="module")
def deeplabv3_resnet50_files(torchvision_models, tmp_path_factory):
    """torchvision's deeplabv3_resnet50 (21 classes, auxiliary head; ASPP rates 2, 3, 5 so that every
    tap of every branch reads data on the test's 6 x 6 feature map), saved as .pth and .safetensors."""
    segmentation = torchvision_models.segmentation
    torch.manual_seed(0)
    theirs = _theirs(_deeplabv3_with_rates, builder=segmentation.deeplabv3_resnet50)
    folder = tmp_path_factory.mktemp("deeplab")
    state = theirs.state_dict()
    return theirs, _save(state, folder / "deeplab.pth"), _save(state, folder / "deeplab.safetensors")


def _check_segmentation(theirs, name: str, path: str, other_path: str, **kwargs) -> None:
    """``create(name, weights=path)`` gives ``theirs``'s outputs, main and auxiliary; ``other_path``, the
    same state_dict in the other format, loads the same tensors."""
    kwargs.update(num_classes=21, output_stride=8, aux_loss=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASPP rightly warns that rates (2, 3, 5) are not the paper's
        ours = create(name, weights=path, **kwargs)
    other = _allocated(name, **kwargs)
    for report in (ours.weights_report, load_weights(other, other_path)):
        assert not report.partial and not report.skipped and not report.initialised, str(report)
        assert report.mean == IMAGENET_MEAN
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), other.state_dict().values()))
    ours = ours.double()
    theirs = theirs.double().eval()
    x = torch.randn(1, 3, 41, 41, dtype=torch.float64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs(x)
        torch.testing.assert_close(ours.eval()(x), expected["out"], **TIGHT)
        ours.train()  # the auxiliary head runs in training mode: BatchNorm and dropout as in eval
        for module in ours.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.Dropout)):
                module.eval()
        outputs = ours(x)
    torch.testing.assert_close(outputs["out"], expected["out"], **TIGHT)
    torch.testing.assert_close(outputs["aux"], expected["aux"], **TIGHT)


@pytest.mark.slow
def test_torchvision_deeplabv3_resnet50_checkpoint(deeplabv3_resnet50_files):
    theirs, pth, safetensors = deeplabv3_resnet50_files
    _check_segmentation(theirs, "deeplabv3_resnet50", safetensors, pth, head="torchvision", rates=(2, 3, 5))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet101"])
def test_torchvision_segmentation_checkpoints(torchvision_models, tmp_path, name):
    builder = getattr(torchvision_models.segmentation, name)
    torch.manual_seed(1)
    if name.startswith("deeplab"):
        theirs = _theirs(_deeplabv3_with_rates, builder=builder)
        kwargs = {"head": "torchvision", "rates": (2, 3, 5)}
    else:
        theirs = _theirs(builder, weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
        kwargs = {}
    state = theirs.state_dict()
    files = [_save(state, tmp_path / "w.pth"), _save(state, tmp_path / "w.safetensors")]
    _check_segmentation(theirs, name, *(files if name.startswith("fcn") else files[::-1]), **kwargs)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::atrous.models.RateWarning")
def test_partial_load_of_a_torchvision_checkpoint_reports_its_keys(deeplabv3_resnet50_files):
    theirs, pth, _ = deeplabv3_resnet50_files
    with pytest.warns(WeightsWarning) as caught:
        ours = create("deeplabv3_resnet50", num_classes=5, output_stride=8, head="torchvision", rates=(2, 3, 5),
                      weights=pth)
    report = ours.weights_report
    assert [str(w.message) for w in caught if w.category is WeightsWarning] == [str(report)]
    assert "\n" not in str(report)
    assert report.partial and report.initialised == ("classifier.4.weight", "classifier.4.bias")
    aux = {k for k in theirs.state_dict() if k.startswith("aux_classifier.") and "num_batches" not in k}
    assert set(report.skipped) == {"classifier.4.weight", "classifier.4.bias"} | aux
    assert report.mismatched[0] == ("classifier.4.weight", (21, 256, 1, 1), (5, 256, 1, 1))
    assert "classifier.4" in str(report) and "aux_classifier.0" in str(report)
    torch.testing.assert_close(ours.classifier[1].weight.double(), theirs.classifier[1].weight.double(),
                               rtol=0, atol=0)


def test_a_wrong_file_or_architecture_is_named(deeplabv3_resnet50_files, torchvision_models, tmp_path):
    _, pth, _ = deeplabv3_resnet50_files
    with pytest.raises(ValueError, match="head='torchvision'"):
        load_weights(_allocated("deeplabv3_resnet50", num_classes=21, output_stride=8), pth)
    with pytest.raises(ValueError, match="ResNet-50 backbone.*ResNet-101 backbone.*backbones differ"):
        load_weights(_allocated("deeplabv3_resnet101", num_classes=21, output_stride=8, head="torchvision"), pth)
    with pytest.raises(ValueError, match="does not fit FCNResNet"):
        load_weights(_allocated("fcn_resnet50", num_classes=21), pth)
    resnet18 = _save(torchvision_models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"resnet18\.pth.*ResNet-18 weights.*the model's backbone, a ResNet-50"):
        load_backbone_weights(_allocated("deeplabv3_resnet50", num_classes=21), resnet18)
    with pytest.raises(ValueError, match="with backbone_weights=, not weights="):
        load_weights(_allocated("deeplabv3_resnet18", num_classes=21), resnet18)


def test_backbone_weights_from_a_segmentation_checkpoint(deeplabv3_resnet50_files):
    theirs, _, safetensors = deeplabv3_resnet50_files
    ours = create("deeplabv3plus_resnet50", num_classes=3, backbone_weights=safetensors)
    report = ours.weights_report
    assert report.target == "features.body" and report.mean == IMAGENET_MEAN and not report.partial
    assert all(k.startswith(("aspp.", "decoder.")) for k in report.initialised)
    torch.testing.assert_close(ours.features.body["layer4"][2].conv3.weight.double(),
                               theirs.backbone.layer4[2].conv3.weight.double(), rtol=0, atol=0)


# VGG-16: 138M parameters, so one pseudo-random state saved once, in half precision (as many released
# files are; float16 widens exactly), and models built on the meta device, then allocated. fc6-fc8
# hold multiples of 1/1024 up to 16/1024: on inputs of small integers every partial sum of fc6's
# 25,088 products is a float32 number, so its conv and its Linear agree exactly in float32 (in
# float64 fc6 alone takes 0.8 GB).
_STEPS = torch.randint(-16, 17, (1_000_003,), generator=torch.Generator().manual_seed(1)).repeat(2) / 1024


def _vgg16_state(torchvision_models) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision_models.vgg16(weights=None).state_dict().items()}
    state = {}
    for index, (key, shape) in enumerate(shapes.items()):
        if key.startswith("features."):  # He-scaled, so conv4's outputs stay of order 1
            scale = (2 / shape[1:].numel()) ** 0.5 if len(shape) > 1 else 0.1
            state[key] = (_pattern(shape, index) * scale).half()
        else:
            state[key] = _pattern(shape, index, _STEPS).half()
    return state


def _small_integers(*shape: int) -> torch.Tensor:
    return torch.randint(-4, 5, shape).float()


POSITIONS = [0, 2, 12, 24]  # (0, 0), (0, 2), (2, 2), (4, 4) of a 5x5 map


@pytest.fixture(scope="module")
def vgg16_file(torchvision_models, tmp_path_factory):
    state = _vgg16_state(torchvision_models)
    return state, _save(state, tmp_path_factory.mktemp("vgg") / "vgg16.pth")


@pytest.mark.slow
def test_vgg16_into_the_dilation_front_end(vgg16_file, torchvision_models):
    """Yu & Koltun: conv1-conv5 as torchvision's, fc6 a 7x7 conv at dilation 4, fc7 a 1x1 conv."""
    state, path = vgg16_file
    frontend = _allocated("vgg16_dilation_frontend")
    report = load_weights(frontend, path)
    assert report.skipped == ("classifier.6.weight", "classifier.6.bias") and not report.initialised
    assert any("7x7 conv fc6" in note for note in report.conversions)

    # conv1 ... conv4 (pools 1-3 kept) against torchvision's VGG-16 features up to relu4_3.
    features = torchvision_models.vgg.make_layers(torchvision_models.vgg.cfgs["D"])
    features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    x = torch.randn(1, 3, 32, 24, dtype=torch.float64)
    with torch.no_grad():
        ours = x
        for stage in ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4"):
            ours = getattr(frontend, stage).double()(ours)
        torch.testing.assert_close(ours, features[:23].double()(x), **TIGHT)
    assert ours.abs().max() > 0.1  # not a comparison of vanishing activations

    w6, b6 = state["classifier.0.weight"].float(), state["classifier.0.bias"].float()
    w7, b7 = state["classifier.3.weight"].float(), state["classifier.3.bias"].float()
    fc6, fc7 = frontend.fc6[0], frontend.fc7[0]
    with torch.no_grad():
        # On a 7x7 pool5 map, the conv at its one valid position is the Linear on the flattened map.
        pool5 = _small_integers(2, 512, 7, 7)
        valid = F.conv2d(pool5, fc6.weight, fc6.bias).flatten(1)
        torch.testing.assert_close(valid, F.linear(pool5.flatten(1), w6, b6), rtol=0, atol=0)
        hidden = _small_integers(2, 4096, 1, 1)
        torch.testing.assert_close(fc7(hidden).flatten(1), F.linear(hidden.flatten(1), w7, b7), rtol=0, atol=0)
        # At output stride 8, each position reads the 7x7 neighbourhood at spacing 4 (zeros outside):
        # from a corner of a 5x5 map, taps 0 and 4 of each axis.
        conv5 = _small_integers(1, 512, 5, 5)
        neighbourhoods = F.unfold(conv5, 7, dilation=4, padding=12)[0][:, POSITIONS]  # (512 * 49, 4): (C, kh, kw)
        expected = w6 @ neighbourhoods + b6[:, None]
        torch.testing.assert_close(fc6(conv5).flatten(2)[0][:, POSITIONS], expected, rtol=0, atol=0)


@pytest.mark.slow
def test_vgg16_into_deeplab_largefov(vgg16_file):
    """DeepLab-LargeFOV: fc6 decimated to taps 0, 3, 6 of the 7x7 kernel (3x3 at rate 12) and every 4th
    of the 4,096 filters; fc7 to the same 1,024 rows and columns."""
    state, path = vgg16_file
    largefov = create("deeplabv1_largefov_vgg16", num_classes=21, backbone_weights=path).eval()
    report = largefov.weights_report
    assert report.target == "trunk" and report.initialised == ("score.weight", "score.bias")
    assert any("decimated to 3x3 (taps 0, 3, 6 of 7)" in note for note in report.conversions)
    w6, b6 = state["classifier.0.weight"][::4].float(), state["classifier.0.bias"][::4].float()  # 1,024 filters
    fc6, fc7 = largefov.trunk.fc6[0], largefov.trunk.fc7[0]
    taps = torch.zeros(7, 7)
    taps[::3, ::3] = 1
    decimated = (w6.reshape(1024, 512, 7, 7) * taps).reshape(1024, -1)  # the Linear on 9 of its 49 taps
    with torch.no_grad():
        conv5 = _small_integers(1, 512, 13, 13)  # rate 12: a corner reads taps 0 and 12
        positions = [0, 6, 12, 84, 168]  # (0, 0), (0, 6), (0, 12), (6, 6), (12, 12)
        neighbourhoods = F.unfold(conv5, 7, dilation=4, padding=12)[0][:, positions]
        expected = decimated @ neighbourhoods + b6[:, None]
        torch.testing.assert_close(fc6(conv5).flatten(2)[0][:, positions], expected, rtol=0, atol=0)
        hidden = _small_integers(2, 1024, 1, 1)
        w7, b7 = state["classifier.3.weight"][::4, ::4].float(), state["classifier.3.bias"][::4].float()
        torch.testing.assert_close(fc7(hidden).flatten(1), F.linear(hidden.flatten(1), w7, b7), rtol=0, atol=0)


def test_timm_vgg16_layout_converts_as_torchvisions(vgg16_file):
    """timm keeps fc6/fc7 as convs (``pre_logits.fc1/fc2``) and fc8 as ``head.fc``."""
    import timm

    state, _ = vgg16_file
    timm_state = {k: v for k, v in state.items() if k.startswith("features.")}
    timm_state["pre_logits.fc1.weight"] = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    timm_state["pre_logits.fc2.weight"] = state["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    timm_state["pre_logits.fc1.bias"] = state["classifier.0.bias"]
    timm_state["pre_logits.fc2.bias"] = state["classifier.3.bias"]
    timm_state["head.fc.weight"], timm_state["head.fc.bias"] = state["classifier.6.weight"], state["classifier.6.bias"]
    with torch.device("meta"):
        assert {k: v.shape for k, v in timm_state.items()} == {
            k: v.shape for k, v in timm.create_model("vgg16", pretrained=False).state_dict().items()}
    ours, theirs = classification_backbone(timm_state), classification_backbone(state)
    assert ours.classifier == ("head.fc.weight", "head.fc.bias")
    assert ours.state.keys() == theirs.state.keys()
    assert all(torch.equal(ours.state[k], theirs.state[k]) for k in ours.state)
