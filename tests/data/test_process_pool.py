"""The worker pool: a worker that dies costs one retry, then one outcome; whatever ends the
run, every worker is stopped and its job handed to cleanup. Jobs here are plain integers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tsmcli.data.process_pool import run_in_processes


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _square_or_die(job: int, marks: Path) -> tuple[int, int, int]:
    """Runs in a worker: job 3 kills its worker every time, job 5 only the first time."""
    (marks / f"{job}.{os.getpid()}").touch()
    if job == 3 or (job == 5 and len(list(marks.glob("5.*"))) == 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return job, job * job, os.getpid()


def _first_fast_then_hang(job: int, marks: Path) -> tuple[int, int]:
    (marks / f"{job}.{os.getpid()}").touch()
    if job > 0:
        time.sleep(3600)
    return job, 0


def _pids(marks: Path, job: int) -> list[int]:
    return [int(p.suffix[1:]) for p in marks.glob(f"{job}.*")]


def test_a_dead_worker_is_replaced_its_job_retried_once_then_given_up(tmp_path, deadline):
    cleaned: list[tuple[int, int]] = []
    with deadline(120):
        outcomes = list(
            run_in_processes(
                list(range(8)),
                _square_or_die,
                tmp_path,
                3,
                died=lambda job, code: (job, code, None),
                cleanup=lambda job, pid: cleaned.append((job, pid)),
            )
        )
    by_job = {job: (value, pid) for job, value, pid in outcomes}
    assert len(outcomes) == 8
    assert {job: value for job, (value, _) in by_job.items()} == {
        k: -signal.SIGKILL if k == 3 else k * k for k in range(8)
    }  # 3 died twice: the caller's outcome with the exit code; 5 died once and was redone
    assert len(_pids(tmp_path, 3)) == 2 and len(_pids(tmp_path, 5)) == 2
    first_5 = [pid for pid in _pids(tmp_path, 5) if pid != by_job[5][1]]
    assert sorted(cleaned) == sorted([(3, pid) for pid in _pids(tmp_path, 3)] + [(5, *first_5)])
    assert all(_gone(pid) for job in range(8) for pid in _pids(tmp_path, job))


def test_closing_the_run_early_stops_every_worker_and_cleans_up_their_jobs(tmp_path, deadline):
    cleaned: list[tuple[int, int]] = []
    run = run_in_processes(
        [0, 1, 2],
        _first_fast_then_hang,
        tmp_path,
        3,
        died=lambda job, code: (job, code),
        cleanup=lambda job, pid: cleaned.append((job, pid)),
    )
    with deadline(120):
        assert next(run) == (0, 0)
        while len(list(tmp_path.iterdir())) < 3:  # jobs 1 and 2 have started
            time.sleep(0.05)
        run.close()
    busy = sorted((job, pid) for job in (1, 2) for pid in _pids(tmp_path, job))
    assert sorted(cleaned) == busy  # the hanging jobs, each with the pid of its worker
    assert all(_gone(pid) for job in range(3) for pid in _pids(tmp_path, job))
