"""Training runs on tiny real videos: exact resume, Ctrl-C, run dir contents, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tsmcli.data.dataset as dataset_module
import tsmcli.engine.train as train_module
import tsmcli.engine.train_loop as train_loop
from tsmcli.cli import cli
from tsmcli.engine.train import train
from tsmcli.errors import DataError, RecipeError, TrainingError
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
    """The demo recipe shrunk to seconds on the CPU: 2 segments, 32 px, batch 2, 2 epochs."""
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
            "train.steps=0",  # the demo's length is in steps; these runs count epochs
            "train.save_every=1",
            "train.eval_every=1",
            "data.flip=off",  # no mirror-image pairs among these classes
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


def test_steps_set_the_length_whatever_the_list_size(tiny_data, straight_run, tmp_path):
    """train.steps=5 with 3 steps an epoch is 2 whole epochs (train.epochs unused): the same
    run, weights and schedule as train.epochs=2."""
    from tsmcli.engine.train_setup import planned_epochs

    lengths = [tiny_recipe(tiny_data, f"train.steps={n}").train for n in (1, 3, 4, 6, 7)]
    assert [planned_epochs(t, 3) for t in lengths] == [1, 1, 2, 2, 3]
    assert planned_epochs(tiny_recipe(tiny_data, "train.epochs=4").train, 3) == 4
    recipe = tiny_recipe(tiny_data, "train.steps=5", "train.epochs=9")
    result = train(recipe, out_dir=tmp_path / "r")
    assert result.epochs == 2 and [row["epoch"] for row in result.history] == [1, 2]
    _assert_identical(_weights(result.last_checkpoint), _weights(straight_run.last_checkpoint))
    assert [row["lr"] for row in result.history] == [row["lr"] for row in straight_run.history]


def test_save_every_writes_last_pt_when_due_and_at_the_end(tiny_data, tmp_path, monkeypatch):
    """train.save_every=2 over 3 unvalidated epochs: last.pt after epochs 2 and 3 only (the
    curves with it), each epoch's row still in metrics.jsonl and told to on_epoch, after
    its save when it had one."""
    saved = []
    real_save = train_module.save_checkpoint

    def record(state, path):
        saved.append((Path(path).name, state["epoch"]))
        return real_save(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", record)
    seen = []

    def on_epoch(row):
        seen.append((row["epoch"], row["epochs"], row["steps_per_epoch"], len(saved)))

    recipe = tiny_recipe(tiny_data, "train.epochs=3", "train.save_every=2", "data.val_list=")
    result = train(recipe, out_dir=tmp_path / "r", on_epoch=on_epoch)
    assert saved == [("last.pt", 2), ("last.pt", 3)]
    assert seen == [(1, 3, 3, 0), (2, 3, 3, 1), (3, 3, 3, 2)]
    rows = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in rows] == [1, 2, 3] and result.epochs == 3
    assert (tmp_path / "r" / "curves.png").exists()


def test_ctrl_c_after_an_epoch_not_due_for_a_save_saves_it(
    tiny_data, straight_run, tmp_path, monkeypatch
):
    """A Ctrl-C that lands after the last step of an epoch that train.save_every would not
    save still leaves that epoch's last.pt, and the resumed run ends as the straight one."""
    log_epoch = train_module._log_epoch

    def interrupting_log(epoch, epochs, row):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return log_epoch(epoch, epochs, row)

    monkeypatch.setattr(train_module, "_log_epoch", interrupting_log)
    run = tmp_path / "interrupted"
    recipe = tiny_recipe(tiny_data, "train.save_every=5", "train.eval_every=2")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out_dir=run)
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (1, 0)
    monkeypatch.setattr(train_module, "_log_epoch", log_epoch)
    resumed = train(recipe, out_dir=run, resume=True)
    assert resumed.epochs == 2
    _assert_identical(_weights(straight_run.last_checkpoint), _weights(run / "last.pt"))


def test_existing_run_is_refused_without_resume(tiny_data, straight_run, tmp_path):
    with pytest.raises(TrainingError, match="--resume") as info:
        train(tiny_recipe(tiny_data), out_dir=straight_run.run_dir)
    assert "--out" in str(info.value)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_recipe(tiny_data), out_dir=tmp_path / "empty", resume=True)
    with pytest.raises(TrainingError, match="model.shift"):
        train(tiny_recipe(tiny_data, "model.shift=none"), out_dir=straight_run.run_dir, resume=True)


def test_a_second_run_into_a_run_dir_in_use_is_refused_naming_the_holder(tiny_data, tmp_path):
    """While a run holds its dir, another one (resumed or new) is refused before it writes
    anything; the lock goes with the run, and a run that failed leaves no dir behind."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tsmcli import fileio\n"
            "with fileio.exclusive_lock(sys.argv[1], RuntimeError):\n"
            "    print('held', flush=True); time.sleep(60)\n",
            str(run_dir / ".tsm-train.lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(TrainingError) as info:
            train(tiny_recipe(tiny_data), out_dir=run_dir)
        assert str(info.value) == (
            f"{run_dir}: another tsm train (PID {holder.pid}) is using this run dir; wait for "
            "it to finish, or choose another run dir with --out"
        )
        assert [p.name for p in run_dir.iterdir()] == [".tsm-train.lock"]
    finally:
        holder.kill()  # as kill -9: its lock is taken over by the next run
        holder.wait()
    result = train(tiny_recipe(tiny_data, "train.epochs=1"), out_dir=run_dir)
    assert result.epochs == 1 and not (run_dir / ".tsm-train.lock").exists()
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_recipe(tiny_data), out_dir=tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()


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
    loss = train_loop._loss
    monkeypatch.setattr(
        train_loop,
        "_loss",
        lambda logits, labels, *rest: loss(logits, labels, *rest) * float("nan"),
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
        tiny_recipe(
            tiny_data,
            *tiny_lr,
            "model.arch=resnet18",  # the ImageNet weights are ResNet-18's
            f"model.pretrained={tmp_path / 'resnet18.pth'}",
        ),
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
    got = train_loop._loss(logits, labels, teacher, weight, temperature)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(train_loop._loss(logits, labels, teacher, 0.0), hard)
    assert torch.equal(train_loop._loss(logits, labels), hard)
    same = train_loop._loss(logits, labels, logits.clone(), weight, temperature)
    assert torch.allclose(same, (1 - weight) * hard, atol=1e-6)  # KL of a model with itself


def test_label_smoothing_by_hand():
    """(1 - s) of the target on the label and s spread evenly over all K classes."""
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(4, 5, generator=gen), torch.tensor([0, 3, 1, 4])
    smoothing = 0.2
    target = torch.full((4, 5), smoothing / 5).scatter_add_(
        1, labels[:, None], torch.full((4, 1), 1 - smoothing)
    )
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    got = train_loop._loss(logits, labels, smoothing=smoothing)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, train_loop._loss(logits, labels), atol=1e-3)


def test_distill_weight_one_learns_from_the_teacher_alone(tiny_data, straight_run, tmp_path):
    """With train.distill_weight=1 the labels carry no gradient: training on a list with every
    label flipped gives the same weights. At 0.5 they do (the test can fail)."""
    flipped = tmp_path / "flipped.txt"  # paths relative to data.root; classes.txt beside it
    (tmp_path / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    flipped.write_text(
        "".join(
            f"{p} {n} {1 - int(y)}\n"
            for p, n, y in (
                line.split() for line in (tiny_data / "train.txt").read_text().splitlines()
            )
        )
    )
    teacher = straight_run.last_checkpoint
    distil = [f"train.distill_from={teacher}", "train.distill_temperature=2", "train.epochs=1"]

    def weights(name: str, *overrides: str) -> dict[str, torch.Tensor]:
        run = train(tiny_recipe(tiny_data, *distil, *overrides), out_dir=tmp_path / name)
        return _weights(run.last_checkpoint)

    only_teacher = weights("true", "train.distill_weight=1")
    _assert_identical(
        only_teacher, weights("flipped", "train.distill_weight=1", f"data.train_list={flipped}")
    )
    half = weights("half", "train.distill_weight=0.5", f"data.train_list={flipped}")
    assert any(not torch.equal(only_teacher[k], half[k]) for k in half)


def test_the_teacher_beside_the_student_trains_the_same_weights(
    tiny_data, straight_run, tmp_path, monkeypatch
):
    """With a core spare, the teacher's forward runs in a second thread during the student's:
    the same weights, bit for bit, as running it after (one intra-op thread either way)."""
    from concurrent.futures import ThreadPoolExecutor

    distil = [f"train.distill_from={straight_run.last_checkpoint}", "train.epochs=1"]
    submitted = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Recording(max_workers=1) as beside:
            monkeypatch.setattr(train_loop, "_spare_thread", lambda: beside)
            monkeypatch.setattr(train_loop.os, "cpu_count", lambda: 2)  # one core spare
            overlapped = train(tiny_recipe(tiny_data, *distil), out_dir=tmp_path / "beside")
            steps = len(submitted)
            monkeypatch.setattr(train_loop.os, "cpu_count", lambda: 1)  # none spare
            after = train(tiny_recipe(tiny_data, *distil), out_dir=tmp_path / "after")
    finally:
        torch.set_num_threads(threads)
    assert steps == 3 and len(submitted) == steps  # 6 videos, batch 2: 3 steps, each beside
    _assert_identical(_weights(overlapped.last_checkpoint), _weights(after.last_checkpoint))


def test_a_teacher_of_another_dataset_is_refused(tiny_data, tmp_path):
    from tsmcli.errors import CheckpointError
    from tsmcli.model.tsn import build_model

    other = build_model("resnet18", num_classes=5, num_segments=2)
    path = tmp_path / "five_classes.pt"
    torch.save(
        {
            "format": "tsmcli",
            "format_version": 1,
            "model_config": other.config(),
            "state_dict": other.state_dict(),
            "epoch": 1,
        },
        path,
    )
    with pytest.raises(CheckpointError, match=r"five_classes.pt: the teacher .* 5 classes"):
        train(tiny_recipe(tiny_data, f"train.distill_from={path}"), out_dir=tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# bad input and faults: one line naming the cause, nothing lost


def _cli_error(args: list[str], code: int = 1) -> str:
    """Run the CLI; it must exit ``code`` printing exactly one line, the error."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    return line[len("error: ") :]


def _recipe_file(tmp_path: Path, recipe: Recipe) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(recipe.to_yaml())
    return str(path)


def _with_broken_video(tiny_data: Path, folder: Path) -> Path:
    """tiny_data's train list with its last video replaced by bytes that are not a video."""
    lines = (tiny_data / "train.txt").read_text().splitlines()[:5]
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 64)
    listed = folder / "train.txt"
    listed.write_text(
        "\n".join(lines + [f"{os.path.relpath(folder / 'broken.mp4', tiny_data)} 8 1"]) + "\n"
    )
    (folder / "classes.txt").write_text((tiny_data / "classes.txt").read_text())
    return listed


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_error_in_a_data_worker_is_the_original_one_line(tiny_data, tmp_path):
    listed = _with_broken_video(tiny_data, tmp_path)
    recipe = tiny_recipe(
        tiny_data,
        f"data.train_list={listed}",
        "data.val_list=",
        "train.epochs=1",
        "train.workers=1",
    )
    message = _cli_error(
        ["train", "--recipe", _recipe_file(tmp_path, recipe), "--out", str(tmp_path / "run")]
    )
    video = tiny_data / os.path.relpath(tmp_path / "broken.mp4", tiny_data)  # as listed
    assert message.startswith(f"{video}: cannot open video (")
    assert "DataLoader worker" not in message and "Traceback" not in message


def test_a_killed_data_worker_is_one_line(tiny_data, tmp_path):
    """A worker killed with SIGKILL (what the out-of-memory killer sends) mid-epoch."""
    import subprocess
    import sys

    recipe = _recipe_file(tmp_path, tiny_recipe(tiny_data, "train.workers=1", "train.epochs=1"))
    script = (
        "import os, signal, sys\n"
        "from torch.utils.data import get_worker_info\n"
        "import tsmcli.data.dataset as dataset\n"
        "load = dataset.VideoClipDataset.__getitem__\n"
        "def dying(self, index):\n"
        "    if get_worker_info() is not None and index == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return load(self, index)\n"
        "dataset.VideoClipDataset.__getitem__ = dying\n"
        "from tsmcli.cli import main\n"
        f"sys.argv = ['tsm', 'train', '--recipe', {recipe!r}, '--out', {str(tmp_path / 'run')!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TSM_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # torch sees the death from its SIGCHLD handler (then it knows the signal) or from a
    # worker gone silent, whichever comes first
    assert re.fullmatch(
        r"error: a data loading worker process died( \(signal: Killed\))?, most "
        r"likely out of memory; lower train\.workers \(or the batch size\) and "
        r"run again",
        done.stderr.strip().splitlines()[-1],
    ), done.stderr


def test_out_dir_that_cannot_be_a_folder_is_refused_before_any_work(tiny_data, tmp_path):
    recipe = _recipe_file(tmp_path, tiny_recipe(tiny_data))
    (tmp_path / "file").write_text("x")
    message = _cli_error(["train", "--recipe", recipe, "--out", str(tmp_path / "file")], code=2)
    assert message == f"--out {tmp_path / 'file'}: is a file, not a folder; choose a folder"
    message = _cli_error(
        ["train", "--recipe", recipe, "--out", str(tmp_path / "file" / "run")], code=2
    )
    assert message == (
        f"--out {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not "
        "a folder; choose another path"
    )
    message = _cli_error(
        ["train", "--recipe", recipe, "--set", f"train.out_dir={tmp_path / 'file'}"]
    )  # from the recipe: exit 1
    assert message.startswith(f"train.out_dir {tmp_path / 'file' / 'demo'}: ")
    assert (tmp_path / "file").read_text() == "x"


def test_unknown_arch_names_the_key_and_the_choices(tiny_data, tmp_path):
    message = _cli_error(
        [
            "train",
            "--recipe",
            _recipe_file(tmp_path, tiny_recipe(tiny_data)),
            "--set",
            "model.arch=resnet9",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert message == (
        "model.arch: unknown arch 'resnet9'; did you mean 'resnet50'? choose one "
        "of mobilenet_v2, resnet101, resnet152, resnet18, resnet18_narrow, resnet34, resnet50"
    )
    assert not (tmp_path / "run").exists()


def test_resume_refuses_what_is_not_this_runs_training_checkpoint(
    tiny_data, straight_run, tmp_path
):
    from tsmcli.model.checkpoint import checkpoint_dict
    from tsmcli.model.weights import save_checkpoint

    recipe = _recipe_file(tmp_path, tiny_recipe(tiny_data, "train.epochs=3"))
    resume = ["train", "--recipe", recipe, "--resume", "--out"]
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    torch.save(_weights(straight_run.last_checkpoint), weights_only / "last.pt")  # a state dict
    assert _cli_error([*resume, str(weights_only)]) == (
        f"{weights_only / 'last.pt'}: not a training checkpoint (it is not a tsmcli checkpoint), "
        "so it cannot be resumed; start a new run with --out (model.init_from=FILE fine-tunes "
        "from a model's weights)"
    )
    model_only = tmp_path / "model_only"
    model_only.mkdir()
    save_checkpoint(checkpoint_dict(straight_run.model), model_only / "last.pt")
    assert "(it has no optimizer, epoch)" in _cli_error([*resume, str(model_only)])

    run = tmp_path / "run"
    run.mkdir()
    for name, data in _files(straight_run.run_dir).items():
        (run / name).write_bytes(data)
    before = _files(run)
    three = tmp_path / "three"
    three.mkdir()
    (three / "classes.txt").write_text("dark\nbright\nother\n")
    (three / "train.txt").write_text((tiny_data / "train.txt").read_text())
    message = _cli_error([*resume, str(run), "--set", f"data.train_list={three / 'train.txt'}"])
    assert message == (
        f"{run / 'last.pt'}: was trained with 2 classes, but "
        f"{three / 'classes.txt'} now gives 3; restore it to resume, or start a "
        "new run with --out"
    )
    assert _files(run) == before  # recipe.yaml, last.pt, metrics.jsonl: as they were


def test_resume_refuses_the_same_classes_in_another_order(tiny_data, straight_run, tmp_path):
    """Same count, other order: each output would go on being trained as another class."""
    recipe = _recipe_file(tmp_path, tiny_recipe(tiny_data, "train.epochs=3"))
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _files(straight_run.run_dir).items():
        (run / name).write_bytes(data)
    before = _files(run)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "classes.txt").write_text("bright\ndark\n")  # trained as dark, bright
    (swapped / "train.txt").write_text((tiny_data / "train.txt").read_text())
    set_list = ["--set", f"data.train_list={swapped / 'train.txt'}"]
    message = _cli_error(["train", "--recipe", recipe, "--resume", "--out", str(run), *set_list])
    assert message == (
        f"{run / 'last.pt'}: was trained with the classes in another order than "
        f"{swapped / 'classes.txt'} now lists them, so each output would be trained as another "
        "class; restore it to resume, or start a new run with --out"
    )
    assert _files(run) == before


def test_flip_swap_without_left_right_pairs_names_the_key_and_the_dataset(tiny_data, tmp_path):
    run = tmp_path / "run"
    kinetics = tiny_recipe(tiny_data, "data.flip=swap", "data.dataset=kinetics400")
    with pytest.raises(RecipeError) as info:
        train(kinetics, out_dir=run)
    assert str(info.value) == (
        "data.flip: swap needs left/right label pairs, and dataset kinetics400 has none (its "
        "manifest's flip_pairs is empty); set data.flip to on (mirror, labels kept) or off, or "
        "data.dataset to a dataset manifest with flip pairs"
    )
    synth = _recipe_file(tmp_path, tiny_recipe(tiny_data, "data.flip=swap", "data.dataset=synth"))
    assert _cli_error(["train", "--recipe", synth, "--out", str(run)]) == (  # exit 1, not 2
        "data.flip: swap needs left/right label pairs, and none of dataset synth's pairs is "
        f"among the classes of {tiny_data / 'classes.txt'}; set data.flip to on (mirror, labels "
        "kept) or off, or data.dataset to a dataset manifest with flip pairs"
    )
    assert not run.exists()  # refused before the run dir is made


def test_recipe_yaml_changes_only_with_a_checkpoint(tiny_data, straight_run, tmp_path):
    """A resume with a changed key that fails before its first save leaves recipe.yaml saying
    what last.pt was trained with; a resume that saves writes both."""
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _files(straight_run.run_dir).items():
        (run / name).write_bytes(data)
    before = _files(run)
    listed = _with_broken_video(tiny_data, tmp_path)
    failing = tiny_recipe(
        tiny_data, "train.epochs=3", "optim.lr=0.01", f"data.train_list={listed}", "data.val_list="
    )
    with pytest.raises(DataError, match="broken.mp4"):
        train(failing, out_dir=run, resume=True)
    assert _files(run) == before
    resumed = tiny_recipe(tiny_data, "train.epochs=3", "optim.lr=0.01")
    train(resumed, out_dir=run, resume=True)
    assert load_recipe(run / "recipe.yaml") == resumed
    assert torch.load(run / "last.pt", weights_only=True)["recipe"] == resumed.to_dict()


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tiny_data, straight_run, tmp_path, monkeypatch
):
    import errno

    run = tmp_path / "run"
    run.mkdir()
    for name, data in _files(straight_run.run_dir).items():
        (run / name).write_bytes(data)
    stale = [run / ".last.pt.0badf00d.tmp", run / ".curves.png.12345678.tmp"]
    kept = [run / ".last.pt.tmp", run / "notes.0badf00d.tmp", run / ".other.pt.0badf00d.tmp"]
    for path in stale + kept:  # what a kill during a save leaves, and files not ours
        path.write_bytes(b"x" * 1000)
    before = _files(run)

    class FullDisk:
        """A file on a disk with 4 KiB left. torch.save itself meets the error (and, as on a
        real full disk, reports it as a RuntimeError of its zip writer)."""

        def __init__(self, handle):
            self.handle, self.left = handle, 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: FullDisk(fdopen(*args, **kwargs)))
    message = _cli_error(
        [
            "train",
            "--recipe",
            _recipe_file(tmp_path, tiny_recipe(tiny_data, "train.epochs=3")),
            "--resume",
            "--out",
            str(run),
        ]
    )
    assert message == (
        f"no space left on {run.resolve()} while writing last.pt; free some space "
        "and run again (the previous last.pt, if any, is unchanged)"
    )
    after = _files(run)
    assert sorted(after) == sorted(
        [p.name for p in kept]
        + [  # the stale temps are gone
            "best.pt",
            "curves.png",
            "last.pt",
            "metrics.jsonl",
            "recipe.yaml",
        ]
    )
    assert {name: after[name] for name in after} == {
        name: before[name] for name in after
    }  # every file left is as it was


def test_run_files_follow_the_umask(tiny_data, tmp_path):
    previous = os.umask(0o027)
    try:
        run = train(tiny_recipe(tiny_data, "train.epochs=1"), out_dir=tmp_path / "run").run_dir
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert modes == dict.fromkeys(
        ["best.pt", "curves.png", "last.pt", "metrics.jsonl", "recipe.yaml"], 0o640
    )
