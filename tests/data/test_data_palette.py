"""The VOC palette, index PNGs and overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import colorize, overlay, read_mask, save_index_png, voc_palette


def test_palette_matches_the_voc_devkit_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 8: (64, 0, 0),
             15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in known.items():
        assert tuple(palette[index]) == colour, index
    assert len({tuple(colour) for colour in palette}) == 256
    np.testing.assert_array_equal(voc_palette(21), palette[:21])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_index_png_reads_back_as_the_same_indices(tmp_path, as_tensor):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, size=(9, 13))
    mask[2:4, 5:9] = 255
    path = save_index_png(torch.from_numpy(mask) if as_tensor else mask, tmp_path / "sub" / "pred.png")
    with Image.open(path) as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.array(picture), mask)
        colours = np.array(picture.getpalette()[: 3 * 256]).reshape(256, 3)
    np.testing.assert_array_equal(colours, voc_palette())
    np.testing.assert_array_equal(read_mask(path), mask)


def test_index_png_rejects_values_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        save_index_png(np.full((2, 2), 256), tmp_path / "a.png")
    with pytest.raises(TypeError, match="integer"):
        save_index_png(np.zeros((2, 2), np.float32), tmp_path / "a.png")
    with pytest.raises(ValueError, match="shape"):
        save_index_png(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.png")


def test_overlay_blends_classes_and_leaves_background_and_ignore():
    image = torch.full((3, 2, 3), 0.5)
    mask = torch.tensor([[0, 1, 255], [2, 2, 0]])
    gray = np.full((2, 3, 3), 128, np.uint8)
    np.testing.assert_array_equal(overlay(image, mask, alpha=0.0), gray)
    solid = overlay(image, mask, alpha=1.0)
    np.testing.assert_array_equal(solid[0, 1], [128, 0, 0])
    np.testing.assert_array_equal(solid[1, 0], [0, 128, 0])
    for row, col in ((0, 0), (0, 2), (1, 2)):
        np.testing.assert_array_equal(solid[row, col], [128, 128, 128])
    half = overlay(gray, mask.numpy(), alpha=0.5)
    np.testing.assert_array_equal(half[0, 1], [128, 64, 64])
    np.testing.assert_array_equal(overlay(gray, mask.numpy(), alpha=1.0, skip_background=False)[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colorize(mask)[1, 1], [0, 128, 0])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, mask, alpha=2.0)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, mask[:1], alpha=0.5)
