"""Training configuration: one dataclass, validated up front so mistakes fail before work starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from atrous._checks import check_bool, check_float, check_int, is_number
from atrous.data.palette import MAX_CLASSES

OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1.5e-3, "sgd": 0.01}
# 1: AdamW 3e-3 by default, context_net decoder C/4 and C/2, float32 if precision is absent;
# 2: 20 epochs and background weight 1 by default (the digits recipe then lived in the CLI).
# The fine-tuning fields (weights, backbone_weights, freeze_bn, backbone_lr_scale, aux_weight) came
# without a bump: their defaults train as every earlier run did (no run could train an auxiliary head).
CONFIG_VERSION = 3
DEFAULT_AUX_WEIGHT = 0.5  # torchvision's reference recipe
PRECISIONS = ("auto", "fp32", "bf16")
_OPTIONAL = ("crop_size", "num_classes", "train_images", "val_images")
_INT_RANGES = {  # bounds that no real run reaches, so a crafted config cannot ask for absurd work
    "epochs": (1, 100_000), "batch_size": (1, 65_536), "crop_size": (8, 65_536), "num_classes": (1, MAX_CLASSES),
    "train_images": (1, 10**8), "val_images": (1, 10**8), "workers": (0, 256), "seed": (0, 2**32 - 1),
    "config_version": (1, CONFIG_VERSION),
}
_FLOAT_RANGES = {  # name: (low, high, low excluded)
    "lr": (0.0, 1e3, True), "weight_decay": (0.0, 1e3, False), "background_weight": (0.0, 1e3, True),
    "momentum": (0.0, 1.0, False), "poly_power": (0.0, 100.0, False), "backbone_lr_scale": (0.0, 1e3, False),
    "aux_weight": (0.0, 1e3, False),
}
_OPTIONAL_FLOATS = ("lr", "aux_weight")
_WEIGHT_FILES = ("weights", "backbone_weights")
# What `atrous train --data FOLDER` changes from the digits defaults of TrainConfig()
FOLDER_PRESET = {"epochs": 20, "background_weight": 1.0, "crop_size": 320, "scale_range": (0.5, 2.0), "flip": True,
                 "workers": 2}


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved with every checkpoint.

    Attributes:
        data: ``"digits"`` (built in) or a folder in the VOC or ``{train,val}/{images,masks}`` layout.
        model: a registered segmentation model name.
        epochs: passes over the training set.
        batch_size: images per optimizer step, summed over all processes.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum, the DeepLab recipe).
        background_weight: loss weight of class 0 (background) relative to 1 for every other
            class; below 1 when background dominates the pixels, as on ``digits``.
        lr: peak learning rate; ``None`` picks the optimizer's default. Decays with the
            DeepLab "poly" schedule ``lr * (1 - step / total) ** poly_power``.
        crop_size: random crop (padded with the ignore label) for training; ``None`` keeps size.
        scale_range: random rescale range before cropping.
        flip: random horizontal flips (off for digits: a flipped digit is another shape).
        num_classes: override the class count inferred from the data.
        train_images, val_images: number of generated scenes (``digits`` only).
        workers: processes drawing training batches; 0 lets :func:`atrous.data.loader.batch_stream`
            choose (between steps when torch's threads fill every core, else one worker).
        seed: seeds data order, augmentation and initialisation.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"fp32"``, ``"bf16"`` (forward under ``torch.autocast`` in bfloat16; weights,
            optimizer state and loss stay float32) or ``"auto"``: bf16 where the hardware runs it
            natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs that support it), else fp32.
        model_kwargs: extra keyword arguments for the model builder.
        weights: a ``.pth`` or ``.safetensors`` file of the whole model's weights (torchvision's
            segmentation layout or atrous's) to start from; read when the run starts, never on resume.
        backbone_weights: the same for the backbone alone (a torchvision/timm ImageNet ResNet or VGG-16).
        freeze_bn: every BatchNorm layer stays in eval mode (its running statistics untouched) and
            its scale and shift are not trained: the usual choice when fine-tuning with small batches.
        backbone_lr_scale: the backbone's learning rate is ``lr * backbone_lr_scale`` (0.1 is the usual
            choice for a pretrained backbone under a new head); the poly schedule scales both.
        aux_weight: weight of the auxiliary head's loss, for a model built with ``aux_loss=True``;
            ``None`` means :data:`DEFAULT_AUX_WEIGHT` (0.5) there and is the only value allowed elsewhere.
    """

    data: str = "digits"
    model: str = "context_net"
    epochs: int = 6
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    background_weight: float = 0.3
    momentum: float = 0.9
    poly_power: float = 0.9
    crop_size: int | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    num_classes: int | None = None
    train_images: int | None = None
    val_images: int | None = None
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    backbone_weights: str | None = None
    freeze_bn: bool = False
    backbone_lr_scale: float = 1.0
    aux_weight: float | None = None
    config_version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.scale_range, (tuple, list)):
            raise TypeError(f"scale_range must be a pair (low, high), got {self.scale_range!r}")
        if len(self.scale_range) != 2:
            raise ValueError(f"scale_range must be a pair (low, high), got {self.scale_range!r}")
        self.scale_range = tuple(self.scale_range)
        for name in ("data", "model", "device"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name, (low, high) in _INT_RANGES.items():
            if getattr(self, name) is not None or name not in _OPTIONAL:
                check_int(getattr(self, name), name, low=low, high=high)
        for name, (low, high, low_open) in _FLOAT_RANGES.items():
            if getattr(self, name) is not None or name not in _OPTIONAL_FLOATS:
                check_float(getattr(self, name), name, low=low, high=high, low_open=low_open)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        low, high = self.scale_range
        allowed = f"scale_range must be (low, high) with 0 < low <= high <= 10, got {self.scale_range!r}"
        if not (is_number(low) and is_number(high)):
            raise TypeError(allowed)
        if not 0 < low <= high <= 10:  # NaN and infinities fail it too
            raise ValueError(allowed)
        check_bool(self.flip, "flip")
        check_bool(self.freeze_bn, "freeze_bn")
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise TypeError(f"model_kwargs must be a dict with string keys, got {self.model_kwargs!r}")
        for name in _WEIGHT_FILES:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a file path (a string) or None, got {value!r}")
            if value is not None and not value.strip():
                raise ValueError(f"{name} must name a .pth or .safetensors file, got an empty path")
            if name in self.model_kwargs:  # one way in, checked before the run folder exists and skipped on resume
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"model_kwargs must not hold {name!r}; set {name} ({flag}) instead")
        if self.weights is not None and self.backbone_weights is not None:
            raise ValueError("weights and backbone_weights: give one (the whole model's weights, or ImageNet "
                             "weights for its backbone), not both")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def aux_loss_weight(self) -> float:
        """The weight of an auxiliary head's loss: ``aux_weight``, else :data:`DEFAULT_AUX_WEIGHT`."""
        return self.aux_weight if self.aux_weight is not None else DEFAULT_AUX_WEIGHT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """A saved config, with the defaults of the version it was saved under.

        Raises:
            ValueError: naming ``source`` and the field that is missing, of the wrong type or out of range.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source}: the config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        # A run saved before the field is version 1, unless it has background_weight (which came with version 2)
        version = values.get("config_version", 2 if "background_weight" in values else 1)
        if version == 1:
            values = _version_1_defaults(values)
        if version in (1, 2):  # so such a run resumes, evaluates and predicts as it was trained
            values = {"epochs": 20, "background_weight": 1.0, **values, "config_version": CONFIG_VERSION}
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


def train_config(data: str = "digits", **overrides: Any) -> TrainConfig:
    """The recipe of ``atrous train --data DATA``: ``TrainConfig()`` for digits, :data:`FOLDER_PRESET` for a folder.

    Args:
        data: ``"digits"`` or a folder.
        **overrides: any :class:`TrainConfig` field, taking precedence over the preset.
    """
    preset = {} if data == "digits" else FOLDER_PRESET
    return TrainConfig(data=data, **{**preset, **overrides})


def _version_1_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The defaults a version-1 run was trained with, made explicit, and the version raised."""
    from atrous.models import narrow_decoder_widths

    values = {"precision": "fp32", **values}  # before precision: float32
    if values.get("optimizer", "adamw") == "adamw" and values.get("lr") is None:
        values["lr"] = 3e-3
    kwargs = dict(values.get("model_kwargs") or {})
    values["model_kwargs"] = {**narrow_decoder_widths(values.get("model", TrainConfig.model), kwargs), **kwargs}
    return values
