"""A shrunken `tsm demo` end to end: every step runs, the report agrees with the files the
steps wrote, the steps are timed and the total projected, and a re-run reuses the finished
steps instead of redoing them."""

from __future__ import annotations

import json
import logging

import pytest

from tsmcli.showcase import DEMO_NUM_CLASSES, MODELS, STEPS, demo
from tsmcli.showcase import clock as clock_module
from tsmcli.showcase.clock import Projection, StepClock

SMALL = ["train.batch_size=4", "train.workers=0"]
LOGGED: list[str] = []  # what the small demo logged (tsmcli.showcase), filled by its fixture
REPORT: list[str] = []  # its report.md as first written (a re-run writes it again)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The demo on 4 videos a class of 8 frames, one epoch a model, TSN in its own process
    beside the offline TSM (as on any machine of two cores or more)."""
    out = tmp_path_factory.mktemp("demo")
    logger, lines = logging.getLogger("tsmcli.showcase"), _Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        result = demo(out, per_class=4, epochs=1, num_frames=8, parallel=True, overrides=SMALL)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    LOGGED[:] = lines.lines
    REPORT[:] = result.report.read_text().splitlines()
    return result


def test_every_step_leaves_its_result(small_demo):
    out = small_demo.out_dir
    assert len(list((out / "videos").rglob("*.mp4"))) == 4 * DEMO_NUM_CLASSES
    assert len(list((out / "frames").rglob("img_00008.jpg"))) == 4 * DEMO_NUM_CLASSES
    assert (out / "lists" / "classes.txt").read_text().split() == sorted(
        (out / "lists" / "classes.txt").read_text().split()
    )
    for name in MODELS:
        assert (out / "runs" / name / "best.pt").exists()
        assert (out / "eval" / name / "confusion.png").exists()
    for file in ("online.pt", "online.onnx", "online.int8.onnx", "report.json"):
        assert (out / "online" / file).exists()
    assert [row.name for row in small_demo.rows] == [*MODELS, "tsm_online_int8"]


def test_report_numbers_are_the_evaluations(small_demo):
    out = small_demo.out_dir
    report = small_demo.report.read_text()
    for row in small_demo.rows[: len(MODELS)]:  # the int8 row is the online model's, below
        summary = json.loads((out / "eval" / row.name / "summary.json").read_text())
        assert (row.top1, row.top5) == (summary["top1"], summary["top5"])
        assert summary["num_videos"] == DEMO_NUM_CLASSES  # one val video per class
        assert row.title in report
    tsn, tsm, online, int8 = small_demo.rows
    converted = json.loads((out / "online" / "report.json").read_text())
    assert online.cache_bytes == int8.cache_bytes == converted["cache_bytes"]
    streaming = json.loads((out / "eval" / "streaming.json").read_text())
    assert online.streaming_top1 == streaming["top1"]
    assert tsn.cache_bytes is None and tsm.cache_bytes is None
    # the int8 row: its own streaming evaluation, its step time and its file
    streaming_int8 = json.loads((out / "eval" / "streaming_int8.json").read_text())
    assert (int8.top1, int8.top5) == (streaming_int8["top1"], streaming_int8["top5"])
    assert int8.latency_ms == converted["precisions"]["int8"]["ms_per_frame"]
    assert int8.file_bytes == (out / "online" / "online.int8.onnx").stat().st_size
    assert online.file_bytes == (out / "online" / "online.onnx").stat().st_size
    assert f"| {int8.file_bytes / 1024:,.0f} KiB |" in report and "checked on" in report
    # same architecture for all: the shift adds no parameters and no FLOPs
    assert len({row.params for row in small_demo.rows}) == 1
    assert len({round(row.gflops, 9) for row in small_demo.rows}) == 1


def test_rerun_reuses_finished_steps(small_demo):
    out = small_demo.out_dir
    watched = [
        out / "videos" / "synth.json",
        out / "online" / "report.json",
        *[out / "runs" / name / "last.pt" for name in MODELS],
        *[out / "eval" / name / "summary.json" for name in MODELS],
    ]
    before = {path: path.stat().st_mtime_ns for path in watched}
    first_times = next(line for line in REPORT if "Whole run" in line).split(": ", 2)[2].rstrip(".")
    again = demo(out, per_class=4, epochs=1, num_frames=8, overrides=SMALL)
    assert {path: path.stat().st_mtime_ns for path in watched} == before
    assert [row.top1 for row in again.rows] == [row.top1 for row in small_demo.rows]
    # the report keeps the times of the run that did the work, and says what this one reused
    lines = again.report.read_text().splitlines()
    whole = next(line for line in lines if "Whole run" in line)
    reused = STEPS[:2] + STEPS[3:8]  # the lists and the report are made again each run
    for name in reused:
        assert f"{name} {small_demo.timings[name]:.0f} s" in whole
    assert first_times.split(", ")[3:8] == whole.split(": ", 2)[2].rstrip(".").split(", ")[3:8]
    (this_run,) = [line for line in lines if line.startswith("This run took ")]
    assert f"it reused {', '.join(reused)} from an earlier run" in this_run


def test_logs_step_times_a_projected_total_and_the_total(small_demo):
    """Every step is timed in order; one projection after the first training epoch; the
    total at the end; the report says what machine the times are from."""
    assert list(small_demo.timings) == list(STEPS)
    assert all(seconds >= 0 for seconds in small_demo.timings.values())
    projected = [line for line in LOGGED if line.startswith("projected total: ")]
    assert len(projected) == 1
    first_training = LOGGED.index(f"[4/{len(STEPS)}] training TSN and the offline TSM side by side")
    assert LOGGED.index(projected[0]) > first_training
    assert LOGGED[-1].startswith(f"demo finished in {small_demo.seconds / 60:.1f} min")
    whole = next(line for line in REPORT if "Whole run" in line)
    assert whole.startswith(f"Whole run: {small_demo.seconds / 60:.1f} min on ")
    for name in STEPS[:-1]:  # the report is written inside the last step
        assert f"{name} {small_demo.timings[name]:.0f} s" in whole


def test_the_online_model_is_fine_tuned_from_the_offline_one_and_distilled(small_demo):
    """The online run starts from the offline TSM's last.pt and learns from its outputs."""
    from tsmcli.recipe import load_recipe

    online = load_recipe(small_demo.out_dir / "runs" / "tsm_online" / "recipe.yaml")
    teacher = str(small_demo.out_dir / "runs" / "tsm" / "last.pt")
    assert (online.model.shift, online.model.init_from) == ("unidirectional", teacher)
    assert online.train.distill_from == teacher
    assert (online.train.distill_weight, online.train.distill_temperature) == (0.5, 4.0)
    assert (online.train.epochs, online.train.steps) == (1, 0)  # --epochs 1 for every model


def test_projection_counts_the_steps_left_at_the_first_epochs_pace(monkeypatch, caplog):
    """After the first epoch: the time so far plus, at that epoch's pace, the run's steps left,
    the runs after it and what follows the trainings; logged once."""
    now = [100.0]
    monkeypatch.setattr(clock_module.time, "perf_counter", lambda: now[0])
    clock = StepClock(STEPS)
    projection = Projection(clock, {"tsm": 600, "tsn": 600, "tsm_online": 150}, 80)
    now[0] = 110.0
    projection.begin("tsm", ["tsn", "tsm_online"])
    now[0] = 140.0  # the first epoch: 15 steps in 30 s, 2 s a step
    with caplog.at_level(logging.INFO, logger="tsmcli.showcase"):
        projection.epoch({"epoch": 1, "steps_per_epoch": 15})
        now[0] = 170.0
        projection.epoch({"epoch": 2, "steps_per_epoch": 15})
    # 40 s so far + 2 s x (600 - 15 + 600 + 150 + 80) steps = 2870 s
    assert caplog.messages == ["projected total: 47.8 min (2.00 s a training step on this machine)"]


def test_the_machine_line_marks_an_isa_forced_lower_as_a_stand_in(monkeypatch):
    import torch

    for key in clock_module.ISA_OVERRIDES:
        monkeypatch.delenv(key, raising=False)
    isa = torch.backends.cpu.get_cpu_capability()
    assert clock_module.cpu_isa() == isa
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert (
        clock_module.cpu_isa()
        == f"{isa} (forced with ONEDNN_MAX_CPU_ISA=AVX2: a stand-in for such a CPU)"
    )
    assert clock_module.cpu_isa() in clock_module.machine()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_multiply_adds_count_what_torchs_flop_counter_counts(arch):
    """On torchvision's networks (plain convolutions, grouped ones, linear layers) the count
    is torch's FlopCounterMode's, a multiply-add counted once."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    from tsmcli.showcase.report import multiply_adds

    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    with torch.no_grad():
        assert multiply_adds(model, x) == counter.get_total_flops() // 2


def test_multiply_adds_count_a_one_output_conv_as_the_convolution_it_is():
    """The demo network at 32 px computes its last stage's 1x1 frames as matrix products;
    the count is still the network's, the same as with plain convolutions."""
    import torch
    from torch import nn

    from tsmcli.model.backbones import NarrowResNet, OneOutputConv2d, convert_convs
    from tsmcli.showcase.report import multiply_adds

    net = NarrowResNet(32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = multiply_adds(net, x)
        convert_convs(net, nn.Conv2d)
        assert not any(isinstance(m, OneOutputConv2d) for m in net.modules())
        assert ours == multiply_adds(net, x)


def test_a_refused_int8_model_leaves_the_demo_fp32_and_says_why(small_demo, tmp_path, monkeypatch):
    from int8_fakes import collapsed_quantizer

    from tsmcli import showcase
    from tsmcli.engine import int8_stream
    from tsmcli.showcase.report import _deploy_lines

    monkeypatch.setattr(int8_stream, "quantize_onnx", collapsed_quantizer)
    out = small_demo.out_dir
    checkpoint = out / "runs" / "tsm_online" / "last.pt"
    converted, reused = showcase._convert_once(
        checkpoint, tmp_path / "online", out / "lists", out / "frames"
    )
    assert not reused and list(converted["precisions"]) == ["fp32"]
    assert not (tmp_path / "online" / "online.int8.onnx").exists()
    assert "online.int8.onnx): refused, " in converted["int8_refused"]
    assert _deploy_lines(converted)[-2] == f"No int8 model: {converted['int8_refused']}"
