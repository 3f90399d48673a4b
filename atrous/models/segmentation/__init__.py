"""Segmentation backbones, blocks, heads and presets."""
