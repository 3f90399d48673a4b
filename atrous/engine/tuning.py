"""This machine's record of ``backend="auto"`` choices, so that fresh runs choose alike.

``backend="auto"`` times exact formulations of each dilated convolution and keeps the fastest
(:mod:`atrous.ops.backend`); they differ in rounding, so two runs whose timings came out
differently end with different weights. A training run replays the choices recorded here
before its first step and adds what it chose at the end: the first run on a machine times,
every later one repeats it bit for bit. The record lives in the user's cache folder
(``$XDG_CACHE_HOME/atrous`` or ``~/.cache/atrous``), one file per machine signature (CPU,
torch version), and is only ever read as data: a name that is not a known formulation is
ignored, and every formulation is exact, so a tampered record can cost speed, never results.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from atrous._cache import cache_root

MAX_ENTRIES = 4096


def _signature() -> str:
    import torch

    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    text = "|".join([platform.machine(), platform.processor(), cpu, torch.__version__, str(torch.cuda.is_available())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path() -> Path:
    """Where this machine's record is kept."""
    return cache_root() / f"tuning-{_signature()}.json"


def _private(folder: Path) -> bool:
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def load() -> dict[str, str]:
    """The recorded choices, or none when there is no record or it is not this user's own file."""
    path = record_path()
    if not _private(path.parent):
        return {}
    try:
        if os.lstat(path).st_uid != os.geteuid():
            return {}
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)}


def store(choices: dict[str, str]) -> None:
    """Add ``choices`` to the record (best effort: an unwritable cache only costs the replay)."""
    from atrous.engine.checkpoint import atomic_write

    if not choices:
        return
    path = record_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(path.parent):
            return
        merged = {**load(), **choices}
        if len(merged) > MAX_ENTRIES:
            return
        text = json.dumps(merged, indent=0, sort_keys=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    except OSError:
        return
