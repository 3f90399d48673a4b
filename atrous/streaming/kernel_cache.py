"""Build, cache and load the compiled streaming step (``fused_step.cpp``) safely.

:class:`~atrous.streaming.FusedStreamer` runs each step as one call into ``fused_step.cpp``,
compiled with the system C++ compiler on first use (about a second) and kept in
``$XDG_CACHE_HOME/atrous``. Loading a shared library runs its code with the user's rights, so
:func:`load_kernel` loads only a library that this user alone could have written and whose bytes
hash to the record written when it was built; anything else is rebuilt, and a cache folder that
cannot be trusted is not used (see :func:`load_kernel` and ``docs/streaming.md``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from atrous._cache import UntrustedCache, cache_root, open_private, private_folder, read_private, write_private

_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math")
_INT64S = ctypes.POINTER(ctypes.c_int64)


class _KernelError(RuntimeError):
    """The library could not be compiled or loaded with these flags."""


def find_compiler() -> str | None:
    """The C++ compiler the step is built with: ``c++``, ``g++`` or ``clang++`` on ``PATH``."""
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _build(source: Path, flags: list[str]) -> bytes:
    """Compile ``source`` in a private temporary folder; the library's bytes."""
    compiler = find_compiler()
    if compiler is None:
        raise _KernelError("no C++ compiler (c++, g++ or clang++) on PATH")
    with tempfile.TemporaryDirectory(prefix="atrous-build-") as private:  # mkdtemp: 0o700, ours
        library = Path(private) / "fused_step.so"
        result = subprocess.run([compiler, *flags, str(source), "-o", str(library)], capture_output=True, text=True)
        if result.returncode:
            raise _KernelError(result.stderr[-2000:])
        return library.read_bytes()


def _open_library(folder: int, stem: str) -> tuple[int, str]:
    """The descriptor of the library named by ``{stem}.sha256`` once its bytes hash to that record."""
    digest = read_private(folder, f"{stem}.sha256").decode("ascii", "replace").strip()
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise UntrustedCache(f"{stem}.sha256 holds no SHA-256")
    name = f"{stem}_{digest[:16]}.so"
    descriptor, data = open_private(folder, name)
    if hashlib.sha256(data).hexdigest() != digest:
        os.close(descriptor)
        raise UntrustedCache(f"{name} does not match its recorded SHA-256 (truncated or replaced)")
    return descriptor, name


def _install(folder: int, stem: str, data: bytes) -> None:
    """The library under a name holding its hash, then the record naming it: a reader sees both or neither."""
    digest = hashlib.sha256(data).hexdigest()
    # read-only: a library rewritten in place would crash (SIGBUS) every process that maps it
    write_private(folder, f"{stem}_{digest[:16]}.so", data, 0o500)
    write_private(folder, f"{stem}.sha256", digest.encode())


def _dlopen(descriptor: int, path: Path) -> Callable:
    """``atrous_fused_run`` from the library open (checked and hashed) at ``descriptor``."""
    # /proc/self/fd/N is the inode that was hashed, whatever is renamed onto ``path`` meanwhile;
    # elsewhere the path, in a folder only this user can write
    by_descriptor = os.path.isdir("/proc/self/fd")
    try:
        run = ctypes.CDLL(f"/proc/self/fd/{descriptor}" if by_descriptor else str(path)).atrous_fused_run
    except (OSError, AttributeError) as failure:
        os.close(descriptor)
        raise _KernelError(f"{path} does not load: {failure}") from None
    if not by_descriptor:
        os.close(descriptor)
    # else it stays open: the loader knows libraries by the name they were opened with, so a
    # reused /proc/self/fd/N would hand back this library for another file
    run.restype, run.argtypes = ctypes.c_int, [_INT64S, _INT64S]
    return run


def _load_in(folder: Path, stem: str, source: Path, flags: list[str]) -> Callable:
    """Load the verified library from ``folder``, first building it when missing or refused."""
    with private_folder(folder) as descriptor:
        try:
            library, name = _open_library(descriptor, stem)
            return _dlopen(library, folder / name)
        except (OSError, _KernelError):  # missing, another user's, truncated, not loadable: rebuilt
            pass
        _install(descriptor, stem, _build(source, flags))
        library, name = _open_library(descriptor, stem)
        return _dlopen(library, folder / name)


def _cpu_signature() -> str:
    """The CPU's feature flags: a library built with -march=native must not run on another CPU
    (a cache folder shared between machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())


@functools.lru_cache(maxsize=1)
def _load() -> Callable | str:
    """The C function, or why it could not be built (also cached, so a failure costs once)."""
    if not hasattr(os, "geteuid") or os.open not in os.supports_dir_fd:
        return "the kernel cache needs a POSIX system (file owners, openat)"
    source = Path(__file__).with_name("fused_step.cpp")
    cache = cache_root()
    base = [*_FLAGS, "-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else list(_FLAGS)
    error = "not built"
    for flags in ([*base, "-fopenmp"], base):  # without OpenMP if the compiler lacks it
        key = hashlib.sha256(source.read_bytes() + " ".join([*flags, _cpu_signature()]).encode()).hexdigest()[:16]
        try:
            try:
                return _load_in(cache, f"fused_step_{key}", source, flags)
            except OSError as unusable:  # another user's, a symlink, read-only, full
                warnings.warn(f"kernel cache {cache} not used: {unusable}; the fused step is built into a "
                              "temporary folder for this process", stacklevel=2)
            with tempfile.TemporaryDirectory(prefix="atrous-") as private:
                return _load_in(Path(private), f"fused_step_{key}", source, flags)
        except (OSError, _KernelError) as failure:
            error = str(failure)
    return error


def load_kernel() -> Callable:
    """Compile ``fused_step.cpp`` once per machine (about a second), cache it, load it.

    The library goes to ``~/.cache/atrous`` (``$XDG_CACHE_HOME/atrous``) under a name hashed
    from the source, the flags and the CPU's features. It is built with ``-march=native`` on
    x86-64 and with OpenMP when the compiler has it (PyTorch's OpenMP runtime is then shared).

    Only a library that this user alone could have written is loaded: the folder is created
    0o700 (made 0o700 if it is ours but group/other-writable); the library and its SHA-256
    record (``fused_step_<key>.sha256``, written after the library, each atomically) must be
    regular files, not symlinks, owned by this user and not group/other-writable, and the bytes
    loaded must hash to the record (on Linux they are hashed and loaded from one open file
    descriptor). A library that fails any check or does not load (truncated, replaced, another
    user's) is rebuilt and moved into place under a fresh name. A cache folder that is a
    symlink, another user's or unwritable is not used: the step is built into a private
    temporary folder for the process, with a warning. POSIX only.

    Returns:
        ``atrous_fused_run(config, call) -> status`` from ``fused_step.cpp``, via ctypes.

    Raises:
        RuntimeError: no C++ compiler, or the compilation failed (the message says why).
    """
    run = _load()
    if isinstance(run, str):
        raise RuntimeError(f"the fused C++ streaming step could not be built: {run}")
    return run
