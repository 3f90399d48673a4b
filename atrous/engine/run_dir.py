"""Run folders: never overwrite a user's run by accident, find the next free default name."""

from __future__ import annotations

import shutil
from pathlib import Path

LAST = "checkpoint"  # sub-folder with the latest checkpoint (weights, optimizer, RNG)
BEST = "best"  # sub-folder with the best-validation weights
MARKER = ".atrous-run"  # written into every run folder when the run starts
RUN_MARKERS = (MARKER, f"{LAST}/checkpoint.json")


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a folder atrous made for a run (so ``--overwrite`` may delete it)."""
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, dry_run: bool = False) -> Path:
    """Check ``run_dir`` can be used and create it (only check with ``dry_run``).

    Raises:
        FileNotFoundError: resuming a folder with no checkpoint.
        FileExistsError: the folder holds files and neither ``resume`` nor ``overwrite`` was given.
        ValueError: ``overwrite`` on a non-empty folder that is not an atrous run.
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / LAST / "checkpoint.json").is_file():
            raise FileNotFoundError(f"cannot resume {str(run_dir)!r}: it has no {LAST}/checkpoint.json")
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run folder {str(run_dir)!r} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"run folder {str(run_dir)!r} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        if not is_run_dir(run_dir):
            raise ValueError(f"refusing to overwrite {str(run_dir)!r}: it is not an atrous run folder")
        if not dry_run:
            shutil.rmtree(run_dir)
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / MARKER).touch()
    return run_dir


def next_run_dir(base: str | Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``... whichever does not exist yet."""
    base = Path(base)
    candidate, number = base / name, 1
    while candidate.exists():
        number += 1
        candidate = base / f"{name}-{number}"
    return candidate
