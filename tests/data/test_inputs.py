"""What ``tsm predict`` finds: files as named, frame folders by their first frame, folders
searched in name order without going inside frame folders, one failed input per bad path."""

from __future__ import annotations

import os

import pytest

from tsmcli.data.inputs import FRAMES, VIDEOS, FoundInput, find_inputs, is_frame_folder
from tsmcli.errors import DataError


def touch(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_is_searched_in_name_order_and_frame_folders_are_inputs(tmp_path):
    root = tmp_path / "clips"
    touch(root / "b.mp4")
    touch(root / "A.MKV")  # extensions in any case
    touch(root / "notes.txt")  # not a video name: left out of a search
    touch(root / "sub" / "c.webm")
    touch(root / "sub" / "frames1" / "img_00001.jpg")
    touch(root / "sub" / "frames1" / "inner.mp4")  # inside a frame folder: not searched
    touch(root / ".partial-x" / "d.mp4")  # hidden: skipped
    touch(root / "a" / "img_00002.jpg")  # no first frame: a plain folder, nothing in it
    found = find_inputs([root])
    assert found == [
        FoundInput(root / "A.MKV", VIDEOS),
        FoundInput(root / "b.mp4", VIDEOS),
        FoundInput(root / "sub" / "c.webm", VIDEOS),
        FoundInput(root / "sub" / "frames1", FRAMES),
    ]


def test_named_paths_are_used_as_given_and_repeats_kept_once(tmp_path):
    video = touch(tmp_path / "clip.bin")  # named: a video whatever its extension
    frames = tmp_path / "f"
    touch(frames / "img_00001.jpg")
    found = find_inputs([video, frames, tmp_path, str(video)])
    assert found == [
        FoundInput(video, VIDEOS),
        FoundInput(frames, FRAMES),  # the search of tmp_path finds it again: kept once
    ]
    assert is_frame_folder(frames) and not is_frame_folder(tmp_path)


def test_a_missing_path_or_an_empty_folder_is_a_failed_input_and_the_others_go_on(tmp_path):
    good = touch(tmp_path / "v.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    found = find_inputs([tmp_path / "nope.mp4", empty, good])
    assert found[0] == FoundInput(
        tmp_path / "nope.mp4",
        VIDEOS,
        f"{tmp_path / 'nope.mp4'}: no such file or folder; check the path",
    )
    assert found[1].error == (
        f"{empty}: no video (.mp4, .avi, .webm, .mkv, .mov) or frame folder (img_00001.jpg, ...) "
        "found in it; give videos or frame folders"
    )
    assert found[2] == FoundInput(good, VIDEOS)


def test_the_frame_template_decides_what_a_frame_folder_is(tmp_path):
    touch(tmp_path / "x" / "frame_1.png")
    assert find_inputs([tmp_path], template="frame_{}.png") == [FoundInput(tmp_path / "x", FRAMES)]
    with pytest.raises(DataError, match="not a frame file name with one integer field"):
        find_inputs([tmp_path], template="frame.png")


def test_a_symbolic_link_loop_is_not_followed(tmp_path):
    touch(tmp_path / "d" / "v.mp4")
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    assert find_inputs([tmp_path]) == [FoundInput(tmp_path / "d" / "v.mp4", VIDEOS)]
