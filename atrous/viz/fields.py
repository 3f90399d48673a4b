"""Pictures of receptive fields: the gridding coverage map and the effective receptive field.

The coverage map shows how many paths of a dilated stack reach each input offset, with the
holes of the gridding effect (Wang et al. 2018) in a colour of their own; the effective
receptive field is the gradient-magnitude map of Luo et al. 2016. Both are written as PNG with
matplotlib's Agg backend, imported when a plot is drawn so ``import atrous`` stays light, and
written whole or not at all (:func:`atrous._files.atomic_write`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from atrous._files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(path)!r}")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {str(path.parent)!r} for the plot does not exist")
    return path


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    # the temporary name has no .png suffix, so the format is given
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def plot_coverage(result, path: str | Path, *, dims: int = 2) -> Path:
    """Draw the coverage map of a :class:`atrous.analysis.gridding.Gridding` to a PNG.

    Args:
        result: what :func:`atrous.gridding` returned.
        path: the ``.png`` to write.
        dims: 2 for the square-kernel map (log-scaled path counts, holes in red), 1 for a bar
            chart of the 1D counts.

    Returns:
        The path written.
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    path = _check_path(path)
    plt = _pyplot()
    coverage = result.coverage.astype(float)
    offsets = result.offsets
    title = f"rates {', '.join(map(str, result.rates))}, kernel {result.kernel_size}: field {result.size}"
    title += f", {len(result.holes)} holes per axis" if result.holes else ", no holes"
    size = (max(6, min(16, len(coverage) / 6)), 3.2) if dims == 1 else (6.4, 5.6)
    fig, ax = plt.subplots(figsize=size)
    try:  # a failed drawing must not leave the figure open in pyplot's registry
        if dims == 1:
            colours = ["tab:red" if c == 0 else "tab:blue" for c in coverage]
            ax.bar(offsets, np.where(coverage == 0, coverage.max() * 0.03, coverage), color=colours, width=0.9)
            ax.set_xlabel("input offset")
            ax.set_ylabel("paths")
        else:
            from matplotlib.colors import ListedColormap

            grid = np.multiply.outer(coverage, coverage)
            shown = np.log10(np.maximum(grid, 1))
            extent = (offsets[0] - 0.5, offsets[-1] + 0.5, offsets[-1] + 0.5, offsets[0] - 0.5)
            image = ax.imshow(np.ma.masked_where(grid == 0, shown), cmap="viridis", extent=extent,
                              interpolation="nearest")
            holes = np.ma.masked_where(grid != 0, np.ones_like(grid))
            ax.imshow(holes, cmap=ListedColormap(["#d62728"]), extent=extent, interpolation="nearest")
            fig.colorbar(image, ax=ax, label="log10(paths)")
            ax.set_xlabel("input offset (x)")
            ax.set_ylabel("input offset (y)")
            title += " (holes in red)" if result.holes else ""
        ax.set_title(title, fontsize=10)
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_erf(
    erf: torch.Tensor | np.ndarray,
    path: str | Path,
    *,
    title: str = "effective receptive field",
    weights: str | None = None,
) -> Path:
    """Draw an effective-receptive-field map (1D curve or 2D heatmap) to a PNG.

    The ERF of random weights and of trained ones differ (Luo et al. 2016 show it grows with
    training), so the title always says which weights the map was measured with.

    Args:
        erf: gradient magnitudes, shape ``(L,)`` or ``(H, W)``.
        path: the ``.png`` to write.
        title: the plot title.
        weights: the weights the map was measured with, shown under the title: ``"random init"``,
            ``"trained"`` or a checkpoint name; None shows ``weights not stated``.

    Returns:
        The path written.
    """
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ValueError(f"weights must be a non-empty string such as 'random init' or a checkpoint name, "
                         f"got {weights!r}")
    values = erf.detach().cpu().double().numpy() if isinstance(erf, torch.Tensor) else np.asarray(erf, dtype=float)
    if values.ndim not in (1, 2):
        raise ValueError(f"erf must have 1 or 2 axes, got shape {values.shape}")
    path = _check_path(path)
    plt = _pyplot()
    peak = values.max() if values.max() > 0 else 1.0
    fig, ax = plt.subplots(figsize=(7, 3.2) if values.ndim == 1 else (6.4, 5.6))
    try:
        if values.ndim == 1:
            ax.plot(np.arange(len(values)), values / peak)
            ax.set_xlabel("input position")
            ax.set_ylabel("|gradient| / max")
        else:
            image = ax.imshow(values / peak, cmap="magma", interpolation="nearest")
            fig.colorbar(image, ax=ax, label="|gradient| / max")
            ax.set_xlabel("x")
            ax.set_ylabel("y")
        ax.set_title(f"{title}\nweights: {weights if weights is not None else 'not stated'}", fontsize=10)
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
