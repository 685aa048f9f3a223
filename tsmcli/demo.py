"""``tsm demo``: the whole pipeline on the embedded synthetic dataset, and what TSM adds.

synth -> extract -> build-list -> train TSN, offline TSM and online TSM -> evaluate each ->
convert the online model -> evaluate it streaming -> report.md. Each step leaves its result
on disk and is skipped when found finished, so a re-run (or a run after Ctrl-C) picks up
where the last one stopped.

The synthetic classes come in pairs that are the time reverse of each other, so a 2D model
with average consensus (TSN) is at chance inside each pair while TSM, which mixes
neighbouring frames in every block, tells them apart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsmcli.fileio import atomic_write

log = logging.getLogger(__name__)

# name in the report -> (shift mode, what it is)
MODELS = {
    "tsn": ("none", "TSN (2D, no shift)"),
    "tsm": ("bidirectional", "TSM offline (bidirectional shift)"),
    "tsm_online": ("unidirectional", "TSM online (one-way shift)"),
}
# The online model is trained the way one deploys TSM online: train offline, then fine-tune
# the one-way model from the offline weights (model.init_from). From scratch the one-way
# model needs several times the demo's CPU budget to start separating the pairs.
ONLINE_FROM = "tsm"
ONLINE_FINETUNE_EPOCHS = 5
# The demo's set: the first pairs of the synthetic classes (the moving and growing ones), the
# set its recipe was sized on
DEMO_NUM_CLASSES = 6


@dataclass(frozen=True)
class DemoRow:
    """One model of the report table."""

    name: str
    title: str
    top1: float
    top5: float
    params: int
    gflops: float  # multiply-adds per clip, in billions (the paper's convention)
    latency_ms: float  # per frame, batch 1, on this machine
    cache_bytes: int | None  # the online model's shift buffers
    streaming_top1: float | None = None


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    rows: list[DemoRow]
    report: Path
    seconds: float

    def table(self) -> str:
        return format_table(self.rows)


def demo(
    out: str | Path = "demo_out",
    *,
    per_class: int | None = None,
    epochs: int | None = None,
    size: int | None = None,
    num_frames: int | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
) -> DemoResult:
    """Run the demo into ``out``; the sizes default to the synthetic set's and the demo recipe's.

    ``overrides`` are extra ``--set key=value`` items for the three training runs.
    """
    from tsmcli.data import synth as synth_module

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    synth_options = {
        "seed": seed,
        "per_class": per_class or synth_module.DEFAULT_PER_CLASS,
        "size": size or synth_module.DEFAULT_SIZE,
        "num_frames": num_frames or synth_module.DEFAULT_NUM_FRAMES,
        "classes": list(synth_module.first_classes(DEMO_NUM_CLASSES)),
    }
    lists, frames = _prepare_data(out, synth_options)
    rows = []
    for index, (name, (shift, title)) in enumerate(MODELS.items()):
        rows.append(
            _model_row(
                out,
                lists,
                frames,
                name,
                shift,
                title,
                index,
                epochs,
                overrides,
                synth_options["num_frames"],
            )
        )

    _step(8, "writing the report")
    seconds = time.perf_counter() - started
    report = write_report(out, rows, seconds)
    return DemoResult(out, rows, report, seconds)


def _prepare_data(out: Path, synth_options: dict[str, Any]) -> tuple[Path, Path]:
    """Steps 1-3: the synthetic videos, their frames, the lists. Returns (lists, frames)."""
    from tsmcli.data.build_list import build_list
    from tsmcli.data.extract import extract

    _step(1, "writing the synthetic dataset")
    videos = out / "videos"
    _synth_once(videos, synth_options)

    _step(2, "extracting frames")
    frames = out / "frames"
    extracted = extract(videos, frames, short_side=0, workers=None)
    if extracted.failed:
        log.warning("%d videos failed to extract; see %s", extracted.failed, extracted.failures_csv)

    _step(3, "building the lists")
    lists = out / "lists"
    build_list("folder", frames, lists, source="frames", seed=synth_options["seed"])
    return lists, frames


def _model_row(
    out: Path,
    lists: Path,
    frames: Path,
    name: str,
    shift: str,
    title: str,
    index: int,
    epochs: int | None,
    overrides: Sequence[str],
    num_frames: int,
) -> DemoRow:
    """Steps 4-7 for one model: train, evaluate; for the online one, convert and stream."""
    _step(4 + index, f"training {title}")
    extra = list(overrides)
    if shift == "unidirectional":
        extra = [
            f"model.init_from={out / 'runs' / ONLINE_FROM / 'last.pt'}",
            f"train.epochs={epochs or ONLINE_FINETUNE_EPOCHS}",
            *extra,
        ]
    recipe = _demo_recipe(lists, frames, shift, epochs, extra)
    checkpoint = _train_once(recipe, out / "runs" / name)
    result = _evaluate_once(checkpoint, lists, frames, out / "eval" / name)
    cache_bytes = streaming_top1 = None
    if shift == "unidirectional":
        _step(7, "converting the online model and evaluating it frame by frame")
        online_dir = out / "online"
        cache_bytes = _convert_once(checkpoint, online_dir)["cache_bytes"]
        # feed frames at the spacing the model was trained on (one per segment)
        stride = max(1, num_frames // recipe.model.num_segments)
        streaming_top1 = _evaluate_online_once(
            online_dir, lists, frames, stride, out / "eval" / "streaming.json"
        )
    return _row(name, title, checkpoint, result, cache_bytes, streaming_top1)


def _step(number: int, text: str) -> None:
    log.info("[%d/8] %s", number, text)


def _synth_once(videos: Path, options: dict[str, Any]) -> None:
    """Write the synthetic videos unless a finished set with the same options is there."""
    from tsmcli.data.synth import synth

    stamp = videos / "synth.json"
    if stamp.exists() and json.loads(stamp.read_text()) == options:
        log.info("found %s, reusing it", videos)
        return
    synth(videos, overwrite=True, **options)
    atomic_write(stamp, json.dumps(options))  # written last: its presence means finished


def _demo_recipe(
    lists: Path, frames: Path, shift: str, epochs: int | None, overrides: Sequence[str]
):
    from tsmcli.recipe import load_recipe

    items = [
        f"model.shift={shift}",
        f"data.root={frames}",
        f"data.train_list={lists / 'train.txt'}",
        f"data.val_list={lists / 'val.txt'}",
        "data.source=frames",
    ]
    if epochs is not None:
        items.append(f"train.epochs={epochs}")
    return load_recipe("demo", [*items, *overrides])


def _train_once(recipe, run_dir: Path) -> Path:
    """Train into ``run_dir``; a finished run is reused, an interrupted one resumed.

    Returns the final weights (``last.pt``), not ``best.pt``: the demo evaluates on the list
    that picked the best epoch, so reporting the best epoch would flatter every model.
    """
    from tsmcli.engine.train import train
    from tsmcli.model.weights import load_checkpoint

    last = run_dir / "last.pt"
    if last.exists():
        state = load_checkpoint(last)
        if state.get("epoch") == recipe.train.epochs and not state.get("iteration"):
            log.info("found the finished run %s, reusing it", run_dir)
            return last
    train(recipe, out_dir=run_dir, resume=last.exists())
    return last


def _evaluate_once(checkpoint: Path, lists: Path, frames: Path, eval_dir: Path) -> dict[str, Any]:
    from tsmcli.engine.evaluate import evaluate

    summary = eval_dir / "summary.json"
    if summary.exists() and summary.stat().st_mtime >= checkpoint.stat().st_mtime:
        found = json.loads(summary.read_text())
        if found.get("checkpoint") == str(checkpoint):
            return found
    result = evaluate(
        checkpoint,
        lists / "val.txt",
        frames,
        views="single",
        out_dir=eval_dir,
        json_path=summary,
        batch_size=8,
    )
    return result.summary()


def _convert_once(checkpoint: Path, online_dir: Path) -> dict[str, Any]:
    from tsmcli.engine.convert import convert_online
    from tsmcli.model.model_dir import WEIGHTS_FILE

    report = online_dir / "report.json"
    if (
        (online_dir / WEIGHTS_FILE).exists()
        and report.exists()
        and report.stat().st_mtime >= checkpoint.stat().st_mtime
    ):
        return json.loads(report.read_text())
    convert_online(checkpoint, online_dir, overwrite=True)
    return json.loads(report.read_text())


def _evaluate_online_once(
    online_dir: Path, lists: Path, frames: Path, stride: int, summary: Path
) -> float:
    from tsmcli.engine.online import evaluate_online

    if summary.exists() and summary.stat().st_mtime >= (online_dir / "report.json").stat().st_mtime:
        return json.loads(summary.read_text())["top1"]
    result = evaluate_online(online_dir, lists / "val.txt", frames, source="frames", stride=stride)
    atomic_write(
        summary,
        json.dumps(
            {
                "top1": result.top1,
                "top5": result.top5,
                "top1_at": result.top1_at,
                "latency_ms": result.latency_ms,
            }
        ),
    )
    return result.top1


def _row(
    name: str,
    title: str,
    checkpoint: Path,
    result: dict[str, Any],
    cache_bytes: int | None,
    streaming_top1: float | None,
) -> DemoRow:
    from tsmcli.model.checkpoint import load_model, read_checkpoint
    from tsmcli.recipe import Recipe

    info = read_checkpoint(checkpoint)
    model = load_model(info)
    size = Recipe.from_stored(info.recipe, str(checkpoint)).data.input_size
    params = sum(p.numel() for p in model.parameters())
    gflops, latency = measure_clip_cost(model, size)
    return DemoRow(
        name,
        title,
        result["top1"],
        result["top5"],
        params,
        gflops,
        latency,
        cache_bytes,
        streaming_top1,
    )


def measure_clip_cost(model, size: int, reps: int = 5) -> tuple[float, float]:
    """(multiply-adds per clip in billions, median forward latency per frame in ms)."""
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    clip = torch.randn(1, model.num_segments, 3, size, size)  # (B, T, 3, H, W)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(clip)
        macs = counter.get_total_flops() / 2  # FlopCounterMode counts a multiply-add as 2
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            model(clip)
            times.append(time.perf_counter() - start)
    return macs / 1e9, 1000 * statistics.median(times) / model.num_segments


def format_table(rows: Sequence[DemoRow]) -> str:
    """The demo's table in Markdown (also what ``tsm demo`` prints)."""
    lines = [
        "| model | top-1 | top-5 | params | GFLOPs/clip | ms/frame | online cache |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cache = f"{row.cache_bytes / 1024:.1f} KiB" if row.cache_bytes is not None else "-"
        top1 = f"{row.top1:.1f}"
        if row.streaming_top1 is not None:
            top1 += f" (streaming {row.streaming_top1:.1f})"
        lines.append(
            f"| {row.title} | {top1} | {row.top5:.1f} | {row.params / 1e6:.2f} M | "
            f"{row.gflops:.3f} | {row.latency_ms:.2f} | {cache} |"
        )
    return "\n".join(lines)


def _streaming_lines(out: Path) -> list[str]:
    """How early the streaming model is right: top-1 of the running average part-way in."""
    summary = out / "eval" / "streaming.json"
    if not summary.exists():
        return []
    at = json.loads(summary.read_text())["top1_at"]
    seen = ", ".join(f"{percent}% of each video: {top1:.1f}" for percent, top1 in at.items())
    return [f"Streaming online TSM, top-1 after {seen}.", ""]


def write_report(out: Path, rows: Sequence[DemoRow], seconds: float) -> Path:
    """``out/report.md``: the table, training curves and confusion matrices."""
    parts = [
        "# tsmcli demo report",
        "",
        "Three models trained with the `demo` recipe on the synthetic dataset (`tsm synth`), "
        "whose classes come in pairs that are the time reverse of each other. TSN and the "
        "offline TSM are trained from scratch; the online TSM is fine-tuned from the offline "
        "TSM with the one-way shift, as one deploys TSM online. "
        "A 2D model that averages over frames (TSN) cannot tell a clip from its reverse; "
        "the temporal shift can. Accuracy on the validation list, one centre view; the "
        "online model is also run frame by frame as exported (streaming). "
        "GFLOPs count multiply-adds per clip, as the TSM paper does.",
        "",
        format_table(rows),
        "",
        *_streaming_lines(out),
        f"Whole run: {seconds / 60:.1f} min.",
        "",
        "## Training curves",
        "",
    ]
    parts += [f"### {row.title}\n\n![curves](runs/{row.name}/curves.png)\n" for row in rows]
    parts += ["## Confusion matrices", ""]
    parts += [f"### {row.title}\n\n![confusion](eval/{row.name}/confusion.png)\n" for row in rows]
    path = out / "report.md"
    atomic_write(path, "\n".join(parts))
    return path
