"""tsm export: the offline model as a verified ONNX clip model dir, which eval and predict run
with exactly the checkpoint's views and scores; int8 beside it only when it passes."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from int8_fakes import CLASSES, collapsed_quantizer, write_checkpoint, write_clips

from tsmcli.cli import cli
from tsmcli.engine import deploy, int8_clip
from tsmcli.engine.deploy import export_model
from tsmcli.engine.evaluate import evaluate, load_exported, run_eval
from tsmcli.engine.predict import predict
from tsmcli.errors import ExportError, UsageError
from tsmcli.model import export
from tsmcli.model.spec import ArchOverrides

pytestmark = pytest.mark.usefixtures("one_thread")
RELATIVE = 1e-4  # fp32: the exported model's scores against the checkpoint's
SPLIT = {"calib_clips": 4, "check_clips": 12}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A bidirectional TSM checkpoint whose test scale (40) differs from its crop (32), so
    full-resolution views run the model at another size, and 16 clips of frames."""
    root = tmp_path_factory.mktemp("deploy")
    list_file = write_clips(root / "clips", 16)
    (root / "clips" / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    checkpoint = write_checkpoint(
        root / "ckpt.pt", root / "clips", list_file, shift="bidirectional", scale_size=40
    )
    return root, list_file, checkpoint


@pytest.fixture(scope="module")
def exported(data):
    root, list_file, checkpoint = data
    return export_model(
        checkpoint,
        root / "exported",
        precision="int8",
        calib_list=list_file,
        root=root / "clips",
        latency_reps=1,
        **SPLIT,
    )


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_the_model_dir_holds_the_model_its_names_and_preprocessing(exported, data):
    out = exported.out_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.txt",
        "model.int8.onnx",
        "model.onnx",
        "report.json",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "tsmcli-clip" and report["inputs"] == ["clip"]
    assert (report["num_segments"], report["input_size"], report["scale_size"]) == (4, 32, 40)
    assert report["mean"] == [0.485, 0.456, 0.406] and report["std"] == [0.229, 0.224, 0.225]
    assert report["classes"] == CLASSES and report["recipe"]["data"]["scale_size"] == 40
    fp32 = report["precisions"]["fp32"]
    assert set(fp32["checks"]) == {"clip logits at 32x32", "clip logits at 40x40"}
    assert all(c["max_rel_diff"] <= RELATIVE for c in fp32["checks"].values())
    assert fp32["bytes"] == (out / "model.onnx").stat().st_size and fp32["ms_per_clip"] > 0
    int8 = report["precisions"]["int8"]
    assert int8["checks"]["agreement"] >= 98.0 and int8["checks"]["clips"] == 12
    assert int8["bytes"] < fp32["bytes"] / 3 and report["eager_ms_per_clip"] > 0


@pytest.mark.parametrize("protocol", ["single", "sthv2"])  # sthv2: 3 full-res crops of 40 px
def test_eval_of_the_exported_model_gives_the_checkpoints_scores(exported, data, protocol):
    root, list_file, checkpoint = data
    want = evaluate(checkpoint, list_file, root / "clips", views=protocol, workers=0)
    got = run_eval(list_file, root / "clips", model_dir=exported.out_dir, views=protocol, workers=0)
    assert got.views == want.views == (1 if protocol == "single" else 6)
    assert _relative(got.scores, want.scores) <= RELATIVE
    assert got.top1 == want.top1 and got.checkpoint == str(exported.out_dir / "model.onnx")


def test_predict_with_the_exported_model_gives_the_checkpoints_scores(exported, data):
    root, _, checkpoint = data
    inputs = [root / "clips" / "clip03", root / "clips" / "clip07"]
    want = predict(inputs, checkpoint, workers=0)
    got = predict(inputs, model_dir=exported.out_dir, workers=0)
    for mine, theirs in zip(got.predictions, want.predictions, strict=True):
        assert _relative(mine.scores, theirs.scores) <= RELATIVE
        assert mine.top[0].name == theirs.top[0].name  # the others tie (the head is fitted)


def test_the_int8_model_agrees_with_fp32_on_the_list(exported, data):
    root, list_file, _ = data
    fp32 = run_eval(list_file, root / "clips", model_dir=exported.out_dir, workers=0)
    int8 = run_eval(
        list_file, root / "clips", model_dir=exported.out_dir, precision="int8", workers=0
    )
    assert int8.checkpoint.endswith("model.int8.onnx")
    assert torch.equal(int8.scores.argmax(1), fp32.scores.argmax(1))
    assert not torch.equal(int8.scores, fp32.scores)


def test_a_wrong_export_or_a_collapsed_int8_model_writes_nothing(
    exported, data, tmp_path, monkeypatch
):
    root, list_file, checkpoint = data
    good = exported.out_dir / "model.onnx"
    monkeypatch.setattr(export, "export_module", lambda *a, **k: shutil.copyfile(good, a[2]))
    real = export.OnnxClipModel

    class Off(real):
        def forward(self, clips):
            return super().forward(clips) * (1 + 1e-3)

    monkeypatch.setattr(export, "OnnxClipModel", Off)
    with pytest.raises(ExportError, match=r"model\.onnx: clip logits at \d+x\d+ differ from"):
        export_model(checkpoint, tmp_path / "wrong")
    monkeypatch.setattr(export, "OnnxClipModel", real)
    monkeypatch.setattr(int8_clip, "quantize_onnx", collapsed_quantizer)
    with pytest.raises(
        ExportError,
        match=r"the int8 clip model \(model\.int8\.onnx\): refused, it collapsed: class 0 for "
        r"every clip, where fp32 predicts 3 classes .* on 12 held-back clips",
    ):
        export_model(
            checkpoint,
            tmp_path / "collapsed",
            precision="int8",
            calib_list=list_file,
            root=root / "clips",
            **SPLIT,
        )
    assert list(tmp_path.iterdir()) == []  # no model dir, no temp dir left behind


def test_precisions_and_options_that_do_not_fit_are_one_line_errors(exported, data, tmp_path):
    root, list_file, checkpoint = data
    clips = root / "clips"
    with pytest.raises(UsageError, match="tsm export writes fp32 or int8"):
        export_model(checkpoint, tmp_path / "m", precision="bf16")
    with pytest.raises(UsageError, match="--precision int8 needs --calib-list LIST and --root"):
        export_model(checkpoint, tmp_path / "m", precision="int8")
    with pytest.raises(
        UsageError, match="an exported model dir holds ONNX models in fp32 and int8"
    ):
        run_eval(list_file, clips, model_dir=exported.out_dir, precision="bf16")
    with pytest.raises(UsageError, match="--precision int8 runs an exported int8 ONNX model"):
        evaluate(checkpoint, list_file, clips, precision="int8")
    with pytest.raises(UsageError, match="an exported model dir records its architecture"):
        evaluate(
            load_exported(exported.out_dir, "fp32"),
            list_file,
            clips,
            arch=ArchOverrides(num_segments=8),
        )
    with pytest.raises(UsageError, match="--device cuda: an exported model runs in ONNX Runtime"):
        predict([clips / "clip00"], model_dir=exported.out_dir, device="cuda")
    with pytest.raises(UsageError, match="give exactly one of --checkpoint CKPT, --model"):
        run_eval(list_file, clips, checkpoint=checkpoint, model_dir=exported.out_dir)
    fp32_only = tmp_path / "fp32_only"
    shutil.copytree(exported.out_dir, fp32_only)
    (fp32_only / "model.int8.onnx").unlink()
    with pytest.raises(ExportError, match=r"model\.int8\.onnx: missing; export the checkpoint"):
        run_eval(list_file, clips, model_dir=fp32_only, precision="int8")
    report = json.loads((fp32_only / "report.json").read_text())
    (fp32_only / "report.json").write_text(json.dumps({**report, "num_segments": 0}))
    with pytest.raises(ExportError, match="num_segments must be an integer of at least 1, got 0"):
        run_eval(list_file, clips, model_dir=fp32_only)


def test_cli_exports_and_evaluates(exported, data, tmp_path, monkeypatch):
    root, list_file, checkpoint = data
    good = exported.out_dir / "model.onnx"  # stands in for a fresh (slow) export
    monkeypatch.setattr(export, "export_module", lambda *a, **k: shutil.copyfile(good, a[2]))
    run = CliRunner().invoke(
        cli, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m")]
    )
    assert run.exit_code == 0, run.output
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.output.splitlines())
    assert rows["model"] == "resnet18, 4 frames, 3 classes"
    assert rows["fp32 onnx"].startswith("model.onnx, ") and "int8 onnx" not in rows
    run = CliRunner().invoke(
        cli,
        [
            "eval",
            "--model",
            str(tmp_path / "m"),
            "--list",
            str(list_file),
            "--root",
            str(root / "clips"),
        ],
    )
    assert run.exit_code == 0, run.output
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.output.splitlines())
    assert rows["model"] == str(tmp_path / "m") and rows["videos"] == "16"
    assert deploy.export_model is export_model
