"""Key layouts of other projects' checkpoints, and how they map onto atrous's modules.

Recognised from the keys alone:

- ResNet classification weights, torchvision's and timm's alike (``conv1``, ``bn1``, ``layer1``-``4``,
  ``fc``; He et al. 2016): atrous's ``ResNet`` has the same names, without ``fc``.
- VGG-16 classification weights (Simonyan & Zisserman 2015): torchvision's ``features.N`` and
  ``classifier.0/3/6`` (fc6, fc7, fc8 as ``Linear``), timm's ``features.N`` and
  ``pre_logits.fc1/fc2`` (fc6, fc7 already convolutions) and ``head.fc``.
- anything keyed like an atrous model, which includes torchvision's DeepLab v3 and FCN segmentation
  models (their ``backbone``, ``classifier`` and ``aux_classifier`` are atrous's names).

VGG-16's fc6 and fc7 become convolutions as the dilation papers did. fc6 reads the 512 x 7 x 7 pool5
map, so its ``Linear`` weight reshaped to ``(4096, 512, 7, 7)`` is the same function as a 7x7 conv
(Long et al. 2015); at output stride 8 that conv reads every 4th position: dilation 4 (Yu & Koltun
2016). DeepLab-LargeFOV (Chen et al. 2015) keeps a 3x3 kernel at rate 12 with 1,024 filters: taps 0,
3 and 6 of the 7x7 kernel ("subsampled by simple decimation", the paper's words) and every 4th of the
4,096 filters; fc7 keeps the same 1,024 rows and columns. Which 1,024 filters DeepLab's released
initialisation kept the paper does not say; every 4th is atrous's rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

CLASSIFICATION = "torchvision/timm ImageNet classification layout"
RESNET_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
                 ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}
VGG16_STAGES = (2, 2, 3, 3, 3)  # 3x3 convs per stage; each stage ends with a max-pool


def _vgg16_feature_names() -> dict[int, str]:
    """torchvision's ``features`` index of each VGG-16 conv -> the ``VGG16Trunk`` module name."""
    names, index = {}, 0
    for stage, convs in enumerate(VGG16_STAGES):
        for conv in range(convs):
            names[index] = f"conv{stage + 1}.{2 * conv}"  # the trunk's stages alternate conv, ReLU
            index += 2  # conv, ReLU
        index += 1  # the pool
    return names


VGG16_FEATURES = _vgg16_feature_names()


def resnet_name(keys: Iterable[str], prefix: str = "") -> str | None:
    """``"ResNet-50"`` etc. for ResNet keys under ``prefix``, ``None`` when they are not a ResNet."""
    keys = {key[len(prefix):] for key in keys if key.startswith(prefix)}
    if "conv1.weight" not in keys or "layer1.0.conv1.weight" not in keys:
        return None
    blocks = []
    for stage in range(1, 5):
        indices = {key.split(".")[1] for key in keys if key.startswith(f"layer{stage}.")}
        blocks.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in keys
    depth = RESNET_DEPTHS.get((tuple(blocks), bottleneck))
    if depth is not None:
        return f"ResNet-{depth}"
    return f"ResNet with {tuple(blocks)} {'bottleneck' if bottleneck else 'basic'} blocks"


def find_backbone(keys: Iterable[str]) -> tuple[str, str] | None:
    """``(kind, prefix)`` of the ResNet (``"resnet"``) or VGG-16 trunk (``"vgg16"``) among a model's
    ``state_dict`` keys, e.g. ``("resnet", "backbone.")``; ``None`` if it has neither."""
    keys = list(keys)
    present = set(keys)
    for key in keys:
        if key.endswith("layer1.0.conv1.weight"):
            prefix = key[: -len("layer1.0.conv1.weight")]
            if prefix + "conv1.weight" in present:
                return "resnet", prefix
        if key.endswith("conv1.0.weight"):
            prefix = key[: -len("conv1.0.weight")]
            if prefix + "fc6.0.weight" in present:
                return "vgg16", prefix
    return None


@dataclass
class Backbone:
    """A checkpoint's feature extractor, keyed as atrous's ``ResNet`` or ``VGG16Trunk``.

    Attributes:
        kind: ``"resnet"`` or ``"vgg16"``.
        name: e.g. ``"ResNet-50"``.
        source: the layout in words.
        state: the tensors, keyed as the atrous module's ``state_dict``.
        classifier: the file's keys of the ImageNet classifier (never loaded).
        imagenet: trained on ImageNet-normalised input (a torchvision or timm layout).
        notes: conversions applied (VGG fc6/fc7).
    """

    kind: str
    name: str
    source: str
    state: dict[str, torch.Tensor]
    classifier: tuple[str, ...] = ()
    imagenet: bool = True
    notes: list[str] = field(default_factory=list)


def _vgg16(state: Mapping[str, torch.Tensor], fc: tuple[str, str], head: str, source: str) -> Backbone | str:
    """VGG-16's convs and fc6/fc7 (``fc`` names the file's fc6, fc7 modules; ``head`` its classifier)."""
    features = [key.split(".") for key in state if key.startswith("features.")]
    indices = sorted({int(parts[1]) for parts in features if len(parts) == 3 and parts[1].isdigit()})
    if any(key.startswith("features.") and key.endswith("running_mean") for key in state):
        return "VGG with BatchNorm (such as vgg16_bn); atrous's VGG-16 trunks have no BatchNorm"
    expected = [f"features.{i}.{p}" for i in sorted(VGG16_FEATURES) for p in ("weight", "bias")]
    if indices != sorted(VGG16_FEATURES) or any(key not in state for key in expected):
        return f"a VGG with {len(indices)} convolutions; atrous's trunks are VGG-16's 13"
    out = {f"{VGG16_FEATURES[i]}.{p}": state[f"features.{i}.{p}"] for i in indices for p in ("weight", "bias")}
    channels = out["conv5.4.weight"].shape[0]
    notes = []
    for target, key in zip(("fc6", "fc7"), fc):
        weight, bias = state.get(f"{key}.weight"), state.get(f"{key}.bias")
        if weight is None or bias is None:
            return f"VGG-16 without {key} (fc6 and fc7 are part of the trunk)"
        if weight.ndim == 2:  # torchvision's Linear on the flattened (C, 7, 7) pool5 map, or fc7's 4096
            inputs = channels if target == "fc6" else weight.shape[1]
            kernel = round((weight.shape[1] / inputs) ** 0.5)
            if inputs * kernel * kernel != weight.shape[1]:
                return f"VGG-16 whose {key} takes {weight.shape[1]} inputs, not {channels} x k x k"
            weight = weight.reshape(weight.shape[0], inputs, kernel, kernel)
            notes.append(f"{key} (Linear) reshaped to a {kernel}x{kernel} conv {target}")
        out[f"{target}.0.weight"], out[f"{target}.0.bias"] = weight, bias
    classifier = tuple(key for key in state if key.startswith(head))
    return Backbone("vgg16", "VGG-16", source, out, classifier, notes=notes)


def classification_backbone(state: Mapping[str, torch.Tensor]) -> Backbone | str | None:
    """The backbone of an ImageNet classification checkpoint (or of a backbone-only one); a string
    saying why when it looks like one atrous cannot use; ``None`` when it is no such checkpoint."""
    name = resnet_name(state)
    if name is not None:
        classifier = tuple(key for key in state if key.startswith("fc."))
        body = {key: value for key, value in state.items() if not key.startswith("fc.")}
        if classifier:
            return Backbone("resnet", name, CLASSIFICATION, body, classifier)
        return Backbone("resnet", name, "atrous ResNet layout", body, imagenet=False)
    if "features.0.weight" in state and "classifier.0.weight" in state:
        return _vgg16(state, ("classifier.0", "classifier.3"), "classifier.6.", CLASSIFICATION)
    if "features.0.weight" in state and "pre_logits.fc1.weight" in state:
        return _vgg16(state, ("pre_logits.fc1", "pre_logits.fc2"), "head.", CLASSIFICATION)
    if "conv1.0.weight" in state and "fc6.0.weight" in state:
        return Backbone("vgg16", "VGG-16", "atrous VGG16Trunk layout", dict(state), imagenet=False)
    return None


def segmentation_backbone(state: Mapping[str, torch.Tensor]) -> Backbone | None:
    """The ``backbone.*`` ResNet of a segmentation checkpoint (torchvision's DeepLab v3 / FCN, or atrous's)."""
    name = resnet_name(state, "backbone.")
    if name is None:
        return None
    body = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    rest = tuple(key for key in state if not key.startswith("backbone."))
    whole, imagenet = describe(state)
    return Backbone("resnet", name, f"backbone of {whole}", body, rest, imagenet=imagenet)


def fit_vgg_fc(backbone: Backbone, shapes: Mapping[str, torch.Size]) -> None:
    """Decimate fc6/fc7 to a trunk whose fc6 is smaller (DeepLab-LargeFOV: 3x3 at rate 12, 1,024 wide).

    fc6 ``(O, C, K, K)`` -> ``(o, C, k, k)`` keeps every ``O / o``-th filter and every ``(K - 1) / (k - 1)``-th
    tap; fc7 ``(O, O, 1, 1)`` keeps the same rows and columns. Shapes that do not divide are left for
    the caller's shape check to report.
    """
    fc6, target = backbone.state.get("fc6.0.weight"), shapes.get("fc6.0.weight")
    if fc6 is None or target is None or fc6.shape == target or len(target) != 4:
        return
    filters, channels, kernel = fc6.shape[0], fc6.shape[1], fc6.shape[2]
    out, inputs, taps = target[0], target[1], target[2]
    if inputs != channels or filters % out or taps < 2 or (kernel - 1) % (taps - 1):
        return
    every, step = filters // out, (kernel - 1) // (taps - 1)
    state = backbone.state
    state["fc6.0.weight"] = state["fc6.0.weight"][::every, :, ::step, ::step].contiguous()
    state["fc6.0.bias"] = state["fc6.0.bias"][::every].contiguous()
    if state["fc7.0.weight"].shape[:2] == (filters, filters):
        state["fc7.0.weight"] = state["fc7.0.weight"][::every, ::every].contiguous()
        state["fc7.0.bias"] = state["fc7.0.bias"][::every].contiguous()
    kept = ", ".join(str(i) for i in range(0, kernel, step))
    backbone.notes.append(f"fc6 decimated to {taps}x{taps} (taps {kept} of {kernel}) and every {every}th of "
                          f"{filters} filters ({out}), fc7 to the same {out} rows and columns")


def describe(state: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """A checkpoint in words, and whether it is in a torchvision/timm layout (trained on ImageNet-normalised input)."""
    backbone = classification_backbone(state)
    if isinstance(backbone, Backbone):
        return f"{backbone.name} weights ({backbone.source})", backbone.imagenet
    if isinstance(backbone, str):
        return backbone, True
    found = find_backbone(state)
    if found is None:
        keys = list(state)
        more = f", ... ({len(keys)} keys)" if len(keys) > 4 else ""
        return f"keys of no known layout ({', '.join(keys[:4])}{more})", False
    kind, prefix = found
    name = (resnet_name(state, prefix) if kind == "resnet" else "VGG-16") + " backbone"
    if prefix != "backbone.":
        return f"a model with a {name} ({prefix.rstrip('.') or 'at the top'}) and its own head", False
    if "classifier.0.convs.0.0.weight" in state:
        if "classifier.0.convs.4.2.running_mean" in state:
            head, torchvision = "torchvision's DeepLab v3 head", True
        else:
            head, torchvision = "atrous's DeepLab v3 head", False
    elif "classifier.0.weight" in state and "classifier.4.weight" in state and "classifier.1.running_mean" in state:
        head, torchvision = "an FCN head", True
    else:
        head, torchvision = "its own head", False
    return f"a segmentation model with a {name} and {head}", torchvision
