"""Causal dilated sequence models: WaveNet and TCN."""

from atrous.models.sequence.tcn import TCN, TCNConfig, TemporalBlock, tcn
from atrous.models.sequence.wavenet import GatedResidualLayer, WaveNet, WaveNetConfig, upsample_condition, wavenet

__all__ = [
    "TCN",
    "GatedResidualLayer",
    "TCNConfig",
    "TemporalBlock",
    "WaveNet",
    "WaveNetConfig",
    "tcn",
    "upsample_condition",
    "wavenet",
]
