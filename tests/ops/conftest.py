"""A fake clock for ``backend="auto"``: tests count its reads to see whether anything was timed."""

import pytest

from atrous.ops import tuning_settings
from atrous.ops.autotune import CHOOSER


class CountingClock:
    """A clock for the chooser that counts how often it is read; each read advances it 0.1 ms."""

    def __init__(self):
        self.reads = 0
        self.now = 0.0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 1e-4
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """An empty cache of choices, the counting clock, and every call large enough to time."""
    counter = CountingClock()
    monkeypatch.setattr(CHOOSER, "cache", {})
    monkeypatch.setattr(CHOOSER, "preset", {})
    with tuning_settings(timer=counter, min_macs=0, min_rounds=1, max_rounds=2):
        yield counter
