"""``train.compile`` on the demo: the demo's offline TSM trained eager and compiled on the same
set, one after the other on one thread (as the demo trains it): the whole run's time (the
compile included), the step time once compiled, and the top-1 each reaches.

The compile's cost is paid at the first step and again when a batch of another shape comes
(the last, smaller validation batch) or the mode changes (training and validation): it pays
only where the steps saved outweigh it. Needs a finished demo (``--demo DIR``: its frames and
lists).

    .venv/bin/python bench/compile.py [--demo demo_out] [--work /tmp/tsm_compile]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# a fresh compile cache, as on a machine that never compiled this model (a warm cache, from an
# earlier run, makes the compile several times cheaper)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="tsm-inductor-")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, load_line, write_section  # noqa: E402

import tsmcli  # noqa: E402
from tsmcli.showcase.clock import one_thread  # noqa: E402


def run(demo: Path, out: Path, compile_: bool) -> dict[str, float]:
    """Train the demo's offline TSM (eager or compiled) and evaluate it."""
    lists = demo / "lists"
    recipe = tsmcli.load_recipe(
        "demo",
        [
            "model.shift=bidirectional",
            f"data.root={demo / 'frames'}",
            "data.source=frames",
            f"data.train_list={lists / 'train.txt'}",
            f"data.val_list={lists / 'val.txt'}",
            f"train.compile={str(compile_).lower()}",
        ],
    )
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    result = tsmcli.train(recipe, out)
    seconds = time.perf_counter() - start
    rows = result.history
    top1 = tsmcli.evaluate(out / "last.pt", lists / "val.txt", demo / "frames").top1
    later = sorted(r["seconds"] for r in rows[1:]) or [rows[0]["seconds"]]
    return {
        "seconds": seconds,
        "first epoch": rows[0]["seconds"],
        "later epoch": later[len(later) // 2],
        "epochs": len(rows),
        "top1": top1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tsm_compile"))
    args = parser.parse_args()
    before = load_average()
    with one_thread():
        found = {
            name: run(args.demo, args.work / name, name == "compiled")
            for name in ("eager", "compiled")
        }
    after = load_average()
    eager, compiled = found["eager"], found["compiled"]
    rows = [
        f"| {name} | {r['seconds']:.0f} | {r['first epoch']:.1f} | {r['later epoch']:.2f} | "
        f"{r['later epoch'] / eager['later epoch']:.3f} | {r['top1']:.1f} |"
        for name, r in found.items()
    ]
    saved = (eager["later epoch"] - compiled["later epoch"]) * (compiled["epochs"] - 1)
    cost = compiled["first epoch"] - eager["first epoch"]
    body = "\n".join(
        [
            f"The demo's offline TSM ({args.demo}), the demo recipe ({eager['epochs']} epochs, "
            "600 steps of 16 clips), one thread, eager then compiled (`train.compile: true`, "
            "torch.compile's default inductor backend); an epoch's time is the median of the "
            "epochs after the first (the first holds the compile).",
            "",
            "| run | whole run s | first epoch s | later epoch s | later epoch vs eager | top-1 |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"The compile costs {cost:.0f} s in the first epoch; compiled epochs "
            f"{'save' if saved >= 0 else 'lose'} {abs(saved):.0f} s over the rest of the run, "
            "so on the demo the compile "
            f"{'pays' if saved > cost else 'does not pay'} (a fresh compile cache, as on a "
            "first run; a cache left by an earlier compile of the same model makes the compile "
            "several times cheaper). `train.compile` stays off in the recipes: the demo runs once.",
            "",
            load_line(before, after),
        ]
    )
    print(
        write_section("compile", "torch.compile for training, on the demo (bench/compile.py)", body)
    )


if __name__ == "__main__":
    main()
