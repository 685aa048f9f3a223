"""Run jobs in worker processes that may die: a dead worker costs one job, never the run.

Each worker is sent one job at a time over its own pipe, so the job a dead worker held (a
decoder segfault, the out-of-memory killer) is known exactly. Once the dead process is
reaped, the caller's ``salvage`` removes what it left and says whether it had finished the job
before it died; if not, the job is tried once more in a fresh process, and a second death
becomes the outcome the caller words for it. Whatever ends the run (the last job, an error,
Ctrl-C, ``close()``), every worker is stopped, reaped and its job salvaged.

On Linux the workers are forked from this process, after it has imported what they need once.
So no helper process stands between the run and its workers: a fork server that died (killed
by hand or by the out-of-memory killer) left workers the run could neither see nor stop, still
writing while their jobs were retried. And a worker runs nothing of the caller's script again,
so a script needs no ``if __name__ == "__main__":`` guard. Elsewhere workers are spawned (fork
is unsafe on macOS), and a calling script needs that guard.

A forked worker inherits this process's objects, the garbage not yet collected among them, but
none of its threads. A decoder's destructor joins the decoder's own thread (decord starts one
per reader), so a reader collected in a worker crashes it or waits for ever; a reader in a
reference cycle (one held by a traceback) is such garbage until the collector runs. So the
collector's view is frozen across each fork (``worker_context``): a worker never collects what
it inherited, and this process goes on collecting it where the threads are. The DataLoaders
of training and of scoring (eval, predict, features) fork their workers the same way.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterator, Sequence
from multiprocessing import connection
from typing import Any, Generic, TypeVar

from tsmcli.errors import DataError

Job = TypeVar("Job", bound=Hashable)
Outcome = TypeVar("Outcome")


def run_in_processes(
    jobs: Sequence[Job],
    work: Callable[[Job, Any], Outcome],
    shared: Any,
    workers: int,
    *,
    died: Callable[[Job, int | None], Outcome],
    salvage: Callable[[Job, int], Outcome | None],
    initializer: Callable[[], None] | None = None,
    preload: Sequence[str] = (),
    private_fds: Sequence[int] = (),
) -> Generator[Outcome, None, None]:
    """Yield ``work(job, shared)`` of every job, in the order they finish, from ``workers``
    processes; ``initializer`` runs once in each, ``preload`` names the modules imported here
    once for all of them, and a forked worker closes its copies of ``private_fds`` (a lock
    this process holds must not outlive it in a worker). ``salvage(job, pid)`` is called for
    the job of every worker found dead or stopped while holding it, once that process is
    reaped: it removes what the process left and returns the job's outcome if the process had
    finished the job before it died (None otherwise). A job whose worker dies twice without
    that yields ``died(job, exitcode)``."""
    context = _process_context(preload)
    todo = deque(jobs)
    deaths: dict[Job, int] = {}
    pool: list[_Worker[Job, Outcome]] = []

    def start() -> _Worker[Job, Outcome]:
        return _Worker(context, work, shared, initializer, [w.conn for w in pool], private_fds)

    try:
        for _ in range(min(workers, len(todo))):
            pool.append(start())
            pool[-1].send(todo.popleft())
        while any(worker.job is not None for worker in pool):
            for worker in _finished(pool):
                job = worker.job
                outcome = worker.receive()
                if outcome is None:  # the process died holding its job
                    outcome = worker.stop(salvage)
                    if outcome is None:  # unfinished: once more, in a fresh process
                        deaths[job] = deaths.get(job, 0) + 1
                        if deaths[job] < 2:
                            todo.appendleft(job)
                        else:
                            outcome = died(job, worker.process.exitcode)
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
            worker.stop(salvage)


def _finished(pool: list[_Worker[Job, Outcome]]) -> list[_Worker[Job, Outcome]]:
    """Wait until a busy worker has an outcome or has ended; every such worker. A worker's
    sentinel is ready once the process has exited, before it can be reaped."""
    busy = [worker for worker in pool if worker.job is not None]
    ready = connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
    return [w for w in busy if w.conn in ready or w.process.sentinel in ready]


def _process_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """``worker_context()``, with ``preload`` imported first where workers are forked
    (torchvision alone takes a second or more to import: once here, not once per worker)."""
    if sys.platform.startswith("linux"):
        for name in preload:
            importlib.import_module(name)
    return worker_context()


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: on Linux forked, with the garbage collector frozen across the
    fork (the module's docstring says why); spawned elsewhere. Also a DataLoader's
    ``multiprocessing_context``."""
    if sys.platform.startswith("linux"):
        return _CollectorFrozenForkContext()
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _collector_frozen() -> Iterator[None]:
    """Move every object the collector tracks out of its reach for the block (a fork): the
    child never collects them, and this process takes them back after. A program that freezes
    objects itself keeps them frozen; its garbage is collected first, so none is frozen too."""
    if gc.get_freeze_count():
        gc.collect()
        gc.freeze()
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


if sys.platform != "win32":  # where the standard library defines fork's context

    class _CollectorFrozenForkProcess(multiprocessing.context.ForkProcess):
        @staticmethod
        def _Popen(process_obj):
            with _collector_frozen():
                return multiprocessing.context.ForkProcess._Popen(process_obj)

    class _CollectorFrozenForkContext(multiprocessing.context.ForkContext):
        Process = _CollectorFrozenForkProcess


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives while a worker is forked, and deliver it after. Python runs
    a signal handler wherever the main thread is, and a KeyboardInterrupt raised inside fork's
    own callbacks is swallowed: the run would go on as if Ctrl-C had not been pressed. The
    worker inherits the holding handler until it ignores SIGINT, so it prints no traceback."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # a handler Python cannot put back
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there


class _Worker(Generic[Job, Outcome]):
    """One process that runs the jobs it is sent one at a time over its own pipe, so the job
    a dead worker held is known exactly."""

    def __init__(
        self,
        context,
        work: Callable[[Job, Any], Outcome],
        shared: Any,
        initializer: Callable[[], None] | None,
        others: list[connection.Connection],
        private_fds: Sequence[int],
    ):
        self.conn, child = context.Pipe()
        # A forked worker holds copies of this process's ends of the pipes (its own and its
        # elders'); it closes them, so that each pipe ends when this process does.
        forked = context.get_start_method() == "fork"
        inherited = ([self.conn, *others], tuple(private_fds)) if forked else ([], ())
        self.process = context.Process(
            target=_serve, args=(child, inherited, work, shared, initializer), daemon=True
        )
        try:
            with _interrupts_deferred():
                self.process.start()
        except OSError as exc:  # fork refused: no memory or process slots left
            self.conn.close()
            raise DataError(
                f"cannot start a worker process ({exc.strerror or exc}); free some memory, "
                "or use fewer workers"
            ) from exc
        except KeyboardInterrupt:  # Ctrl-C as it started: it has no job yet, end it here
            self.process.kill()
            self.process.join()
            self.conn.close()
            raise
        finally:
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

    def stop(self, salvage: Callable[[Job, int], Outcome | None]) -> Outcome | None:
        """End the process (killing it mid-job if it is busy) and reap it; then ``salvage``
        what its job left, and return what salvage returns."""
        if self.job is None and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        job, self.job = self.job, None
        if job is None or self.process.pid is None:
            return None
        return salvage(job, self.process.pid)


def _serve(conn, inherited, work: Callable[[Any, Any], Any], shared: Any, initializer) -> None:
    """A worker's loop: a job in, its outcome out, until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler forked from the caller
    connections, fds = inherited
    for other in connections:
        other.close()
    for fd in fds:
        os.close(fd)
    if initializer is not None:
        initializer()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            return
        if job is None:
            return
        outcome = work(job, shared)
        try:
            conn.send(outcome)
        except OSError:  # the main process is gone: nobody is left to tell
            return
