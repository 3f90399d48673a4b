"""Run folders without training: what may be created or overwritten, one writer at a time, saves
numbered across kinds and pruned, a failed save leaving nothing, and the folder names chosen."""

import json

import pytest

from atrous.engine.run_dir import MARKER, RunDir, RunLockedError, is_run_dir, newest_checkpoint, next_run_dir


def write_file(name, text="x"):
    return lambda folder: (folder / name).write_text(text)


def test_overwrite_deletes_only_run_folders(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "checkpoint.json").write_text("{}")  # looking like a run does not make one
    with pytest.raises(ValueError, match="not an atrous run folder"):
        RunDir(folder, "segmentation", create=True, overwrite=True)
    run = tmp_path / "run"
    RunDir(run, "segmentation", create=True).close()
    (run / "metrics.json").write_text("{}")
    said = []
    RunDir(run, "segmentation", create=True, overwrite=True, announce=said.append).close()
    assert sorted(p.name for p in run.iterdir()) == [".atrous-run", ".lock"]
    assert said and "removed the previous run" in said[0]


def test_a_new_run_records_its_kind_and_config_and_refuses_what_it_must_not_replace(tmp_path):
    run = tmp_path / "run"
    RunDir(run, "sequence", create=True, config={"steps": 4}).close()
    assert json.loads((run / MARKER).read_text()) == {"kind": "sequence", "config": {"steps": 4}}
    assert is_run_dir(run)
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        RunDir(run, "sequence", create=True)
    with pytest.raises(ValueError, match="is a sequence run; it cannot be resumed as a segmentation run"):
        RunDir(run, "segmentation", create=False)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        RunDir(tmp_path / "missing", "sequence", create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        RunDir(tmp_path / "file", "sequence", create=True)
    (tmp_path / "link").symlink_to(run)
    assert not is_run_dir(tmp_path / "link")
    with pytest.raises(ValueError, match="symbolic link"):
        RunDir(tmp_path / "link", "sequence", create=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir(empty, "sequence", create=True).close()  # an empty folder the user made is taken over
    assert is_run_dir(empty)


def test_one_writer_at_a_time(tmp_path):
    holder = RunDir(tmp_path / "run", "segmentation", create=True)
    with pytest.raises(RunLockedError, match="in use by another atrous process"):
        RunDir(tmp_path / "run", "segmentation", create=False)
    with pytest.raises(RunLockedError):
        RunDir(tmp_path / "run", "segmentation", create=True, overwrite=True, announce=lambda _: None)
    holder.close()
    RunDir(tmp_path / "run", "segmentation", create=False).close()


def test_saves_are_numbered_across_kinds_and_only_the_newest_are_kept(tmp_path):
    run = RunDir(tmp_path / "run", "segmentation", create=True)
    made = [run.save(kind, write_file("weights", str(i)), keep=2)
            for i, kind in enumerate(["last", "best", "last", "last", "best"])]
    assert [path.name for path in made] == ["last-000001", "best-000002", "last-000003", "last-000004", "best-000005"]
    assert [path.name for path in run.saves("last")] == ["last-000003", "last-000004"]
    assert [path.name for path in run.saves("best")] == ["best-000002", "best-000005"]
    assert newest_checkpoint(tmp_path / "run") == made[3] and (made[3] / "weights").read_text() == "3"
    assert newest_checkpoint(tmp_path / "run", "best") == made[4]
    run.close()


def test_a_failed_save_leaves_nothing_and_names_the_folder_the_user_knows(tmp_path):
    run = RunDir(tmp_path / "run", "segmentation", create=True)
    run.save("last", write_file("weights"), keep=2)

    def fails(folder):
        (folder / "weights").write_text("half")
        raise OSError(28, "No space left on device", str(folder / "weights"))

    with pytest.raises(OSError, match=r"last-000002/weights"):
        run.save("last", fails, keep=2)
    with pytest.raises(KeyboardInterrupt):
        run.save("last", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt), keep=2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last-000001"]
    run.close()


def test_opening_a_run_removes_what_a_killed_save_left_and_nothing_else(tmp_path):
    RunDir(tmp_path / "run", "segmentation", create=True).close()
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / ".tmp-0123" / "model").mkdir(parents=True)
    (checkpoints / "last-000001").mkdir()
    (tmp_path / "run" / ".metrics.json.ab12cd34").write_text("half")  # an atomic write cut short
    (tmp_path / "run" / ".metrics.json.notmine").write_text("user")
    (tmp_path / "run" / ".env").write_text("user")
    RunDir(tmp_path / "run", "segmentation", create=False).close()
    assert [p.name for p in checkpoints.iterdir()] == ["last-000001"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == [
        ".atrous-run", ".env", ".lock", ".metrics.json.notmine"]


def test_newest_checkpoint_skips_what_is_not_a_complete_save_and_reads_older_layouts(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in ("last-000002", "last-000010", ".tmp-last-000099", "last-x", "best-000011"):
        (checkpoints / name).mkdir(parents=True)
    (checkpoints / "last-000050").symlink_to(checkpoints / "last-000002")
    (checkpoints / "last-000060").write_text("not a folder")
    assert newest_checkpoint(tmp_path) == checkpoints / "last-000010"  # numerically, not by name
    legacy = tmp_path / "old"
    (legacy / "checkpoint").mkdir(parents=True)
    assert newest_checkpoint(legacy) is None  # no checkpoint.json: not a complete save
    (legacy / "checkpoint" / "checkpoint.json").write_text("{}")
    assert newest_checkpoint(legacy) == legacy / "checkpoint"
    assert newest_checkpoint(legacy, "best") is None


def test_next_run_dir_counts_up_past_every_taken_name(tmp_path):
    assert next_run_dir(tmp_path, "tcn_adding") == tmp_path / "tcn_adding"
    (tmp_path / "tcn_adding").mkdir()
    (tmp_path / "tcn_adding-2").write_text("a file takes the name too")
    (tmp_path / "tcn_adding-3").symlink_to(tmp_path / "nowhere")  # so does a dangling link
    assert next_run_dir(tmp_path, "tcn_adding") == tmp_path / "tcn_adding-4"
