"""Finding annotated clips under --root: any layout to depth 4, by name, one pick per name."""

from __future__ import annotations

import logging

import pytest
from annotated_clips import frames

from tsmcli.data.annotations import Record
from tsmcli.data.root_index import Row, detect_template, match
from tsmcli.errors import DataError


def _record(key: str, hints: tuple[str, ...] = ()) -> Record:
    return Record("train", key, 0, key, "ann.txt:1", hints)


def test_clips_are_found_by_name_to_depth_four_and_hidden_folders_are_skipped(tmp_path):
    frames(tmp_path / "a" / "b" / "c" / "deep4", 2)  # the folder itself is at depth 4
    frames(tmp_path / "a" / "b" / "c" / "d" / "deep5", 2)
    frames(tmp_path / ".cache" / "hidden", 2)
    frames(tmp_path / "flat", 2)
    names = ["deep4", "deep5", "hidden", "flat"]
    rows, source = match(tmp_path, [_record(n) for n in names], None, None)
    assert source == "frames"
    assert [row.rel for row in rows] == ["a/b/c/deep4", None, None, "flat"]
    assert rows[1] == Row("train", None, 0, "deep5", "not found")


def test_a_name_found_twice_is_taken_from_the_hinted_class_folder(tmp_path, caplog):
    frames(tmp_path / "jump" / "clip", 2)
    frames(tmp_path / "walk" / "clip", 2)
    rows, _ = match(tmp_path, [_record("clip", ("walk",))], "frames", None)
    assert rows[0].rel == "walk/clip"
    with caplog.at_level(logging.WARNING, logger="tsmcli.data.root_index"):
        rows, _ = match(tmp_path, [_record("clip")], "frames", None)
    assert rows[0].rel == "jump/clip"  # the first in sorted order, with a warning
    assert "2 clips named clip under the root; using jump/clip" in caplog.text


def test_a_clip_key_maps_file_names_to_what_records_are_found_by(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x_000003_000013.mp4").write_bytes(b"")
    (tmp_path / "v" / "notes.mp4.txt").write_bytes(b"")

    def head(stem: str):
        return stem.partition("_")[0] or None

    rows, source = match(tmp_path, [_record("x")], None, head)
    assert source == "videos" and rows[0].rel == "v/x_000003_000013.mp4"


def test_the_template_is_the_manifests_or_a_known_one_that_matches(tmp_path):
    frames(tmp_path / "a", 2, "{:06d}.jpg")
    frames(tmp_path / "b", 2, "{:06d}.jpg")
    assert detect_template(tmp_path, ["a", "b"], "img_{:05d}.jpg") == "{:06d}.jpg"
    assert detect_template(tmp_path, ["a"], "{:06d}.jpg") == "{:06d}.jpg"
    (tmp_path / "empty").mkdir()
    assert detect_template(tmp_path, ["empty"], "x{:03d}.png") == "x{:03d}.png"
    frames(tmp_path / "odd", 2, "frame{:04d}.jpg")
    with pytest.raises(DataError) as caught:
        detect_template(tmp_path, ["odd"], "img_{:05d}.jpg")
    assert str(caught.value) == (
        f"{tmp_path / 'odd'}: no frame named like img_00001.jpg, 00001.jpg, 000001.jpg, "
        "image_00001.jpg; pass the frame file template with --template (e.g. 'frame{:04d}.jpg')"
    )
