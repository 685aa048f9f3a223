"""Where the demo's models look, and what keeping their features costs.

Pointing game: for every video of the demo's validation list, `tsm explain`'s Grad-CAM map
of each sampled frame for the model's own top-1 class, and whether the map's maximum falls
inside the main object's box in that frame (`tsm synth` knows it: `<video>.boxes.json`, or
recomputed from the set's options for a set written before the boxes were). A frame whose
map is zero everywhere counts as a miss. Measured for the offline TSM and for TSN at each
ResNet stage (the default is the deepest whose maps keep 4 pixels a side: layer2 at 32 px),
with Grad-CAM and with LayerCAM.

Features: `tsmcli.features` against `tsmcli.evaluate` on the same list, same loader, one
process, interleaved (target: features >= 0.95x eval's videos/s).

Needs a finished demo: `--demo DIR` (default `demo_out`, as `make demo` leaves it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, load_average, load_line, write_section  # noqa: E402

from tsmcli.data.synth import read_boxes, video_rng  # noqa: E402
from tsmcli.data.synth_scene import CLASSES, generate_clip  # noqa: E402
from tsmcli.engine.evaluate import evaluate  # noqa: E402
from tsmcli.engine.explain import explain  # noqa: E402
from tsmcli.engine.features import features  # noqa: E402

STAGES = ("base_model.layer1", "base_model.layer2", "base_model.layer3")
# the pointing game's usual tolerance (Zhang et al., excitation backprop): a peak within 15
# pixels of the box counts, at 224 px; scaled to the frame's side
TOLERANCE = 15 / 224


def boxes_of(video: Path, options: dict) -> np.ndarray:
    """The main object's box in every frame of a demo video."""
    if video.with_suffix(".boxes.json").is_file():
        return read_boxes(video)
    name, index = video.stem.rsplit("_", 1)
    rng = video_rng(options["seed"], CLASSES.index(name), int(index))
    return generate_clip(name, rng, options["size"], options["num_frames"], options["speed"])[1]


def pointing(
    checkpoint: Path, videos: list[Path], options: dict, layer: str, method: str
) -> tuple[float, float]:
    """(frames whose map peaks inside the box, the same within the pointing game's usual
    tolerance, clips where most frames peak inside), in percent."""
    result = explain(videos, checkpoint, layer=layer, method=method)
    hits = near = frames = clips = 0
    for video, found in zip(videos, result.explanations, strict=True):
        boxes = boxes_of(video, options)
        inside = []
        tolerance = TOLERANCE * found.maps.shape[-1]  # pixels at the size the model saw
        for t, source in enumerate(found.frame_indices):
            x0, y0, x1, y1 = boxes[source]
            y, x = np.unravel_index(int(found.maps[t].argmax()), found.maps[t].shape)
            peaked = found.maps[t].max() > 0
            inside.append(peaked and x0 <= x < x1 and y0 <= y < y1)
            dx, dy = max(x0 - x, 0, x - (x1 - 1)), max(y0 - y, 0, y - (y1 - 1))
            near += peaked and math.hypot(dx, dy) <= tolerance
        hits, frames = hits + sum(inside), frames + len(inside)
        clips += sum(inside) * 2 > len(inside)
    return 100.0 * hits / frames, 100.0 * near / frames, 100.0 * clips / len(videos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo = args.demo
    options = json.loads((demo / "videos" / "synth.json").read_text())
    listed = demo / "lists" / "val.txt"
    names = [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
    videos = [demo / "videos" / f"{name}.mp4" for name in names]
    before = load_average()
    rows, tsm_best = [], (0.0, "", "")
    for model in ("tsm", "tsn"):
        checkpoint = demo / "runs" / model / "last.pt"
        for method in ("gradcam", "layercam"):
            for layer in STAGES:
                frames, near, clips = pointing(checkpoint, videos, options, layer, method)
                rows.append(
                    f"| {model.upper()} | {method} | {layer} | {frames:.1f} | {near:.1f} "
                    f"| {clips:.1f} |"
                )
                if model == "tsm":
                    tsm_best = max(tsm_best, (frames, method, layer))
    checkpoint, root = demo / "runs" / "tsm" / "last.pt", demo / "frames"
    seconds = interleaved_medians(
        {
            "eval": lambda: evaluate(checkpoint, listed, root, workers=0, batch_size=16),
            "features": lambda: features(
                checkpoint=checkpoint, list_file=listed, root=root, workers=0, batch_size=16
            ),
        },
        reps=args.reps,
    )
    ratio = seconds["eval"] / seconds["features"]
    body = (
        f"The demo's models ({demo}), its {len(videos)} validation videos. Pointing game: the "
        "share of sampled frames whose Grad-CAM map (the model's own top-1 class, the whole "
        "clip in one pass) peaks inside the main object's box, and of clips where most frames "
        "do; chance is about the box's share of the frame (a tenth to a fifth here). "
        "Target: TSM >= 80% (the default layer is layer2 at 32 px).\n\n"
        "The second column counts a peak within the pointing game's usual tolerance (15 px at "
        "224 px, 2.1 px at 32) as a hit.\n\n"
        "| model | method | layer | frames inside the box % | within the tolerance % "
        "| clips % |\n|---|---|---|---:|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nTSM at its best: {tsm_best[0]:.1f}% of frames inside the box ({tsm_best[1]}, "
        f"{tsm_best[2]}); target >= 80: {'met' if tsm_best[0] >= 80 else 'NOT met'}."
        + f"\n\n`tsmcli.features` against `tsmcli.evaluate` on the same {len(videos)} frame "
        f"folders, one thread, 0 workers, batch 16, median of {args.reps} interleaved runs: "
        f"eval {seconds['eval']:.2f} s, features {seconds['features']:.2f} s, features at "
        f"{ratio:.3f}x eval's videos/s (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}"
        f").\n\n{load_line(before, load_average()).capitalize()}."
    )
    print(write_section("explain", "Where the demo's models look; features against eval", body))


if __name__ == "__main__":
    main()
