"""``create(..., weights=, backbone_weights=)`` on tiny models: what loads, the one-line report of
what did not, and a clear error for every file that does not fit (torchvision's and timm's own
checkpoints: ``test_weights_torchvision.py``)."""

import warnings

import pytest
import torch
from tiny_models import BACKBONE, calibrated, create_tiny

from atrous.models import (
    WeightsReport,
    WeightsWarning,
    create,
    load_backbone_weights,
    load_weights,
    model_arguments,
    read_state_dict,
)
from atrous.models._layouts import classification_backbone

TINY = dict(BACKBONE)  # the tiny width alone: num_classes differs from test to test


def _tiny(name, **kwargs):
    torch.manual_seed(len(kwargs))
    return create_tiny(name, **kwargs)


def _created(name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ASPP's rate warnings on tiny inputs
        warnings.simplefilter("error", category=WeightsWarning)
        return create(name, **kwargs)


def test_an_atrous_state_dict_round_trips_through_both_formats(tmp_path):
    from safetensors.torch import save_file

    source = calibrated(_tiny("context_net"), torch.randn(2, 3, 32, 32))
    torch.save(source.state_dict(), tmp_path / "w.pth")
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    x = torch.randn(1, 3, 32, 40)
    for path in (tmp_path / "w.pth", tmp_path / "w.safetensors"):
        model = _created("context_net", num_classes=3, **TINY, weights=path).eval()
        report = model.weights_report
        assert isinstance(report, WeightsReport) and not report.partial and report.mean is None
        assert set(report.loaded) == set(source.state_dict())
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module."])
def test_training_checkpoint_wrappers_are_unwrapped(tmp_path, wrapper):
    state = _tiny("resnet18").state_dict()
    content = {f"module.{k}": v for k, v in state.items()} if wrapper == "module." else {wrapper: state, "epoch": 3}
    torch.save(content, tmp_path / "w.pt")
    assert read_state_dict(tmp_path / "w.pt").keys() == state.keys()


def test_partial_load_warns_once_with_the_report(tmp_path):
    source = _tiny("deeplabv3_resnet18", aux_loss=True)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = create("deeplabv3_resnet18", num_classes=5, **TINY, weights=tmp_path / "w.pth")
    report = model.weights_report
    assert [str(w.message) for w in caught if w.category is WeightsWarning] == [str(report)]
    assert report.partial and report.initialised == ("classifier.4.weight", "classifier.4.bias")
    assert {k for k in report.skipped if not k.startswith("aux_classifier.")} == set(report.initialised)
    assert report.mismatched == (("classifier.4.weight", (3, 16, 1, 1), (5, 16, 1, 1)),
                                 ("classifier.4.bias", (3,), (5,)))
    line = str(report)
    assert "\n" not in line and "newly initialised 2: classifier.4" in line and "aux_classifier.0" in line
    assert "(3, 16, 1, 1) in the file, (5, 16, 1, 1) in the model" in line
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, source.backbone.layer4[1].conv2.weight)

    # The other way round: the model's auxiliary head is new; strict refuses both.
    torch.save(_tiny("deeplabv3_resnet18").state_dict(), tmp_path / "plain.pth")
    aux = _tiny("deeplabv3_resnet18", aux_loss=True)
    report = load_weights(aux, tmp_path / "plain.pth")
    assert report.partial and not report.skipped and all(k.startswith("aux_classifier.") for k in report.initialised)
    with pytest.raises(ValueError, match="strict load refused.*newly initialised"):
        load_weights(aux, tmp_path / "plain.pth", strict=True)


def test_backbone_weights_leave_the_head_alone(tmp_path):
    backbone = _tiny("resnet18")
    torch.save({**backbone.state_dict(), "fc.weight": torch.zeros(10, 32), "fc.bias": torch.zeros(10)},
               tmp_path / "r18.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=WeightsWarning)  # an expected partial load: no warning
        for name in ("deeplabv3_resnet18", "deeplabv3plus_resnet18"):
            model = _created(name, num_classes=3, **TINY, backbone_weights=tmp_path / "r18.pth")
            report = model.weights_report
            assert report.skipped == ("fc.weight", "fc.bias") and not report.partial
            assert report.mean is not None  # a classifier's file: torchvision's or timm's ImageNet weights
            assert set(report.loaded).isdisjoint(report.initialised)
            weights = {k for k in model.state_dict() if "num_batches" not in k}
            assert weights == {k for k in report.loaded + report.initialised if "num_batches" not in k}
            assert "into the backbone" in str(report)


def test_create_arguments_and_both_files(tmp_path):
    assert "weights" not in model_arguments("deeplabv3_resnet50")  # create's, not the builders'
    with pytest.raises(TypeError, match="and weights, backbone_weights"):
        create("resnet18", colour=1)
    with pytest.raises(ValueError, match="not both"):
        create("resnet18", weights="a.pth", backbone_weights="b.pth")


def _bad_files(tmp_path):
    from safetensors.torch import save_file

    files = {}
    files["pickled module"] = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), files["pickled module"])
    files["garbage"] = tmp_path / "garbage.pth"
    files["garbage"].write_bytes(b"not a checkpoint at all")
    files["truncated safetensors"] = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(3)}, files["truncated safetensors"])
    files["truncated safetensors"].write_bytes(files["truncated safetensors"].read_bytes()[:-4])
    files["truncated pth"] = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(3)}, files["truncated pth"])
    files["truncated pth"].write_bytes(files["truncated pth"].read_bytes()[:-30])
    files["a list"] = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], files["a list"])
    files["non-tensor values"] = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(2), "note": "hello"}, files["non-tensor values"])
    return files


@pytest.mark.parametrize("kind, match", [
    ("pickled module", "holds pickled Python objects \\(it holds a torch.nn.modules.linear.Linear\\)"),
    ("garbage", "neither a torch.save file nor a safetensors file"), ("truncated pth", "corrupt torch.save file"),
    ("truncated safetensors", "not a readable safetensors"), ("a list", "holds list, not a state_dict"),
    ("non-tensor values", "non-tensor entries"),
])
def test_unreadable_files_are_named(tmp_path, kind, match):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ValueError, match=match) as error:
        create("resnet18", **TINY, weights=path)
    assert repr(str(path)) in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file '.*nope.pth' does not exist"):
        create("resnet18", **TINY, weights=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="is a directory"):
        create("resnet18", **TINY, backbone_weights=tmp_path)
    with pytest.raises(TypeError, match="weights path must be a str"):
        read_state_dict(3)


def test_files_that_do_not_fit(tmp_path):
    torch.save(_tiny("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18\.pth.*ResNet-18 weights.*does not fit|ResNet-18.*a ResNet-50"):
        create("resnet50", **TINY, weights=tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="conv1.weight is \\(4, 3, 7, 7\\) in the file, \\(8, 3, 7, 7\\)"):
        create("resnet18", width_multiplier=1 / 8, weights=tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="the model's backbone is a VGG-16 trunk"):
        create("dilation8_vgg16", num_classes=3, **TINY, backbone_weights=tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="ContextNet has no ResNet or VGG-16 backbone"):
        create("context_net", num_classes=3, **TINY, backbone_weights=tmp_path / "r18.pth")

    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="keys of no known layout \\(encoder.weight\\).*matches no layout"):
        create("deeplabv3_resnet18", num_classes=3, **TINY, weights=tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not ImageNet classification weights"):
        create("deeplabv3_resnet18", num_classes=3, **TINY, backbone_weights=tmp_path / "other.pth")

    # atrous's own DeepLab heads: the paper's into torchvision's and back, with the way out named.
    torch.save(_tiny("deeplabv3_resnet18").state_dict(), tmp_path / "paper.pth")
    torch.save(_tiny("deeplabv3_resnet18", head="torchvision").state_dict(), tmp_path / "tv.pth")
    with pytest.raises(ValueError, match="build the model with head='paper'"):
        create("deeplabv3_resnet18", num_classes=3, **TINY, head="torchvision", weights=tmp_path / "paper.pth")
    with pytest.raises(ValueError, match="need head='torchvision' and output_stride=8"):
        _created("deeplabv3_resnet18", num_classes=3, **TINY, weights=tmp_path / "tv.pth")
    with pytest.raises(ValueError, match="FCN head"):
        _created("fcn_resnet50", num_classes=3, **TINY, weights=tmp_path / "tv.pth")


def test_vgg_files_atrous_cannot_use_are_named(tmp_path):
    base = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(8, 8)}  # found by key
    torch.save({**base, "features.1.running_mean": torch.zeros(64)}, tmp_path / "bn.pth")
    with pytest.raises(ValueError, match="VGG with BatchNorm"):
        load_backbone_weights(_tiny("vgg16_dilation_frontend"), tmp_path / "bn.pth")
    assert "13" in classification_backbone(base)  # a VGG with another number of convs


def test_vgg_trunk_state_dicts_load_into_each_other(tmp_path):
    """An atrous VGG-16 front end's state_dict is a backbone file for Dilation8."""
    frontend = _tiny("vgg16_dilation_frontend")
    torch.save(frontend.state_dict(), tmp_path / "frontend.pth")
    model = _created("dilation8_vgg16", num_classes=3, **TINY, backbone_weights=tmp_path / "frontend.pth")
    assert model.weights_report.mean is None and model.weights_report.target == "trunk"
    torch.testing.assert_close(model.trunk.fc6[0].weight, frontend.fc6[0].weight, rtol=0, atol=0)


def _old_name(key: str, plus: bool) -> str:
    """The name atrous gave ``key`` before DeepLab's head took torchvision's layout (written out by hand)."""
    if plus:
        return key.replace("aspp.convs.", "aspp.branches.")
    if key.startswith("classifier.0."):
        return "aspp." + key.removeprefix("classifier.0.").replace("convs.", "branches.", 1)
    return {"classifier.4.weight": "classifier.weight", "classifier.4.bias": "classifier.bias"}.get(key, key)


@pytest.mark.filterwarnings("ignore::atrous.models.RateWarning")  # a tiny input: the rates reach past it
@pytest.mark.parametrize("name", ["deeplabv3_resnet18", "deeplabv3plus_resnet18"])
def test_deeplab_runs_saved_before_the_head_layout_still_load(name, tmp_path):
    from atrous.engine.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    x = torch.randn(1, 3, 40, 40)
    model = calibrated(create_tiny(name), x)
    old = {_old_name(key, "plus" in name): value for key, value in model.state_dict().items()}
    assert any(key.startswith("aspp.branches.") for key in old)  # really the old names
    legacy = tmp_path / "legacy.pth"
    torch.save(old, legacy)
    for load in ("checkpoint", "weights"):
        fresh = create_tiny(name).eval()
        if load == "checkpoint":
            save_checkpoint(tmp_path / "run", _Renamed(old), meta={})
            load_checkpoint(tmp_path / "run", fresh)
        else:
            report = load_weights(fresh, legacy, strict=True)
            assert not report.partial
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


class _Renamed(torch.nn.Module):
    """A module whose state_dict is a given dict (what an old run saved)."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):
        return dict(self._state)


def test_integer_weights_are_a_wrong_file_not_a_precision(tmp_path):
    # load_state_dict would cast int8 into the float parameter without a word
    state = _tiny("resnet18").state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to(torch.int8)
    torch.save(state, tmp_path / "ints.pth")
    with pytest.raises(ValueError, match="layer1.0.conv1.weight holds torch.int8 in the file where the model holds "
                                         "torch.float32"):
        create("resnet18", **TINY, weights=tmp_path / "ints.pth")
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to(torch.float16)  # a precision: loads
    torch.save(state, tmp_path / "halves.pth")
    assert not create("resnet18", **TINY, weights=tmp_path / "halves.pth").weights_report.partial
