"""reuse_freed_memory: freed tensors' pages are reused instead of faulted in again, and the
user's own allocator settings win."""

import os
import subprocess
import sys
import textwrap

import pytest

from atrous.engine.allocator import OPT_OUT, glibc_mallopt, reuse_freed_memory

_FAULTS = textwrap.dedent("""
    import resource, torch
    import torch.nn.functional as F
    from atrous.engine.allocator import reuse_freed_memory
    changed = reuse_freed_memory()
    torch.set_num_threads(1)
    x, w = torch.randn(4, 64, 4096), torch.randn(128, 64, 2)
    for _ in range(3):  # warm up: the heap grows
        F.conv1d(F.pad(x, (512, 0)), w, dilation=512)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # a WaveNet layer: a 4.5 MiB padded copy, an 8 MiB output, oneDNN's scratch
        F.conv1d(F.pad(x, (512, 0)), w, dilation=512)
    print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(env: dict[str, str]) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (OPT_OUT, "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(glibc_mallopt() is None, reason="glibc's malloc only")
def test_freed_tensors_are_reused_without_page_faults():
    # With glibc's defaults each call maps its buffers afresh: at least the 12.5 MiB of padded
    # input and output, 3,200 pages of 4 KiB, fault in per call. Kept memory is reused, so
    # (nearly) nothing faults. Counted by the kernel.
    changed, kept = _page_faults({})
    unchanged, defaults = _page_faults({OPT_OUT: "system"})
    assert (changed, unchanged) == ("True", "False")
    assert defaults > 10 * 3200
    assert kept < defaults / 20


@pytest.mark.parametrize(
    "env", [{OPT_OUT: "system"}, {"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
            {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}],
)  # fmt: skip
def test_the_users_settings_win(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert reuse_freed_memory() is False
