"""The demo's clock: how long each step took (wall and CPU time), the projected total after
the first training epoch, one intra-op thread, and the machine the times come from."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Step:
    """A step as it runs: ``reuse()`` says it found its result from an earlier run."""

    def __init__(self) -> None:
        self.reused = False

    def reuse(self) -> None:
        self.reused = True


class StepClock:
    """The demo's wall clock: how long each of ``steps`` took, logged as it ends.

    ``timings`` are this run's. ``done`` are the times of the runs that did each step: a step
    that reuses an earlier run's result keeps that run's time, so a re-run's report still
    says what the work cost. With ``record`` (a JSON file) they outlive the run.
    """

    def __init__(self, steps: Sequence[str], record: Path | None = None) -> None:
        self.steps = tuple(steps)
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.record = record
        self.done: dict[str, float] = _read_record(record)
        self.reused: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @contextmanager
    def step(self, name: str, text: str) -> Iterator[Step]:
        log.info("[%d/%d] %s", self.steps.index(name) + 1, len(self.steps), text)
        begun, cpu, current = time.perf_counter(), cpu_seconds(), Step()
        yield current
        self.timings[name] = time.perf_counter() - begun
        if current.reused:
            self.reused.append(name)
        else:
            self.done[name] = self.timings[name]
            self._save()
        # CPU time of this process and the finished children beside the wall time: on a
        # machine shared with other work the wall time is the larger
        log.info("      %s: %.1f s (CPU %.1f s)", name, self.timings[name], cpu_seconds() - cpu)

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.timings.items())

    def _save(self) -> None:
        if self.record is not None:
            from tsmcli.fileio import atomic_write

            done = {name: self.done[name] for name in self.steps if name in self.done}
            atomic_write(self.record, json.dumps(done, indent=1) + "\n")


def _read_record(path: Path | None) -> dict[str, float]:
    """The step times a record file holds (none when it is missing or not ours)."""
    try:
        found = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float)}


class Projection:
    """After the first epoch the demo trains, log what the whole run will take: the time so
    far, the training steps left at the pace of that epoch (set-up included; a run that
    trains beside it in another process counts nothing) and what follows the trainings
    (``after_training``, in training steps)."""

    def __init__(self, clock: StepClock, planned: dict[str, int], after_training: int):
        self.clock = clock
        self.planned = planned  # run name -> its optimizer steps
        self.after_training = after_training
        self.current: str | None = None
        self.after: list[str] = []
        self.started = 0.0
        self.done = False

    def begin(self, name: str, after: Sequence[str]) -> None:
        """Training ``name`` starts; ``after`` will train one by one once it is done."""
        self.current, self.after, self.started = name, list(after), time.perf_counter()

    def epoch(self, row: dict[str, Any]) -> None:
        """``train``'s ``on_epoch``: the first call logs the projection, the others nothing."""
        if self.done or self.current is None:
            return
        self.done = True
        steps = row["epoch"] * row["steps_per_epoch"]
        pace = (time.perf_counter() - self.started) / steps
        left = self.planned[self.current] - steps + sum(self.planned[n] for n in self.after)
        total = self.clock.elapsed() + pace * (left + self.after_training)
        log.info(
            "projected total: %.1f min (%.2f s a training step on this machine)", total / 60, pace
        )


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread inside. The demo's results then do not depend on the machine's
    core count, and its operations are small: on the 2-core AVX2 machine, shared with other
    work (load 5-8), a second thread that waits for the first at every operation made a
    training step 5x and a streaming step 50x slower in CPU time (a streaming step: 3.6 ms on
    one thread, 180 ms on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# set to make an AVX-512 CPU run torch's and oneDNN's AVX2 kernels: a stand-in for an AVX2 CPU
ISA_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def machine() -> str:
    """The CPU, the instruction set torch's kernels use and the core count, for the report."""
    return f"{cpu_name() or platform.machine()} ({cpu_isa()}, {os.cpu_count()} cores)"


def cpu_isa() -> str:
    """The instruction set torch's CPU kernels use (AVX2, AVX512, ...), marked a stand-in when
    forced lower with ``ISA_OVERRIDES``: CPU times differ several-fold between AVX2 and AVX-512."""
    import torch

    isa = torch.backends.cpu.get_cpu_capability()
    forced = [f"{key}={os.environ[key]}" for key in ISA_OVERRIDES if os.environ.get(key)]
    if forced:
        isa += f" (forced with {' '.join(forced)}: a stand-in for such a CPU)"
    return isa


def cpu_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children (this process
    only where the OS has no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return time.process_time()
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
