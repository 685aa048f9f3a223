"""tsm extract: frame folders that match the videos, failures recorded, never a half folder."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.io import decode_jpeg, read_file

from tsmcli.cli import cli
from tsmcli.data import extract_job
from tsmcli.data.extract import extract
from tsmcli.errors import DataError, UsageError


def _read(folder: Path) -> torch.Tensor:
    names = sorted(p.name for p in folder.iterdir())
    return torch.stack([decode_jpeg(read_file(str(folder / n))) for n in names])  # (N, 3, H, W)


def _names(count: int) -> set[str]:
    return {f"img_{k:05d}.jpg" for k in range(1, count + 1)}


def _failures(dst: Path) -> dict[str, str]:
    with open(dst / "failures.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "reason"]
    return {Path(path).name: reason for path, reason in rows[1:]}


def _hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*")]


def _write_rect(path: Path, width: int, height: int, num_frames: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(num_frames):
            image = np.full((height, width, 3), 20 * k, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_frames_are_numbered_from_one_and_match_the_video(tmp_path, make_video):
    make_video(tmp_path / "src" / "a" / "b" / "clip.mp4", num_frames=16, size=32)
    result = extract(tmp_path / "src", tmp_path / "dst", short_side=0, workers=1)

    folder = tmp_path / "dst" / "a" / "b" / "clip"
    assert {p.name for p in folder.iterdir()} == _names(16)
    assert (result.done, result.skipped, result.failed, result.frames) == (1, 0, 0, 16)
    frames = _read(folder).float()  # (16, 3, 32, 32)
    assert frames.shape == (16, 3, 32, 32)
    levels = frames.mean(dim=(1, 2, 3))
    expected = torch.arange(16) * 8.0 + 1  # the fixture: grey 8*k plus noise in [0, 2]
    assert torch.allclose(levels, expected, atol=2.0)
    assert _failures(tmp_path / "dst") == {}
    assert _hidden(tmp_path / "dst") == []


def test_short_side_resize_keeps_the_aspect_ratio(tmp_path):
    _write_rect(tmp_path / "src" / "wide.mp4", width=48, height=32)
    _write_rect(tmp_path / "src" / "tall.mp4", width=32, height=48)
    extract(tmp_path / "src", tmp_path / "dst", short_side=16, workers=1)
    assert _read(tmp_path / "dst" / "wide").shape == (4, 3, 16, 24)
    assert _read(tmp_path / "dst" / "tall").shape == (4, 3, 24, 16)


def test_fps_keeps_every_other_frame_at_half_the_rate(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4", num_frames=16, fps=8)
    result = extract(tmp_path / "src", tmp_path / "dst", short_side=0, fps=4, workers=1)
    folder = tmp_path / "dst" / "clip"
    assert {p.name for p in folder.iterdir()} == _names(8)
    assert result.frames == 8
    levels = _read(folder).float().mean(dim=(1, 2, 3))
    assert torch.allclose(levels, torch.arange(8) * 16.0 + 1, atol=2.0)  # source frames 0, 2, 4...


def test_bad_files_are_recorded_and_the_rest_extracted(tmp_path, make_video):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_video(src / "good.mp4")
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mp4").write_text("this is not a video\n")
    for name in (
        "cut_a.mp4",
        "cut_b.mkv",
        "cut_c.avi",
    ):  # moov lost / duration count / header count
        data = make_video(tmp_path / "whole" / name, num_frames=48).read_bytes()
        (src / name).write_bytes(data[: len(data) // 2])

    result = extract(src, dst, short_side=0, workers=1)

    assert (result.done, result.failed) == (1, 5)
    reasons = _failures(dst)
    assert set(reasons) == {"empty.mp4", "text.mp4", "cut_a.mp4", "cut_b.mkv", "cut_c.avi"}
    assert "0 bytes" in reasons["empty.mp4"]
    assert "truncated" in reasons["cut_b.mkv"] and "truncated" in reasons["cut_c.avi"]
    assert sorted(p.name for p in dst.iterdir()) == ["failures.csv", "good"]
    assert _hidden(dst) == []


def test_strict_exits_1_and_names_the_failures_file(tmp_path, make_video):
    make_video(tmp_path / "src" / "good.mp4")
    (tmp_path / "src" / "empty.mp4").write_bytes(b"")
    dst = tmp_path / "dst"

    relaxed = CliRunner().invoke(
        cli, ["extract", str(tmp_path / "src"), str(dst), "--workers", "1"]
    )
    assert relaxed.exit_code == 0
    assert relaxed.output.startswith("extracted 1 video (16 frames) in ")
    assert relaxed.output.rstrip().endswith(f"0 skipped, 1 failed (see {dst / 'failures.csv'})")

    strict = CliRunner().invoke(
        cli, ["extract", str(tmp_path / "src"), str(dst), "--workers", "1", "--strict"]
    )
    assert strict.exit_code == 1
    lines = strict.output.strip().splitlines()
    assert len(lines) == 1 and str(dst / "failures.csv") in lines[0]
    assert set(_failures(dst)) == {"empty.mp4"}  # rewritten by the second run


def test_a_video_failing_mid_write_leaves_no_folder_and_a_rerun_completes_it(
    tmp_path, make_video, monkeypatch
):
    make_video(tmp_path / "src" / "long.mp4", num_frames=40)
    make_video(tmp_path / "src" / "short.mp4", num_frames=8)
    dst = tmp_path / "dst"
    real_write = extract_job._write_jpegs

    def write_then_die(images, folder, start, quality):
        if start > 0:  # the second batch of the 40-frame video
            raise RuntimeError("disk on fire")
        return real_write(images, folder, start, quality)

    monkeypatch.setattr(extract_job, "_write_jpegs", write_then_die)
    first = extract(tmp_path / "src", dst, short_side=0, workers=1)
    assert (first.done, first.failed) == (1, 1)
    assert "disk on fire" in _failures(dst)["long.mp4"]
    assert not (dst / "long").exists() and _hidden(dst) == []

    monkeypatch.setattr(extract_job, "_write_jpegs", real_write)
    second = extract(tmp_path / "src", dst, short_side=0, workers=1)
    assert (second.done, second.skipped, second.failed) == (1, 1, 0)
    assert {p.name for p in (dst / "long").iterdir()} == _names(40)
    assert _failures(dst) == {}


def test_a_killed_runs_partial_folder_is_removed_and_the_video_redone(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4", num_frames=16)
    dst = tmp_path / "dst"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = dst / f".clip.partial-{dead.pid}"
    stale.mkdir(parents=True)
    (stale / "img_00001.jpg").write_bytes(b"half a frame")
    running = dst / f".other.partial-{os.getpid()}"  # a live process's folder is not touched
    running.mkdir()

    result = extract(tmp_path / "src", dst, short_side=0, workers=1)

    assert result.done == 1
    assert not stale.exists() and running.exists()
    assert {p.name for p in (dst / "clip").iterdir()} == _names(16)


def test_rerun_skips_finished_folders_and_overwrite_rewrites_them(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4", num_frames=16)
    dst = tmp_path / "dst"
    extract(tmp_path / "src", dst, short_side=0, workers=1)
    files = sorted((dst / "clip").iterdir())
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    content = _read(dst / "clip")

    again = extract(tmp_path / "src", dst, short_side=0, workers=1)
    assert (again.done, again.skipped, again.frames) == (0, 1, 0)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before

    redone = extract(tmp_path / "src", dst, short_side=0, workers=1, overwrite=True)
    assert (redone.done, redone.skipped, redone.frames) == (1, 0, 16)
    after = [p.stat().st_ino for p in sorted((dst / "clip").iterdir())]
    assert set(after).isdisjoint(ino for ino, _ in before)
    assert torch.equal(_read(dst / "clip"), content)
    assert _hidden(dst) == []


def test_two_videos_that_would_share_a_folder_fail_the_second(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4")
    make_video(tmp_path / "src" / "clip.mkv")
    result = extract(tmp_path / "src", tmp_path / "dst", short_side=0, workers=1)
    assert (result.done, result.failed) == (1, 1)
    assert "same frame folder" in _failures(tmp_path / "dst")["clip.mp4"]


def test_a_file_where_the_folder_goes_is_a_failure_and_left_alone(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "clip").write_text("mine")
    result = extract(tmp_path / "src", tmp_path / "dst", short_side=0, workers=1)
    assert (result.done, result.failed) == (0, 1)
    assert "is not a folder" in _failures(tmp_path / "dst")["clip.mp4"]
    assert (tmp_path / "dst" / "clip").read_text() == "mine"


def test_two_workers_write_the_same_frames_as_one(tmp_path, make_video):
    for k in range(3):
        make_video(tmp_path / "src" / f"clip{k}.mp4", num_frames=12, seed=k)
    one = extract(tmp_path / "src", tmp_path / "one", short_side=16, workers=1)
    two = extract(tmp_path / "src", tmp_path / "two", short_side=16, workers=2)
    assert (one.done, one.frames) == (two.done, two.frames) == (3, 36)
    for k in range(3):
        for name in _names(12):
            assert (tmp_path / "one" / f"clip{k}" / name).read_bytes() == (
                tmp_path / "two" / f"clip{k}" / name
            ).read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [{"short_side": -1}, {"short_side": 1}, {"fps": 0}, {"quality": 0}, {"workers": 0}],
)
def test_bad_options_are_refused_before_any_work(tmp_path, make_video, kwargs):
    make_video(tmp_path / "src" / "clip.mp4")
    with pytest.raises(UsageError):
        extract(tmp_path / "src", tmp_path / "dst", **kwargs)
    assert not (tmp_path / "dst").exists()


def test_a_folder_without_videos_is_a_data_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="no videos"):
        extract(tmp_path / "src", tmp_path / "dst")


# ---------------------------------------------------------------------------- faults

_REAL_RUN_JOB = extract_job.run_job


def _job_with_faults(job, options):
    """Runs in a worker process in place of extract_job.run_job. After the first frames of a video
    named crash.mp4 the worker SIGKILLs itself, as a decoder segfault or the out-of-memory
    killer would; flaky.mp4 does that only the first time; hang.mp4 never finishes."""
    stem, marker = job.video.stem, job.video.with_name(f"{job.video.name}.died")
    fault = stem == "crash" or stem == "hang" or (stem == "flaky" and not marker.exists())
    real_write = extract_job._write_jpegs

    def write_then_fail(images, folder, start, quality):
        written = real_write(images, folder, start, quality)
        if stem == "hang":
            time.sleep(3600)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
        return written

    if fault:
        extract_job._write_jpegs = write_then_fail  # this worker's copy of the module
    try:
        return _REAL_RUN_JOB(job, options)
    finally:
        extract_job._write_jpegs = real_write


def test_a_worker_killed_mid_video_is_a_failure_row_and_the_run_ends(
    tmp_path, make_video, monkeypatch, deadline
):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "b", "crash", "c", "flaky", "d"):
        make_video(src / f"{name}.mp4", num_frames=40)  # 3 batches: killed after the first
    monkeypatch.setattr(extract_job, "run_job", _job_with_faults)

    with deadline(240):  # it used to hang here forever
        result = extract(src, dst, short_side=0, workers=2)

    assert (result.done, result.failed, result.frames) == (5, 1, 5 * 40)
    assert _failures(dst) == {
        "crash.mp4": "worker died (killed by SIGKILL) twice on this video: the decoder crashes "
        "on it or the machine runs out of memory; re-encode it, or extract with fewer --workers"
    }
    assert (src / "flaky.mp4.died").exists()  # flaky died once and was done by a new worker
    assert sorted(p.name for p in dst.iterdir()) == ["a", "b", "c", "d", "failures.csv", "flaky"]
    for name in ("a", "b", "c", "d", "flaky"):
        assert {p.name for p in (dst / name).iterdir()} == _names(40)
    assert _hidden(dst) == []  # no .crash.partial-PID, no lock


def test_ctrl_c_stops_the_workers_at_once_and_leaves_nothing_half_written(
    tmp_path, make_video, monkeypatch, deadline
):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("hang", "a", "b"):
        make_video(src / f"{name}.mp4", num_frames=40)
    monkeypatch.setattr(extract_job, "run_job", _job_with_faults)
    partial: list[Path] = []

    def interrupt_when_hanging() -> None:
        while not partial:
            partial.extend(dst.glob(".hang.partial-*"))
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches this (the main) process

    watcher = threading.Thread(target=interrupt_when_hanging, daemon=True)
    watcher.start()
    with deadline(240), pytest.raises(KeyboardInterrupt):
        extract(src, dst, short_side=0, workers=2)
    watcher.join()

    worker = int(partial[0].name.rpartition("-")[2])
    assert not extract_job.pid_alive(worker)  # stopped, not left decoding
    assert _hidden(dst) == []  # its half-written folder and the lock are gone
    assert not (dst / "hang").exists()


def test_a_second_run_into_the_same_dst_is_refused_while_the_first_holds_the_lock(
    tmp_path, make_video
):
    import fcntl

    make_video(tmp_path / "src" / "clip.mp4")
    dst = tmp_path / "dst"
    dst.mkdir()
    lock = dst / ".tsm-extract.lock"
    with open(lock, "w") as held:  # a running extract, as far as the lock tells
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        result = CliRunner().invoke(cli, ["extract", str(tmp_path / "src"), str(dst)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: {lock}: another tsm extract (PID 4242) is writing to {dst}; wait for it to "
        "finish or choose another DST"
    ]
    assert sorted(p.name for p in dst.iterdir()) == [".tsm-extract.lock"]  # nothing rewritten


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / ".tsm-extract.lock").write_text(f"{dead.pid}\n")
    result = extract(tmp_path / "src", tmp_path / "dst", short_side=0, workers=1)
    assert result.done == 1 and _hidden(tmp_path / "dst") == []


def test_a_video_named_like_the_report_fails_and_the_report_is_kept(tmp_path, make_video):
    make_video(tmp_path / "src" / "failures.csv.mp4")
    make_video(tmp_path / "src" / "clip.mp4")
    (tmp_path / "src" / "empty.mp4").write_bytes(b"")
    dst = tmp_path / "dst"
    result = extract(tmp_path / "src", dst, short_side=0, workers=1)
    assert (result.done, result.failed) == (1, 2)
    reasons = _failures(dst)
    assert reasons["failures.csv.mp4"] == (
        f"its frame folder would be {dst / 'failures.csv'}, this run's report; rename it"
    )
    assert "0 bytes" in reasons["empty.mp4"]

    (dst / "failures.csv").unlink()
    (dst / "failures.csv").mkdir()  # frames of failures.csv.mp4 from an older tsmcli
    with pytest.raises(DataError) as caught:
        extract(tmp_path / "src", dst, short_side=0, workers=1)
    assert str(caught.value) == (
        f"{dst / 'failures.csv'}: a folder where this run writes its report (the frames of a "
        "video named failures.csv.*?); move it away"
    )


@pytest.mark.parametrize("under_a_file", [False, True])
def test_a_dst_that_is_or_is_under_a_file_is_a_usage_error_before_any_work(
    tmp_path, make_video, under_a_file
):
    make_video(tmp_path / "src" / "clip.mp4")
    (tmp_path / "notes.txt").write_text("mine")
    dst = tmp_path / "notes.txt" / "frames" if under_a_file else tmp_path / "notes.txt"
    result = CliRunner().invoke(cli, ["extract", str(tmp_path / "src"), str(dst)])
    assert result.exit_code == 2
    expected = (
        f"DST {dst}: {tmp_path / 'notes.txt'} is a file, not a folder; choose another path"
        if under_a_file
        else f"DST {dst}: is a file, not a folder; choose a folder"
    )
    assert result.output.splitlines() == [f"error: {expected}"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------- the processes of a run


def _children() -> set[int]:
    """The PIDs of this process's children, read from /proc."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == me:
                found.add(int(entry.name))
    return found


def _job_held_until_told(job, options):
    """Runs in a worker in place of extract_job.run_job: notes its PID and its parent's in
    MARKS/<stem>.<pid>.<ppid>, and holds a video named held*.mp4 after its first frames until
    MARKS/go exists."""
    marks = job.video.parent.parent / "marks"
    (marks / f"{job.video.stem}.{os.getpid()}.{os.getppid()}").touch()
    if not job.video.stem.startswith("held"):
        return _REAL_RUN_JOB(job, options)
    real_write = extract_job._write_jpegs

    def write_then_wait(images, folder, start, quality):
        written = real_write(images, folder, start, quality)
        for _ in range(3000):
            if (marks / "go").exists():
                break
            time.sleep(0.02)
        return written

    extract_job._write_jpegs = write_then_wait
    try:
        return _REAL_RUN_JOB(job, options)
    finally:
        extract_job._write_jpegs = real_write


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_killing_every_process_of_the_run_but_its_workers_leaves_it_whole(
    tmp_path, make_video, monkeypatch, deadline
):
    """Workers used to fork from a helper process; killing it (by hand, or the out-of-memory
    killer picking it) made the run lose sight of workers that went on writing while their
    folders were cleaned up, and one published a folder missing its first frames. Mid-run,
    kill every process the run started that is not a worker: the run must not notice."""
    import multiprocessing.forkserver

    src, dst, marks = tmp_path / "src", tmp_path / "dst", tmp_path / "marks"
    marks.mkdir()
    for name in ("a", "b", "held1", "held2"):
        make_video(src / f"{name}.mp4", num_frames=40)
    monkeypatch.setattr(extract_job, "run_job", _job_held_until_told)
    before, killed, locked = _children(), [], []

    def kill_the_helpers() -> None:
        while len([p for p in dst.glob(".held*.partial-*/img_00016.jpg")]) < 2:
            time.sleep(0.02)
        workers = {int(p.name.split(".")[1]) for p in marks.iterdir()}
        for pid in workers:  # a worker that outlived its run would keep the next one out
            fds = Path(f"/proc/{pid}/fd")
            locked.extend(pid for fd in fds.iterdir() if fd.resolve().name == ".tsm-extract.lock")
        helpers = _children() - before - workers
        forkserver = multiprocessing.forkserver._forkserver._forkserver_pid
        helpers |= {forkserver} & _children() if forkserver else set()
        for pid in helpers:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        if killed:
            time.sleep(1)  # a dying process with a large address space closes its pipes late
        (marks / "go").touch()

    killer = threading.Thread(target=kill_the_helpers, daemon=True)
    killer.start()
    with deadline(120):
        result = extract(src, dst, short_side=0, workers=2)
    killer.join()

    assert (result.done, result.failed, result.frames) == (4, 0, 4 * 40)
    assert locked == []  # no worker holds the DST lock
    for name in ("a", "b", "held1", "held2"):
        assert {p.name for p in (dst / name).iterdir()} == _names(40)
    assert _hidden(dst) == []
    runs = [p.name.split(".") for p in marks.iterdir() if p.name != "go"]
    assert sorted(stem for stem, _, _ in runs) == ["a", "b", "held1", "held2"]  # none redone
    assert {int(ppid) for _, _, ppid in runs} == {os.getpid()}  # nothing between run and worker
    assert not any(extract_job.pid_alive(int(pid)) for _, pid, _ in runs)


_ORPHANED_RUN = """
import os, sys, time
from pathlib import Path
from tsmcli.data import extract_job
from tsmcli.data.extract import extract

marks, real_run, real_write = Path(sys.argv[3]), extract_job.run_job, extract_job._write_jpegs

def held(job, options):  # note this worker, and hold it after its first frames until told
    (marks / f"worker.{os.getpid()}").touch()
    def write_then_wait(images, folder, start, quality):
        written = real_write(images, folder, start, quality)
        while not (marks / "go").exists():
            time.sleep(0.02)
        return written
    extract_job._write_jpegs = write_then_wait
    return real_run(job, options)

extract_job.run_job = held
extract(sys.argv[1], sys.argv[2], short_side=0, workers=2)
"""


def _dead(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_of_a_killed_run_publish_nothing_and_leave_quietly(tmp_path, make_video):
    """The out-of-memory killer may pick the run itself: its workers must neither publish a
    folder a new run may be writing too nor keep the next run out."""
    src, dst, marks = tmp_path / "src", tmp_path / "dst", tmp_path / "marks"
    marks.mkdir()
    for name in ("a", "b"):
        make_video(src / f"{name}.mp4", num_frames=40)
    (tmp_path / "run.py").write_text(_ORPHANED_RUN)
    run = subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py"), str(src), str(dst), str(marks)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(dst.glob(".*.partial-*/img_00016.jpg"))) < 2:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.05)
    finally:
        run.kill()
    run.wait()
    (marks / "go").touch()
    workers = [int(p.suffix[1:]) for p in marks.glob("worker.*")]
    while not all(_dead(pid) for pid in workers):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert len(workers) == 2
    assert sorted(p.name for p in dst.iterdir()) == [".tsm-extract.lock"]  # no folder, no temp
    assert run.stderr.read() == ""  # the workers left without a traceback
    again = extract(src, dst, short_side=0, workers=1)  # the lock of the killed run is free
    assert (again.done, again.failed) == (2, 0)


def _job_killed_after_publishing(job, options):
    """Runs in a worker in place of extract_job.run_job: notes each attempt in
    MARKS/<stem>.<pid>; the worker of a video named published*.mp4 is SIGKILLed after its
    folder is published and before it can say so, every time."""
    marks = job.video.parent.parent / "marks"
    (marks / f"{job.video.stem}.{os.getpid()}").touch()
    outcome = _REAL_RUN_JOB(job, options)
    if job.video.stem.startswith("published"):
        os.kill(os.getpid(), signal.SIGKILL)
    return outcome


def test_a_folder_published_by_a_worker_killed_before_it_reported_counts_as_done(
    tmp_path, make_video, monkeypatch, deadline
):
    src, dst, marks = tmp_path / "src", tmp_path / "dst", tmp_path / "marks"
    marks.mkdir()
    for name in ("a", "published"):
        make_video(src / f"{name}.mp4", num_frames=20)
    monkeypatch.setattr(extract_job, "run_job", _job_killed_after_publishing)

    with deadline(120):
        first = extract(src, dst, short_side=0, workers=2)
    assert (first.done, first.failed, first.frames) == (2, 0, 40)
    assert sorted(p.name.split(".")[0] for p in marks.iterdir()) == ["a", "published"]
    before = {p.name: p.stat().st_ino for p in (dst / "published").iterdir()}

    for mark in marks.iterdir():
        mark.unlink()
    with deadline(120):  # --overwrite: the old folder is moved aside, the new one published
        again = extract(src, dst, short_side=0, workers=2, overwrite=True)
    assert (again.done, again.failed, again.frames) == (2, 0, 40)
    assert sorted(p.name.split(".")[0] for p in marks.iterdir()) == ["a", "published"]
    after = {p.name: p.stat().st_ino for p in (dst / "published").iterdir()}
    assert set(after) == set(before) == _names(20)
    assert set(after.values()).isdisjoint(before.values())  # the new frames, not the old
    assert _failures(dst) == {} and _hidden(dst) == []


def test_a_script_without_a_main_guard_extracts_with_two_workers(tmp_path, make_video):
    for name in ("a", "b"):
        make_video(tmp_path / "src" / f"{name}.mp4", num_frames=8)
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import tsmcli\n"
        f"result = tsmcli.extract({str(tmp_path / 'src')!r}, {str(tmp_path / 'dst')!r}, "
        "short_side=0, workers=2)\n"
        "print(result.done, result.failed)\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["2", "0"], run.stderr
    for name in ("a", "b"):
        assert {p.name for p in (tmp_path / "dst" / name).iterdir()} == _names(8)


# ---------------------------------------------------------------------------- what the command prints


def test_when_every_video_fails_the_command_exits_1_and_says_so(tmp_path, make_video):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "empty.mp4").write_bytes(b"")
    failed = CliRunner().invoke(cli, ["extract", str(src), str(dst), "--workers", "1"])
    assert failed.exit_code == 1
    assert failed.output.splitlines()[-1] == (
        f"error: every video failed (1 of 1); see {dst / 'failures.csv'}"
    )
    assert set(_failures(dst)) == {"empty.mp4"}

    make_video(src / "good.mp4")  # one video extracted: the run did its work
    some = CliRunner().invoke(cli, ["extract", str(src), str(dst), "--workers", "1"])
    assert some.exit_code == 0, some.output
    again = CliRunner().invoke(cli, ["extract", str(src), str(dst), "--workers", "1"])
    assert again.exit_code == 0, again.output  # skipped still counts: its frames are there
    assert again.output.splitlines()[-1].startswith("extracted 0 videos (0 frames) in ")
    assert again.output.splitlines()[-1].endswith(
        f"1 skipped, 1 failed (see {dst / 'failures.csv'})"
    )


def test_the_command_prints_its_summary_once_in_the_singular_for_one(tmp_path, make_video):
    make_video(tmp_path / "src" / "clip.mp4", num_frames=1)
    run = subprocess.run(
        [sys.executable, "-m", "tsmcli", "extract", str(tmp_path / "src"), str(tmp_path / "dst")]
        + ["--workers", "1", "--short-side", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(
        r"extracted 1 video \(1 frame\) in \d+\.\d s, 0 skipped, 0 failed\n", run.stdout
    ), run.stdout
    assert "extracted" not in run.stderr
