"""The compiled-step cache must never load a library another user could have written or one
that no longer matches what was built, and must heal (rebuild) instead of crashing."""

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from atrous.ops.layers import CausalConv1d
from atrous.streaming import FusedStreamer, kernel_cache

COMPILER = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler to build the fused step")
OTHER_UID = 4242
# the exported symbol of fused_step.cpp, returning "success" without computing anything
PLANTED_SOURCE = 'extern "C" int atrous_fused_run(const long long* config, long long* call) { return 0; }\n'


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    kernel_cache._load.cache_clear()
    yield tmp_path / "xdg" / "atrous"
    kernel_cache._load.cache_clear()  # later tests load the kernel from the real cache again


def reload() -> None:
    kernel_cache._load.cache_clear()
    kernel_cache.load_kernel()


def assert_streams_like_offline() -> None:
    """The loaded kernel computes the model: its streamed output equals the offline forward."""
    torch.manual_seed(0)
    model = nn.Sequential(CausalConv1d(3, 4, 3, dilation=2), nn.ReLU(), CausalConv1d(4, 2, 2, dilation=3)).eval()
    x = torch.randn(2, 3, 12)
    streamer = FusedStreamer(model, 2, backend="cpp")
    streamed = torch.cat([streamer.step(x[..., :5]), streamer.step(x[..., 5:])], dim=-1)
    torch.testing.assert_close(streamed, model(x), atol=1e-5, rtol=0)


def recorded_library(cache: Path) -> Path:
    (record,) = cache.glob("fused_step_*.sha256")
    digest = record.read_text().strip()
    return cache / f"{record.stem}_{digest[:16]}.so"


def planted_library(tmp_path: Path) -> bytes:
    source = tmp_path / "planted.cpp"
    source.write_text(PLANTED_SOURCE)
    subprocess.run([COMPILER, "-shared", "-fPIC", str(source), "-o", str(tmp_path / "planted.so")], check=True)
    return (tmp_path / "planted.so").read_bytes()


def mapped_inodes() -> set[int]:
    """Inodes of the files mapped into this process (the libraries dlopen loaded)."""
    with open("/proc/self/maps") as maps:
        return {int(fields[4]) for fields in map(str.split, maps) if len(fields) >= 6}


def replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` as a new file: the old one is mapped by this process, and
    rewriting a mapped library in place is itself a crash (SIGBUS)."""
    path.with_suffix(".new").write_bytes(data)
    os.replace(path.with_suffix(".new"), path)


def assert_sound(library: Path) -> None:
    """On disk: the library hashes to its record, is ours and writable by nobody else."""
    info = os.stat(library)
    assert hashlib.sha256(library.read_bytes()).hexdigest() == next(library.parent.glob("*.sha256")).read_text()
    assert info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o022 == 0


def test_a_replaced_library_is_rebuilt_not_loaded(cache, tmp_path):
    kernel_cache.load_kernel()
    library = recorded_library(cache)
    replace(library, planted_library(tmp_path))  # a valid library, same symbol, wrong result
    planted_inode = os.stat(library).st_ino
    reload()
    assert_streams_like_offline()
    assert_sound(recorded_library(cache))
    if os.path.exists("/proc/self/maps"):
        assert planted_inode not in mapped_inodes()


def test_a_truncated_library_is_rebuilt_without_a_crash(cache):
    kernel_cache.load_kernel()
    library = recorded_library(cache)
    size = library.stat().st_size
    replace(library, library.read_bytes()[: size // 2])
    reload()
    assert recorded_library(cache).stat().st_size == size
    assert_sound(recorded_library(cache))
    assert_streams_like_offline()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_library_and_record_planted_by_another_user_are_refused(cache, tmp_path):
    """Exactly what an install writes, hash included, but owned by someone else."""
    kernel_cache.load_kernel()
    library, planted = recorded_library(cache), planted_library(tmp_path)
    record = next(cache.glob("*.sha256"))
    library.unlink()
    (cache / f"{record.stem}_{hashlib.sha256(planted).hexdigest()[:16]}.so").write_bytes(planted)
    record.write_text(hashlib.sha256(planted).hexdigest())
    for path in cache.iterdir():
        os.chown(path, OTHER_UID, OTHER_UID)
    planted_inodes = {os.stat(path).st_ino for path in cache.glob("*.so")}
    reload()
    assert_streams_like_offline()
    assert record.stat().st_uid == os.geteuid()
    assert_sound(recorded_library(cache))
    if os.path.exists("/proc/self/maps"):
        assert not planted_inodes & mapped_inodes()


def test_everything_owned_by_another_uid_is_refused_and_never_loaded(cache, monkeypatch):
    """Seen from another uid, the cache and the temporary folder are not theirs: nothing loads."""
    kernel_cache.load_kernel()  # a sound cache, as far as the real user is concerned
    loaded = []
    monkeypatch.setattr(kernel_cache.ctypes, "CDLL", lambda *args, **kwargs: loaded.append(args))
    real_uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real_uid + 1)
    kernel_cache._load.cache_clear()
    with pytest.warns(UserWarning, match="not used"), pytest.raises(RuntimeError, match=f"owned by uid {real_uid}"):
        kernel_cache.load_kernel()
    assert loaded == []
    with pytest.warns(UserWarning, match="backend='torch'"):
        assert FusedStreamer(nn.Sequential(CausalConv1d(3, 2, 2, dilation=2)).eval(), 1).backend == "torch"


def test_an_open_cache_folder_is_made_private_and_open_libraries_rebuilt(cache):
    kernel_cache.load_kernel()
    library = recorded_library(cache)
    os.chmod(cache, 0o777)  # what the first release left under umask 000
    os.chmod(library, 0o777)
    replaced = os.stat(library).st_ino
    reload()
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert os.stat(recorded_library(cache)).st_ino != replaced
    assert_sound(recorded_library(cache))
    assert_streams_like_offline()


def test_a_symlinked_cache_folder_is_not_used(cache, tmp_path):
    """Not even a library and record of this user, hash matching, behind the link are loaded."""
    kernel_cache.load_kernel()
    record = next(cache.glob("*.sha256"))
    elsewhere, planted = tmp_path / "elsewhere", planted_library(tmp_path)
    elsewhere.mkdir(mode=0o700)
    (elsewhere / record.name).write_text(hashlib.sha256(planted).hexdigest())
    (elsewhere / f"{record.stem}_{hashlib.sha256(planted).hexdigest()[:16]}.so").write_bytes(planted)
    shutil.rmtree(cache)
    cache.symlink_to(elsewhere, target_is_directory=True)
    before = {path.name: os.stat(path).st_ino for path in elsewhere.iterdir()}
    with pytest.warns(UserWarning, match="is a symlink"):
        reload()
    assert {path.name: os.stat(path).st_ino for path in elsewhere.iterdir()} == before  # nothing written there
    assert cache.is_symlink()
    assert_streams_like_offline()
    if os.path.exists("/proc/self/maps"):
        assert not set(before.values()) & mapped_inodes()


def test_umask_000_still_gives_a_private_folder_and_library(cache):
    previous = os.umask(0o000)
    try:
        kernel_cache.load_kernel()
    finally:
        os.umask(previous)
    for path in (cache.parent, cache):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    for path in cache.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
    assert_sound(recorded_library(cache))


def test_a_sound_cache_is_loaded_without_rebuilding(cache, monkeypatch):
    kernel_cache.load_kernel()
    library = recorded_library(cache)
    built = os.stat(library).st_ino
    monkeypatch.setattr(kernel_cache.shutil, "which", lambda name: None)  # no compiler: must come from the cache
    reload()
    assert os.stat(library).st_ino == built
    assert_streams_like_offline()
