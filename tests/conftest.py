"""The tests run tiny convolutions, where several OpenMP threads per test (and two pytest-xdist
workers on two cores) cost more than they save; one thread keeps the suite fast and its timing
stable. Tests that call the CLI's ``main`` in process would switch the worker's malloc to keeping
freed memory (``atrous.engine.allocator``), so that later tests run under settings that depend on
test order: glibc's defaults stay (the allocator's own tests run subprocesses)."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("ATROUS_MALLOC", "system")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# Cached compiled kernels and tuning records go to a folder of this test process, never the user's.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="atrous-test-cache-"))


@pytest.fixture()
def plot_titles(monkeypatch):
    """The titles matplotlib axes are given while the test runs."""
    from matplotlib.axes import Axes

    titles = []
    real_set_title = Axes.set_title

    def set_title(ax, label, *args, **kwargs):
        titles.append(label)
        return real_set_title(ax, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", set_title)
    return titles
