"""The worker pool: a worker that dies costs one retry, then one outcome, unless it had finished
its job before it died; whatever ends the run, every worker is stopped, reaped and its job
handed to salvage. Jobs here are plain integers."""

from __future__ import annotations

import errno
import gc
import multiprocessing.process
import os
import signal
import time
import weakref
from pathlib import Path

import pytest

from tsmcli.data.process_pool import _collector_frozen, run_in_processes
from tsmcli.errors import DataError


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _square_or_die(job: int, marks: Path) -> tuple[int, int, int]:
    """Runs in a worker: job 3 kills its worker every time, job 5 only the first time, job 7
    after it has finished (its result, MARKS/done.7, is in place). Each attempt leaves
    MARKS/left.<job>.<pid>, which salvage removes; an attempt that finds one of an earlier
    attempt answers -1."""
    (marks / f"{job}.{os.getpid()}").touch()
    earlier = list(marks.glob(f"left.{job}.*"))
    (marks / f"left.{job}.{os.getpid()}").touch()
    if job == 3 or (job == 5 and len(list(marks.glob("5.*"))) == 1):
        os.kill(os.getpid(), signal.SIGKILL)
    if job == 7:
        (marks / "done.7").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return job, -1 if earlier else job * job, os.getpid()


class _Salvage:
    """Records each (job, pid) it is called for, removes that attempt's leftover, and answers
    job 7's outcome when its result is in place."""

    def __init__(self, marks: Path):
        self.marks, self.calls = marks, []

    def __call__(self, job: int, pid: int):
        self.calls.append((job, pid))
        (self.marks / f"left.{job}.{pid}").unlink(missing_ok=True)
        if job == 7 and (self.marks / "done.7").exists():
            return job, 49, pid
        return None


def _first_fast_then_hang(job: int, marks: Path) -> tuple[int, int]:
    (marks / f"{job}.{os.getpid()}").touch()
    if job > 0:
        time.sleep(3600)
    return job, 0


def _pids(marks: Path, job: int) -> list[int]:
    return [int(p.suffix[1:]) for p in marks.glob(f"{job}.*")]


def test_a_dead_worker_is_replaced_its_job_retried_once_then_given_up(tmp_path, deadline):
    salvage = _Salvage(tmp_path)
    with deadline(120):
        outcomes = list(
            run_in_processes(
                list(range(8)),
                _square_or_die,
                tmp_path,
                3,
                died=lambda job, code: (job, code, None),
                salvage=salvage,
            )
        )
    by_job = {job: (value, pid) for job, value, pid in outcomes}
    assert len(outcomes) == 8
    assert {job: value for job, (value, _) in by_job.items()} == {
        k: -signal.SIGKILL if k == 3 else k * k for k in range(8)
    }  # 3 died twice: the caller's outcome with the exit code; 5 died once and was redone,
    # after the first attempt's leftover was gone; 7 died after finishing: salvaged, not redone
    assert len(_pids(tmp_path, 3)) == 2 and len(_pids(tmp_path, 5)) == 2
    assert len(_pids(tmp_path, 7)) == 1 and by_job[7][1] == _pids(tmp_path, 7)[0]
    first_5 = [pid for pid in _pids(tmp_path, 5) if pid != by_job[5][1]]
    assert sorted(salvage.calls) == sorted(
        [(3, pid) for pid in _pids(tmp_path, 3)] + [(5, *first_5), (7, by_job[7][1])]
    )
    assert all(_gone(pid) for job in range(8) for pid in _pids(tmp_path, job))


def test_closing_the_run_early_stops_every_worker_and_salvages_their_jobs(tmp_path, deadline):
    cleaned: list[tuple[int, int]] = []
    run = run_in_processes(
        [0, 1, 2],
        _first_fast_then_hang,
        tmp_path,
        3,
        died=lambda job, code: (job, code),
        salvage=lambda job, pid: cleaned.append((job, pid)),
    )
    with deadline(120):
        assert next(run) == (0, 0)
        while len(list(tmp_path.iterdir())) < 3:  # jobs 1 and 2 have started
            time.sleep(0.05)
        run.close()
    busy = sorted((job, pid) for job in (1, 2) for pid in _pids(tmp_path, job))
    assert sorted(cleaned) == busy  # the hanging jobs, each with the pid of its worker
    assert all(_gone(pid) for job in range(3) for pid in _pids(tmp_path, job))


def test_a_worker_that_cannot_start_is_one_line_and_the_others_are_stopped(
    tmp_path, deadline, monkeypatch
):
    real_start, started = multiprocessing.process.BaseProcess.start, []

    def start_once(process):  # the second fork is refused, as when memory runs out
        if started:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        started.append(process)
        real_start(process)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_once)
    cleaned: list[tuple[int, int]] = []
    run = run_in_processes(
        [1, 2],
        _first_fast_then_hang,
        tmp_path,
        2,
        died=lambda job, code: (job, code),
        salvage=lambda job, pid: cleaned.append((job, pid)),
    )
    with deadline(120), pytest.raises(DataError) as caught:
        next(run)
    assert str(caught.value) == (
        "cannot start a worker process (Cannot allocate memory); free some memory, or use "
        "fewer workers"
    )
    assert cleaned == [(1, started[0].pid)] and _gone(started[0].pid)


def _collect_garbage(job: int, _: None) -> int:
    """Runs in a worker: a full collection, which runs the destructor of any garbage in reach."""
    gc.collect()
    return job


def test_a_worker_never_collects_the_garbage_it_was_forked_with(decoder_garbage, deadline):
    with deadline(60):
        outcomes = list(
            run_in_processes(
                [1, 2, 3],
                _collect_garbage,
                None,
                2,
                died=lambda job, code: (job, code),
                salvage=lambda job, pid: None,
            )
        )
    assert sorted(outcomes) == [1, 2, 3]


class _Node:
    """An object that can be in a reference cycle and watched by a weak reference."""


def test_the_collector_is_frozen_across_a_fork_and_given_back_after():
    with _collector_frozen():
        assert gc.get_freeze_count() > 0  # what the child inherits, it never collects
    assert gc.get_freeze_count() == 0  # this process collects all of it again


def test_a_program_that_freezes_objects_itself_keeps_them_frozen_without_its_garbage():
    gc.disable()  # nothing is collected but by the code under test
    try:
        gc.freeze()  # the program's own choice
        frozen = gc.get_freeze_count()
        garbage = _Node()
        garbage.me = garbage  # a cycle made since: only the collector frees it
        gone = weakref.ref(garbage)
        del garbage
        with _collector_frozen():
            pass
        assert gc.get_freeze_count() >= frozen  # what the program froze is still frozen
        assert gone() is None  # the garbage was collected, not frozen with the rest
    finally:
        gc.unfreeze()
        gc.enable()
