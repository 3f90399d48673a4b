"""Names of the registered models, written out so that ``--help`` can list them without
importing torch and the model code; a test keeps them equal to :func:`atrous.models.list_models`."""

from __future__ import annotations

# task -> registered names, sorted as list_models(task=...) returns them
MODEL_NAMES: dict[str, tuple[str, ...]] = {
    "segmentation": (
        "context_net",
        "deeplabv1_largefov_vgg16",
        "deeplabv3_resnet101",
        "deeplabv3_resnet18",
        "deeplabv3_resnet50",
        "deeplabv3plus_resnet18",
        "deeplabv3plus_resnet50",
        "dilation8_vgg16",
        "fcn8s_vgg16",
        "fcn_resnet101",
        "fcn_resnet50",
        "gridding_net",
        "hdc_net",
        "plain_net",
    ),
    "backbone": ("resnet101", "resnet18", "resnet34", "resnet50", "vgg16_dilation_frontend"),
    "sequence": ("tcn", "wavenet"),
}
