"""Joint transforms keep image and mask aligned: checked on images whose pixels spell out their labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atrous.data import Compose, RandomCrop, RandomHorizontalFlip, RandomScale, train_transform


def _labelled_pair(seed: int = 0, height: int = 48, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 blocks of random labels 0..9; image channel 0 is label / 10, the others a left-right ramp."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 10, size=(height // 16, width // 16))
    mask = torch.from_numpy(np.kron(blocks, np.ones((16, 16), np.int64)))
    ramp = torch.linspace(0, 1, width).expand(height, width)
    image = torch.stack([mask.float() / 10, ramp, torch.zeros(height, width)])
    return image, mask


def _aligned(image: torch.Tensor, mask: torch.Tensor) -> bool:
    """Interior pixels (5x5 neighbourhood of one label) must show their label in channel 0; padding must be black.

    The 2-pixel band at label edges is left out: there bilinear (antialiased when shrinking) blends neighbours.
    """
    labels = mask.numpy()
    padded = np.pad(labels, 2, constant_values=-1)  # pixels near the border: neighbours unknown, not interior
    rows, cols = labels.shape
    neighbours = np.stack([padded[dy : dy + rows, dx : dx + cols] for dy in range(5) for dx in range(5)])
    interior = (neighbours == labels).all(axis=0) & (labels != 255)
    decoded = np.round(image[0].numpy() * 10)
    ignore_is_black = np.allclose(image.numpy()[:, labels == 255], 0.0)
    return interior.sum() > 0 and bool((decoded[interior] == labels[interior]).all()) and ignore_is_black


def test_the_alignment_check_catches_a_misaligned_pair():
    image, mask = _labelled_pair()
    assert _aligned(image, mask)
    assert not _aligned(image.flip(-1), mask)
    assert not _aligned(image[:, 3:], mask[:-3])
    assert not _aligned(image[:, :, 3:], mask[:, :-3])


@pytest.mark.parametrize("seed", range(6))
def test_training_transform_keeps_image_and_mask_aligned(seed):
    image, mask = _labelled_pair(seed)
    transform = train_transform(48, scale_range=(0.5, 2.0), generator=torch.Generator().manual_seed(seed))
    for _ in range(5):
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48) and out_mask.dtype == torch.int64
        assert _aligned(out_image, out_mask)
        assert set(np.unique(out_mask.numpy())) <= set(range(10)) | {255}


def test_scale_by_two_is_pixel_replication_for_the_mask():
    image, mask = _labelled_pair(height=16, width=32)
    out_image, out_mask = RandomScale((2.0, 2.0))(image, mask)
    assert out_image.shape == (3, 32, 64)
    np.testing.assert_array_equal(out_mask.numpy(), np.repeat(np.repeat(mask.numpy(), 2, axis=0), 2, axis=1))


def test_crop_pads_with_zero_and_ignore():
    image, mask = _labelled_pair(height=16, width=32)
    out_image, out_mask = RandomCrop((20, 40), generator=torch.Generator().manual_seed(0))(image, mask)
    assert out_mask.shape == (20, 40)
    assert (out_mask == 255).sum() == 20 * 40 - 16 * 32
    torch.testing.assert_close(out_mask[:16, :32], mask)  # smaller than the crop: padded bottom-right, kept whole
    assert (out_image[:, 16:] == 0).all() and (out_image[:, :, 32:] == 0).all()


def test_crop_is_a_window_of_the_input():
    mask = torch.arange(30 * 40).reshape(30, 40)
    image = (mask.float() / mask.numel()).expand(3, 30, 40)
    out_image, out_mask = RandomCrop(10, generator=torch.Generator().manual_seed(3))(image, mask)
    top, left = divmod(int(out_mask[0, 0]), 40)
    torch.testing.assert_close(out_mask, mask[top : top + 10, left : left + 10])
    torch.testing.assert_close(out_image, image[:, top : top + 10, left : left + 10])


def test_flip_probability_one_and_zero():
    image, mask = _labelled_pair()
    flipped_image, flipped_mask = RandomHorizontalFlip(1.0)(image, mask)
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(flipped_mask, mask.flip(-1))
    same_image, same_mask = RandomHorizontalFlip(0.0)(image, mask)
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)
    assert not any(isinstance(step, RandomHorizontalFlip) for step in train_transform(8, flip=False).transforms)


def test_same_generator_seed_same_output():
    image, mask = _labelled_pair()
    first = train_transform(32, generator=torch.Generator().manual_seed(5))(image, mask)
    second = train_transform(32, generator=torch.Generator().manual_seed(5))(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 1.0))
    with pytest.raises(ValueError, match="size"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="p must"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match="transform"):
        Compose([RandomCrop(4), "flip"])
    with pytest.raises(ValueError, match="differ"):
        RandomCrop(4)(torch.zeros(3, 8, 8), torch.zeros(8, 9, dtype=torch.int64))
    with pytest.raises(TypeError, match="image"):
        RandomCrop(4)(torch.zeros(8, 8), torch.zeros(8, 8, dtype=torch.int64))
