"""What a run writes besides checkpoints, read back with the json and csv modules."""

import csv
import json

import pytest

from atrous.engine.history import plot_curves, write_metrics

HISTORY = [
    {"epoch": 1, "step": 10, "train_loss": 1.5, "val_miou": 0.25, "val_pixel_acc": 0.5},
    {"epoch": 2, "step": 20, "train_loss": 0.75, "val_miou": 0.5, "val_pixel_acc": 0.75, "seconds": 3.0},
]


def test_metrics_json_and_csv_hold_every_row_and_every_column_once(tmp_path):
    write_metrics(tmp_path, HISTORY, config={"epochs": 2}, best=HISTORY[1], extra={"parameters": 123})
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record == {"config": {"epochs": 2}, "history": HISTORY, "best": HISTORY[1], "last": HISTORY[-1],
                      "parameters": 123}
    with open(tmp_path / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    # columns in the order they first appear; a column a row lacks is empty there
    assert list(rows[0]) == ["epoch", "step", "train_loss", "val_miou", "val_pixel_acc", "seconds"]
    assert [{k: v for k, v in row.items() if v != ""} for row in rows] == [
        {k: str(v) for k, v in row.items()} for row in HISTORY]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_empty_history_has_no_last_row(tmp_path):
    write_metrics(tmp_path, [], config={})
    assert json.loads((tmp_path / "metrics.json").read_text())["last"] is None
    assert (tmp_path / "metrics.csv").read_text().strip() == ""


@pytest.mark.parametrize(("score", "titles"),
                         [("val_miou", ["Loss", "val miou"]), ("eval_loss", ["Loss", "eval loss"])])
def test_curves_plot_the_loss_and_the_score(tmp_path, monkeypatch, plot_titles, score, titles):
    from matplotlib.axes import Axes

    lines, real_plot = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, x, y, *args, **kwargs: lines.append((list(x), list(y)))
                        or real_plot(ax, x, y, *args, **kwargs))
    history = [{**row, "eval_loss": 1 / row["epoch"]} for row in HISTORY]
    path = plot_curves(tmp_path, history, score=score)
    assert path == tmp_path / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_titles == titles
    assert lines[:2] == [([1, 2], [1.5, 0.75]), ([1, 2], [row[score] for row in history])]
