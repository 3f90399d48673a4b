"""reuse_freed_memory: large tensors come from the heap, where freed memory is reused, and the
user's own allocator settings win. (What it saves, page faults and time per call, is measured by
benchmarks/allocator_page_faults.py.)"""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from atrous.engine.allocator import OPT_OUT, glibc_mallopt, reuse_freed_memory

# glibc's own accounting: mallinfo2().hblkhd is the bytes held in blocks that have a mapping of
# their own (which glibc unmaps on free, so their pages fault in again on the next allocation).
_MAPPED = textwrap.dedent("""
    import ctypes, torch
    from atrous.engine.allocator import reuse_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    changed = reuse_freed_memory()
    before = libc.mallinfo2().hblkhd
    x = torch.empty(4 << 20)  # 16 MiB, far above glibc's default mmap threshold
    print(changed, libc.mallinfo2().hblkhd - before)
""")


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 (glibc >= 2.33)
    except (OSError, AttributeError):
        return False
    return True


def _mapped_by_a_large_tensor(env: dict[str, str]) -> tuple[str, int]:
    user_settings = (OPT_OUT, "GLIBC_TUNABLES")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in user_settings}
    out = subprocess.run([sys.executable, "-c", _MAPPED], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(glibc_mallopt() is None or not _has_mallinfo2(), reason="glibc >= 2.33 malloc only")
def test_large_tensors_come_from_the_heap():
    changed, kept = _mapped_by_a_large_tensor({})
    unchanged, defaults = _mapped_by_a_large_tensor({OPT_OUT: "system"})
    assert (changed, unchanged) == ("True", "False")
    assert defaults >= 16 << 20  # glibc's defaults: the tensor gets a mapping of its own
    assert kept == 0  # kept freed memory: it comes from the heap


@pytest.mark.parametrize(
    "env", [{OPT_OUT: "system"}, {"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
            {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}],
)  # fmt: skip
def test_the_users_settings_win(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert reuse_freed_memory() is False
