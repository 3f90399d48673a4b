"""This machine's record of ``backend="auto"`` choices, so that fresh runs choose alike.

``backend="auto"`` times exact formulations of each dilated convolution and keeps the fastest
(:mod:`atrous.ops.backend`); they differ in rounding, so two runs whose timings came out
differently end with different weights. A training run replays the choices recorded here
before its first step and adds what it chose at the end: the first run on a machine times,
every later one repeats it bit for bit. The record lives in the user's cache folder
(``$XDG_CACHE_HOME/atrous`` or ``~/.cache/atrous``), one file per machine signature (CPU,
torch version), read only when no other user could have written it (:mod:`atrous._cache`) and
then only as data: a name that is not a known formulation is ignored, and every formulation is
exact, so a tampered record can cost speed, never results.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from atrous._cache import cache_root, private_folder, read_private, write_private

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


def load() -> dict[str, str]:
    """The recorded choices, or none when there is no record or another user could have written it."""
    path = record_path()
    try:
        with private_folder(path.parent, create=False) as folder:
            values = json.loads(read_private(folder, path.name))
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)}


def store(choices: dict[str, str]) -> None:
    """Add ``choices`` to the record (best effort: an unusable cache only costs the replay)."""
    if not choices:
        return
    path = record_path()
    try:
        with private_folder(path.parent) as folder:
            merged = {**load(), **choices}
            if len(merged) > MAX_ENTRIES:
                return
            write_private(folder, path.name, json.dumps(merged, indent=0, sort_keys=True).encode())
    except OSError:
        return
