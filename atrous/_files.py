"""Files written whole or not at all, and output paths refused before any work is done.

Every file atrous writes (checkpoints, run records, predictions, plots, ONNX graphs, audio) goes
through :func:`atomic_write`: a temporary name in the same folder, flushed to disk, then renamed
onto the target, so a crash or a full disk never leaves half a file. This module sits at the
bottom of the package (it imports nothing from atrous), so every layer writes the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask_at_import() -> int:
    umask = os.umask(0o022)  # the only way to read it elsewhere; done once, before any thread of atrous runs
    os.umask(umask)
    return umask


_IMPORT_UMASK = _umask_at_import()


def _umask() -> int:
    """The process umask, read without changing it: setting it even for a moment would let
    another thread create a file with the temporary mask."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # Linux >= 4.7
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one step.

    Args:
        path: the file to write; its folder must exist.
        write: writes the whole content to the temporary path it is given.

    Raises:
        OSError: from ``write`` or the disk, naming ``path`` rather than the temporary name; no
            temporary file is left behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except OSError as error:  # name the file the user knows, not the temporary one
            if error.filename is None or error.filename == tmp:
                raise OSError(error.errno, error.strerror or str(error), str(path)) from None
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: str | Path, *, overwrite: bool, name: str, hint: str = "pass --overwrite") -> Path:
    """Refuse an output path that would be written wrongly, before any work is done.

    Args:
        path: the file about to be written.
        overwrite: whether an existing regular file may be replaced.
        name: how the message names the path, e.g. ``"--out"``.
        hint: how to allow replacing, for the message.

    Raises:
        ValueError: ``path`` is a symbolic link (even a dangling one) or not a regular file.
        IsADirectoryError: ``path`` is a folder.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        FileNotFoundError, NotADirectoryError: its folder does not exist or is a file.
    """
    path = Path(path)
    if os.path.islink(path):
        raise ValueError(f"{name} {str(path)!r} is a symbolic link; atrous does not write through links "
                         "(remove it or choose another name)")
    if path.is_dir():
        raise IsADirectoryError(f"{name} {str(path)!r} is a folder; expected a file name")
    if path.exists():
        if not path.is_file():
            raise ValueError(f"{name} {str(path)!r} exists and is not a regular file")
        if not overwrite:
            raise FileExistsError(f"{name} {str(path)!r} already exists; {hint} to replace it")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"the folder of {name} {str(path)!r} is a file: {str(parent)!r}")
    if not parent.is_dir():
        raise FileNotFoundError(f"the folder of {name} {str(path)!r} does not exist: {str(parent)!r}")
    return path
