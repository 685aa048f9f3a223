"""check_output_dir: an output folder that cannot be written is one line before any work;
atomic_write_text: a reader sees the old file or the new one, never half of it."""

from __future__ import annotations

import os

import pytest

from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import atomic_write_text, check_output_dir


def test_a_new_or_existing_folder_passes_and_nothing_is_created(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert check_output_dir(tmp_path, "--out") == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_folder_goes_is_refused(tmp_path):
    (tmp_path / "lists").write_text("mine")
    with pytest.raises(UsageError) as caught:
        check_output_dir(tmp_path / "lists", "--out")
    assert str(caught.value) == (
        f"--out {tmp_path / 'lists'} is a file, not a folder; "
        "give a folder path or move the file away"
    )
    assert (tmp_path / "lists").read_text() == "mine"


def test_a_file_among_the_parents_is_refused_with_the_error_kind_asked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError) as caught:
        check_output_dir(tmp_path / "notes.txt" / "frames" / "x", "DST", error=DataError)
    assert str(caught.value) == (
        f"DST {tmp_path / 'notes.txt' / 'frames' / 'x'}: {tmp_path / 'notes.txt'} is not a "
        "folder, so nothing can be made under it; give another path"
    )


def test_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    # Tests may run as root, for whom every folder is writable: ask os.access what we need.
    denied = tmp_path / "readonly"
    denied.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if p == denied else real_access(p, mode)
    )
    with pytest.raises(UsageError, match=r"no permission to write in .*readonly; give a folder"):
        check_output_dir(denied / "run", "--out")


def test_atomic_write_text_replaces_the_whole_file_or_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "list.txt"
    atomic_write_text(path, "a 1 0\n")
    atomic_write_text(path, "b 2 1\r\n")  # written as given: no newline translation
    assert path.read_bytes() == b"b 2 1\r\n"

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "c 3 2\n")
    assert path.read_bytes() == b"b 2 1\r\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["list.txt"]  # no temp file left
