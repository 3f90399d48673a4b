"""Every image mode read to the numbers the models see, against values worked out by hand.

One reader serves training (folder datasets), ``atrous eval`` and ``atrous predict``; the tests write
tiny files of each mode with Pillow (a 16-bit colour PNG by hand, which Pillow cannot write) and
check pixel size limits, 16-bit masks and EXIF orientation.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import FolderSegmentation, read_image, read_mask
from atrous.engine.predict import read_rgb

SIXTEEN_BIT = np.array([[0, 1, 257, 32768], [65535, 65280, 1000, 40000]], np.uint16)


def _scaled(values: np.ndarray) -> np.ndarray:
    """16-bit values on the 8-bit scale, by the definition: v * 255 / 65535 in float64."""
    return values.astype(np.float64) * 255 / 65535


def _gray3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values)[..., None], 3, axis=2)


def _png_rgb16(values: np.ndarray, path: Path) -> None:
    """A 16-bit RGB PNG (colour type 2, bit depth 16), written from the PNG specification."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _with_orientation(picture: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    picture.save(path, exif=exif)


def test_eight_bit_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)
    alpha[0, 0] = 0  # fully transparent: its colour is still kept
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bilevel.png")
    for name, expected in [("gray", _gray3(rgb[..., 0])), ("rgb", rgb), ("rgba", rgb),
                           ("bilevel", _gray3(np.where(rgb[..., 0] > 127, 255, 0)))]:
        array = read_image(tmp_path / f"{name}.png")
        assert array.dtype == np.uint8 and array.shape == (5, 7, 3), name
        np.testing.assert_array_equal(array, expected, err_msg=name)


def test_palette_is_expanded_and_its_transparency_dropped(tmp_path):
    colours = [(0, 0, 0), (200, 10, 30), (5, 250, 120)]
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    picture = Image.fromarray(indices, "P")
    picture.putpalette([value for colour in colours for value in colour])
    picture.save(tmp_path / "palette.png", transparency=bytes([0, 128, 255]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns on converting palette transparency unless it is dropped
        array = read_image(tmp_path / "palette.png")
    np.testing.assert_array_equal(array, np.array(colours, np.uint8)[indices])


def test_cmyk_is_converted_by_pillows_formula(tmp_path):
    # Pillow: channel = (255 - K) - round(C * (255 - K) / 255). With K = 100: 155 - round(10 * 155 / 255 = 6.08) = 149,
    # 155 - round(121.57) = 33, 155 - round(18.24) = 137.
    Image.new("CMYK", (3, 2), (10, 200, 30, 100)).save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), np.full((2, 3, 3), (149, 33, 137), np.uint8))


@pytest.mark.parametrize("writer", ["fromarray", "frombytes"])
def test_sixteen_bit_grayscale_keeps_sixteen_bits(tmp_path, writer):
    path = tmp_path / "deep.png"
    if writer == "fromarray":
        picture = Image.fromarray(SIXTEEN_BIT)
    else:
        picture = Image.frombytes("I;16", SIXTEEN_BIT.shape[::-1], SIXTEEN_BIT.astype("<u2").tobytes())
    assert picture.mode == "I;16"
    picture.save(path)
    array = read_image(path)
    # 65535 -> 255, 32768 -> 127.50195 (not rounded: float32 keeps it), 257 -> 1, 1 -> 0.0039
    assert array.dtype == np.float32 and array.shape == (2, 4, 3)
    np.testing.assert_allclose(array, _gray3(_scaled(SIXTEEN_BIT)), rtol=1e-6, atol=0)
    assert array[0, 3, 0] == pytest.approx(127.50195, abs=1e-5) and array[1, 0, 0] == 255.0
    # what the model sees is v / 65535, from a dataset and from predict alike
    np.testing.assert_allclose(read_rgb(path).numpy(), np.repeat(SIXTEEN_BIT[None] / 65535, 3, axis=0), rtol=1e-6)


def test_sixteen_bit_photo_is_not_clipped(tmp_path):
    # the reported bug: values read as 8-bit saturate, so almost every pixel became 255
    values = np.random.default_rng(1).integers(0, 65536, size=(16, 16), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "photo.png")
    array = read_image(tmp_path / "photo.png")
    assert (array == 255).mean() < 0.01
    np.testing.assert_allclose(array[..., 0], _scaled(values), rtol=1e-6)


def test_sixteen_bit_colour_png_keeps_its_high_byte(tmp_path):
    values = np.array([[[65535, 32768, 0], [25900, 256, 255]]], np.uint16)
    _png_rgb16(values, tmp_path / "colour16.png")
    array = read_image(tmp_path / "colour16.png")
    # Pillow has no 16-bit colour mode; it keeps v // 256, within one 8-bit level of v * 255 / 65535
    np.testing.assert_array_equal(array, (values // 256).astype(np.uint8))
    assert np.abs(array - _scaled(values)).max() < 1


def test_integer_and_float_grayscale(tmp_path):
    Image.fromarray(SIXTEEN_BIT.astype(np.int32), "I").save(tmp_path / "int32.tif")
    np.testing.assert_allclose(read_image(tmp_path / "int32.tif"), _gray3(_scaled(SIXTEEN_BIT)), rtol=1e-6)
    Image.fromarray(np.array([[0, 70000]], np.int32), "I").save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide\.tif.*0\.\.70000.*0\.\.65535"):
        read_image(tmp_path / "wide.tif")

    fractions = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    Image.fromarray(fractions, "F").save(tmp_path / "float.tif")
    np.testing.assert_allclose(read_image(tmp_path / "float.tif"), _gray3([[0, 63.75], [127.5, 255]]), rtol=1e-6)
    Image.fromarray(fractions * 255, "F").save(tmp_path / "float255.tif")
    with pytest.raises(ValueError, match=r"float255\.tif.*0\.\.1"):
        read_image(tmp_path / "float255.tif")


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])  # 6: turn clockwise to view, 8: counter
def test_exif_orientation_is_applied_to_images_and_masks(tmp_path, orientation, turns):
    values = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    _with_orientation(Image.fromarray(values), tmp_path / "image.png", orientation)
    _with_orientation(Image.fromarray(values // 40), tmp_path / "mask.png", orientation)
    np.testing.assert_array_equal(read_image(tmp_path / "image.png"), _gray3(np.rot90(values, turns)))
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), np.rot90(values // 40, turns))


def test_exif_turned_image_beside_an_unturned_mask_says_so(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        _with_orientation(Image.fromarray(np.zeros((4, 6), np.uint8)), tmp_path / split / "images" / "a.png", 6)
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / split / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"4x6.*6x4.*EXIF orientation"):
        FolderSegmentation(tmp_path, "train")[0]


def test_pixel_limit_refuses_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"big\.png is 20x20 = 400 pixels, over the limit of 100 "):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=400).shape == (20, 20, 3)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=r"mask file .*mask\.png is 20x20"):
        read_mask(tmp_path / "mask.png", max_pixels=399)

    # Spoil the pixel data: reading it fails, but the limit answers first, from the header alone.
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start:start + 20] = b"\xff" * 20
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot read image file"):
        read_image(path)
    with pytest.raises(ValueError, match="over the limit"):
        read_image(path, max_pixels=100)


def test_pillows_own_limit_is_replaced_not_stacked(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow would warn above 50 pixels, raise above 100
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "a.png").shape == (20, 20, 3)
    assert Image.MAX_IMAGE_PIXELS == 50  # restored after the header was read


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError),
                                            ("100", TypeError)])
def test_bad_max_pixels_is_named(tmp_path, bad, error):
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(error, match=f"max_pixels .* must be an int >= 1, got {bad!r}"):
        read_image(tmp_path / "a.png", max_pixels=bad)


def test_sixteen_bit_masks_give_their_values_up_to_255(tmp_path):
    labels = np.array([[0, 3], [254, 255]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ok.png"), labels)
    labels[0, 0] = 300
    Image.fromarray(labels).save(tmp_path / "deep.png")
    expected = r"mask file \S*deep\.png has label 300; labels must be 0\.\.254 or 255 \(ignore\)"
    with pytest.raises(ValueError, match=expected):
        read_mask(tmp_path / "deep.png")


def _folder_dataset(root: Path, image: Image.Image, mask: np.ndarray) -> None:
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        image.save(root / split / "images" / "a.png")
        Image.fromarray(mask).save(root / split / "masks" / "a.png")


def test_dataset_with_a_label_300_mask_names_the_file(tmp_path):
    mask = np.zeros(SIXTEEN_BIT.shape, np.uint16)
    mask[1, 1] = 300
    _folder_dataset(tmp_path, Image.fromarray(SIXTEEN_BIT), mask)
    with pytest.raises(ValueError, match=r"masks/a\.png has label 300") as error:
        FolderSegmentation(tmp_path, "train")  # inferring num_classes reads the masks
    assert "num_classes" not in str(error.value)


def test_training_and_predict_see_the_same_sixteen_bit_image(tmp_path):
    _folder_dataset(tmp_path, Image.fromarray(SIXTEEN_BIT), np.ones(SIXTEEN_BIT.shape, np.uint8))
    dataset = FolderSegmentation(tmp_path, "train")
    image, _ = dataset[0]
    np.testing.assert_allclose(image.numpy(), np.repeat(SIXTEEN_BIT[None] / 65535, 3, axis=0), rtol=1e-6)
    assert torch.equal(image, read_rgb(tmp_path / "train" / "images" / "a.png"))
    with pytest.raises(ValueError, match=r"images/a\.png is 4x2 = 8 pixels, over the limit of 7"):
        FolderSegmentation(tmp_path, "train", num_classes=2, max_pixels=7)[0]


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from atrous.engine.checkpoint import save_checkpoint
    from atrous.models import create

    kwargs = {"width_multiplier": 0.25}
    torch.manual_seed(0)
    model = create("context_net", num_classes=2, **kwargs)
    meta = {"model": "context_net", "num_classes": 2, "model_kwargs": kwargs}
    save_checkpoint(tmp_path / "checkpoint", model, meta=meta)
    return tmp_path / "checkpoint"


def test_cli_predict_and_eval_use_the_same_reader(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import atrous.engine.predict as predict_module
    from atrous.cli.main import main

    values = np.random.default_rng(2).integers(0, 65536, size=(16, 16), dtype=np.uint16)
    root = tmp_path / "data"
    _folder_dataset(root, Image.fromarray(values), np.ones(values.shape, np.uint8))
    image_path = root / "val" / "images" / "a.png"
    seen = []
    real = predict_module.predict_labels

    def spy(model, images, **kwargs):
        seen.append(images)
        return real(model, images, **kwargs)

    monkeypatch.setattr(predict_module, "predict_labels", spy)

    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(image_path), "--out", str(tmp_path / "out")]) == 0
    np.testing.assert_allclose(seen[0][0].numpy(), np.repeat(values[None] / 65535, 3, axis=0), rtol=1e-6)
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(root), "--json"]) == 0
    capsys.readouterr()

    for command in (["predict", str(image_path), "--out", str(tmp_path / "out2")], ["eval", "--data", str(root)]):
        assert main([*command, "--checkpoint", str(tiny_checkpoint), "--max-pixels", "100"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "images/a.png is 16x16 = 256 pixels, over the limit of 100" in err
