"""Fixtures the engine tests share."""

from contextlib import contextmanager

import pytest


@pytest.fixture
def crash_after_save(monkeypatch):
    """``with crash_after_save(n): train(...)``: the run stops with ``KeyboardInterrupt`` right after
    its ``n``-th save, as a crash would; the block expects that stop and saving is normal after it."""
    from atrous.engine.run_dir import RunDir

    @contextmanager
    def crash(n: int):
        real_save, saves = RunDir.save, []

        def save_then_die(self, *args, **kwargs):
            path = real_save(self, *args, **kwargs)
            saves.append(path)
            if len(saves) == n:
                raise KeyboardInterrupt
            return path

        monkeypatch.setattr(RunDir, "save", save_then_die)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(RunDir, "save", real_save)

    return crash
