"""Plots of receptive fields, gridding and training curves; matplotlib is imported only when a plot is drawn."""

from atrous.viz.curves import plot_training_curves
from atrous.viz.fields import plot_coverage, plot_erf

__all__ = ["plot_coverage", "plot_erf", "plot_training_curves"]
