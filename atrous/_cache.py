"""Where atrous keeps what it builds or measures once per machine (the compiled streaming step, the
backend's tuning record), and how it makes sure no other user could have written any of it.

The cache is ``$XDG_CACHE_HOME/atrous``, else ``~/.cache/atrous``. What is read back from it
decides what code runs (a shared library) or how (the formulation choices), so every user goes
through the same checks: the folder is opened without following a symlink and must belong to this
user (it is created 0o700, and made 0o700 when it is ours but open to others); each file in it is
opened without following links, relative to that open folder, and must be a regular file of this
user that group and others cannot write; files are written under a temporary name and renamed in
place, with an exact mode. A file planted while the folder was open to others belongs to someone
else and is refused. POSIX only: elsewhere the cache is never used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

_OPEN_TO_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class UntrustedCache(OSError):
    """A cache folder or file that another user could have written (or a system without file owners)."""


def cache_root() -> Path:
    """The cache folder (not created here; :func:`private_folder` creates and checks it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "atrous"


def _check_owner(info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid():
        raise UntrustedCache(f"{what} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")


@contextlib.contextmanager
def private_folder(folder: Path, *, create: bool = True) -> Iterator[int]:
    """A descriptor of ``folder``, a folder this user alone can write, closed after the block.

    Args:
        folder: the folder to open.
        create: create it (and its parents) 0o700, whatever the umask, when missing.

    Raises:
        UntrustedCache: ``folder`` is a symlink or another user's, or the system has no file owners.
        OSError: it cannot be created or opened (missing, with ``create`` false).
    """
    if not hasattr(os, "geteuid") or os.open not in os.supports_dir_fd:
        raise UntrustedCache(f"{folder}: a private cache needs a POSIX system (file owners, openat)")
    if create:
        os.makedirs(folder.parent, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    if os.path.islink(folder):
        raise UntrustedCache(f"{folder} is a symlink")
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(descriptor)
        _check_owner(info, str(folder))
        if info.st_mode & _OPEN_TO_OTHERS:  # ours, left open (umask 000): its files are checked one by one
            os.fchmod(descriptor, 0o700)
        yield descriptor
    finally:
        os.close(descriptor)


def open_private(folder: int, name: str) -> tuple[int, bytes]:
    """Open ``name`` in the open ``folder`` without following links: its descriptor (the caller
    closes it) and its bytes, if it is a regular file of this user that others cannot write.

    Raises:
        UntrustedCache: not a regular file, another user's, or writable by group or others.
        OSError: it cannot be opened (missing, a symlink).
    """
    # O_NONBLOCK: a planted FIFO must not hang the open; it is then refused as not a regular file
    descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedCache(f"{name} is not a regular file")
        _check_owner(info, name)
        if info.st_mode & _OPEN_TO_OTHERS:
            raise UntrustedCache(f"{name} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})")
        with open(descriptor, "rb", closefd=False) as file:
            return descriptor, file.read()
    except BaseException:
        os.close(descriptor)
        raise


def read_private(folder: int, name: str) -> bytes:
    """The bytes of ``name`` in the open ``folder``, checked as :func:`open_private` does."""
    descriptor, data = open_private(folder, name)
    os.close(descriptor)
    return data


def write_private(folder: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``name`` in the open ``folder`` whole or not at all, with exactly ``mode``.

    A temporary name in the folder, then a rename onto ``name``: a reader sees the old file or the
    new one, never a part.
    """
    temporary = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=folder)
    try:
        with open(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)  # exact, whatever the umask
            file.write(data)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
