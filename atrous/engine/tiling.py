"""Images of any size: overlapping tiles, stitched so that the result equals the whole-image forward.

Each tile is run with ``overlap`` extra pixels of image on every side that has image beyond it,
and only its core (the tile less those margins) is kept. An output pixel depends on the input
within its receptive field only; when the margin covers how far that field reaches from the pixel
(its reach, from :func:`atrous.analysis.receptive_field`) the pixel sees in its tile exactly what
it sees in the whole image. Tile origins lie on the grid of the model's largest stride, so the
strided layers sample the same positions in a tile as in the whole image, and every tile but the
last on an axis is a multiple of that stride long, so each resize back to the input size scales by
the same factor as the whole image's. Then the stitched output equals the whole-image forward up to
float rounding (the overlap-discard scheme of overlap-save convolution; for networks, e.g. the
sliding-window inference of Chen et al. 2018, DeepLab's evaluation at 513 x 513 crops).

Two cases are not exact and are said so: a model with global image pooling (the image-level branch
of DeepLab v3/v3+'s ASPP sees the whole input, and in a tile only the tile), for which a
:class:`TilingWarning` is issued; and an image whose height or width is not a multiple of the
stride, where the whole-image forward itself resizes its coarse output by ``ceil(H / stride) / H``
rather than ``1 / stride`` and tiles cannot follow it (the outputs then differ by a fraction of a
stride near class boundaries). Test-time scales other than 1 resize each tile on its own and are
close to, not equal to, the whole-image result; flips are exact.

Memory is that of one tile's forward plus the stitched output, which callers keep small (class
indices rather than per-class scores: :func:`predict_tiled`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from atrous._checks import check_int

DEFAULT_TILE = 2048  # images larger than this on either side are tiled by default
MIN_TILE = 64
MAX_TILE = 16_384
FALLBACK_OVERLAP = 256  # the margin when the model's reach is unknown (global pooling, analysis failed)
FALLBACK_STRIDE = 32  # the alignment when the model's strides are unknown: that of every model here
ANALYSIS_SIZE = 1024  # input side the receptive field is analysed at (on the meta device: free)


class TilingWarning(UserWarning):
    """Tiled outputs will differ from the whole-image forward (global pooling, too small an overlap)."""


@dataclass(frozen=True)
class TileGeometry:
    """What a model's receptive field says about tiling it.

    Attributes:
        stride: the model's largest downsampling; tile origins are multiples of it.
        reach: pixels an output's field extends beyond the output on its farther side, or
            ``None`` when unknown (global pooling, or a model the analysis could not trace).
        global_pooling: the output depends on the whole input.
    """

    stride: int
    reach: int | None
    global_pooling: bool


@dataclass(frozen=True)
class Tiling:
    """Resolved tile settings: tiles ``tile`` pixels square, ``overlap`` pixels of margin, origins on ``stride``."""

    tile: int
    overlap: int
    stride: int

    @property
    def core(self) -> int:
        """Pixels of output kept from a tile with margins on both sides."""
        return self.tile - 2 * self.overlap


@dataclass(frozen=True)
class Tile:
    """One tile: the input window it runs on and the part of it kept, as image coordinates (end exclusive)."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    keep_rows: tuple[int, int]
    keep_cols: tuple[int, int]


def check_tile_options(tile: int, overlap: int | None) -> tuple[int, int | None]:
    """``tile`` 0 (never tile) or from :data:`MIN_TILE` to :data:`MAX_TILE`; ``overlap`` None or an int
    >= 0 with twice it below ``tile``; errors name the arguments and their flags."""
    check_int(tile, "tile (--tile)", low=0, high=MAX_TILE)
    if 0 < tile < MIN_TILE:
        raise ValueError(f"tile (--tile) must be 0 (never tile) or an int from {MIN_TILE} to {MAX_TILE:,}, got {tile}")
    if overlap is not None:
        check_int(overlap, "overlap (--tile-overlap)", low=0)
        if tile == 0:
            raise ValueError(f"overlap (--tile-overlap) {overlap} needs tiles; tile (--tile) 0 never tiles")
        if tile and 2 * overlap >= tile:
            raise ValueError(f"overlap (--tile-overlap) must be less than half of tile (--tile) {tile}, so that "
                             f"each tile keeps a core, got {overlap}")
    return tile, overlap


def _pooling_modules(model: nn.Module) -> bool:
    from atrous.models.segmentation.blocks import ASPPPooling

    pools = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, ASPPPooling)
    return any(isinstance(module, pools) for module in model.modules())


def tile_geometry(model: nn.Module, *, channels: int = 3) -> TileGeometry:
    """The stride, the reach and any global pooling of ``model``, from its analytic receptive field.

    The field is traced on the meta device at ``channels x 1024 x 1024`` (nothing is computed). The
    stride is the least common multiple of the integer strides of the layers below global pooling;
    the reach is ``max(padding, size - 1 - padding)`` of the field, rounded up. A model the analysis
    cannot trace gets :data:`FALLBACK_STRIDE` and an unknown reach.

    Args:
        model: a segmentation model ``(N, C, H, W) -> (N, K, H, W)``.
        channels: its input channels.
    """
    from atrous.analysis import receptive_field

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the analysis' notes (misaligned branches) say nothing about tiles
            field = receptive_field(model, (channels, ANALYSIS_SIZE, ANALYSIS_SIZE))
    except Exception:  # noqa: BLE001  any model may fail to trace; tiling then uses safe defaults
        return TileGeometry(FALLBACK_STRIDE, None, _pooling_modules(model))
    pooled = any(field.whole) or _pooling_modules(model)
    jumps = [j for row in field.layers for j in row.jump
             if row.op not in ("global_pool", "adaptive_pool") and float(j).is_integer() and 1 <= j < ANALYSIS_SIZE]
    stride = math.lcm(*(int(j) for j in jumps)) if jumps else 1
    if pooled:
        return TileGeometry(stride, None, True)
    reach = max(max(p, s - 1 - p) for p, s in zip(field.padding, field.size))
    return TileGeometry(stride, max(0, math.ceil(reach)), False)


def resolve_tiling(geometry: TileGeometry, *, tile: int = DEFAULT_TILE, overlap: int | None = None,
                   name: str = "the model") -> Tiling:
    """Tile settings for a model: ``tile`` rounded down and ``overlap`` up to its stride.

    ``overlap=None`` takes the model's reach when it fits in the tile (the result is then exact),
    else ``min(FALLBACK_OVERLAP, tile // 4)``. Issues a :class:`TilingWarning` when the result will
    differ from the whole-image forward (global pooling, an overlap below the reach) or may (an
    unknown reach).

    Raises:
        ValueError: bad ``tile`` or ``overlap``, or a tile that keeps no core at the model's stride.
    """
    check_tile_options(tile, overlap)
    if tile == 0:
        raise ValueError("tile (--tile) is 0: tiling is off")
    stride = geometry.stride
    size = tile // stride * stride
    if size < 2 * stride:
        raise ValueError(f"tile (--tile) {tile} is less than two strides of {name} ({stride} pixels); "
                         f"use at least {2 * stride}")

    def up(pixels: int) -> int:
        return -(-pixels // stride) * stride

    reach = geometry.reach
    if overlap is None:
        fits = reach is not None and size - 2 * up(reach) >= stride
        margin = up(reach) if fits else min(up(FALLBACK_OVERLAP), size // 4 // stride * stride)
    else:
        margin = up(overlap)
    if size - 2 * margin < stride:
        raise ValueError(f"overlap (--tile-overlap) {overlap} rounded up to {name}'s stride ({stride}) is "
                         f"{margin} pixels, which leaves no core in a {size}-pixel tile; lower it or raise --tile")
    if geometry.global_pooling:
        warnings.warn(f"{name} has global image pooling (e.g. ASPP's image-level branch): each tile pools only its "
                      f"own pixels, so tiled predictions differ from the whole-image forward; tile=0 (--tile 0) "
                      f"runs whole images", TilingWarning, stacklevel=2)
    elif reach is None:
        warnings.warn(f"the receptive field of {name} could not be traced, so whether a {margin}-pixel tile overlap "
                      f"covers it is unknown: tiled outputs may differ from the whole-image forward near tile seams",
                      TilingWarning, stacklevel=2)
    elif margin < reach:
        need = 2 * up(reach) + stride
        warnings.warn(f"tile overlap {margin} px is less than the {reach}-pixel reach of {name}'s receptive field: "
                      f"outputs near tile seams differ from the whole-image forward (tile >= {need} with the default "
                      f"overlap is exact)", TilingWarning, stacklevel=2)
    return Tiling(size, margin, stride)


def plan_axis(length: int, tiling: Tiling) -> list[tuple[int, int, int, int]]:
    """Windows along one axis: ``(start, end, keep_start, keep_end)`` of each tile.

    Every start is a multiple of the stride; the kept parts partition ``[0, length)``; a kept part
    is at least ``overlap`` from its window's ends except at the image's ends; every window is
    ``tile`` long except the last, which ends at ``length`` and is less than ``tile + stride`` long.
    """
    check_int(length, "length", low=1)
    tile, margin, stride = tiling.tile, tiling.overlap, tiling.stride
    if length <= tile:
        return [(0, length, 0, length)]
    windows, keep = [], 0
    while True:
        start = keep - margin if keep else 0
        if start + tile >= length:  # the last window: as long as a tile (plus < stride), ending at the border
            start = min(start, (length - tile) // stride * stride)
            windows.append((start, length, keep, length))
            return windows
        windows.append((start, start + tile, keep, start + tile - margin))
        keep = start + tile - margin


def plan_tiles(height: int, width: int, tiling: Tiling) -> list[Tile]:
    """The tiles of a ``height x width`` image, row by row (see :func:`plan_axis`)."""
    return [Tile((r0, r1), (c0, c1), (kr0, kr1), (kc0, kc1))
            for r0, r1, kr0, kr1 in plan_axis(height, tiling) for c0, c1, kc0, kc1 in plan_axis(width, tiling)]


def forward_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    tiling: Tiling,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``forward`` run tile by tile over ``images`` and stitched.

    Args:
        forward: ``(N, C, h, w) -> (N, K, h, w)`` at the input size (logits, probabilities, labels).
        images: ``(N, C, H, W)``; stays where it is, each tile is moved to ``device``.
        tiling: from :func:`resolve_tiling`.
        device: where ``forward`` runs (default: where ``images`` are).
        progress: a progress bar over the tiles.

    Returns:
        ``(N, K, H, W)`` of ``forward``'s dtype, on the device of ``images``.
    """
    height, width = images.shape[-2:]
    tiles = plan_tiles(height, width, tiling)
    bar = _bar(len(tiles)) if progress and len(tiles) > 1 else None
    out = None
    for tile in tiles:
        (r0, r1), (c0, c1), (kr0, kr1), (kc0, kc1) = tile.rows, tile.cols, tile.keep_rows, tile.keep_cols
        result = forward(images[..., r0:r1, c0:c1].to(device or images.device))  # (N, K, r1 - r0, c1 - c0)
        if tuple(result.shape[-2:]) != (r1 - r0, c1 - c0):
            raise ValueError(f"forward returned size {tuple(result.shape[-2:])} for a {r1 - r0}x{c1 - c0} tile; "
                             f"tiling needs outputs at the input size")
        if out is None:
            out = torch.empty((*result.shape[:-2], height, width), dtype=result.dtype, device=images.device)
        out[..., kr0:kr1, kc0:kc1] = result[..., kr0 - r0 : kr1 - r0, kc0 - c0 : kc1 - c0]
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return out


def _bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the "train" extra; tiling works without the bar
        return None
    return tqdm(total=total, desc="tiles", unit="tile", leave=False, dynamic_ncols=True)


class Tiler:
    """Decides per image whether to tile and runs the tiles; the model is analysed on first use.

    Args:
        model: the segmentation model.
        tile: tile side in pixels; images larger on either side are tiled; 0 never tiles.
        overlap: margin in pixels (default: the model's reach, see :func:`resolve_tiling`).
        name: how warnings name the model.
    """

    def __init__(self, model: nn.Module, *, tile: int = DEFAULT_TILE, overlap: int | None = None,
                 name: str = "the model") -> None:
        self.model, self.name = model, name
        self.tile, self.overlap = check_tile_options(tile, overlap)
        self._tiling: Tiling | None = None

    def applies(self, height: int, width: int) -> bool:
        """Whether an image of this size is tiled."""
        return self.tile > 0 and max(height, width) > self.tile

    def tiling(self, channels: int = 3) -> Tiling:
        """The resolved settings (analysing the model the first time; warnings are issued then)."""
        if self._tiling is None:
            self._tiling = resolve_tiling(tile_geometry(self.model, channels=channels), tile=self.tile,
                                          overlap=self.overlap, name=self.name)
        return self._tiling

    def run(self, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *,
            device: torch.device | str | None = None, progress: bool = False) -> torch.Tensor:
        """:func:`forward_tiled` with this model's settings."""
        return forward_tiled(forward, images, self.tiling(images.shape[1]), device=device, progress=progress)


@torch.no_grad()
def predict_tiled(
    model: nn.Module,
    images: torch.Tensor,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Class indices ``(N, H, W)`` for ``images`` ``(N, 3, H, W)`` in [0, 1], computed in overlapping tiles.

    Only the class indices of each tile's core are kept, so memory is one tile's forward plus
    ``N x H x W`` int64 labels, whatever the image size. Equal to
    ``predict_probabilities(model, images, ...).argmax(1)`` as described in the module docstring.

    Args:
        model: segmentation model returning logits at its input size.
        images: ``(N, 3, H, W)`` in [0, 1].
        tile, overlap: see :class:`Tiler`; an image no larger than ``tile`` runs whole.
        flip, scales, mean, std: as :func:`atrous.engine.evaluate.predict_probabilities`.
        device: where the model runs (default: where ``images`` are).
    """
    from atrous.engine.evaluate import predict_labels

    return predict_labels(model, images, flip=flip, scales=scales, mean=mean, std=std,
                          tiler=Tiler(model, tile=tile, overlap=overlap), device=device)
