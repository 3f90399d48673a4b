"""Receptive-field, effective-receptive-field and gridding analysis of dilated networks.

``receptive_field`` computes the field of any model analytically; ``empirical_receptive_field``
measures the same thing by backpropagation; ``effective_receptive_field`` is Luo et al. 2016;
``gridding``, ``hdc_check`` and ``suggest_rates`` follow Wang et al. 2018 (HDC).
"""

from atrous.analysis.erf import effective_receptive_field, empirical_receptive_field
from atrous.analysis.gridding import gridding, hdc_check, suggest_rates
from atrous.analysis.receptive_field import ReceptiveField, receptive_field

__all__ = [
    "ReceptiveField",
    "effective_receptive_field",
    "empirical_receptive_field",
    "gridding",
    "hdc_check",
    "receptive_field",
    "suggest_rates",
]
