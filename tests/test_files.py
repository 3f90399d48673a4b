"""Every file atrous writes is whole or absent, and an output path is refused before any work."""

import errno
import os
from pathlib import Path

import pytest

from atrous._files import atomic_write, check_output_file


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new" and names(tmp_path) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_mode_follows_the_umask_the_process_has_now(tmp_path, umask):
    previous = os.umask(umask)
    try:
        target = tmp_path / "out.bin"
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"x"))
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_write_never_changes_the_umask(tmp_path, monkeypatch):
    """Setting the umask, even to restore it, opens a window where other threads make files with it."""

    def refuse(mask):
        raise AssertionError(f"atomic_write called os.umask({mask:#o})")

    monkeypatch.setattr(os, "umask", refuse)
    target = tmp_path / "out.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("writer bug"),
                                     KeyboardInterrupt()])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, failure):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the old weights")
    seen = []

    def write(tmp):
        Path(tmp).write_bytes(b"half of the new")  # part of the new content is on disk ...
        seen.append(tmp)
        raise failure  # ... when the disk fills up, or the writer breaks

    with pytest.raises(type(failure)) as raised:
        atomic_write(target, write)
    assert target.read_bytes() == b"the old weights"
    assert names(tmp_path) == ["model.safetensors"] and not os.path.exists(seen[0])
    assert Path(seen[0]).parent == tmp_path  # written beside the target, so the rename is atomic
    if isinstance(failure, OSError):  # the message names the user's file, not the temporary one
        assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC


def test_a_failed_first_write_leaves_nothing(tmp_path):
    def write(tmp):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        atomic_write(tmp_path / "new.png", write)
    assert names(tmp_path) == []


def test_a_writer_that_names_another_file_keeps_its_error(tmp_path):
    def write(tmp):
        open(tmp_path / "missing" / "input.txt")

    with pytest.raises(FileNotFoundError) as raised:
        atomic_write(tmp_path / "out.txt", write)
    assert raised.value.filename == str(tmp_path / "missing" / "input.txt")
    assert names(tmp_path) == []


def test_check_output_file_takes_a_new_name_and_an_existing_file_with_overwrite(tmp_path):
    assert check_output_file(str(tmp_path / "new.onnx"), overwrite=False, name="--out") == tmp_path / "new.onnx"
    existing = tmp_path / "old.onnx"
    existing.write_text("x")
    assert check_output_file(existing, overwrite=True, name="--out") == existing
    with pytest.raises(FileExistsError, match=r"--out '.*old.onnx' already exists; pass --overwrite to replace it"):
        check_output_file(existing, overwrite=False, name="--out")
    with pytest.raises(FileExistsError, match="set overwrite=True to replace it"):
        check_output_file(existing, overwrite=False, name="path", hint="set overwrite=True")
    assert existing.read_text() == "x"


@pytest.mark.parametrize("dangling", [False, True])
def test_check_output_file_refuses_symlinks_even_with_overwrite(tmp_path, dangling):
    real = tmp_path / "real.png"
    if not dangling:
        real.write_text("x")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"--out '.*link.png' is a symbolic link"):
            check_output_file(link, overwrite=overwrite, name="--out")
    assert link.is_symlink() and real.exists() != dangling


def test_check_output_file_refuses_folders_and_missing_folders(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True, name="--out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output_file(tmp_path / "no" / "out.png", overwrite=True, name="--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_output_file(tmp_path / "file" / "out.png", overwrite=True, name="--out")


def test_check_output_file_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="exists and is not a regular file"):
        check_output_file(fifo, overwrite=True, name="--out")
