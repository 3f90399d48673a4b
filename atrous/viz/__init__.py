"""Plots of receptive fields and gridding; matplotlib is imported only when a plot is drawn."""

from atrous.viz.fields import plot_coverage, plot_erf

__all__ = ["plot_coverage", "plot_erf"]
