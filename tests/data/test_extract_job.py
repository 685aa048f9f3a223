"""One video -> one frame folder: complete under its final name or not there at all, and
what a killed process left is removed (or put back) by its PID."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tsmcli.data import extract_job
from tsmcli.data.extract_job import Job, extract_video, remove_stale_partials, salvage
from tsmcli.errors import DataError


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_video_becomes_frames_from_one_and_replacing_swaps_the_whole_folder(tmp_path, make_video):
    video = make_video(tmp_path / "clip.mp4", num_frames=6, size=32)
    folder = tmp_path / "frames" / "clip"
    assert extract_video(video, folder, short_side=16) == 6
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"img_{k:05d}.jpg" for k in range(1, 7)]
    before = {p.stat().st_ino for p in folder.iterdir()}

    assert extract_video(video, folder, short_side=0, fps=None, replace=True) == 6
    assert {p.stat().st_ino for p in folder.iterdir()}.isdisjoint(before)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["clip"]  # no .clip.old-, .partial-


def test_a_video_that_cannot_be_read_leaves_nothing(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        extract_video(tmp_path / "empty.mp4", tmp_path / "frames" / "empty")
    assert str(caught.value) == (
        f"{tmp_path / 'empty.mp4'}: empty file (0 bytes); download it again or remove it"
    )
    assert not (tmp_path / "frames").exists()


def test_what_dead_processes_left_is_removed_and_a_moved_aside_folder_put_back(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f".a.partial-{dead}").mkdir()  # half-written: removed
    (tmp_path / f".b.old-{dead}").mkdir()  # moved aside by --overwrite, new one never came
    (tmp_path / f".b.old-{dead}" / "img_00001.jpg").write_bytes(b"old frame")
    (tmp_path / "c").mkdir()
    (tmp_path / f".c.old-{dead}").mkdir()  # the new c arrived: the old one goes
    (tmp_path / f".d.partial-{alive}").mkdir()  # a live extract's: kept
    (tmp_path / ".notes").write_text("not a temporary entry")

    remove_stale_partials({tmp_path, tmp_path / "absent"})

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".d.partial-{alive}",
        ".notes",
        "b",
        "c",
    ]
    assert (tmp_path / "b" / "img_00001.jpg").read_bytes() == b"old frame"


def test_salvage_removes_one_workers_leftovers_and_counts_a_folder_it_published(tmp_path):
    job = Job(tmp_path / "clip.mp4", tmp_path / "clip")
    for pid in (101, 202):
        (tmp_path / f".clip.partial-{pid}").mkdir()
    assert salvage(job, 101) is None  # died before publishing: to be done again
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clip.partial-202"]

    (tmp_path / ".clip.partial-202").rename(tmp_path / "clip")  # published, then killed
    for k in (1, 2, 3):
        (tmp_path / "clip" / f"img_{k:05d}.jpg").write_bytes(b"frame")
    assert salvage(job, 202) == (job, 3, None)

    redo = Job(job.video, job.folder, replaces=(tmp_path / "clip").stat().st_ino)
    assert salvage(redo, 303) is None  # --overwrite: the folder there is the one to replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


def test_a_folder_that_lost_frames_while_it_was_written_is_never_published(
    tmp_path, make_video, monkeypatch
):
    """Another process removing files from the temporary folder (a cleanup that took a live
    writer for a dead one) once left a folder missing its first frames under the final name."""
    video = make_video(tmp_path / "clip.mp4", num_frames=40)
    real_write = extract_job._write_jpegs

    def write_and_lose_the_first(images, folder, start, quality):
        written = real_write(images, folder, start, quality)
        if start == 16:
            (folder / "img_00001.jpg").unlink()
        return written

    monkeypatch.setattr(extract_job, "_write_jpegs", write_and_lose_the_first)
    with pytest.raises(DataError) as caught:
        extract_video(video, tmp_path / "frames" / "clip", short_side=0)
    temp = tmp_path / "frames" / f".clip.partial-{os.getpid()}"
    assert str(caught.value) == (
        f"{video}: {temp} holds 39 of the 40 frames written (another process removed or added "
        "files); nothing was published, extract it again"
    )
    assert list((tmp_path / "frames").iterdir()) == []
