"""Coverage and ERF plots: whole files or none, no figure left open, no folder made silently."""

import errno

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from atrous.analysis import gridding  # noqa: E402
from atrous.viz import plot_coverage, plot_erf  # noqa: E402

PLOTS = {
    "coverage-1d": lambda path: plot_coverage(gridding((1, 2, 5)), path, dims=1),
    "coverage-2d": lambda path: plot_coverage(gridding((1, 2, 5)), path, dims=2),
    "erf-1d": lambda path: plot_erf(np.hanning(21), path, weights="random init"),
    "erf-2d": lambda path: plot_erf(np.outer(np.hanning(9), np.hanning(9)), path),
}


@pytest.fixture
def full_disk(monkeypatch):
    """Figure.savefig writes part of a PNG and fails with ENOSPC."""

    def savefig(self, fname, *args, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_a_plot_is_a_whole_png_and_closes_its_figure(tmp_path, name):
    before = plt.get_fignums()
    path = PLOTS[name](tmp_path / "plot.png")
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and min(image.size) > 100
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"] and plt.get_fignums() == before


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_a_full_disk_keeps_the_old_file_and_closes_the_figure(tmp_path, full_disk, name):
    target = tmp_path / "plot.png"
    target.write_bytes(b"the old plot")
    before = plt.get_fignums()
    with pytest.raises(OSError, match="No space") as raised:
        PLOTS[name](target)
    assert raised.value.filename == str(target)  # the user's name, not the temporary one
    assert target.read_bytes() == b"the old plot" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    assert plt.get_fignums() == before


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_a_missing_folder_is_an_error_naming_it(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PLOTS[name](tmp_path / "nowhere" / "plot.png")
    assert list(tmp_path.iterdir()) == []
