"""Where the demo's models look, and what keeping their features costs.

Pointing game: for every video of the demo's validation list, `tsm explain`'s map of each
sampled frame for the model's own top-1 class, and whether the map's maximum falls inside the
main object's box in that frame (`tsm synth` knows it: `<video>.boxes.json`, or recomputed
from the set's options for a set written before the boxes were). A frame whose map is zero
everywhere counts as a miss. Measured for the offline TSM and for TSN with each method at
each ResNet stage it reads (the default is the deepest stage whose maps keep 4 pixels a side:
layer2 at 32 px), and with input x gradient and integrated gradients, which read the pixels.

Besides all frames: the frames that show the object (an appearing or fading object drawn at
an opacity under 0.2 stands out from the background by less than the background's own
stripes vary, and the pointing game scores images that show the object), and a sanity check
of each method on TSM (Adebayo et al., model randomisation): the same maps with the stages
above layer1 and the classifier re-initialised. A map that keeps its score without the
trained layers that make the decision shows the image's contrast, not the model's evidence.

Features: `tsmcli.features` against `tsmcli.evaluate` on the same list, same loader, one
process, interleaved (target: features >= 0.95x eval's videos/s).

Needs a finished demo: `--demo DIR` (default `demo_out`, as `make demo` leaves it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, load_average, load_line, write_section  # noqa: E402

from tsmcli.data.synth import read_boxes, video_rng  # noqa: E402
from tsmcli.data.synth_scene import CLASSES, generate_clip, sample_scene  # noqa: E402
from tsmcli.engine.evaluate import evaluate  # noqa: E402
from tsmcli.engine.explain import explain  # noqa: E402
from tsmcli.engine.features import features  # noqa: E402
from tsmcli.model.checkpoint import CheckpointInfo, load_model, read_checkpoint  # noqa: E402

STAGES = ("base_model.layer1", "base_model.layer2", "base_model.layer3")
METHODS = ("gradcam", "gradcam++", "layercam")
PIXELS = (("inputxgrad", None), ("intgrad", None))  # read the pixels: no layer
# the pointing game's usual tolerance (Zhang et al., excitation backprop): a peak within 15
# pixels of the box counts, at 224 px; scaled to the frame's side
TOLERANCE = 15 / 224
VISIBLE = 0.2  # opacity from which the main object counts as shown
# what the sanity check re-initialises: everything that reads layer1's output
ABOVE_LAYER1 = ("base_model.layer2", "base_model.layer3", "base_model.layer4", "new_fc")


def boxes_of(video: Path, options: dict) -> np.ndarray:
    """The main object's box in every frame of a demo video."""
    if video.with_suffix(".boxes.json").is_file():
        return read_boxes(video)
    name, index = video.stem.rsplit("_", 1)
    rng = video_rng(options["seed"], CLASSES.index(name), int(index))
    return generate_clip(name, rng, options["size"], options["num_frames"], options["speed"])[1]


def opacity_of(video: Path, options: dict) -> np.ndarray:
    """The main object's opacity in every frame of a demo video (1 but when it appears or
    fades)."""
    name, index = video.stem.rsplit("_", 1)
    rng = video_rng(options["seed"], CLASSES.index(name), int(index))
    scene = sample_scene(name, rng, options["size"], options["num_frames"], options["speed"])
    opacity = scene.sprites[-1].opacity
    if opacity is None:
        return np.ones(options["num_frames"])
    return opacity[::-1] if name == "fading" else opacity  # fading is appearing played back


@dataclasses.dataclass(frozen=True)
class Score:
    """One method's pointing game, in percent."""

    inside: float  # of frames whose map peaks inside the box
    near: float  # of frames whose peak is within the usual tolerance of it
    shown: float  # of the frames that show the object, peaking inside
    clips: float  # of clips where most frames peak inside
    frames_shown: int  # how many frames show the object
    frames: int


def pointing(
    checkpoint: Path | CheckpointInfo,
    videos: list[Path],
    truth: list[tuple[np.ndarray, np.ndarray]],
    layer: str | None,
    method: str,
) -> Score:
    """The pointing game of one method; ``truth``: each video's boxes and opacities."""
    result = explain(videos, checkpoint, layer=layer, method=method)
    inside_all: list[bool] = []
    shown: list[bool] = []
    near = clips = 0
    for (boxes, opacity), found in zip(truth, result.explanations, strict=True):
        tolerance = TOLERANCE * found.maps.shape[-1]  # pixels at the size the model saw
        inside = []
        for t, source in enumerate(found.frame_indices):
            x0, y0, x1, y1 = boxes[source]
            y, x = np.unravel_index(int(found.maps[t].argmax()), found.maps[t].shape)
            peaked = found.maps[t].max() > 0
            inside.append(bool(peaked and x0 <= x < x1 and y0 <= y < y1))
            dx, dy = max(x0 - x, 0, x - (x1 - 1)), max(y0 - y, 0, y - (y1 - 1))
            near += peaked and math.hypot(dx, dy) <= tolerance
            if opacity[source] >= VISIBLE:
                shown.append(inside[-1])
        inside_all += inside
        clips += sum(inside) * 2 > len(inside)
    frames = len(inside_all)
    return Score(
        100.0 * sum(inside_all) / frames,
        100.0 * near / frames,
        100.0 * sum(shown) / len(shown),
        100.0 * clips / len(videos),
        len(shown),
        frames,
    )


def randomised_above_layer1(checkpoint: Path) -> CheckpointInfo:
    """The checkpoint with every module above layer1 and the classifier re-initialised
    (seeded), for the sanity check."""
    info = read_checkpoint(checkpoint)
    model = load_model(info)
    torch.manual_seed(0)
    for name, module in model.named_modules():
        if name.startswith(ABOVE_LAYER1):
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
            if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                module.reset_parameters()
    return dataclasses.replace(info, state_dict=model.state_dict())


def verdict(best: tuple, faithful: tuple | None) -> str:
    """What the table says of the target, in words."""
    inside, shown, method, layer, random = best
    text = f"TSM at its best: {inside:.1f}% of frames inside the box ({method}, {layer}), "
    text += f"{random:.1f}% with the upper layers random"
    if random > inside / 2:
        text += (
            ": its map hardly depends on the layers that decide, so it shows how strongly the "
            "layer it reads responds to the image rather than where the model looks."
        )
    else:
        text += "."
    if faithful is None:
        return text + " No map loses half its score without the upper layers."
    inside, shown, method, layer, random = faithful
    return text + (
        f" The best map that loses at least half its score without them: {method} at {layer}, "
        f"{inside:.1f}% of all frames ({random:.1f}% random), {shown:.1f}% of the frames that "
        f"show the object. Target >= 80: {'met' if inside >= 80 else 'NOT met'} on all "
        f"frames, {'met' if shown >= 80 else 'NOT met'} on the frames that show the object."
    )


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
    truth = [(boxes_of(video, options), opacity_of(video, options)) for video in videos]
    before = load_average()
    rows, best, faithful, counted = [], None, None, None
    combos = [(method, layer) for method in METHODS for layer in STAGES] + list(PIXELS)
    for model in ("tsm", "tsn"):
        checkpoint = demo / "runs" / model / "last.pt"
        random = randomised_above_layer1(checkpoint) if model == "tsm" else None
        for method, layer in combos:
            score = pointing(checkpoint, videos, truth, layer, method)
            sanity = pointing(random, videos, truth, layer, method) if random else None
            counted = (score.frames_shown, score.frames)
            rows.append(
                f"| {model.upper()} | {method} | {layer or 'input'} | {score.inside:.1f} "
                f"| {score.near:.1f} | {score.shown:.1f} | {score.clips:.1f} "
                f"| {f'{sanity.inside:.1f}' if sanity else '-'} |"
            )
            if sanity is not None:
                entry = (score.inside, score.shown, method, layer or "input", sanity.inside)
                best = max(best or entry, entry)
                if sanity.inside <= score.inside / 2:
                    faithful = max(faithful or entry, entry)
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
        "share of sampled frames whose map (the model's own top-1 class, the whole clip in one "
        "pass) peaks inside the main object's box; within the pointing game's usual tolerance "
        "(15 px at 224 px, 2.1 px at 32); over the frames that show the object (opacity >= "
        f"{VISIBLE:g}: {counted[0]} of {counted[1]}); and the share of clips where most frames "
        "do. Chance is about the box's share of the frame (a tenth to a fifth here). The last "
        "column is the sanity check: TSM's score with the stages above layer1 and the "
        "classifier re-initialised. Target: TSM >= 80%.\n\n"
        "| model | method | layer | inside the box % | within the tolerance % "
        "| inside, frames showing the object % | clips % | inside, upper layers random % |"
        "\n|---|---|---|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\n"
        + verdict(best, faithful)
        + f"\n\n`tsmcli.features` against `tsmcli.evaluate` on the same {len(videos)} frame "
        f"folders, one thread, 0 workers, batch 16, median of {args.reps} interleaved runs: "
        f"eval {seconds['eval']:.2f} s, features {seconds['features']:.2f} s, features at "
        f"{ratio:.3f}x eval's videos/s (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}"
        f").\n\n{load_line(before, load_average()).capitalize()}."
    )
    print(write_section("explain", "Where the demo's models look; features against eval", body))


if __name__ == "__main__":
    main()
