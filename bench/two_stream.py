"""Two streams on the demo's data: TSN and TSM on RGB frames and on optical flow, and each
pair fused (``tsm fuse``), top-1 on the same validation videos.

The demo's synthetic set (``tsm demo``'s: 8 classes in time-reversed pairs, 40 videos a class,
seed 0), its RGB frames and its flow (``tsm extract --flow``, DIS, bound 20), one list split
for both (the same videos in train and val), and the demo recipe for all four trainings:
flow models are the same recipe with ``model.modality=flow`` (5 flow images a segment, the
official default), the flow frame template and no colour jitter (flow images have no
colours). Every run on one intra-op thread, as the demo's. Prints a markdown table and writes
it to bench/results/two_stream.md.

Run: .venv/bin/python bench/two_stream.py [--out /tmp/two_stream] [--method dis]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import load_average, load_line, write_section

import tsmcli
from tsmcli.data.layout import FLOW_X_TEMPLATE
from tsmcli.engine.fuse import fuse
from tsmcli.showcase import DEMO_NUM_CLASSES, DEMO_PER_CLASS
from tsmcli.showcase.clock import one_thread

# name -> (what the row says, its --set items)
MODELS = {
    "tsn_rgb": ("TSN, RGB", ["model.shift=none"]),
    "tsn_flow": ("TSN, flow", ["model.shift=none", "model.modality=flow"]),
    "tsm_rgb": ("TSM, RGB", ["model.shift=bidirectional"]),
    "tsm_flow": ("TSM, flow", ["model.shift=bidirectional", "model.modality=flow"]),
}
FLOW_SETTINGS = [f"data.frame_template={FLOW_X_TEMPLATE}", "data.colour_jitter=0"]


def prepare(out: Path, method: str) -> dict[str, tuple[Path, Path]]:
    """The demo's videos, their RGB frames and flow, and a list split of each (same videos):
    modality -> (root, lists)."""
    from tsmcli.data import synth as synth_module

    videos = out / "videos"
    if not (videos / "synth.json").exists():
        tsmcli.synth(
            videos,
            per_class=DEMO_PER_CLASS,
            classes=list(synth_module.first_classes(DEMO_NUM_CLASSES)),
            seed=0,
            overwrite=True,
        )
        (videos / "synth.json").write_text("{}")
    tsmcli.extract(videos, out / "frames", short_side=0)
    tsmcli.extract(videos, out / "flow", short_side=0, flow=True, method=method)
    tsmcli.build_list("folder", out / "frames", out / "lists_rgb", source="frames", seed=0)
    tsmcli.build_list(
        "folder",
        out / "flow",
        out / "lists_flow",
        source="frames",
        seed=0,
        template=FLOW_X_TEMPLATE,
    )
    rgb_val = [
        line.split()[0] for line in (out / "lists_rgb" / "val.txt").read_text().split("\n") if line
    ]
    flow_val = [
        line.split()[0] for line in (out / "lists_flow" / "val.txt").read_text().split("\n") if line
    ]
    assert rgb_val == flow_val, "the RGB and flow lists must hold the same validation videos"
    return {"rgb": (out / "frames", out / "lists_rgb"), "flow": (out / "flow", out / "lists_flow")}


def train_and_eval(out: Path, name: str, items: list[str], data: dict) -> tuple[float, float]:
    """Train ``name`` with the demo recipe and evaluate it (reports in out/eval/<name>):
    (top-1, training seconds)."""
    modality = "flow" if "model.modality=flow" in items else "rgb"
    root, lists = data[modality]
    overrides = [
        *items,
        *(FLOW_SETTINGS if modality == "flow" else []),
        f"data.root={root}",
        f"data.train_list={lists / 'train.txt'}",
        f"data.val_list={lists / 'val.txt'}",
        "data.source=frames",
        f"name={name}",
    ]
    run = out / "runs" / name
    start = time.perf_counter()
    if not (run / "last.pt").exists():
        tsmcli.train(tsmcli.load_recipe("demo", overrides), run)
    seconds = time.perf_counter() - start
    result = tsmcli.evaluate(
        run / "last.pt",
        lists / "val.txt",
        root,
        out_dir=out / "eval" / name,
        overwrite=True,
    )
    return result.top1, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tsm_two_stream"))
    parser.add_argument("--method", default="dis", help="tsm extract --flow --method")
    args = parser.parse_args()
    before = load_average()
    with one_thread():
        data = prepare(args.out, args.method)
        top1, seconds = {}, {}
        for name, (_, items) in MODELS.items():
            top1[name], seconds[name] = train_and_eval(args.out, name, items, data)
        fused = {
            pair: fuse([args.out / "eval" / f"{pair}_rgb", args.out / "eval" / f"{pair}_flow"])
            for pair in ("tsn", "tsm")
        }
    after = load_average()

    rows = [
        f"| {label} | {top1[name]:.1f} | {seconds[name]:.0f} |"
        for name, (label, _) in MODELS.items()
    ]
    rows += [
        f"| {pair.upper()}, RGB + flow fused (average of the scores) | {result.result.top1:.1f} | - |"
        for pair, result in fused.items()
    ]
    body = "\n".join(
        [
            f"The demo's set ({DEMO_NUM_CLASSES} classes in time-reversed pairs, "
            f"{DEMO_PER_CLASS} videos a class, 30 for training, seed 0; chance 12.5, pair level "
            f"50), 32x32 frames; flow by {args.method} (bound 20), 5 flow images a segment. "
            "Each model is the demo recipe (600 AdamW steps, 8 segments) on one thread; top-1 "
            "on the 80 validation videos, one centre view, from the final weights.",
            "",
            "| model | top-1 | training s |",
            "|---|---:|---:|",
            *rows,
            "",
            load_line(before, after),
        ]
    )
    path = write_section("two_stream", "Two streams on the demo's data: RGB, flow, fused", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
