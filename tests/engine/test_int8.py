"""int8 streaming models: calibrated on real clips, refused with the numbers when they are not
good enough, written beside the fp32 model only when they are; run by eval and stream."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from int8_fakes import (
    CLASSES,
    collapsed_quantizer,
    swapping_quantizer,
    write_checkpoint,
    write_clips,
)

from tsmcli.cli import cli
from tsmcli.data.lists import read_list_file
from tsmcli.engine import int8_stream
from tsmcli.engine.convert import convert_online
from tsmcli.engine.int8 import LOGIT_TOLERANCE, judge, relative_rms, split_clips
from tsmcli.engine.online import evaluate_online, load_online_model
from tsmcli.engine.stream import stream
from tsmcli.errors import ExportError, UsageError
from tsmcli.model import export

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"verify_frames": 3, "latency_reps": 1}
SPLIT = {"calib_clips": 4, "check_clips": 12}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    list_file = write_clips(root / "clips", 16)
    checkpoint = write_checkpoint(root / "ckpt.pt", root / "clips", list_file)
    return root, list_file, checkpoint


@pytest.fixture(scope="module")
def converted(data):
    root, list_file, checkpoint = data
    result = convert_online(
        checkpoint,
        root / "model",
        precision="int8",
        calib_list=list_file,
        root=root / "clips",
        **SPLIT,
        **FAST,
    )
    return result


# ------------------------------------------------------------------------------ the rule


def _scores(top1: list[int], classes: int = 3) -> torch.Tensor:
    """Scores whose top-1 is ``top1`` (one row a clip), margin 1."""
    scores = torch.zeros(len(top1), classes)
    scores[torch.arange(len(top1)), torch.tensor(top1)] = 1.0
    return scores


def _judge(fp32_top1, int8_top1, labels, logit_error=None):
    return judge(
        _scores(fp32_top1),
        _scores(int8_top1),
        torch.tensor(labels),
        what="m.onnx",
        calibration=(4, 24),
        held_back=True,
        logit_error=logit_error,
    )


def test_the_rule_passes_agreement_and_accuracy_at_their_bars():
    labels = [k % 3 for k in range(100)]
    int8 = list(labels)
    int8[0], int8[1] = 1, 2  # 98 of 100 agree, two right answers lost: 2 points
    with pytest.raises(ExportError, match=r"98\.00%, 2\.00 points below fp32's 100\.00%"):
        _judge(labels, int8, labels)
    fp32 = list(labels)
    fp32[0] = 1  # fp32 wrong on clip 0, int8 on clips 0 and 1: 98% agree, one point lost
    int8[0] = 2
    checks = _judge(fp32, int8, labels)
    assert (checks.agreement, checks.fp32_top1, checks.int8_top1) == (98.0, 99.0, 98.0)
    assert checks.clips == 100 and checks.fp32_classes == checks.int8_classes == 3


def test_the_rule_refuses_a_collapse_disagreement_and_drifting_logits():
    labels = [0, 1, 2, 0, 1, 2]
    with pytest.raises(
        ExportError,
        match=r"m\.onnx: refused, it collapsed: class 0 for every clip, where fp32 predicts 3 "
        r"classes \(int8 top-1 33\.3%, fp32 100\.0%\) on 6 held-back clips .*nothing was written",
    ):
        _judge(labels, [0] * 6, labels)
    with pytest.raises(
        ExportError, match=r"agrees with fp32's on 83\.3% of the clips \(at least 98% needed\)"
    ):
        _judge(labels, [0, 1, 2, 0, 1, 0], labels)
    with pytest.raises(ExportError, match=r"differ from the fp32 streaming model's by 0\.300"):
        _judge(labels, labels, labels, logit_error=0.3)
    assert _judge(labels, labels, labels, logit_error=0.1).logit_tolerance == LOGIT_TOLERANCE
    # a model that gives one class, as its fp32 model does, has not collapsed
    assert _judge([1] * 6, [1] * 6, labels).agreement == 100.0


def test_relative_rms_is_the_noise_over_the_signal():
    ref = [torch.tensor([3.0, -4.0]), torch.tensor([0.0, 0.0])]  # RMS over all: 2.5
    diff = [torch.tensor([0.5, -0.5]), torch.tensor([0.5, 0.5])]  # RMS 0.5
    assert relative_rms(diff, ref) == pytest.approx(0.2)
    assert relative_rms([torch.tensor([float("nan")])], [torch.tensor([1.0])]) == float("inf")


def test_calibration_and_check_clips_are_spread_and_held_apart():
    split = split_clips(100, 32, 256)
    assert len(split.calibration) == 32 and split.calibration[:3] == (0, 3, 6)
    assert len(split.check) == 68 and not set(split.check) & set(split.calibration)
    assert split.held_back
    few = split_clips(40, 32, 16)  # 8 left: fewer than asked to check, so all do both
    assert not few.held_back and len(few.check) == 16 and len(few.calibration) == 32
    assert few.check[:3] == (0, 2, 5)  # spread over the whole list
    with pytest.raises(UsageError, match="--calib-clips and --check-clips must be at least 1"):
        split_clips(10, 0, 5)


# ------------------------------------------------------------------------------ convert-online


def test_an_int8_model_is_written_beside_fp32_with_what_it_was_checked_on(converted):
    out = converted.out_dir
    assert (out / "online.int8.onnx").is_file() and (out / "online.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    fp32, int8 = report["precisions"]["fp32"], report["precisions"]["int8"]
    assert (fp32["file"], int8["file"]) == ("online.onnx", "online.int8.onnx")
    assert fp32["bytes"] == (out / "online.onnx").stat().st_size
    assert int8["bytes"] == (out / "online.int8.onnx").stat().st_size
    assert int8["bytes"] < fp32["bytes"] / 3  # int8 weights: a quarter, and a little more
    assert fp32["ms_per_frame"] > 0 and int8["ms_per_frame"] > 0
    assert fp32["checks"]["onnx frame logits"]["diff"] <= 1e-4
    checks = int8["checks"]
    assert (checks["calibration_clips"], checks["clips"], checks["held_back"]) == (4, 12, True)
    assert checks["calibration_inputs"] == 4 * 6  # every frame of the 4 clips, with buffers
    assert checks["agreement"] >= 98.0 and checks["fp32_classes"] == 3
    assert checks["logit_error"] <= LOGIT_TOLERANCE
    assert int8["quantization"]["format"] == "qdq" and int8["quantization"]["per_channel"]


def test_eval_and_stream_run_the_int8_model_frame_by_frame(converted, data):
    root, list_file, _ = data
    fp32 = evaluate_online(converted.out_dir, list_file, root / "clips")
    int8 = evaluate_online(converted.out_dir, list_file, root / "clips", precision="int8")
    assert int8.precision == "int8" and int8.summary()["precision"] == "int8"
    assert int8.num_frames == fp32.num_frames == 16 * 6
    # every clip's running average after its last frame: the same top-1, close scores
    assert torch.equal(int8.scores.argmax(1), fp32.scores.argmax(1))
    assert relative_rms([int8.scores - fp32.scores], [fp32.scores]) <= LOGIT_TOLERANCE
    assert not torch.equal(int8.scores, fp32.scores)  # it is the int8 model that ran
    streamed = stream(root / "clips" / "clip05", converted.out_dir, topk=3, precision="int8")
    assert streamed.frames == 6
    probs = int8.scores[5].softmax(0)
    assert streamed.last.labels[0] == CLASSES[int(probs.argmax())]
    assert streamed.last.scores[0] == pytest.approx(float(probs.max()), abs=1e-5)


def test_a_collapsed_int8_model_is_refused_and_nothing_is_written(
    converted, data, tmp_path, monkeypatch
):
    root, list_file, checkpoint = data
    monkeypatch.setattr(  # the verified fp32 file stands in for a fresh (slow) export
        export,
        "export_onnx",
        lambda *args: shutil.copyfile(converted.out_dir / "online.onnx", args[3]),
    )
    monkeypatch.setattr(int8_stream, "quantize_onnx", collapsed_quantizer)
    out = tmp_path / "out"
    with pytest.raises(
        ExportError,
        match=r"the int8 streaming model \(online\.int8\.onnx\): refused, it collapsed: class 0 "
        r"for every clip, where fp32 predicts 3 classes \(int8 top-1 33\.3%, fp32 100\.0%\) on "
        r"12 held-back clips of the calibration list; nothing was written",
    ):
        convert_online(
            checkpoint,
            out / "model",
            precision="int8",
            calib_list=list_file,
            root=root / "clips",
            **SPLIT,
            **FAST,
        )
    assert not out.exists() or list(out.iterdir()) == []  # no model dir, no temp dir


def test_an_int8_model_that_disagrees_with_fp32_is_refused(converted, data, tmp_path, monkeypatch):
    root, list_file, _ = data
    monkeypatch.setattr(int8_stream, "quantize_onnx", swapping_quantizer)
    model = load_online_model(converted.out_dir)
    listed = read_list_file(list_file, classes=False)
    with pytest.raises(
        ExportError, match=r"its top-1 agrees with fp32's on 33\.3% of the clips \(at least 98%"
    ):
        int8_stream.quantize_streaming(
            converted.out_dir / "online.onnx",
            tmp_path / "int8.onnx",
            model,
            listed,
            root / "clips",
            **SPLIT,
        )


def test_int8_options_are_checked_before_any_work(data, tmp_path):
    root, list_file, checkpoint = data
    with pytest.raises(UsageError, match="--precision int8 needs --calib-list LIST"):
        convert_online(checkpoint, tmp_path / "m", precision="int8")
    with pytest.raises(UsageError, match="--precision int8 needs --calib-list LIST"):
        convert_online(checkpoint, tmp_path / "m", calib_list=list_file, root=root)
    with pytest.raises(UsageError, match="convert-online writes fp32 or int8"):
        convert_online(checkpoint, tmp_path / "m", precision="bf16")
    assert list(tmp_path.iterdir()) == []


def test_a_model_dir_without_int8_says_how_to_make_one(converted, data, tmp_path):
    root, list_file, _ = data
    plain = tmp_path / "plain"
    shutil.copytree(converted.out_dir, plain)
    (plain / "online.int8.onnx").unlink()
    with pytest.raises(ExportError, match=r"online\.int8\.onnx: missing, .*--precision int8"):
        evaluate_online(plain, list_file, root / "clips", precision="int8")
    with pytest.raises(UsageError, match="--trust-torchscript runs online.pt, in fp32"):
        load_online_model(converted.out_dir, precision="int8", trust_torchscript=True)


def test_cli_converts_and_evaluates_int8(converted, data, tmp_path):
    root, list_file, checkpoint = data
    run = CliRunner().invoke(
        cli,
        [
            "eval",
            "--online",
            str(converted.out_dir),
            "--list",
            str(list_file),
            "--root",
            str(root / "clips"),
            "--precision",
            "int8",
        ],
    )
    assert run.exit_code == 0, run.output
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.output.splitlines())
    assert rows["precision"] == "int8" and rows["videos"] == "16"
