"""Time of ``tsm doctor``'s list and recipe checks (no decoding) on a Kinetics-sized list: a
300,000-line train list of 400 classes with its classes.txt and a 20,000-line val list, on one
core. The target: under a minute, memory bounded (the lists, not their videos).

The lists hold planted problems (videos listed twice, videos in both lists, classes of very
different sizes) so every list check has work to do; their videos are not on disk, so the
presence check stats every path and reports them missing (a stat of a missing file costs
what one of a present file does). Prints the time, the findings and the peak memory, and
writes bench/results/doctor.md. Run: .venv/bin/python bench/doctor.py [--lines 300000]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from common import load_average, load_line, write_section

CLASSES = 400


def write_lists(folder: Path, lines: int, val_lines: int) -> None:
    """train.txt, val.txt and classes.txt: class sizes from 1x to 40x (imbalanced), 1,000
    videos listed twice in train, 500 of val also in train."""
    rng = np.random.default_rng(0)
    sizes = np.linspace(1, 40, CLASSES)
    labels = rng.choice(CLASSES, size=lines, p=sizes / sizes.sum())
    rows = [f"k400/{c:03d}/clip_{i:07d} {rng.integers(60, 300)} {c}" for i, c in enumerate(labels)]
    rows += rows[:1000]  # listed twice
    (folder / "train.txt").write_text("\n".join(rows) + "\n")
    val = [f"k400/{i % CLASSES:03d}/val_{i:07d} 250 {i % CLASSES}" for i in range(val_lines)]
    val[:500] = rows[1000:1500]  # also in train
    (folder / "val.txt").write_text("\n".join(val) + "\n")
    (folder / "classes.txt").write_text("".join(f"class_{c:03d}\n" for c in range(CLASSES)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--val-lines", type=int, default=20_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    import torch

    torch.set_num_threads(1)
    from tsmcli.engine.doctor import doctor
    from tsmcli.recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_lists(folder, args.lines, args.val_lines)
        recipe = load_recipe(
            "kinetics_r50",
            [
                f"data.root={folder}",
                f"data.train_list={folder / 'train.txt'}",
                f"data.val_list={folder / 'val.txt'}",
                f"train.out_dir={folder / 'runs'}",
            ],
        )
        before = load_average()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        result = doctor(recipe, decode=False)
        seconds = time.perf_counter() - start
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        after = load_average()
    counts = {}
    for finding in result.findings:
        counts[finding.check] = counts.get(finding.check, 0) + 1
    found = ", ".join(f"{check} {n}" for check, n in counts.items())
    lines = result.entries
    body = (
        f"`tsm doctor --no-decode` on a {args.lines:,}-line train list (400 classes, "
        f"classes.txt) and a {args.val_lines:,}-line val list, one core "
        f"(`torch.backends.cpu.get_cpu_capability()`: {torch.backends.cpu.get_cpu_capability()})"
        f":\n\n"
        f"| lines checked | seconds | lines/s | peak memory (max RSS) | target |\n"
        f"|---|---|---|---|---|\n"
        f"| {lines:,} | {seconds:.2f} | {lines / seconds:,.0f} | {rss_after:.0f} MiB "
        f"(+{rss_after - rss_before:.0f} MiB during the checks) | < 60 s |\n\n"
        f"Findings: {found}.\n\n{load_line(before, after)}\n"
    )
    print(body)
    write_section("doctor", "tsm doctor: list and recipe checks on a Kinetics-sized list", body)
    return 0 if seconds < 60 else 1


if __name__ == "__main__":
    raise SystemExit(main())
