"""Fused streaming: one call per step for WaveNet, TCN and causal ``nn.Sequential`` stacks.

:class:`~atrous.streaming.Streamer` runs the model's own forward on one sample, which costs a
few microseconds of PyTorch dispatch per operator: about 300 operators per WaveNet sample, so
the default WaveNet streams a few hundred samples per second although a sample needs only
1.5 MFLOP. :class:`FusedStreamer` lowers the model once (:func:`~atrous.streaming.program.lower`)
and runs each step as a single C++ call (``fused_step.cpp``, compiled on first use with the
system compiler in about a second and cached): per layer a matrix-vector
product over the stacked taps, the gate and the 1x1 convolutions, reading each causal
convolution's past from a preallocated ring buffer, the queues of Paine et al. (2016), "Fast
WaveNet generation algorithm". The batch is split across ``torch.get_num_threads()`` threads.
Without a compiler the same program runs as PyTorch ops on preallocated buffers
(``backend="torch"``).

The state (ring buffers) lives in the streamer, not in the model's ``state_dict``; weights are
copied when the streamer is built, so rebuild it after changing the model.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import secrets
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from atrous._cache import cache_root
from atrous.streaming.executor import TorchExecutor, op_table
from atrous.streaming.program import lower

BACKENDS = ("auto", "cpp", "torch")
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math")
_INT64S = ctypes.POINTER(ctypes.c_int64)
_OPEN_TO_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class _Untrusted(OSError):
    """A cache folder or file that another user could have written, or that fails its hash."""


class _KernelError(RuntimeError):
    """The library could not be compiled or loaded with these flags."""


def _build(source: Path, flags: list[str]) -> bytes:
    """Compile ``source`` in a private temporary folder; the library's bytes."""
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise _KernelError("no C++ compiler (c++, g++ or clang++) on PATH")
    with tempfile.TemporaryDirectory(prefix="atrous-build-") as private:  # mkdtemp: 0o700, ours
        library = Path(private) / "fused_step.so"
        result = subprocess.run([compiler, *flags, str(source), "-o", str(library)], capture_output=True, text=True)
        if result.returncode:
            raise _KernelError(result.stderr[-2000:])
        return library.read_bytes()


def _check_owner(info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid():
        raise _Untrusted(f"{what} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")


def _open_folder(folder: Path) -> int:
    """Open ``folder`` (created 0o700 whatever the umask), refusing a symlink or another user's folder.

    A folder of ours that group or others can write is made 0o700: files planted while it was
    open belong to someone else or fail their hash, and are refused one by one.
    """
    os.makedirs(folder.parent, mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    if os.path.islink(folder):
        raise _Untrusted(f"{folder} is a symlink")
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(descriptor)
        _check_owner(info, str(folder))
        if info.st_mode & _OPEN_TO_OTHERS:
            os.fchmod(descriptor, 0o700)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _read_private(folder: int, name: str) -> tuple[int, bytes]:
    """Open ``name`` in ``folder`` without following links; its descriptor and bytes, if ours alone."""
    # O_NONBLOCK: a planted FIFO must not hang the open; it is then refused as not a regular file
    descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _Untrusted(f"{name} is not a regular file")
        _check_owner(info, name)
        if info.st_mode & _OPEN_TO_OTHERS:
            raise _Untrusted(f"{name} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})")
        with open(descriptor, "rb", closefd=False) as file:
            return descriptor, file.read()
    except BaseException:
        os.close(descriptor)
        raise


def _open_library(folder: int, stem: str) -> tuple[int, str]:
    """The descriptor of the library named by ``{stem}.sha256`` once its bytes hash to that record."""
    record, digest = _read_private(folder, f"{stem}.sha256")
    os.close(record)
    digest = digest.decode("ascii", "replace").strip()
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise _Untrusted(f"{stem}.sha256 holds no SHA-256")
    name = f"{stem}_{digest[:16]}.so"
    descriptor, data = _read_private(folder, name)
    if hashlib.sha256(data).hexdigest() != digest:
        os.close(descriptor)
        raise _Untrusted(f"{name} does not match its recorded SHA-256 (truncated or replaced)")
    return descriptor, name


def _write_atomic(folder: int, name: str, data: bytes, mode: int) -> None:
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


def _install(folder: int, stem: str, data: bytes) -> None:
    """The library under a name holding its hash, then the record naming it: a reader sees both or neither."""
    digest = hashlib.sha256(data).hexdigest()
    # read-only: a library rewritten in place would crash (SIGBUS) every process that maps it
    _write_atomic(folder, f"{stem}_{digest[:16]}.so", data, 0o500)
    _write_atomic(folder, f"{stem}.sha256", digest.encode(), 0o600)


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
    descriptor = _open_folder(folder)
    try:
        try:
            library, name = _open_library(descriptor, stem)
            return _dlopen(library, folder / name)
        except (OSError, _KernelError):  # missing, another user's, truncated, not loadable: rebuilt
            pass
        _install(descriptor, stem, _build(source, flags))
        library, name = _open_library(descriptor, stem)
        return _dlopen(library, folder / name)
    finally:
        os.close(descriptor)


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


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    try:
        load_kernel()
    except RuntimeError as error:
        if backend == "cpp":
            raise
        warnings.warn(f"{error}; FusedStreamer uses PyTorch ops instead (backend='torch')", stacklevel=3)
        return "torch"
    return "cpp"


class FusedStreamer:
    """Stream a WaveNet, TCN or causal ``nn.Sequential`` with one fused call per step.

    Same use as :class:`~atrous.streaming.Streamer`: the outputs of :meth:`step` concatenated
    over any chunking equal the offline forward (within float rounding, ~1e-6).

    Args:
        model: a WaveNet (class-id input), a TCN or an ``nn.Sequential`` of supported layers
            (see :mod:`atrous.streaming.program`), float32 on the CPU, in eval mode.
        batch_size: number of independent streams.
        backend: ``"cpp"`` (the compiled step), ``"torch"`` (PyTorch ops) or ``"auto"`` (C++
            when it can be built, else PyTorch ops with a warning).

    Raises:
        ValueError: a layer that cannot be fused (named), or a bad ``batch_size``/``backend``.

    Example:
        >>> streamer = FusedStreamer(create("wavenet").eval(), batch_size=1)
        >>> logits = streamer.step(torch.tensor([[128]]))  # (1, 256, 1)
    """

    def __init__(self, model: nn.Module, batch_size: int, *, backend: str = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.program = program = lower(model)
        self.batch_size = batch_size
        self.backend = _resolve_backend(backend)
        # (context, B, C) per causal conv: one time slot of every stream is contiguous
        self._rings = [torch.zeros(context, batch_size, channels) for context, channels in program.rings]
        self._work = torch.zeros(batch_size, program.width)
        if self.backend == "cpp":
            self._table = op_table(program)
            self._pointers = [
                (ctypes.c_void_p * max(len(program.weights), 1))(*(w.data_ptr() for w in program.weights)),
                (ctypes.c_int64 * max(len(program.weights), 1))(*(w.shape[0] for w in program.weights)),
                (ctypes.c_void_p * max(len(self._rings), 1))(*(ring.data_ptr() for ring in self._rings)),
            ]  # the tensors behind these raw pointers live as long as the streamer
            spans = [program.input, program.local, program.output]
            self._config = (ctypes.c_int64 * 14)(
                self._table.data_ptr(), len(self._table), *(ctypes.addressof(a) for a in self._pointers),
                self._work.data_ptr(), batch_size, program.width,
                *(value for span in spans for value in ((span.width, span.offset) if span else (0, -1))),
            )
            self._call = (ctypes.c_int64 * 9)()
            self._run = load_kernel()
        else:
            self._executor = TorchExecutor(program, self._rings, self._work)
        self.samples_seen = 0

    @property
    def context(self) -> int:
        """Total past samples held across layers (the sum of ``(k - 1) * d``)."""
        return sum(context for context, _ in self.program.rings)

    def _check(self, chunk, global_condition, local_condition) -> tuple[torch.Tensor, ...]:
        program, batch = self.program, self.batch_size
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"chunk must be a torch.Tensor, got {type(chunk).__name__}")
        if chunk.device.type != "cpu":
            raise ValueError(f"chunk must be on the CPU like the fused step, got device {chunk.device}")
        if program.classes:
            if chunk.ndim != 2 or chunk.shape[0] != batch or chunk.shape[1] < 1 or chunk.is_floating_point():
                raise ValueError(f"chunk must be (batch_size={batch}, L >= 1) int64 class ids, "
                                 f"got shape {tuple(chunk.shape)} dtype {chunk.dtype}")
            chunk = chunk if chunk.dtype == torch.long else chunk.long()
        else:
            channels = program.input.width
            if chunk.ndim != 3 or chunk.shape[0] != batch or chunk.shape[1] != channels or chunk.shape[2] < 1:
                raise ValueError(f"chunk must have shape (batch_size={batch}, in_channels={channels}, L >= 1), "
                                 f"got {tuple(chunk.shape)}")
            chunk = chunk if chunk.dtype == torch.float32 else chunk.float()
        length = chunk.shape[-1]
        if program.global_classes:
            if not isinstance(global_condition, torch.Tensor) or tuple(global_condition.shape) != (batch,):
                shape = getattr(global_condition, "shape", None)
                raise ValueError(f"global_condition must be ({batch},) ids in [0, {program.global_classes}), "
                                 f"got {None if shape is None else tuple(shape)}")
            global_condition = global_condition.cpu().long().contiguous()
        elif global_condition is not None:
            raise ValueError("global_condition given but the model has no global conditioning")
        if program.local is not None:
            expected = (batch, program.local.width, length)
            if not isinstance(local_condition, torch.Tensor) or tuple(local_condition.shape) != expected:
                shape = getattr(local_condition, "shape", None)
                raise ValueError(f"local_condition must have shape {expected} (sample rate), "
                                 f"got {None if shape is None else tuple(shape)}")
            local_condition = local_condition.cpu().float().contiguous()
        elif local_condition is not None:
            raise ValueError("local_condition given but the model has no local conditioning")
        return chunk.contiguous(), global_condition, local_condition

    def step(
        self,
        chunk: torch.Tensor,
        *,
        global_condition: torch.Tensor | None = None,
        local_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed the next ``L`` samples of every stream; return the model's next ``L`` outputs.

        Args:
            chunk: ``(B, C_in, L)`` float, or ``(B, L)`` int64 class ids for a WaveNet.
            global_condition: ``(B,)`` ids, for a WaveNet with ``global_classes``.
            local_condition: ``(B, C_cond, L)`` at the sample rate, for a WaveNet with
                ``local_channels``.

        Returns:
            ``(B, C_out, L)``.
        """
        program = self.program
        chunk, global_condition, local_condition = self._check(chunk, global_condition, local_condition)
        out = torch.empty(self.batch_size, program.output.width, chunk.shape[-1])
        if self.backend == "cpp":
            call, floats = self._call, program.input is not None
            call[0], call[1] = (chunk.data_ptr(), 0) if floats else (0, chunk.data_ptr())
            call[2] = 0 if local_condition is None else local_condition.data_ptr()
            call[3] = 0 if global_condition is None else global_condition.data_ptr()
            call[4], call[5], call[6] = out.data_ptr(), chunk.shape[-1], self.samples_seen
            call[7] = torch.get_num_threads()
            status = self._run(self._config, call)
            if status:
                name, bound = ("class ids", program.classes) if status == 1 else ("global_condition ids",
                                                                                  program.global_classes)
                raise ValueError(f"{name} must lie in [0, {bound}), got {call[8]}")
        else:
            self._executor.run(chunk, local_condition, global_condition, out, self.samples_seen)
        self.samples_seen += chunk.shape[-1]
        return out

    def reset(self, indices: int | Sequence[int] | torch.Tensor | None = None) -> None:
        """Forget the past of some streams (all when ``indices`` is ``None``): zeros, the causal padding.

        Args:
            indices: stream indices in ``[0, batch_size)``.
        """
        if indices is None:
            for ring in self._rings:
                ring.zero_()
            self.samples_seen = 0
            return
        rows = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.batch_size):
            raise ValueError(f"indices must lie in [0, {self.batch_size}) (batch_size={self.batch_size}), "
                             f"got {rows.tolist()}")
        for ring in self._rings:
            ring[:, rows] = 0
