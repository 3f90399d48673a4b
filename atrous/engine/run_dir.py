"""Run folders: one writer at a time, checkpoints that a kill at any instant cannot break.

A run folder holds::

    .atrous-run            marker written at creation ({"kind": ...}); --overwrite needs it
    .lock                  held (flock) by the process writing the run
    config.json            the settings of the run
    checkpoints/last-NNNNNN/   the newest two complete saves (weights, optimizer, loop state, RNG)
    checkpoints/best-NNNNNN/   the weights with the best validation score
    metrics.json, metrics.csv, curves.png, tensorboard/

Each save is written into a fresh hidden folder inside ``checkpoints/`` and renamed to its
final name only once every file in it is complete and synced: a folder named ``last-*`` or
``best-*`` is always whole, and the previous one is removed only after the new one exists.
A kill mid-save leaves a hidden folder, removed the next time the run is opened. The lock is
an ``flock``, which the kernel drops when its process dies, so a killed run never blocks the
next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from atrous._files import atomic_write

LAST = "checkpoint"  # runs before numbered saves: the latest checkpoint folder
BEST = "best"  # runs before numbered saves: the best checkpoint folder
MARKER = ".atrous-run"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
KEEP_LAST = 2
_TMP_PREFIX = ".tmp-"
OUTPUTS = ("config.json", "metrics.json", "metrics.csv", "curves.png")  # the files a run writes at its top


class RunLockedError(RuntimeError):
    """Another process is writing this run folder."""

    exit_code = 1


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a real folder that atrous made for a run (so ``--overwrite`` may delete it)."""
    path = Path(path)
    marker = path / MARKER
    return not path.is_symlink() and path.is_dir() and marker.is_file() and not marker.is_symlink()


def _check_not_symlink(path: Path) -> None:
    if path.is_symlink():
        raise ValueError(f"run folder {str(path)!r} is a symbolic link; give the folder it points to instead")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_not_cwd(run_dir: Path) -> None:
    try:
        inside = Path.cwd().resolve().is_relative_to(run_dir.resolve())
    except OSError:
        return
    if inside:
        raise ValueError(f"run folder {str(run_dir)!r} is the current folder or holds it; give another folder")


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, a target that a new run may not use.

    Raises:
        FileExistsError: the folder holds files and ``overwrite`` was not given.
        ValueError: a symbolic link, or ``overwrite`` of a folder atrous did not create.
        NotADirectoryError: the path is a file.
    """
    run_dir = Path(run_dir)
    _check_not_symlink(run_dir)
    if str(run_dir).strip() in ("", ".", ".."):
        raise ValueError(f"run folder {str(run_dir)!r}: give a folder name")
    _check_not_cwd(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run folder {str(run_dir)!r} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"run folder {str(run_dir)!r} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        if not is_run_dir(run_dir):
            raise ValueError(
                f"refusing to overwrite {str(run_dir)!r}: it is not an atrous run folder (no {MARKER} marker)"
            )


def check_resumable(run_dir: Path, kind: str) -> None:
    """Raise unless ``run_dir`` is a run folder atrous created for ``kind`` (it may have no checkpoint yet)."""
    run_dir = Path(run_dir)
    _check_not_symlink(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume {str(run_dir)!r}: no such run folder")
    if not is_run_dir(run_dir) and not (run_dir / LAST / "checkpoint.json").is_file():
        raise ValueError(f"cannot resume {str(run_dir)!r}: it is not an atrous run folder (no {MARKER} marker)")
    found = read_marker(run_dir).get("kind")
    if found is not None and found != kind:
        raise ValueError(f"{str(run_dir)!r} is a {found} run; it cannot be resumed as a {kind} run")


def read_marker(run_dir: Path) -> dict:
    """What a run's marker records (``kind`` and the initial ``config``); empty for runs before it did."""
    try:
        value = json.loads((Path(run_dir) / MARKER).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _saves(run_dir: Path, kind: str) -> list[Path]:
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        prefix, _, number = entry.name.partition("-")
        if prefix == kind and number.isdigit() and entry.is_dir() and not entry.is_symlink():
            found.append((int(number), entry))
    return [entry for _, entry in sorted(found)]


class RunDir:
    """An open run folder, locked for this process until :meth:`close`.

    Args:
        path: the folder.
        kind: what the run trains (``"segmentation"`` or ``"sequence"``); a run of another kind is refused.
        create: make a new run (``overwrite`` removes an existing atrous run first); else open an existing one.
        overwrite: with ``create``, replace an existing run folder.
        config: with ``create``, the run's settings, recorded in the marker (a run killed before its
            first save resumes with them).
        announce: called with one line for what ``overwrite`` removed.
    """

    def __init__(self, path: str | os.PathLike, kind: str, *, create: bool, overwrite: bool = False,
                 config: dict | None = None, announce: Callable[[str], None] = print) -> None:
        self.path, self.kind = Path(path), kind
        if create:
            check_new_run_dir(self.path, overwrite=overwrite)
            if self.path.is_dir() and any(self.path.iterdir()):
                self._lock_file = self._lock()  # nobody may be writing the run we replace
                files = sum(len(names) for _, _, names in os.walk(self.path))
                # Aside in one step, then deleted: a kill meanwhile leaves a hidden folder that the
                # next creation removes, never a half-deleted run.
                aside = self.path.parent / f".{self.path.name}{_TMP_PREFIX}{uuid.uuid4().hex}"
                os.rename(self.path, aside)
                self._release()
                shutil.rmtree(aside)
                announce(f"removed the previous run in {self.path} ({files} files)")
            self._create(config or {})
        else:
            check_resumable(self.path, kind)
        self._lock_file = self._lock()
        self._remove_leftovers()

    def _create(self, config: dict) -> None:
        """The folder appears whole, marker and config inside, or not at all (renamed from a hidden sibling)."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{self.path.name}{_TMP_PREFIX}*"):  # a creation killed half-way
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
        staging = parent / f".{self.path.name}{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            staging.mkdir()
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(self.path)) from None
        try:
            try:
                write_text(staging / MARKER, json.dumps({"kind": self.kind, "config": config}, indent=1))
            except OSError as error:
                raise OSError(error.errno, error.strerror, str(self.path / MARKER)) from None
            _fsync_dir(staging)
            try:
                os.rename(staging, self.path)  # also replaces an empty folder the user made
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(f"run folder {str(self.path)!r} was created by another process meanwhile") from None
                raise
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _lock(self):
        handle = open(self.path / LOCK, "a")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise RunLockedError(
                    f"run folder {str(self.path)!r} is in use by another atrous process; wait for it or stop it"
                ) from None
            raise
        return handle

    def _release(self) -> None:
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()
            self._lock_file = None

    def close(self) -> None:
        """Release the lock (the kernel also drops it when the process ends)."""
        self._release()

    def _remove_leftovers(self) -> None:
        """Hidden folders and files that a killed save left behind."""
        folder = self.path / CHECKPOINTS
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for name in OUTPUTS:  # atomic_write's temporary names: .NAME.RANDOM, for the files a run writes
            for entry in self.path.glob(f".{name}.*"):
                if re.fullmatch(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}", entry.name) and entry.is_file():
                    entry.unlink()

    def saves(self, kind: str) -> list[Path]:
        """Complete saves of ``kind`` (``"last"`` or ``"best"``), oldest first."""
        return _saves(self.path, kind)

    def save(self, kind: str, write: Callable[[Path], None], *, keep: int) -> Path:
        """Write a new save of ``kind`` with ``write(folder)``, switch it in, keep the newest ``keep``."""
        folder = self.path / CHECKPOINTS
        folder.mkdir(exist_ok=True)
        numbers = [int(p.name.partition("-")[2]) for k in ("last", "best") for p in self.saves(k)]
        final = folder / f"{kind}-{max(numbers, default=0) + 1:06d}"
        staging = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            write(staging)
        except OSError as error:  # name the folder the user knows, not the hidden one
            shutil.rmtree(staging, ignore_errors=True)
            name = Path(error.filename).name if error.filename else ""
            raise OSError(error.errno, error.strerror, str(final / name) if name else str(folder)) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            _fsync_dir(staging)
            os.rename(staging, final)
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for old in self.saves(kind)[:-keep]:
            shutil.rmtree(old)
        return final


def newest_checkpoint(run_dir: Path, kind: str = "last") -> Path | None:
    """The newest complete save of ``kind`` in a run folder (older runs: ``checkpoint/`` or ``best/``)."""
    run_dir = Path(run_dir)
    saves = _saves(run_dir, kind)
    if saves:
        return saves[-1]
    legacy = run_dir / (LAST if kind == "last" else BEST)
    return legacy if (legacy / "checkpoint.json").is_file() else None


def write_text(path: Path, text: str) -> None:
    """``path`` holds ``text``, written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def next_run_dir(base: str | Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``... whichever does not exist yet."""
    base = Path(base)
    candidate, number = base / name, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = base / f"{name}-{number}"
    return candidate
