"""convert_online: verified TorchScript + ONNX exports, written only when they are right."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.engine.convert import convert_online
from tsmcli.engine.online import load_online_model
from tsmcli.errors import ExportError, UsageError
from tsmcli.model import export, model_dir
from tsmcli.model.checkpoint import checkpoint_dict, load_model
from tsmcli.model.export import rebuild
from tsmcli.model.streaming import StreamingTSM, run_stream
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

TOL = 1e-4
SIZE = 32
CLASSES = ["wave", "clap", "jump"]
FAST = {"verify_frames": 4, "latency_reps": 2}  # keep each conversion to a few seconds


pytestmark = pytest.mark.usefixtures("one_thread")


def write_checkpoint(path, shift: str, seed: int = 0):
    """A tiny ResNet-18 TSM checkpoint in our format, with random weights and BN statistics."""
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=len(CLASSES), num_segments=4, shift=shift)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.0)
            bn.bias.normal_(0.0, 0.1)
        model.new_fc.weight.normal_(0.0, model.feature_dim**-0.5)  # logits O(1), not ~0
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=len(CLASSES), num_segments=4, shift=shift),
        data=DataConfig(input_size=SIZE, scale_size=36),
    )
    save_checkpoint(checkpoint_dict(model, recipe=recipe.to_dict(), classes=CLASSES, epoch=1), path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    checkpoint = write_checkpoint(root / "one_way.pt", "unidirectional")
    result = convert_online(checkpoint, root / "online", **FAST)
    return checkpoint, result


def test_writes_the_files_and_a_report_of_what_was_verified(converted):
    checkpoint, result = converted
    out = result.out_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.txt",
        "online.onnx",
        "online.pt",
        "online_weights.pt",
        "report.json",
    ]
    report = json.loads((out / "report.json").read_text())
    assert (report["height"], report["width"]) == (SIZE, SIZE)  # from the stored recipe
    assert report["num_buffers"] == 8 == len(report["buffer_shapes"])
    assert report["buffer_shapes"][0] == [1, 8, 8, 8] and report["buffer_shapes"][-1] == [
        1,
        64,
        1,
        1,
    ]
    assert report["cache_bytes"] == 4 * sum(int(np.prod(s)) for s in report["buffer_shapes"])
    assert set(report["max_abs_diff"]) == {"pytorch", "weights", "torchscript", "onnx"}
    assert all(0 <= d <= TOL for d in report["max_abs_diff"].values())
    assert {
        "pytorch features",
        "onnx frame logits",
        "onnx buffers",
        "weights buffers",
        "torchscript clip logits",
    } <= set(report["diffs"])
    assert report["latency_ms"]["streaming"] > 0 and report["latency_ms"]["backbone_2d"] > 0
    assert report["converted_from_bidirectional"] is False
    assert report["checkpoint"] == str(checkpoint)
    assert report["classes"] == CLASSES
    assert (out / "classes.txt").read_text().split() == CLASSES
    assert report["inputs"][:2] == ["frame", "buffer_0"] and report["outputs"][-1] == "new_buffer_7"


def test_onnx_and_torchscript_files_match_pytorch_frame_by_frame(converted):
    checkpoint, result = converted
    streaming = StreamingTSM(load_model(checkpoint)).eval()
    session = ort.InferenceSession(
        str(result.out_dir / "online.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [f"buffer_{i}" for i in range(8)]
    assert [i.name for i in session.get_inputs()] == ["frame", *names]
    assert [o.name for o in session.get_outputs()] == ["logits", *(f"new_{n}" for n in names)]
    assert [tuple(i.shape) for i in session.get_inputs()[1:]] == result.buffer_shapes

    def onnx_step(frame, *buffers):
        feed = dict(zip(["frame", *names], (t.numpy() for t in (frame, *buffers)), strict=True))
        return [torch.from_numpy(a) for a in session.run(None, feed)]

    scripted = load_online_model(result.out_dir).step  # online.pt
    frames = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    buffers = streaming.initial_buffers(SIZE, SIZE)
    with torch.no_grad():
        reference, state = run_stream(streaming, frames, buffers)  # (5, K)
        from_script, script_state = run_stream(scripted, frames, buffers)
    from_onnx, onnx_state = run_stream(onnx_step, frames, buffers)
    assert reference.shape == (5, len(CLASSES))
    assert (from_onnx - reference).abs().max() < TOL
    assert (from_script - reference).abs().max() < TOL
    for mine, onnx_buffer, script_buffer in zip(state, onnx_state, script_state, strict=True):
        assert (onnx_buffer - mine).abs().max() < TOL and (script_buffer - mine).abs().max() < TOL
    assert (reference[1:] - reference[:-1]).abs().max() > 100 * TOL  # frames differ


def test_a_wrong_export_is_an_error_and_nothing_is_written(converted, tmp_path, monkeypatch):
    checkpoint, good = converted
    real_step = export.OnnxStep

    def perturbed(path, num_buffers):
        step = real_step(path, num_buffers)
        return lambda *inputs: [
            out + 1e-3 if i == 0 else out for i, out in enumerate(step(*inputs))
        ]

    # The verified file of the same checkpoint stands in for a fresh (slow) ONNX export.
    monkeypatch.setattr(
        export, "export_onnx", lambda *args: shutil.copyfile(good.out_dir / "online.onnx", args[3])
    )
    monkeypatch.setattr(export, "OnnxStep", perturbed)
    with pytest.raises(ExportError, match=r"onnx (frame|clip) logits differ .* by 0\.001"):
        convert_online(checkpoint, tmp_path / "online", **FAST)
    assert list(tmp_path.iterdir()) == []  # no model dir, no temp dir left behind


def test_official_bidirectional_checkpoint_converts_one_way_with_a_warning(tmp_path, caplog):
    """The usual case, through the CLI: an official TSM release (two-way, no recipe)."""
    ours = write_checkpoint(tmp_path / "ours.pt", "bidirectional")
    state = torch.load(ours, weights_only=True)["state_dict"]
    official = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment4_e50.pth"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in state.items()}}, official)
    with caplog.at_level(logging.WARNING, logger="tsmcli"):
        cli_result = CliRunner().invoke(
            cli,
            [
                "convert-online",
                "--checkpoint",
                str(official),
                "--out",
                str(tmp_path / "online"),
                "--arch",
                "resnet18",
                "--segments",
                "4",
                "--shift",
                "bidirectional",
                "--height",
                str(SIZE),
                "--width",
                str(SIZE),
            ],
        )
    assert cli_result.exit_code == 0, cli_result.output
    assert "saw the future" in caplog.text
    assert "bidirectional" in cli_result.output and "max diff onnx" in cli_result.output
    report = json.loads((tmp_path / "online" / "report.json").read_text())
    assert report["converted_from_bidirectional"] is True
    assert report["model_config"]["shift"] == "bidirectional" and report["classes"] is None

    # The exported model is the same weights with the one-way shift, not the two-way model.
    frames = torch.randn(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    two_way = load_model(ours)
    scripted = load_online_model(tmp_path / "online").step  # online.pt
    with torch.no_grad():
        zeros = StreamingTSM(two_way).initial_buffers(SIZE, SIZE)
        streamed = run_stream(scripted, frames[0], zeros).outputs
        one_way = rebuild(two_way, shift="unidirectional").frame_logits(frames)[0]
        bidirectional = two_way.frame_logits(frames)[0]
    assert (streamed - one_way).abs().max() < TOL
    assert (streamed - bidirectional).abs().max() > 100 * TOL


def test_refuses_a_non_empty_out_dir_and_unpaired_val_options(tmp_path):
    (tmp_path / "online").mkdir()
    (tmp_path / "online" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        convert_online(tmp_path / "missing.pt", tmp_path / "online")
    with pytest.raises(UsageError, match="together"):
        convert_online(tmp_path / "missing.pt", tmp_path / "other", val_list=tmp_path / "v.txt")
    assert (tmp_path / "online" / "keep.txt").read_text() == "mine"


def test_trained_two_way_run_to_fine_tuned_online_model(tmp_path):
    """End to end on synthetic videos: train two-way for an epoch, convert with a val list and
    one epoch of one-way fine-tuning; accuracy before / after / after fine-tuning is reported
    and the exported model is the fine-tuned one."""
    from tsmcli.data.lists import ListEntry, write_classes, write_list
    from tsmcli.data.synth import CLASSES as SYNTH_CLASSES
    from tsmcli.data.synth import synth
    from tsmcli.engine.online import evaluate_online
    from tsmcli.engine.train import train
    from tsmcli.recipe import apply_overrides, load_recipe

    data = tmp_path / "data"
    videos = synth(data, per_class=2, size=32, num_frames=8).paths
    entries = [
        ListEntry(str(p.relative_to(data)), 8, SYNTH_CLASSES.index(p.parent.name)) for p in videos
    ]
    write_list(data / "train.txt", entries)
    write_list(data / "val.txt", entries[::2])
    write_classes(data / "classes.txt", SYNTH_CLASSES)
    recipe = apply_overrides(
        load_recipe("demo"),
        [
            f"data.root={data}",
            f"data.train_list={data / 'train.txt'}",
            f"data.val_list={data / 'val.txt'}",
            "data.input_size=32",
            "data.scale_size=32",
            "model.num_segments=4",
            "train.steps=4",  # 2 epochs of 2 steps; the fine-tune counts its own epochs
            "train.batch_size=8",
            "train.workers=0",
            "train.device=cpu",
            "optim.warmup_epochs=0",
        ],
    )
    run = train(recipe, out_dir=tmp_path / "run")

    result = convert_online(
        run.last_checkpoint,
        tmp_path / "online",
        val_list=data / "val.txt",
        root=data,
        finetune_epochs=1,
        **FAST,
    )
    assert result.converted_from_bidirectional and result.finetune_epochs == 1
    assert set(result.accuracy) == {"before", "after", "after_finetune"}
    assert all(
        0 <= a["top1"] <= 100 and a["num_videos"] == len(entries[::2])
        for a in result.accuracy.values()
    )
    online = evaluate_online(tmp_path / "online", data / "val.txt", data)
    assert online.top1 == result.accuracy["after_finetune"]["top1"]

    fine_tuned = result.finetuned_checkpoint
    assert fine_tuned.is_file() and fine_tuned.is_relative_to(tmp_path / "online")
    model = load_model(fine_tuned)
    assert model.config()["shift"] == "unidirectional"
    tuned = load_recipe(fine_tuned.parent / "recipe.yaml").train  # distilled from the original
    assert tuned.distill_from == str(run.last_checkpoint)
    assert (run.epochs, tuned.steps, tuned.epochs) == (2, 0, 1)
    assert len((fine_tuned.parent / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tuned.distill_weight, tuned.distill_temperature) == (0.5, 4.0)
    frames = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    step = load_online_model(tmp_path / "online").step
    with torch.no_grad():
        streamed = run_stream(step, frames[0], StreamingTSM(model).initial_buffers(32, 32)).outputs
        offline = rebuild(model, num_segments=4).frame_logits(frames)[0]
    assert (streamed - offline).abs().max() < TOL


# ---------------------------------------------------------------------------------------------
# --overwrite: only the files a conversion writes, never a folder holding an input


@pytest.fixture
def fast_onnx(converted, monkeypatch):
    """The verified ONNX file of the same checkpoint stands in for a fresh (slow) export."""
    _, good = converted
    monkeypatch.setattr(
        export, "export_onnx", lambda *args: shutil.copyfile(good.out_dir / "online.onnx", args[3])
    )


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_touches_a_folder_that_holds_an_input(converted, tmp_path, monkeypatch):
    """The reported data loss: --out the run dir of the checkpoint, with --overwrite."""
    run = tmp_path / "runs" / "x"
    checkpoint = write_checkpoint(run / "best.pt", "unidirectional")
    (run / "classes.txt").write_text("wave\nclap\njump\n")
    (run / "val.txt").write_text("v.mp4 4 0\n")
    before = _snapshot(tmp_path)
    cases = [
        ([], run),
        (["--val-list", str(run / "val.txt"), "--root", str(tmp_path)], run),
        (["--val-list", str(tmp_path / "v.txt"), "--root", str(run)], run),
        ([], tmp_path / "runs"),
    ]
    for extra, out in cases:
        result = CliRunner().invoke(
            cli,
            [
                "convert-online",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--overwrite",
                *extra,
            ],
        )
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"error: --out {out}: holds ") and "an input of this command" in line
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing written
    monkeypatch.chdir(run)  # the current folder, or one above it, is never a model dir
    for out in (".", "..", str(run)):
        for flags in ([], ["--overwrite"]):
            with pytest.raises(UsageError, match=r"is the current folder or holds it"):
                convert_online(checkpoint, out, **FAST, overwrite=bool(flags))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"--out .*file: is a file, not a folder"):
        convert_online(checkpoint, tmp_path / "file", **FAST)
    assert _snapshot(tmp_path) == {**before, Path("file"): b"x"}


def test_overwrite_replaces_only_the_files_a_conversion_writes(converted, fast_onnx, tmp_path):
    checkpoint, _ = converted
    out = tmp_path / "online"
    convert_online(checkpoint, out, **FAST)
    (out / "notes.txt").write_text("mine")
    (out / "finetune").mkdir()  # as left by an earlier conversion with --finetune-epochs
    (out / "finetune" / "last.pt").write_bytes(b"old")
    for name in ("report.json", "online.pt", "online_weights.pt", "classes.txt"):
        (out / name).write_text("stale")
    with pytest.raises(UsageError, match="not empty"):
        convert_online(checkpoint, out, **FAST)
    convert_online(checkpoint, out, overwrite=True, **FAST)
    assert sorted(p.name for p in out.iterdir()) == [  # finetune/ was not produced: removed
        "classes.txt",
        "notes.txt",
        "online.onnx",
        "online.pt",
        "online_weights.pt",
        "report.json",
    ]
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept
    assert json.loads((out / "report.json").read_text())["height"] == SIZE  # ours: replaced
    assert (out / "classes.txt").read_text().split() == CLASSES
    assert load_online_model(out).step.num_buffers == 8
    assert load_online_model(out, trust_torchscript=True).step is not None
    assert [p.name for p in tmp_path.iterdir()] == ["online"]  # no staging dir left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert_online(checkpoint, empty, **FAST).out_dir == empty  # an empty dir is fine


def test_streaming_model_rebuilt_from_the_weights_file_equals_the_exports(converted):
    """online_weights.pt holds a plain checkpoint of the one-way model: loading it runs no
    code, and the rebuilt streaming model computes what online.pt computes."""
    _, result = converted
    weights = result.out_dir / "online_weights.pt"
    saved = torch.load(weights, weights_only=True)
    assert saved["format"] == "tsmcli" and saved["classes"] == CLASSES
    assert saved["model_config"]["shift"] == "unidirectional"
    rebuilt = model_dir.load_streaming_model(weights)
    scripted = load_online_model(result.out_dir, trust_torchscript=True).step
    frames = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    buffers = rebuilt.initial_buffers(SIZE, SIZE)
    with torch.no_grad():
        mine, my_state = run_stream(rebuilt, frames, buffers)
        theirs, their_state = run_stream(scripted, frames, buffers)
    assert (mine - theirs).abs().max() < 1e-5
    for a, b in zip(my_state, their_state, strict=True):
        assert (a - b).abs().max() < 1e-5
    assert (mine[1:] - mine[:-1]).abs().max() > 100 * TOL  # frames differ
