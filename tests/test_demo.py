"""A shrunken `tsm demo` end to end: every step runs, the report agrees with the files the
steps wrote, and a re-run reuses the finished steps instead of redoing them."""

from __future__ import annotations

import json

import pytest

from tsmcli.demo import MODELS, demo

SMALL = ["train.batch_size=4", "train.workers=0"]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo(out, per_class=4, epochs=1, num_frames=8, overrides=SMALL)


def test_every_step_leaves_its_result(small_demo):
    out = small_demo.out_dir
    assert len(list((out / "videos").rglob("*.mp4"))) == 4 * 6
    assert len(list((out / "frames").rglob("img_00008.jpg"))) == 4 * 6
    assert (out / "lists" / "classes.txt").read_text().split() == sorted(
        (out / "lists" / "classes.txt").read_text().split()
    )
    for name in MODELS:
        assert (out / "runs" / name / "best.pt").exists()
        assert (out / "eval" / name / "confusion.png").exists()
    for file in ("online.pt", "online.onnx", "report.json"):
        assert (out / "online" / file).exists()
    assert [row.name for row in small_demo.rows] == list(MODELS)


def test_report_numbers_are_the_evaluations(small_demo):
    out = small_demo.out_dir
    report = small_demo.report.read_text()
    for row in small_demo.rows:
        summary = json.loads((out / "eval" / row.name / "summary.json").read_text())
        assert (row.top1, row.top5) == (summary["top1"], summary["top5"])
        assert summary["num_videos"] == 6  # one val video per class
        assert row.title in report
    online = small_demo.rows[-1]
    assert (
        online.cache_bytes
        == json.loads((out / "online" / "report.json").read_text())["cache_bytes"]
    )
    streaming = json.loads((out / "eval" / "streaming.json").read_text())
    assert online.streaming_top1 == streaming["top1"]
    assert all(row.cache_bytes is None for row in small_demo.rows[:-1])
    # same architecture for all three: the shift adds no parameters and no FLOPs
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
    again = demo(out, per_class=4, epochs=1, num_frames=8, overrides=SMALL)
    assert {path: path.stat().st_mtime_ns for path in watched} == before
    assert [row.top1 for row in again.rows] == [row.top1 for row in small_demo.rows]
