"""VOC and generic folder datasets on tiny folders written with Pillow; every bad input names its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import FolderSegmentation, VOCSegmentation, build_dataset, detect_layout

HEIGHT, WIDTH = 12, 16


def _palette_png(indices: np.ndarray, path: Path) -> None:
    picture = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
    picture.putpalette([value for index in range(256) for value in (index, 255 - index, index // 2)])
    picture.save(path)


def _masks(count: int, num_labels: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = [rng.integers(0, num_labels, size=(HEIGHT, WIDTH)).astype(np.uint8) for _ in range(count)]
    for mask in masks:
        mask[0, :3] = 255  # some ignore pixels
    return masks


def make_voc(root: Path, stems_by_split: dict[str, list[str]], *, num_labels: int = 21) -> dict[str, np.ndarray]:
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    stems = sorted({stem for stems in stems_by_split.values() for stem in stems})
    masks = dict(zip(stems, _masks(len(stems), num_labels)))
    for stem, mask in masks.items():
        Image.fromarray((mask * 10).astype(np.uint8)).convert("RGB").save(root / "JPEGImages" / f"{stem}.jpg")
        _palette_png(mask, root / "SegmentationClass" / f"{stem}.png")
    for split, split_stems in stems_by_split.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in split_stems))
    return masks


def make_generic(root: Path, *, train_labels: int = 3, val_labels: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train: a grayscale PNG, an RGB BMP and an RGB JPEG; val: one RGB PNG. Masks are 'L' PNGs."""
    rng = np.random.default_rng(1)
    items = {}
    specs = [("train", "gray", "L", ".png"), ("train", "color", "RGB", ".bmp"), ("train", "photo", "RGB", ".jpg"),
             ("val", "only", "RGB", ".png")]
    for split, stem, mode, ext in specs:
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        shape = (HEIGHT, WIDTH) if mode == "L" else (HEIGHT, WIDTH, 3)
        image = rng.integers(0, 256, size=shape).astype(np.uint8)
        mask = _masks(1, train_labels if split == "train" else val_labels, seed=len(items))[0]
        Image.fromarray(image).save(root / split / "images" / f"{stem}{ext}")
        Image.fromarray(mask).save(root / split / "masks" / f"{stem}.png")
        items[stem] = (image, mask)
    return items


def test_voc_round_trip(tmp_path):
    masks = make_voc(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    train = VOCSegmentation(tmp_path, "train")
    assert train.stems == ["a", "b"] and train.num_classes == 21 and train.class_names[15] == "person"
    for index, stem in enumerate(train.stems):
        image, mask = train[index]
        assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
        np.testing.assert_array_equal(mask.numpy(), masks[stem])  # palette indices, not colours
        expected = np.repeat(masks[stem][None].astype(np.float32) * 10 / 255, 3, axis=0)
        valid = masks[stem][None].repeat(3, 0) != 255
        assert np.abs(image.numpy() - expected)[valid].mean() < 0.1  # JPEG is lossy
    assert len(VOCSegmentation(tmp_path, "val")) == 1


def test_voc_root_may_be_the_devkit_folder(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", {"val": ["x"]})
    assert VOCSegmentation(tmp_path, "val").stems == ["x"]
    assert detect_layout(tmp_path) == "voc"


def test_generic_round_trip_and_grayscale_as_rgb(tmp_path):
    items = make_generic(tmp_path)
    train = FolderSegmentation(tmp_path, "train")
    assert train.stems == ["color", "gray", "photo"] and train.num_classes == 3
    for index, stem in enumerate(train.stems):
        image, mask = train[index]
        source, expected_mask = items[stem]
        assert image.shape == (3, HEIGHT, WIDTH)
        np.testing.assert_array_equal(mask.numpy(), expected_mask)
        if stem == "gray":
            for channel in range(3):
                np.testing.assert_array_equal((image[channel] * 255).round().numpy(), source)
        if stem == "color":  # BMP is lossless
            np.testing.assert_array_equal((image * 255).round().permute(1, 2, 0).numpy(), source)


def test_num_classes_inferred_from_every_split_or_given(tmp_path):
    make_generic(tmp_path, train_labels=3, val_labels=6)
    assert FolderSegmentation(tmp_path, "train").num_classes == 6  # val has labels up to 5
    given = FolderSegmentation(tmp_path, "train", num_classes=9)
    assert given.num_classes == 9 and len(given.class_names) == 9


def test_build_dataset_detects_layouts(tmp_path):
    make_voc(tmp_path / "voc", {"train": ["a"]})
    make_generic(tmp_path / "generic")
    assert isinstance(build_dataset(str(tmp_path / "voc"), "train"), VOCSegmentation)
    assert isinstance(build_dataset(tmp_path / "generic", "val"), FolderSegmentation)
    assert build_dataset("digits", "val", num_images=3).num_classes == 11
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        build_dataset(str(tmp_path / "empty"), "train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(str(tmp_path / "nowhere"), "train")
    with pytest.raises(ValueError, match="num_classes"):
        build_dataset("digits", "val", num_classes=5)


def test_corrupt_image_names_the_file(tmp_path):
    make_generic(tmp_path)
    (tmp_path / "train" / "images" / "color.bmp").write_bytes(b"this is not a bitmap")
    dataset = FolderSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match="color.bmp"):
        dataset[0]


def test_truncated_mask_names_the_file(tmp_path):
    make_voc(tmp_path, {"train": ["a"]})
    mask_path = tmp_path / "SegmentationClass" / "a.png"
    mask_path.write_bytes(mask_path.read_bytes()[:60])
    with pytest.raises(ValueError, match="a.png"):
        VOCSegmentation(tmp_path, "train")[0]


def test_size_mismatch_names_both_files(tmp_path):
    make_generic(tmp_path)
    Image.fromarray(np.zeros((HEIGHT + 1, WIDTH), np.uint8)).save(tmp_path / "train" / "masks" / "gray.png")
    dataset = FolderSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match=r"gray\.png.*gray\.png") as error:
        dataset[dataset.stems.index("gray")]
    assert "images" in str(error.value) and "masks" in str(error.value)


def test_label_outside_classes_names_the_file(tmp_path):
    make_generic(tmp_path)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[3, 3] = 7
    Image.fromarray(mask).save(tmp_path / "train" / "masks" / "photo.png")
    dataset = FolderSegmentation(tmp_path, "train", num_classes=3)
    with pytest.raises(ValueError, match=r"photo\.png.*\[7\]"):
        dataset[dataset.stems.index("photo")]
    with pytest.raises(ValueError, match="photo.png"):
        dataset.validate()
    make_voc(tmp_path / "voc", {"train": ["a"]})
    _palette_png(np.full((HEIGHT, WIDTH), 30, np.uint8), tmp_path / "voc" / "SegmentationClass" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png.*\[30\]"):
        VOCSegmentation(tmp_path / "voc", "train")[0]


def test_colour_mask_is_rejected_with_its_name(tmp_path):
    make_generic(tmp_path)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(tmp_path / "val" / "masks" / "only.png")
    with pytest.raises(ValueError, match=r"only\.png.*mode RGB"):
        FolderSegmentation(tmp_path, "val", num_classes=3)[0]


def test_missing_folders_and_files_are_named(tmp_path):
    make_generic(tmp_path)
    with pytest.raises(FileNotFoundError, match="test"):
        FolderSegmentation(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="missing_root"):
        FolderSegmentation(tmp_path / "missing_root", "train")
    (tmp_path / "train" / "masks" / "photo.png").unlink()
    with pytest.raises(ValueError, match=r"masks.*photo"):
        FolderSegmentation(tmp_path, "train")

    make_voc(tmp_path / "voc", {"train": ["a", "b"]})
    (tmp_path / "voc" / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.jpg.*train\.txt"):
        VOCSegmentation(tmp_path / "voc", "train")
    with pytest.raises(FileNotFoundError, match=r"val\.txt.*\['train'\]"):
        VOCSegmentation(tmp_path / "voc", "val")


def test_bad_num_classes(tmp_path):
    make_generic(tmp_path)
    with pytest.raises(ValueError, match="num_classes"):
        FolderSegmentation(tmp_path, "train", num_classes=300)
