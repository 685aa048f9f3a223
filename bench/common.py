"""What every benchmark shares: a description of the machine, median timing of interleaved
runs, and writing its section for BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tsmcli.showcase.clock import cpu_isa, cpu_name

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line: CPU model, cores, the instruction set torch's CPU kernels use (AVX2, AVX512;
    marked a stand-in when forced lower), torch version and intra-op threads, and the GPU when
    one is used. Every section of BENCHMARKS.md starts with it: CPU times differ several-fold
    between AVX2 and AVX-512 machines."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu_name() or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores, "
        f"{cpu_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"
    )


def machine_kind() -> tuple[str, str]:
    """This machine's kind, for scripts that keep one section per kind of CPU (their times and
    ratios differ with the instruction set): a file-name suffix (``avx2``, ``avx512``,
    ``avx2_standin``) and the words for a title (``AVX2``, ``AVX2 forced (a stand-in)``)."""
    isa = cpu_isa()
    name = isa.split()[0]
    stand_in = "stand-in" in isa
    return (
        name.lower() + ("_standin" if stand_in else ""),
        name + (" forced (a stand-in)" if stand_in else ""),
    )


def load_average() -> float:
    """The 1-minute load average (0 where the OS does not give one): above the core count,
    other work shared the CPU and absolute times are inflated."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def load_line(before: float, after: float) -> str:
    """The load average before and after a run, and what it says about the times."""
    cores = os.cpu_count() or 1
    if max(before, after) > cores:
        verdict = "above the core count, other work shared the CPU and the times are inflated"
    else:
        verdict = "within the core count, the run had the CPU to itself"
    return (
        f"load average (1 min) {before:.1f} before, {after:.1f} after on {cores} cores: {verdict}"
    )


def interleaved_medians(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each function, run in turn rep after rep so that drift in the
    machine's speed hits all of them alike (the ratios are what we report). The order
    rotates from rep to rep, so no function always runs right after the same other one
    (which costs or saves it a little, through the caches and the allocator)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def dense_peak(size: int = 2048, reps: int = 5, dtype=None) -> float:
    """What this machine's cores can do at best, in FLOP/s: a large square matrix product
    (``size`` x ``size``, float32 unless ``dtype``) on the current intra-op threads, the median
    of ``reps``. A model's achieved FLOP/s as a fraction of it says how far a step is from the
    machine's limit."""
    import torch

    dtype = dtype or torch.float32
    a, b = (torch.randn(size, size, dtype=dtype) for _ in range(2))
    seconds = interleaved_medians({"gemm": lambda: a @ b}, reps=reps)["gemm"]
    return 2.0 * size**3 / seconds


def forward_flops(model, clips) -> int:
    """Floating-point operations (2 per multiply-add) of one forward of ``model`` on
    ``clips``, as torch's FLOP counter counts them (convolutions and matrix products)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(clips)
    return counter.get_total_flops()


def write_section(name: str, title: str, body: str) -> Path:
    """Write ``bench/results/<name>.md``: a section of BENCHMARKS.md with its machine and command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", *[a if " " not in a else repr(a) for a in sys.argv]])
    text = f"## {title}\n\nMachine: {machine()}  \nCommand: `{command}`\n\n{body.strip()}\n"
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path
