"""List files and classes.txt: exact round trips, tolerant reading, errors naming file:line."""

from __future__ import annotations

import pytest

from tsmcli.data.lists import (
    ListEntry,
    classes_for_list,
    read_classes,
    read_list,
    write_classes,
    write_list,
)
from tsmcli.errors import DataError


def test_write_then_read_is_exact(tmp_path):
    entries = [
        ListEntry("abseiling/0wR5jVB-WPk_000417_000427", 300, 0),
        ListEntry("air_drumming/-Xy3_abcDEF_000014_000024", 250, 1),
    ]
    path = write_list(tmp_path / "sub" / "train.txt", entries)
    assert path.read_text() == (
        "abseiling/0wR5jVB-WPk_000417_000427 300 0\nair_drumming/-Xy3_abcDEF_000014_000024 250 1\n"
    )
    assert read_list(path) == entries
    assert [p.name for p in path.parent.iterdir()] == ["train.txt"]  # no temp file left behind


def test_crlf_and_trailing_blanks_are_tolerated(tmp_path):
    path = tmp_path / "val.txt"
    path.write_bytes(b"a/b 10 3\r\nc 7 0  \r\n\r\n   \n")
    assert read_list(path) == [ListEntry("a/b", 10, 3), ListEntry("c", 7, 0)]


@pytest.mark.parametrize(
    "bad_line, hint",
    [
        ("clip_x 12", "expected '<path> <num_frames> <label>'"),
        ("clip_x twelve 3", "must be integers"),
        ("clip_x 12 -1", "label >= 0"),
        ("clip_x 0 3", "num_frames must be >= 1"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, hint):
    path = tmp_path / "train.txt"
    path.write_text(f"ok 5 0\n\n{bad_line}\n")
    with pytest.raises(DataError) as err:
        read_list(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: ")
    assert hint in message
    assert "\n" not in message


def test_missing_list_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_list(tmp_path / "nope.txt")


def test_path_with_space_cannot_be_written(tmp_path):
    with pytest.raises(DataError, match="contain spaces"):
        write_list(tmp_path / "train.txt", [ListEntry("air drumming/x", 3, 1)])
    assert not (tmp_path / "train.txt").exists()


def test_classes_round_trip_and_beside_a_list(tmp_path):
    names = ["air drumming", "passing American football (in game)", "massaging person's head"]
    write_classes(tmp_path / "classes.txt", names)
    assert read_classes(tmp_path / "classes.txt") == names
    assert classes_for_list(tmp_path / "train.txt") == names
    assert classes_for_list(tmp_path / "other" / "train.txt") is None


def test_classes_crlf_trailing_blank_and_duplicates(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(b"Swiping Left\r\nSwiping Right\r\n\r\n")
    assert read_classes(path) == ["Swiping Left", "Swiping Right"]
    path.write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"classes.txt:3: class 'a' repeats line 1"):
        read_classes(path)
    path.write_text("a\n\nb\n")
    with pytest.raises(DataError, match=r"classes.txt:2: blank class name"):
        read_classes(path)
