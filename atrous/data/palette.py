"""Colours for segmentation masks: the PASCAL VOC palette, index PNGs and overlays.

The palette is the one of the VOC devkit (Everingham et al. 2010): the bits of a class index are
spread over the high bits of R, G and B in turn, so neighbouring indices get distinct colours and
index 255 (ignore) is a pale grey. A mask saved with :func:`save_index_png` is a palette ("P")
PNG whose pixel values *are* the class indices, which is how VOC stores its ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from atrous._checks import check_int
from atrous._files import atomic_write

# Class indices are stored as the pixel values of 8-bit palette PNGs (VOC's ground truth and
# :func:`save_index_png`), and 255 is the ignore label, so a model predicts at most classes 0..254.
MAX_CLASSES = 255


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The VOC colour map.

    Args:
        num_colors: number of entries, 1..256.

    Returns:
        uint8 array ``(num_colors, 3)``; entry ``k`` is the RGB colour of class ``k``.
    """
    check_int(num_colors, "num_colors", low=1, high=256)
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(7, -1, -1):  # lowest three bits of the index go to the highest bit of R, G, B
            red |= (code & 1) << bit
            green |= ((code >> 1) & 1) << bit
            blue |= ((code >> 2) & 1) << bit
            code >>= 3
        palette[index] = (red, green, blue)
    return palette


def _as_index_array(mask: np.ndarray | torch.Tensor, name: str = "mask") -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W), got {tuple(mask.shape)}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise TypeError(f"{name} must hold integer class indices, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{name} values must be in 0..255 to fit a palette PNG, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


def colorize(mask: np.ndarray | torch.Tensor, *, palette: np.ndarray | None = None) -> np.ndarray:
    """Colour a mask of class indices.

    Args:
        mask: ``(H, W)`` integer class indices in 0..255.
        palette: ``(256, 3)`` uint8 colours; default :func:`voc_palette`.

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    return palette[_as_index_array(mask)]


def save_index_png(mask: np.ndarray | torch.Tensor, path: str | Path, *, palette: np.ndarray | None = None) -> Path:
    """Write a palette PNG whose pixel values are the class indices (the VOC convention).

    Args:
        mask: ``(H, W)`` integer class indices in 0..255.
        path: output file, written whole or not at all (:func:`atrous._files.atomic_write`);
            its folder must exist.
        palette: ``(256, 3)`` uint8 colours shown by image viewers; default :func:`voc_palette`.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist (the message names it).
    """
    from PIL import Image

    indices = _as_index_array(mask)
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if palette.shape != (256, 3):
        raise ValueError(f"palette must have shape (256, 3), got {palette.shape}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of path {str(path)!r} does not exist: {str(path.parent)!r}")
    picture = Image.frombytes("P", (indices.shape[1], indices.shape[0]), np.ascontiguousarray(indices).tobytes())
    picture.putpalette(palette.reshape(-1).tolist())
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))  # tmp has no .png suffix
    return path


def _as_rgb_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must have shape (3, H, W), got {tuple(image.shape)}")
        image = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be a (3, H, W) float tensor in [0, 1] or an (H, W, 3) uint8 array")
    return image


def overlay(
    image: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    *,
    palette: np.ndarray | None = None,
    ignore_index: int = 255,
    skip_background: bool = True,
) -> np.ndarray:
    """Blend class colours over an image.

    Args:
        image: ``(3, H, W)`` float tensor in [0, 1], or ``(H, W, 3)`` uint8 array.
        mask: ``(H, W)`` class indices.
        alpha: weight of the class colour, in [0, 1].
        palette: ``(256, 3)`` uint8 colours; default :func:`voc_palette`.
        ignore_index: pixels with this label are left as they are.
        skip_background: leave class-0 pixels as they are too.

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    rgb = _as_rgb_uint8(image)
    indices = _as_index_array(mask)
    if indices.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {indices.shape} does not match image size {rgb.shape[:2]}")
    colours = colorize(indices, palette=palette).astype(np.float32)
    blended = (1 - alpha) * rgb.astype(np.float32) + alpha * colours
    keep = indices == ignore_index
    if skip_background:
        keep |= indices == 0
    blended[keep] = rgb[keep]
    return np.round(blended).astype(np.uint8)
