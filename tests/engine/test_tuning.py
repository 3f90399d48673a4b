"""The record of ``backend="auto"`` choices: kept per machine in a private cache folder, read only
as string-to-string data, never trusted when another user could have written it."""

import json
import os

import pytest

from atrous.engine import tuning


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "atrous"


def test_choices_are_stored_merged_and_read_back(cache):
    assert tuning.load() == {}
    tuning.store({"conv-a": "native"})
    tuning.store({"conv-b": "fold", "conv-a": "gemm"})  # a later choice replaces an earlier one
    assert tuning.load() == {"conv-a": "gemm", "conv-b": "fold"}
    path = tuning.record_path()
    assert path.parent == cache and path.name.startswith("tuning-") and path.suffix == ".json"
    assert (cache.stat().st_mode & 0o777) == 0o700
    tuning.store({})  # nothing to add: the file is left as it is
    assert json.loads(path.read_text()) == {"conv-a": "gemm", "conv-b": "fold"}


def test_a_record_others_can_write_is_ignored_and_replaced(cache):
    tuning.store({"conv-a": "native"})
    tuning.record_path().chmod(0o666)
    assert tuning.load() == {}
    tuning.store({"conv-b": "fold"})  # the open record is replaced by a private one, without its entries
    assert tuning.load() == {"conv-b": "fold"}
    assert (tuning.record_path().stat().st_mode & 0o777) == 0o600


def test_an_open_folder_of_ours_is_made_private_and_its_own_record_still_counts(cache):
    tuning.store({"conv-a": "native"})
    cache.chmod(0o777)  # what umask 000 leaves; a file planted meanwhile would be another user's
    assert tuning.load() == {"conv-a": "native"}
    assert (cache.stat().st_mode & 0o777) == 0o700


def test_another_users_folder_is_neither_read_nor_written(cache, monkeypatch):
    tuning.store({"conv-a": "native"})
    before = tuning.record_path().read_bytes()
    real_uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real_uid + 1)
    assert tuning.load() == {}
    tuning.store({"conv-b": "fold"})
    assert tuning.record_path().read_bytes() == before


def test_a_symlinked_cache_folder_is_not_used(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / tuning.record_path().name).write_text('{"conv-a": "native"}')
    assert tuning.load() == {}
    tuning.store({"conv-b": "fold"})
    assert json.loads((elsewhere / tuning.record_path().name).read_text()) == {"conv-a": "native"}


@pytest.mark.parametrize(("text", "expected"), [
    ('{"conv-a": "native", "conv-b": 3, "conv-c": ["fold"]}', {"conv-a": "native"}),
    ('["native"]', {}),
    ('{"conv-a": "nat', {}),
])
def test_only_string_entries_of_a_json_object_are_read(cache, text, expected):
    cache.mkdir(mode=0o700)
    tuning.record_path().write_text(text)
    tuning.record_path().chmod(0o600)  # whatever the umask: a record others can write is ignored
    assert tuning.load() == expected


def test_a_record_that_would_grow_past_its_limit_is_left_as_it_is(cache, monkeypatch):
    monkeypatch.setattr(tuning, "MAX_ENTRIES", 3)
    tuning.store({"a": "native", "b": "fold"})
    tuning.store({"c": "gemm", "d": "fold"})
    assert tuning.load() == {"a": "native", "b": "fold"}
    tuning.store({"a": "gemm", "c": "gemm"})  # three entries: within the limit
    assert tuning.load() == {"a": "gemm", "b": "fold", "c": "gemm"}
