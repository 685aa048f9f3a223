"""Run every benchmark in bench/ and rewrite BENCHMARKS.md from their sections."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# claim last: it runs the whole demo on nine synthetic sets (as long as everything before it
# together, or longer)
ORDER = [
    "shift",
    "loader",
    "extract",
    "flow",
    "train",
    "train_step",
    "compile",
    "demo_step",
    "online",
    "predict",
    "deploy",
    "explain",
    "intervals",
    "doctor",
    "two_stream",
    "claim",
]
GPU_SECTION = "gpu"  # written on a lent GPU machine by bench/gpu.py; kept, never rerun here

HEADER = """# Benchmarks

Written by `make bench` (`bench/run_all.py`), which runs each script in `bench/` on this
machine; every section names its machine (CPU model, cores, the instruction set torch's
kernels use and the threads: CPU times differ several-fold between AVX2 and AVX-512 machines)
and the command that reproduces it. Ratios are measured side by side in one process, so they
hold better across machines than absolute times. The targets the project holds itself to: shift
overhead <= 1.02, loading <= 1.2x bare decode, data wait < 10% of a demo training step, a
TSM-R50 training step <= 0.85x an official-style reference (CPU), streaming latency <= 1.03x
the 2D backbone, `tsm predict` >= 0.95x the videos/s of `tsm eval`, no frame dropped
streaming a 25 fps source, `tsm doctor`'s list checks on a 300,000-line list < 60 s on one
core, int8 streaming <= 0.45x our fp32 ONNX step and an int8 TSM-R50 clip <= 0.4x PyTorch's
time on a CPU with VNNI at a top-1 cost <= 1 point, the pointing game of the demo's TSM >= 80%,
action intervals at a mean IoU >= 0.7, features >= 0.95x eval's throughput, the demo's claim
on held-out synthetic sets.
"""


def main() -> int:
    failed = []
    # --write-only: rebuild BENCHMARKS.md from bench/results/ (after rerunning one script)
    for name in [] if "--write-only" in sys.argv[1:] else ORDER:
        script = BENCH / f"{name}.py"
        print(f"== bench/{name}.py", flush=True)
        start = time.perf_counter()
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(name)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    # a script may write one section per machine kind: results/<name>.md, results/<name>_*.md;
    # a file belongs to the longest name it starts with (train_step_avx2.md is train_step's,
    # not a kind of train.md)
    results = BENCH / "results"
    names = [*ORDER, GPU_SECTION]

    def owner(stem: str) -> str | None:
        mine = [n for n in names if stem == n or stem.startswith(f"{n}_")]
        return max(mine, key=len) if mine else None

    sections = [
        path
        for name in names
        for path in [results / f"{name}.md", *sorted(results.glob(f"{name}_*.md"))]
        if owner(path.stem) == name
    ]
    body = "\n".join(p.read_text() for p in sections if p.exists())
    (BENCH.parent / "BENCHMARKS.md").write_text(HEADER + "\n" + body)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
