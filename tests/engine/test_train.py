"""Training runs on tiny real videos: exact resume, Ctrl-C, run dir contents, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tsmcli.data.dataset as dataset_module
import tsmcli.engine.train as train_module
from tsmcli.cli import cli
from tsmcli.engine.train import train
from tsmcli.errors import DataError, TrainingError
from tsmcli.recipe import Recipe, apply_overrides, load_recipe

CLASSES = ["dark", "bright"]


def _write_split(root: Path, make_video, name: str, labels: list[int], seed: int) -> Path:
    lines = []
    for i, label in enumerate(labels):
        rel = f"{CLASSES[label]}/{name}_{i}.mp4"
        make_video(root / rel, num_frames=8 + 2 * i, size=32, seed=seed + i)
        lines.append(f"{rel} {8 + 2 * i} {label}\n")
    path = root / f"{name}.txt"
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second one only contends (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """6 train and 3 val 32x32 videos of 2 classes, with classes.txt (built once a module)."""
    from conftest import write_video

    root = tmp_path_factory.mktemp("tiny")
    _write_split(root, write_video, "train", [0, 1, 0, 1, 0, 1], seed=0)
    _write_split(root, write_video, "val", [0, 1, 1], seed=100)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root


def tiny_recipe(root: Path, *overrides: str) -> Recipe:
    """The demo recipe shrunk to seconds on the CPU: ResNet-18, 2 segments, 32 px, batch 2."""
    base = load_recipe(
        "demo",
        [
            f"data.root={root}",
            f"data.train_list={root / 'train.txt'}",
            f"data.val_list={root / 'val.txt'}",
            "data.source=videos",
            "data.input_size=32",
            "data.scale_size=32",
            "model.num_segments=2",
            "train.batch_size=2",
            "train.workers=0",
            "train.epochs=2",
            "train.device=cpu",
            "train.deterministic=true",
            "optim.warmup_epochs=0.5",
            "optim.optimizer=sgd",  # momentum buffers are part of what resume must restore
            "model.dropout=0.2",  # so the dropout RNG stream must be restored too
            "optim.lr=0.05",
            "optim.schedule=step",
            "optim.lr_steps=[1]",  # (cosine depends on train.epochs, so 1 epoch + resume to 2 would differ)
        ],
    )
    return apply_overrides(base, overrides)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """2 epochs in one go: the reference the resumed runs must match bit for bit."""
    return train(tiny_recipe(tiny_data), out_dir=tmp_path_factory.mktemp("runs") / "straight")


def test_resume_after_an_epoch_gives_identical_weights(tiny_data, straight_run, tmp_path):
    run = tmp_path / "resumed"
    first = train(tiny_recipe(tiny_data, "train.epochs=1"), out_dir=run)
    assert first.epochs == 1 and torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    second = train(tiny_recipe(tiny_data), out_dir=run, resume=True)
    assert second.epochs == 2
    _assert_identical(_weights(straight_run.last_checkpoint), _weights(run / "last.pt"))
    straight_opt = torch.load(straight_run.last_checkpoint, weights_only=True)["optimizer"]["state"]
    resumed_opt = torch.load(run / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(
        torch.equal(straight_opt[k]["momentum_buffer"], resumed_opt[k]["momentum_buffer"])
        for k in straight_opt
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_run.history]


def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_exactly(
    tiny_data, straight_run, tmp_path, monkeypatch
):
    calls = {"n": 0}
    collate = dataset_module.collate_clips

    def interrupting_collate(samples):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 1: train batches 1-3, val batches 4-5; epoch 2: train 6-8
            os.kill(os.getpid(), signal.SIGINT)
        return collate(samples)

    monkeypatch.setattr(dataset_module, "collate_clips", interrupting_collate)
    run = tmp_path / "interrupted"
    recipe = tiny_recipe(tiny_data)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out_dir=run)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # interrupted in epoch 2 ...
    assert state["iteration"] == 1  # ... after its first step: resumes at the second
    monkeypatch.setattr(dataset_module, "collate_clips", collate)
    resumed = train(recipe, out_dir=run, resume=True)
    assert resumed.epochs == 2
    _assert_identical(_weights(straight_run.last_checkpoint), _weights(run / "last.pt"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_run_dir_contents_and_checkpoint_layout(tiny_data, straight_run):
    from tsmcli.model.tsn import build_model

    run = straight_run.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "curves.png",
        "last.pt",
        "metrics.jsonl",
        "recipe.yaml",
    ]
    assert load_recipe(run / "recipe.yaml") == tiny_recipe(tiny_data)
    state = torch.load(run / "last.pt", weights_only=True)  # plain tensors and builtins only
    assert state["format"] == "tsmcli" and state["format_version"] == 1
    assert state["recipe"] == tiny_recipe(tiny_data).to_dict()
    assert state["classes"] == CLASSES and state["epoch"] == 2 and state["iteration"] == 0
    assert {"optimizer", "scaler", "rng", "best_top1", "history", "model_config"} <= state.keys()
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    model = build_model(**state["model_config"])  # the checkpoint rebuilds its model
    model.load_state_dict(state["state_dict"])
    assert state["model_config"]["num_classes"] == len(CLASSES)  # num_classes 0 -> classes.txt
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows == straight_run.history == state["history"]
    for row in rows:
        assert {
            "epoch",
            "loss",
            "lr",
            "top1",
            "top5",
            "clips_per_s",
            "data_wait_share",
            "seconds",
        } <= row.keys()
        assert row["val_videos"] == 3 and row["top1"] in (0.0, 100 / 3, 200 / 3, 100.0)
        assert 0.0 <= row["data_wait_share"] <= 1.0
    assert straight_run.best_top1 == max(r["top1"] for r in rows) == state["best_top1"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["history"][-1]["top1"] == straight_run.best_top1
    # global batch 2 against the recipe's 16: lr 0.05 * 2 / 16, x0.1 after epoch 1
    assert rows[0]["lr"] == pytest.approx(0.05 * 2 / 16) and rows[1]["lr"] == pytest.approx(
        0.05 * 2 / 16 * 0.1
    )
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_run_is_refused_without_resume(tiny_data, straight_run, tmp_path):
    with pytest.raises(TrainingError, match="--resume") as info:
        train(tiny_recipe(tiny_data), out_dir=straight_run.run_dir)
    assert "--out" in str(info.value)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_recipe(tiny_data), out_dir=tmp_path / "empty", resume=True)
    with pytest.raises(TrainingError, match="model.shift"):
        train(tiny_recipe(tiny_data, "model.shift=none"), out_dir=straight_run.run_dir, resume=True)


def test_missing_data_fails_before_training_with_count_and_paths(tiny_data, tmp_path):
    lines = (tiny_data / "train.txt").read_text().splitlines()
    listed = tmp_path / "train.txt"
    listed.write_text("\n".join(lines + [f"gone/v{i}.mp4 8 0" for i in range(4)]) + "\n")
    (tmp_path / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    with pytest.raises(DataError) as info:
        train(tiny_recipe(tiny_data, f"data.train_list={listed}"), out_dir=tmp_path / "run")
    message = str(info.value)
    assert "4 of 10 entries" in message and "gone/v0.mp4, gone/v1.mp4, gone/v2.mp4" in message
    assert "gone/v3.mp4" not in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # nothing was started


def test_label_outside_the_classes_names_list_and_line(tiny_data, tmp_path):
    lines = (tiny_data / "val.txt").read_text().splitlines()
    bad = tmp_path / "val.txt"
    bad.write_text("\n".join([lines[0], "", lines[1], lines[2].rsplit(" ", 1)[0] + " 2"]) + "\n")
    with pytest.raises(DataError, match=rf"{bad}:4: label 2 is outside 0..1"):
        train(tiny_recipe(tiny_data, f"data.val_list={bad}"), out_dir=tmp_path / "run")


def test_skip_bad_drops_corrupt_videos_and_counts_them(tiny_data, tmp_path):
    lines = (tiny_data / "train.txt").read_text().splitlines()[:5]
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 64)
    listed = tmp_path / "train.txt"
    listed.write_text(
        "\n".join(lines + [f"{os.path.relpath(tmp_path / 'broken.mp4', tiny_data)} 8 1"]) + "\n"
    )
    (tmp_path / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    recipe = tiny_recipe(tiny_data, f"data.train_list={listed}", "data.val_list=", "train.epochs=1")
    with pytest.raises(DataError, match="broken.mp4"):
        train(recipe, out_dir=tmp_path / "strict")
    result = train(apply_overrides(recipe, ["data.skip_bad=true"]), out_dir=tmp_path / "lenient")
    assert result.history[0]["skipped"] == 1  # 6 videos, 3 full batches: the bad one is seen once


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_recipe(tiny_data, "train.epochs=1"), out_dir=run)
    before = hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    loss = train_module._loss
    monkeypatch.setattr(
        train_module, "_loss", lambda logits, labels, *rest: loss(logits, labels, *rest) * float("nan")
    )
    with pytest.raises(
        TrainingError, match=r"non-finite loss .* epoch 2 step 1.*last good checkpoint"
    ):
        train(tiny_recipe(tiny_data), out_dir=run, resume=True)
    assert hashlib.sha256((run / "last.pt").read_bytes()).hexdigest() == before


def test_init_from_and_pretrained_load_the_weights(tiny_data, straight_run, tmp_path):
    """A 3-class fine-tune from the 2-class run keeps its body; ImageNet weights reach the backbone."""
    import torchvision

    three = tmp_path / "three"
    three.mkdir()
    (three / "classes.txt").write_text("dark\nbright\nother\n")
    (three / "train.txt").write_text((tiny_data / "train.txt").read_text())
    tiny_lr = [
        "optim.lr=1e-12",
        "train.epochs=1",
        f"data.train_list={three / 'train.txt'}",
        "data.val_list=",
    ]
    tuned = train(
        tiny_recipe(tiny_data, *tiny_lr, f"model.init_from={straight_run.last_checkpoint}"),
        out_dir=tmp_path / "tuned",
    )
    source = _weights(straight_run.last_checkpoint)
    body = [k for k in source if k.startswith("base_model.") and k.endswith("weight")]
    assert body and all(
        torch.allclose(tuned.model.state_dict()[k], source[k], atol=1e-8) for k in body
    )
    assert (
        tuned.model.new_fc.out_features == 3
        and tuned.best_top1 is None
        and tuned.best_checkpoint is None
    )

    torch.manual_seed(123)
    imagenet = torchvision.models.resnet18().state_dict()
    torch.save(imagenet, tmp_path / "resnet18.pth")
    pre = train(
        tiny_recipe(tiny_data, *tiny_lr, f"model.pretrained={tmp_path / 'resnet18.pth'}"),
        out_dir=tmp_path / "pre",
    )
    first_conv = pre.model.base_model.conv1
    assert torch.allclose(
        getattr(first_conv, "net", first_conv).weight, imagenet["conv1.weight"], atol=1e-8
    )


def test_cli_trains_and_prints_a_summary(tiny_data, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_recipe(tiny_data).to_yaml())
    out = tmp_path / "cli_run"
    result = CliRunner().invoke(
        cli, ["train", "--recipe", str(path), "--set", "train.epochs=1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "best top-1" in result.output and str(out) in result.output
    assert (out / "last.pt").is_file()
    again = CliRunner().invoke(cli, ["train", "--recipe", str(path), "--out", str(out)])
    assert again.exit_code == 1
    assert (
        again.output.strip().splitlines()[-1].startswith("error: ") and "--resume" in again.output
    )


def test_distillation_loss_by_hand():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    labels = torch.tensor([0, 3, 1, 4])
    hard = torch.nn.functional.cross_entropy(logits, labels)
    weight, temperature = 0.3, 2.0
    p_teacher = (teacher / temperature).softmax(1)
    kl = (p_teacher * (p_teacher.log() - (logits / temperature).log_softmax(1))).sum(1).mean()
    expected = (1 - weight) * hard + weight * temperature**2 * kl
    got = train_module._loss(logits, labels, teacher, weight, temperature)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(train_module._loss(logits, labels, teacher, 0.0), hard)
    assert torch.equal(train_module._loss(logits, labels), hard)
    same = train_module._loss(logits, labels, logits.clone(), weight, temperature)
    assert torch.allclose(same, (1 - weight) * hard, atol=1e-6)  # KL of a model with itself


def test_distill_weight_one_learns_from_the_teacher_alone(tiny_data, straight_run, tmp_path):
    """With train.distill_weight=1 the labels carry no gradient: training on a list with every
    label flipped gives the same weights. At 0.5 they do (the test can fail)."""
    flipped = tmp_path / "flipped.txt"  # paths relative to data.root; classes.txt beside it
    (tmp_path / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    flipped.write_text("".join(f"{p} {n} {1 - int(y)}\n" for p, n, y in (
        line.split() for line in (tiny_data / "train.txt").read_text().splitlines())))
    teacher = straight_run.last_checkpoint
    distil = [f"train.distill_from={teacher}", "train.distill_temperature=2", "train.epochs=1"]

    def weights(name: str, *overrides: str) -> dict[str, torch.Tensor]:
        run = train(tiny_recipe(tiny_data, *distil, *overrides), out_dir=tmp_path / name)
        return _weights(run.last_checkpoint)

    only_teacher = weights("true", "train.distill_weight=1")
    _assert_identical(only_teacher, weights("flipped", "train.distill_weight=1",
                                            f"data.train_list={flipped}"))
    half = weights("half", "train.distill_weight=0.5", f"data.train_list={flipped}")
    assert any(not torch.equal(only_teacher[k], half[k]) for k in half)


def test_a_teacher_of_another_dataset_is_refused(tiny_data, tmp_path):
    from tsmcli.errors import CheckpointError
    from tsmcli.model.tsn import build_model

    other = build_model("resnet18", num_classes=5, num_segments=2)
    path = tmp_path / "five_classes.pt"
    torch.save({"format": "tsmcli", "format_version": 1, "model_config": other.config(),
                "state_dict": other.state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"five_classes.pt: the teacher .* 5 classes"):
        train(tiny_recipe(tiny_data, f"train.distill_from={path}"), out_dir=tmp_path / "run")
