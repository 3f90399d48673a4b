"""Where atrous keeps what it builds or measures once per machine (the compiled streaming step, the
backend's tuning record): ``$XDG_CACHE_HOME/atrous``, else ``~/.cache/atrous``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here; each user checks it is private before trusting it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atrous"
