"""Causal dilated sequence models: WaveNet and TCN."""
