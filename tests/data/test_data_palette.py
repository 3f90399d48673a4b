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
    path = save_index_png(torch.from_numpy(mask) if as_tensor else mask, tmp_path / "pred.png")
    with Image.open(path) as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.array(picture), mask)
        colours = np.array(picture.getpalette()[: 3 * 256]).reshape(256, 3)
    np.testing.assert_array_equal(colours, voc_palette())
    np.testing.assert_array_equal(read_mask(path), mask)


def test_index_png_needs_its_folder_and_is_written_whole(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="sub"):
        save_index_png(np.zeros((2, 2), np.uint8), tmp_path / "sub" / "pred.png")
    assert list(tmp_path.iterdir()) == []  # no folder made behind the caller's back
    target = tmp_path / "pred.png"
    target.write_bytes(b"old")

    def full_disk(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="No space") as raised:
        save_index_png(np.zeros((2, 2), np.uint8), target)
    assert raised.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["pred.png"]


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


def test_max_classes_leaves_the_ignore_label_in_eight_bits():
    from atrous.data import IGNORE_INDEX
    from atrous.data.palette import MAX_CLASSES

    # classes 0..MAX_CLASSES-1 and the ignore label are all distinct pixel values of an 8-bit PNG
    assert MAX_CLASSES == IGNORE_INDEX == np.iinfo(np.uint8).max
