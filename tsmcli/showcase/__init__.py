"""``tsm demo``: the whole pipeline on the embedded synthetic dataset, and what TSM adds.

synth -> extract -> build-list -> train TSN and the offline TSM -> fine-tune the online TSM
-> evaluate each -> convert the online model (fp32, and int8 calibrated on the training list)
-> evaluate both streaming -> report.md. Each step
leaves its result on disk and is skipped when found finished, so a re-run (or a run after
Ctrl-C) picks up where the last one stopped.

The synthetic classes come in pairs that are the time reverse of each other, so a 2D model
with average consensus (TSN) is at chance inside each pair while TSM, which mixes
neighbouring frames in every block, tells them apart.

Where the time goes: the trainings, by far. TSN and the offline TSM do not depend on each
other, so on a machine with two cores or more they train side by side, TSN in a second
process: small convolutions gain less from a second thread than from a second independent
run. The online model needs the offline one and trains after it, its teacher's forward on the
core TSN has left (``train_loop``). The whole demo runs on one intra-op thread
(``clock.one_thread``), so its accuracies do not depend on the machine's core count. It logs
the time each step took, the projected total after the first training epoch and the total at
the end; ``report.md`` gives them with the machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tsmcli.fileio import atomic_write
from tsmcli.showcase.clock import Projection, StepClock, one_thread
from tsmcli.showcase.report import DemoRow, format_table, int8_row, model_row, write_report

log = logging.getLogger(__name__)

__all__ = ["MODELS", "STEPS", "DemoResult", "DemoRow", "demo", "format_table", "write_report"]

# name in the report -> (shift mode, what it is)
MODELS = {
    "tsn": ("none", "TSN (2D, no shift)"),
    "tsm": ("bidirectional", "TSM offline (bidirectional shift)"),
    "tsm_online": ("unidirectional", "TSM online (one-way shift)"),
}
# The online model is trained the way one deploys TSM online: train offline, then fine-tune
# the one-way model from the offline weights (model.init_from), for this share of the
# recipe's length (its steps, or its epochs when it counts epochs), learning from the
# offline model's outputs softened at temperature 4 as well as from the labels
# (train.distill_*): on the demo's set, 150 of the recipe's 600 steps reached 90.0% so and
# 85.0% from the labels alone. From scratch the one-way model needs several times the
# demo's CPU budget to start separating the pairs.
ONLINE_FROM = "tsm"
ONLINE_FINETUNE_SHARE = 0.25
ONLINE_DISTILL = ("train.distill_weight=0.5", "train.distill_temperature=4")
# The demo's set: the first pairs of the synthetic classes (moving, growing, appearing) and
# the videos a class (30 for training, 10 for validation), the size of set its recipe was
# tuned for and bench/claim.py checks the claim on
DEMO_NUM_CLASSES = 8
DEMO_PER_CLASS = 40
# What follows the trainings (three evaluations, the export and its checks, the streaming
# evaluation, the report), in training steps of the demo recipe: measured 70-80 on the
# 2-core AVX2 machine. Only the projection logged after the first epoch uses it.
AFTER_TRAINING_IN_STEPS = 80
STEPS = (
    "synth",
    "extract",
    "lists",
    "train TSN + TSM",
    "fine-tune online",
    "evaluate",
    "convert online",
    "streaming eval",
    "report",
)


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    rows: list[DemoRow]
    report: Path
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds, in order

    def table(self) -> str:
        return format_table(self.rows)


def demo(
    out: str | Path = "demo_out",
    *,
    per_class: int | None = None,
    epochs: int | None = None,
    size: int | None = None,
    num_frames: int | None = None,
    num_classes: int | None = None,
    speed: float | None = None,
    seed: int = 0,
    parallel: bool | None = None,
    overrides: Sequence[str] = (),
) -> DemoResult:
    """Run the demo into ``out``; the sizes default to the demo's set and the demo recipe's.

    ``epochs`` replaces the recipe's length by that many epochs for every training;
    ``overrides`` are extra ``--set key=value`` items for the three training runs.
    ``parallel`` (default: with two cores or more) trains TSN beside the offline TSM, in a
    second process; either way every training uses one intra-op thread, so the accuracies
    do not depend on it.
    """
    from tsmcli.data import synth as synth_module

    synth_options = {
        "seed": seed,
        "per_class": per_class or DEMO_PER_CLASS,
        "size": size or synth_module.DEFAULT_SIZE,
        "num_frames": num_frames or synth_module.DEFAULT_NUM_FRAMES,
        "classes": list(synth_module.first_classes(num_classes or DEMO_NUM_CLASSES)),
        "speed": speed or synth_module.DEFAULT_SPEED,
    }
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    with one_thread():
        return _run(Path(out), synth_options, epochs, parallel, overrides)


def _run(
    out: Path,
    synth_options: dict[str, Any],
    epochs: int | None,
    parallel: bool,
    overrides: Sequence[str],
) -> DemoResult:
    """The steps, each timed by the clock."""
    out.mkdir(parents=True, exist_ok=True)
    clock = StepClock(STEPS, record=out / "timings.json")
    lists, frames = _prepare_data(out, synth_options, clock)
    recipes = _recipes(out, lists, frames, epochs, overrides)
    runs = {name: out / "runs" / name for name in MODELS}
    _train_all(recipes, runs, clock, parallel)
    with clock.step("evaluate", "evaluating the three models") as step:
        found = {
            name: _evaluate_once(runs[name] / "last.pt", lists, frames, out / "eval" / name)
            for name in MODELS
        }
        results = {name: summary for name, (summary, _) in found.items()}
        if all(reused for _, reused in found.values()):
            step.reuse()
    online_dir = out / "online"
    text = "converting the online model (TorchScript, ONNX, int8 ONNX, checked)"
    with clock.step("convert online", text) as step:
        converted, reused = _convert_once(runs["tsm_online"] / "last.pt", online_dir, lists, frames)
        if reused:
            step.reuse()
    with clock.step("streaming eval", "evaluating the online model frame by frame") as step:
        # at the model dir's own stride: the spacing of the frames it was trained on
        streamed, reused = _evaluate_online_once(online_dir, lists, frames, out / "eval")
        if reused:
            step.reuse()
    with clock.step("report", "writing the report"):
        rows = []
        for name, (_, title) in MODELS.items():
            online = name == "tsm_online"
            cache = converted["cache_bytes"] if online else None
            top1 = streamed["fp32"]["top1"] if online else None
            row = model_row(name, title, runs[name] / "last.pt", results[name], cache, top1)
            rows.append(replace(row, file_bytes=_file_bytes(converted, "fp32")) if online else row)
        if "int8" in streamed:
            rows.append(int8_row(rows[-1], streamed["int8"], converted["precisions"]["int8"]))
        report = write_report(out, rows, clock, converted)
    seconds = clock.elapsed()
    log.info("demo finished in %.1f min (%s)", seconds / 60, clock.summary())
    return DemoResult(out, rows, report, seconds, dict(clock.timings))


def _prepare_data(out: Path, synth_options: dict[str, Any], clock: StepClock) -> tuple[Path, Path]:
    """The synthetic videos, their frames, the lists. Returns (lists, frames)."""
    from tsmcli.data.build_list import build_list
    from tsmcli.data.extract import extract

    videos, frames, lists = out / "videos", out / "frames", out / "lists"
    with clock.step("synth", "writing the synthetic dataset") as step:
        if _synth_once(videos, synth_options):
            step.reuse()
    with clock.step("extract", "extracting frames") as step:
        extracted = extract(videos, frames, short_side=0, workers=None)
        if extracted.done == 0 and extracted.failed == 0:
            step.reuse()
    if extracted.failed:
        log.warning("%d videos failed to extract; see %s", extracted.failed, extracted.failures_csv)
    with clock.step("lists", "building the lists"):
        build_list("folder", frames, lists, source="frames", seed=synth_options["seed"])
    return lists, frames


def _synth_once(videos: Path, options: dict[str, Any]) -> bool:
    """Write the synthetic videos unless a finished set with the same options is there
    (then True: reused)."""
    from tsmcli.data.synth import synth

    stamp = videos / "synth.json"
    if stamp.exists() and json.loads(stamp.read_text()) == options:
        log.info("found %s, reusing it", videos)
        return True
    synth(videos, overwrite=True, **options)
    atomic_write(stamp, json.dumps(options))  # written last: its presence means finished
    return False


def _recipes(
    out: Path, lists: Path, frames: Path, epochs: int | None, overrides: Sequence[str]
) -> dict[str, Any]:
    """The three runs' recipes: the demo recipe with each model's shift; the online one
    fine-tuned from the offline TSM, distilling from it, for a share of the length."""
    from tsmcli.recipe import apply_overrides, load_recipe

    common = [
        f"data.root={frames}",
        f"data.train_list={lists / 'train.txt'}",
        f"data.val_list={lists / 'val.txt'}",
        "data.source=frames",
    ]
    if epochs is not None:
        common += [f"train.epochs={epochs}", "train.steps=0"]
    recipes = {
        name: load_recipe("demo", [f"model.shift={shift}", *common, *overrides])
        for name, (shift, _) in MODELS.items()
    }
    online = recipes["tsm_online"].train
    teacher = out / "runs" / ONLINE_FROM / "last.pt"
    length = []
    if epochs is None:  # a share of the recipe's length, in its own unit
        key, value = (
            ("train.steps", online.steps) if online.steps else ("train.epochs", online.epochs)
        )
        length = [f"{key}={max(1, round(ONLINE_FINETUNE_SHARE * value))}"]
    items = [f"model.init_from={teacher}", f"train.distill_from={teacher}", *ONLINE_DISTILL]
    recipes["tsm_online"] = apply_overrides(recipes["tsm_online"], [*items, *length])
    return recipes


def _train_all(
    recipes: dict[str, Any], runs: dict[str, Path], clock: StepClock, parallel: bool
) -> None:
    """TSN and the offline TSM (side by side when ``parallel``), then the online TSM; the
    projected total is logged after the first epoch any of them trains here."""
    planned = {name: math.prod(_plan(recipe)) for name, recipe in recipes.items()}
    projection = Projection(clock, planned, AFTER_TRAINING_IN_STEPS)
    beside = " side by side" if parallel else ""
    with clock.step("train TSN + TSM", f"training TSN and the offline TSM{beside}") as step:
        if all(_finished(recipes[name], runs[name]) for name in ("tsn", "tsm")):
            step.reuse()
        _train_pair(recipes, runs, parallel, projection)
    text = "fine-tuning the online TSM (one-way shift) from the offline one"
    with clock.step("fine-tune online", text) as step:
        if _finished(recipes["tsm_online"], runs["tsm_online"]):
            step.reuse()
        projection.begin("tsm_online", [])
        _train_once(recipes["tsm_online"], runs["tsm_online"], on_epoch=projection.epoch)


def _plan(recipe) -> tuple[int, int]:
    """(epochs, optimizer steps an epoch) that the recipe makes on its train list, in one
    process (a step takes ``train.accumulate`` batches)."""
    from tsmcli.data.lists import read_list
    from tsmcli.engine.train_setup import planned_epochs

    t = recipe.train
    per_epoch = max(1, len(read_list(recipe.data.train_list)) // (t.batch_size * t.accumulate))
    return planned_epochs(recipe.train, per_epoch), per_epoch


def _train_pair(
    recipes: dict[str, Any], runs: dict[str, Path], parallel: bool, projection: Projection
) -> None:
    """Train TSN and the offline TSM: TSN in a second process beside TSM when ``parallel``,
    one after the other otherwise; one intra-op thread each either way."""
    if not parallel:
        projection.begin("tsm", ["tsn", "tsm_online"])
        _train_once(recipes["tsm"], runs["tsm"], on_epoch=projection.epoch)
        projection.begin("tsn", ["tsm_online"])
        _train_once(recipes["tsn"], runs["tsn"], on_epoch=projection.epoch)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP
    failures = context.Queue()
    level = logging.getLogger("tsmcli").getEffectiveLevel()
    child = context.Process(
        target=_train_in_child,
        name="tsm-demo-tsn",
        args=(recipes["tsn"], runs["tsn"], level, failures),
    )
    child.start()
    try:
        projection.begin("tsm", ["tsm_online"])
        _train_once(recipes["tsm"], runs["tsm"], on_epoch=projection.epoch)
    finally:
        child.join()  # on Ctrl-C too: the child saves its own checkpoint first
    failure = failures.get() if not failures.empty() else None
    if failure is not None or child.exitcode != 0:
        from tsmcli.errors import TrainingError

        if isinstance(failure, BaseException):
            raise failure
        why = failure or f"exit code {child.exitcode}"
        raise TrainingError(
            f"{runs['tsn']}: training TSN stopped ({why}); run the demo again to resume it"
        )


def _train_in_child(recipe, run_dir: Path, level: int, failures) -> None:
    """The TSN run of ``_train_pair``, in its own process: one thread, its log lines prefixed."""
    import torch

    logging.basicConfig(level=logging.WARNING, format="[tsn] %(message)s")
    logging.getLogger("tsmcli").setLevel(level)
    torch.set_num_threads(1)
    try:
        _train_once(recipe, run_dir)
    except KeyboardInterrupt:
        failures.put("interrupted")
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            failures.put(exc)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            failures.put(f"{type(exc).__name__}: {exc}")


def _train_once(
    recipe, run_dir: Path, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    """Train into ``run_dir``; a finished run is reused, an interrupted one resumed.

    Returns the final weights (``last.pt``), not ``best.pt``: the demo evaluates on the list
    that picked the best epoch, so reporting the best epoch would flatter every model.
    """
    from tsmcli.engine.train import train

    last = run_dir / "last.pt"
    if _finished(recipe, run_dir):
        log.info("found the finished run %s, reusing it", run_dir)
        return last
    train(recipe, out_dir=run_dir, resume=last.exists(), on_epoch=on_epoch)
    return last


def _finished(recipe, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds the whole run of ``recipe``."""
    from tsmcli.model.weights import load_checkpoint

    last = run_dir / "last.pt"
    if not last.exists():
        return False
    state = load_checkpoint(last)
    return state.get("epoch") == _plan(recipe)[0] and not state.get("iteration")


def _evaluate_once(
    checkpoint: Path, lists: Path, frames: Path, eval_dir: Path
) -> tuple[dict[str, Any], bool]:
    """The evaluation's summary, and whether an earlier run's was reused."""
    from tsmcli.engine.evaluate import evaluate

    summary = eval_dir / "summary.json"
    if summary.exists() and summary.stat().st_mtime >= checkpoint.stat().st_mtime:
        found = json.loads(summary.read_text())
        if found.get("checkpoint") == str(checkpoint):
            return found, True
    # the demo's list is small: loading in this process costs less than starting workers
    result = evaluate(
        checkpoint,
        lists / "val.txt",
        frames,
        views="single",
        out_dir=eval_dir,
        json_path=summary,
        batch_size=16,
        workers=0,
        overwrite=True,  # the demo's own files of an earlier run
    )
    return result.summary(), False


def _convert_once(
    checkpoint: Path, online_dir: Path, lists: Path, frames: Path
) -> tuple[dict[str, Any], bool]:
    """The model dir's report, and whether an earlier run's model dir was reused. The int8
    model is calibrated and checked on the training list; when it is refused (a model too
    little trained to keep its top-1 in 8 bits), the model dir is fp32 only and the report
    says why."""
    from tsmcli.engine.convert import convert_online
    from tsmcli.engine.int8 import Int8Refused
    from tsmcli.model.model_dir import WEIGHTS_FILE

    report = online_dir / "report.json"
    if (
        (online_dir / WEIGHTS_FILE).exists()
        and report.exists()
        and report.stat().st_mtime >= checkpoint.stat().st_mtime
        and "precisions" in json.loads(report.read_text())
    ):
        return json.loads(report.read_text()), True
    int8 = {"precision": "int8", "calib_list": lists / "train.txt", "root": frames}
    try:
        convert_online(checkpoint, online_dir, overwrite=True, **int8)
    except Int8Refused as refused:
        log.warning("%s; converting without it", refused)
        convert_online(checkpoint, online_dir, overwrite=True)
        found = json.loads(report.read_text())
        atomic_write(report, json.dumps({**found, "int8_refused": str(refused)}, indent=2))
    return json.loads(report.read_text()), False


def _file_bytes(converted: dict[str, Any], precision: str) -> int | None:
    found = converted.get("precisions", {}).get(precision)
    return None if found is None else found["bytes"]


def _evaluate_online_once(
    online_dir: Path, lists: Path, frames: Path, eval_dir: Path
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Streaming top-1 of each precision the model dir holds (fp32, and int8 when it was
    not refused) at its own stride, and whether an earlier run's were reused."""
    from tsmcli.engine.online import evaluate_online
    from tsmcli.model.model_dir import INT8_FILE

    precisions = ["fp32", "int8"] if (online_dir / INT8_FILE).exists() else ["fp32"]
    summaries = {
        p: eval_dir / f"streaming{'' if p == 'fp32' else '_' + p}.json" for p in precisions
    }
    newest = (online_dir / "report.json").stat().st_mtime
    if all(path.exists() and path.stat().st_mtime >= newest for path in summaries.values()):
        return {p: json.loads(path.read_text()) for p, path in summaries.items()}, True
    found = {}
    for precision, path in summaries.items():
        result = evaluate_online(
            online_dir, lists / "val.txt", frames, source="frames", precision=precision
        )
        found[precision] = {
            "top1": result.top1,
            "top5": result.top5,
            "top1_at": result.top1_at,
            "latency_ms": result.latency_ms,
            "stride": result.stride,
        }
        atomic_write(path, json.dumps(found[precision]))
    return found, False
