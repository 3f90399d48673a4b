"""Training curves: a whole PNG or none, and no figure left open."""

import errno

import pytest

pytest.importorskip("matplotlib")

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from atrous.viz import plot_training_curves  # noqa: E402

HISTORY = [{"epoch": 1, "train_loss": 1.5, "val_miou": 0.25, "val_pixel_acc": 0.5},
           {"epoch": 2, "train_loss": 0.75, "val_miou": 0.5, "val_pixel_acc": 0.75}]


def test_curves_are_a_png_and_close_the_figure(tmp_path):
    before = plt.get_fignums()
    path = plot_training_curves(HISTORY, tmp_path / "curves.png", score="val_miou")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plt.get_fignums() == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_a_full_disk_keeps_the_old_curves(tmp_path, monkeypatch):
    def savefig(self, fname, *args, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    before = plt.get_fignums()
    with pytest.raises(OSError, match="No space") as raised:
        plot_training_curves(HISTORY, target, score="val_miou")
    assert raised.value.filename == str(target) and target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"] and plt.get_fignums() == before
