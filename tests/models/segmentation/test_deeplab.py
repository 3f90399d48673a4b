"""DeepLab v3/v3+: the auxiliary FCN head (``aux_loss``), and DeepLab v3's layout against torchvision's
(its outputs with torchvision's weights: ``tests/models/test_weights_torchvision.py``)."""

import warnings

import pytest
import torch
from tiny_models import create_tiny
from torch import nn

from atrous.models import list_models, model_arguments
from atrous.models.segmentation import FCNHead

AUX = [name for name in list_models("segmentation") if "aux_loss" in model_arguments(name)]


def _quiet(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASPP rightly warns that tiny inputs are smaller than its rates
        return model(x)


def test_every_deeplab_offers_the_auxiliary_head():
    assert {"deeplabv3_resnet18", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3plus_resnet18",
            "deeplabv3plus_resnet50"} <= set(AUX)


@pytest.mark.parametrize("name", AUX)
def test_aux_head_reads_layer3_and_only_adds_a_second_output_in_training(name):
    torch.manual_seed(0)
    plain = create_tiny(name)
    torch.manual_seed(0)
    aux = create_tiny(name, aux_loss=True)
    assert isinstance(aux.aux_classifier, FCNHead)
    missing, unexpected = aux.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("aux_classifier.") for key in missing)
    x = torch.randn(2, 3, 48, 40)

    # Training: {"out", "aux"} at the input size; "out" is exactly the model without the head.
    torch.manual_seed(1)
    expected = _quiet(plain.train(), x)
    seen = {}
    layer3 = [module for key, module in aux.named_modules() if key.endswith("layer3")]
    hooks = [layer3[0].register_forward_hook(lambda m, args, out: seen.setdefault("layer3", out)),
             aux.aux_classifier.register_forward_pre_hook(lambda m, args: seen.setdefault("aux_input", args[0]))]
    torch.manual_seed(1)
    outputs = _quiet(aux.train(), x)
    for hook in hooks:
        hook.remove()
    assert len(layer3) == 1 and seen["aux_input"] is seen["layer3"]
    assert set(outputs) == {"out", "aux"} and outputs["aux"].shape == outputs["out"].shape == (2, 3, 48, 40)
    torch.testing.assert_close(outputs["out"], expected, rtol=0, atol=0)
    (outputs["out"].square().mean() + 0.4 * outputs["aux"].square().mean()).backward()
    missing = [n for n, p in aux.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing

    # Evaluation: the logits tensor alone, as without the head.
    torch.testing.assert_close(_quiet(aux.eval(), x), _quiet(plain.eval(), x), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_aux_loss_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="aux_loss must be True or False"):
        create_tiny("deeplabv3_resnet18", aux_loss=bad)


POOLING_BN = "classifier.0.convs.4.2."  # torchvision's image-pooling branch: AvgPool, conv, BN, ReLU


def test_registered_deeplabv3_has_torchvisions_keys(torchvision_models):
    """The paper's head (no 3x3 conv) leaves out torchvision's ``classifier.1``-``3``; every other key
    but the pooling branch's lines up, shapes included."""
    from atrous.models import create

    with torch.device("meta"):
        theirs = torchvision_models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                                     num_classes=21, aux_loss=True).state_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = create("deeplabv3_resnet101", num_classes=21, output_stride=8, aux_loss=True).state_dict()
    extra_conv = {k for k in theirs if k.startswith(("classifier.1.", "classifier.2.", "classifier.3."))}
    pooling = {k for k in theirs if k.startswith(("classifier.0.convs.4.1.", POOLING_BN))}
    assert set(theirs) - set(ours) == extra_conv | pooling
    assert set(ours) - set(theirs) == {"classifier.0.convs.4.conv.weight", "classifier.0.convs.4.conv.bias"}
    assert all(ours[k].shape == theirs[k].shape for k in set(ours) & set(theirs))


def test_torchvision_head_has_torchvisions_keys_and_modules(torchvision_models):
    """``head="torchvision"``: key for key, shape for shape torchvision's, dropout 0.5 after ASPP
    (test_weights_torchvision.py checks the outputs)."""
    from atrous.models import create

    with torch.device("meta"):
        theirs = torchvision_models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                    num_classes=21, aux_loss=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torchvision's rates are the paper's at output stride 8
            ours = create("deeplabv3_resnet50", num_classes=21, output_stride=8, aux_loss=True, head="torchvision")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    dropouts = [m.p for m in ours.classifier.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [m.p for m in theirs.classifier.modules() if isinstance(m, nn.Dropout)] == [0.5]


@pytest.mark.parametrize("bad", ["torchvision_v2", None, 1])
def test_head_must_be_paper_or_torchvision(bad):
    with pytest.raises(ValueError, match="head must be one of \\('paper', 'torchvision'\\)"):
        create_tiny("deeplabv3_resnet18", head=bad)
