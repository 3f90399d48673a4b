"""Tiled prediction against its oracle, the whole-image forward: equal logits (float64) and labels on
a model without global pooling, a detectable difference when the overlap is below the receptive
field's reach, a warning for global image pooling, and the tile plan's integer properties."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import calibrated, create_tiny

from atrous.engine.evaluate import evaluate, predict_probabilities
from atrous.engine.tiling import (
    Tiler,
    Tiling,
    TilingWarning,
    check_tile_options,
    forward_tiled,
    plan_axis,
    plan_tiles,
    predict_tiled,
    resolve_tiling,
    tile_geometry,
)

TILE = 256
HEIGHT, WIDTH = 264, 552  # multiples of the stride (8), not of the tile: 2 x 5 tiles with plain_net's margin


@pytest.fixture(scope="module")
def model_and_image():
    """plain_net (no global pooling, a 155-pixel field reaching 81 pixels) with random BatchNorm, in
    float64, and an image of smooth blobs with noise on top."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    blobs = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 12, dtype=torch.float64, generator=generator),
                                            size=(HEIGHT, WIDTH), mode="bicubic", align_corners=False)
    image = (blobs + 0.1 * torch.rand(1, 3, HEIGHT, WIDTH, dtype=torch.float64, generator=generator)).clamp(0, 1)
    model = calibrated(create_tiny("plain_net").double(), image)
    return model, image


@given(
    length=st.integers(1, 3000),
    tile_strides=st.integers(2, 40),
    overlap_strides=st.integers(0, 19),
    stride=st.sampled_from([1, 2, 8, 16]),
)
def test_the_plan_partitions_the_axis_on_the_stride_grid(length, tile_strides, overlap_strides, stride):
    tile, overlap = tile_strides * stride, min(overlap_strides, (tile_strides - 1) // 2) * stride
    windows = plan_axis(length, Tiling(tile, overlap, stride))
    assert windows[0][2] == 0 and windows[-1][3] == length
    for (start, end, keep_start, keep_end), following in zip(windows, [*windows[1:], None]):
        assert start % stride == 0 and 0 <= start <= keep_start < keep_end <= end <= length
        assert end - start <= tile or (end == length and end - start < tile + stride)
        assert keep_start - start >= overlap or start == 0  # the margin, except at the image's ends
        assert end - keep_end >= overlap or end == length
        if following is not None:
            assert following[2] == keep_end  # kept parts meet: no gap, no pixel twice


def test_tiled_logits_equal_the_whole_image_forward(model_and_image):
    model, image = model_and_image
    tiling = resolve_tiling(tile_geometry(model), tile=TILE)
    tiles = plan_tiles(HEIGHT, WIDTH, tiling)
    assert len({tile.cols for tile in tiles}) >= 4 and len({tile.rows for tile in tiles}) >= 2
    with torch.no_grad():
        whole, tiled = model(image), forward_tiled(model, image, tiling)
    assert whole.abs().amax() > 1 and whole.std(dim=(2, 3)).amin() > 0.1  # an output that varies over the image
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_tiled_labels_equal_the_whole_image_argmax_with_flip(model_and_image):
    model, image = model_and_image
    images = torch.cat([image, image.flip(-2)])  # a batch of two
    expected = predict_probabilities(model, images, flip=True).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no global pooling and the default overlap: no warning
        labels = predict_tiled(model, images, tile=TILE, flip=True)
    assert labels.dtype == torch.int64
    assert labels.flatten().bincount().sort().values[-2] > labels.numel() / 10  # two classes at least
    assert torch.equal(labels, expected)


def test_an_overlap_below_the_reach_warns_and_differs(model_and_image):
    model, image = model_and_image
    with pytest.warns(TilingWarning, match="less than the 81-pixel reach"):
        tiling = resolve_tiling(tile_geometry(model), tile=TILE, overlap=16)
    with torch.no_grad():
        difference = (forward_tiled(model, image, tiling) - model(image)).abs().amax()
    assert difference > 1e-2  # the equality above is no accident of the model


def test_sizes_off_the_stride_grid_equal_the_whole_image_outside_the_last_tiles(model_and_image):
    model, image = model_and_image
    height, width = HEIGHT - 5, WIDTH - 3
    labels = predict_tiled(model, image[..., :height, :width], tile=TILE)
    assert labels.shape == (1, height, width)
    # The whole-image forward of an image off the stride grid resizes its coarse output by ceil(H / 8) / H, not
    # 1 / 8, which tiles cannot follow. Every tile but the last of a row or column is on the grid, so there the
    # labels are those of the whole forward of the larger on-grid image this one is cut from.
    tiling = resolve_tiling(tile_geometry(model), tile=TILE)
    rows, cols = plan_axis(height, tiling)[-1][2], plan_axis(width, tiling)[-1][2]
    expected = predict_probabilities(model, image).argmax(1)
    assert rows > 100 and cols > 300
    assert torch.equal(labels[:, :rows, :cols], expected[:, :rows, :cols])


@pytest.mark.filterwarnings("ignore::atrous.models.RateWarning")  # tiny tiles: ASPP's rates reach past them
def test_global_image_pooling_warns():
    model = create_tiny("deeplabv3_resnet18", output_stride=16).eval()
    assert tile_geometry(model).global_pooling
    with pytest.warns(TilingWarning, match="global image pooling"):
        labels = predict_tiled(model, torch.rand(1, 3, 72, 136), tile=64)
    assert labels.shape == (1, 72, 136)


def test_evaluate_with_tiles_scores_as_whole_images(model_and_image):
    model, image = model_and_image

    class Images(torch.utils.data.Dataset):
        num_classes = 3

        def __len__(self):
            return 2

        def __getitem__(self, index):
            x = image[0] if index == 0 else image[0].flip(-1)
            return x, torch.randint(0, 3, x.shape[-2:], generator=torch.Generator().manual_seed(index))

    whole = evaluate(model, Images(), batch_size=2, tile=0)
    tiled = evaluate(model, Images(), batch_size=2, tile=TILE)
    assert tiled["confusion"] == whole["confusion"]


def test_only_images_larger_than_the_tile_are_tiled(model_and_image):
    tiler = Tiler(model_and_image[0], tile=TILE)
    assert not tiler.applies(TILE, TILE) and tiler.applies(TILE + 1, 10)
    assert not Tiler(model_and_image[0], tile=0).applies(10_000, 10_000)


@pytest.mark.parametrize(("tile", "overlap", "name"), [
    (-1, None, "--tile"), (32, None, "--tile"), (100_000, None, "--tile"), (256, -1, "--tile-overlap"),
    (256, 128, "--tile-overlap"), (True, None, "--tile"),
])
def test_bad_tile_options_name_the_flag(tile, overlap, name):
    with pytest.raises((ValueError, TypeError), match=name):
        check_tile_options(tile, overlap)


def test_a_model_the_analysis_cannot_trace_tiles_with_defaults_and_a_warning():
    class ThroughNumPy(torch.nn.Module):  # leaves torch, which the meta-device trace cannot follow
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(torch.from_numpy(np.tanh(x.numpy())))

    model = ThroughNumPy().eval()
    geometry = tile_geometry(model)
    assert geometry.reach is None and not geometry.global_pooling
    image = torch.rand(1, 3, 80, 200)
    with pytest.warns(TilingWarning, match="could not be traced"):
        labels = predict_tiled(model, image, tile=64)
    assert torch.equal(labels, predict_probabilities(model, image).argmax(1))  # pointwise: any tiling is exact
