"""Run jobs in worker processes that may die: a dead worker costs one job, never the run.

Each worker is sent one job at a time over its own pipe, so the job a dead worker held (a
decoder segfault, the out-of-memory killer) is known exactly: it is tried once more in a
fresh process, and a second death becomes the outcome the caller words for it. Whatever ends
the run (the last job, an error, Ctrl-C, ``close()``), every worker is stopped and reaped, and
the caller's ``cleanup`` removes what a killed job left half-done.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Generator, Hashable, Sequence
from multiprocessing import connection
from typing import Any, Generic, TypeVar

Job = TypeVar("Job", bound=Hashable)
Outcome = TypeVar("Outcome")


def run_in_processes(
    jobs: Sequence[Job],
    work: Callable[[Job, Any], Outcome],
    shared: Any,
    workers: int,
    *,
    died: Callable[[Job, int | None], Outcome],
    cleanup: Callable[[Job, int], None],
    initializer: Callable[[], None] | None = None,
    preload: Sequence[str] = (),
) -> Generator[Outcome, None, None]:
    """Yield ``work(job, shared)`` of every job, in the order they finish, from ``workers``
    processes. ``work``, ``shared`` and ``initializer`` (run once in each worker) must pickle;
    ``preload`` names the modules the fork server imports once for every worker. A job whose
    worker dies twice yields ``died(job, exitcode)``; ``cleanup(job, pid)`` is called for the
    job of every worker stopped or found dead while holding it."""
    context = _process_context(preload)
    todo = deque(jobs)
    deaths: dict[Job, int] = {}
    pool: list[_Worker[Job, Outcome]] = []

    def start() -> _Worker[Job, Outcome]:
        return _Worker(context, work, shared, initializer)

    try:
        for _ in range(min(workers, len(todo))):
            pool.append(start())
            pool[-1].send(todo.popleft())
        while any(worker.job is not None for worker in pool):
            busy = [worker for worker in pool if worker.job is not None]
            connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                outcome = worker.receive()
                if outcome is None and worker.process.is_alive():
                    continue  # still working
                job, code = worker.job, worker.process.exitcode
                assert job is not None
                if outcome is None:  # the process died holding its job
                    worker.stop(cleanup)  # reaps it and removes what its job left
                    deaths[job] = deaths.get(job, 0) + 1
                    if deaths[job] < 2:
                        todo.appendleft(job)
                    else:
                        outcome = died(job, code)
                worker.job = None
                if todo:
                    if not worker.process.is_alive():
                        place = pool.index(worker)
                        worker = pool[place] = start()
                    worker.send(todo.popleft())
                if outcome is not None:
                    yield outcome
    finally:
        for worker in pool:
            worker.stop(cleanup)


def _process_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """Workers fork from a server that has imported ``preload`` once (importing torchvision
    alone takes about a second per process), and no process with running thread pools is
    forked; spawn where there is no fork server."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        return context
    return multiprocessing.get_context("spawn")


class _Worker(Generic[Job, Outcome]):
    """One process that runs the jobs it is sent one at a time over its own pipe, so the job
    a dead worker held is known exactly."""

    def __init__(
        self,
        context,
        work: Callable[[Job, Any], Outcome],
        shared: Any,
        initializer: Callable[[], None] | None,
    ):
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, work, shared, initializer), daemon=True
        )
        self.process.start()
        child.close()
        self.job: Job | None = None

    def send(self, job: Job) -> None:
        self.job = job
        with contextlib.suppress(OSError):  # a dead worker is found by its sentinel
            self.conn.send(job)

    def receive(self) -> Outcome | None:
        """The outcome of the job sent, or None when the process ended without one."""
        try:
            return self.conn.recv() if self.conn.poll() else None
        except (EOFError, OSError):
            return None

    def stop(self, cleanup: Callable[[Job, int], None]) -> None:
        """End the process (killing it mid-job if it is busy), reap it and let ``cleanup``
        remove what its job left half-done."""
        if self.job is None and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.conn.close()
        if self.job is not None and self.process.pid is not None:
            cleanup(self.job, self.process.pid)


def _serve(conn, work: Callable[[Any, Any], Any], shared: Any, initializer) -> None:
    """A worker's loop: a job in, its outcome out, until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops workers
    if initializer is not None:
        initializer()
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the main process is gone
            return
        if job is None:
            return
        conn.send(work(job, shared))
