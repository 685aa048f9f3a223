"""Gradient accumulation (``train.accumulate``): N batches of B step as one batch of N x B,
the lr follows that global batch, a Ctrl-C saves between two steps and resumes exactly."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal

import pytest
import test_train
import torch
from test_train import _assert_identical, _cli_error, _recipe_file, _weights, tiny_recipe
from torch import nn

import tsmcli.data.dataset as dataset_module
import tsmcli.engine.train as train_module
import tsmcli.engine.train_loop as train_loop
from tsmcli.engine import run_checks
from tsmcli.engine.train import train
from tsmcli.errors import RecipeError, TrainingError
from tsmcli.model.tsn import TSN

# test_train's fixtures: one intra-op thread, 6 train and 3 val videos of 2 classes
one_thread, tiny_data = test_train.one_thread, test_train.tiny_data


@pytest.fixture
def frozen_bn(monkeypatch):
    """Every batch norm layer in eval mode while training: no statistics from the batch, so a
    batch's gradient does not depend on how the clips are split into batches."""
    train_mode = TSN.train

    def eval_norms(self, mode=True):
        train_mode(self, mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    monkeypatch.setattr(TSN, "train", eval_norms)


@pytest.fixture
def seen(monkeypatch):
    """The videos of each batch read (their list indices), in order; and how often the
    gradient is clipped."""
    record = {"batches": [], "clips": 0}
    collate = dataset_module.collate_clips
    clip = train_loop.nn.utils.clip_grad_norm_

    def recording_collate(samples):
        record["batches"].append([s.index for s in samples])
        return collate(samples)

    def recording_clip(*args, **kwargs):
        record["clips"] += 1
        return clip(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "collate_clips", recording_collate)
    monkeypatch.setattr(train_loop.nn.utils, "clip_grad_norm_", recording_clip)
    return record


@pytest.mark.parametrize(
    ("batch", "accumulate", "steps", "clip"),
    [
        (3, 2, 1, 0.0),  # the 6 videos in one step
        (2, 2, 1, 0.0),  # 3 batches: the third cannot fill a step and is not trained on
        (1, 3, 2, 0.0),  # two steps: momentum and the lr carry over as with batch 3
        (3, 2, 1, 0.5),  # a clip that binds, on the accumulated gradient
    ],
)
def test_accumulated_batches_step_as_one_batch_as_large(
    tiny_data, tmp_path, frozen_bn, seen, batch, accumulate, steps, clip
):
    """With batch norm frozen and no dropout, N batches of B give the weights one batch of
    N x B gives, on the same videos in the same order, at the same lr; the gradient is
    clipped once a step, on the accumulated gradient."""
    common = ("data.val_list=", "train.epochs=1", "model.dropout=0", "optim.warmup_epochs=0")
    common += ("optim.lr=0.5", f"optim.clip_grad={clip}")
    runs = {}
    for b, n in ((batch, accumulate), (batch * accumulate, 1)):
        seen["batches"], seen["clips"] = [], 0
        plan = []
        recipe = tiny_recipe(tiny_data, *common, f"train.batch_size={b}", f"train.accumulate={n}")
        result = train(recipe, out_dir=tmp_path / f"n{n}", on_epoch=plan.append)
        videos = [i for read in seen["batches"] for i in read]
        runs[n] = (result, videos, seen["clips"], plan[0]["steps_per_epoch"])
    split, whole = runs[accumulate], runs[1]
    assert split[3] == whole[3] == steps
    assert split[2] == whole[2] == (steps if clip else 0)  # clipped once a step
    assert split[1] == whole[1] and len(split[1]) == steps * batch * accumulate
    a, b = _weights(split[0].last_checkpoint), _weights(whole[0].last_checkpoint)
    start = _initial_weights(recipe)
    assert max((a[k].float() - start[k].float()).abs().max() for k in a) > 1e-3  # it moved
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    lr = 0.5 * batch * accumulate / 16  # the demo's lr is for a global batch of 16
    assert split[0].history[0]["lr"] == whole[0].history[0]["lr"] == pytest.approx(lr)
    assert split[0].history[0]["loss"] == pytest.approx(whole[0].history[0]["loss"], rel=1e-5)
    saved = torch.load(split[0].last_checkpoint, weights_only=True)
    assert saved["global_batch"] == batch * accumulate


def _initial_weights(recipe) -> dict[str, torch.Tensor]:
    """The weights a run of ``recipe`` starts from (``train_setup.build_run_model``'s)."""
    from tsmcli.engine.state import seed_everything

    seed_everything(recipe.train.seed)
    return TSN(recipe.model.spec(2)).state_dict()


@pytest.fixture(scope="module")
def accumulated_run(tiny_data, tmp_path_factory):
    """2 epochs of batch 1 x 2 accumulated in one go (3 steps an epoch, dropout on): the
    reference a resumed run must match bit for bit."""
    recipe = tiny_recipe(tiny_data, "data.val_list=", "train.batch_size=1", "train.accumulate=2")
    return train(recipe, out_dir=tmp_path_factory.mktemp("runs") / "straight")


@pytest.mark.parametrize(("signal_at", "saved_at"), [(9, (1, 2)), (4, (0, 2))])
def test_ctrl_c_saves_between_two_steps_and_resumes_exactly(
    tiny_data, accumulated_run, tmp_path, monkeypatch, signal_at, saved_at
):
    """A Ctrl-C while a step's batches are read (batch 9: the first of epoch 2's second step;
    batch 4: the second of epoch 1's second step) finishes that step and saves after it; the
    resumed run reads the rest and ends with the straight run's weights and losses."""
    calls = {"n": 0}
    collate = dataset_module.collate_clips

    def interrupting_collate(samples):
        calls["n"] += 1
        if calls["n"] == signal_at:
            os.kill(os.getpid(), signal.SIGINT)
        return collate(samples)

    monkeypatch.setattr(dataset_module, "collate_clips", interrupting_collate)
    run = tmp_path / "interrupted"
    recipe = tiny_recipe(tiny_data, "data.val_list=", "train.batch_size=1", "train.accumulate=2")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out_dir=run)
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["iteration"]) == saved_at and calls["n"] == 2 * sum(
        (saved_at[0] * 3, saved_at[1])
    )  # every batch read went into a step that was taken and saved
    monkeypatch.setattr(dataset_module, "collate_clips", collate)
    resumed = train(recipe, out_dir=run, resume=True)
    assert resumed.epochs == 2
    _assert_identical(_weights(accumulated_run.last_checkpoint), _weights(run / "last.pt"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in accumulated_run.history]


def test_the_lr_follows_the_global_batch_with_the_accumulated_batches(
    tiny_data, accumulated_run, caplog
):
    """Batch 1 x 1 process x 2 accumulated: global batch 2, so lr 0.05 x 2 / 16 (not x 1 /
    16); the run's log line, its checkpoint and tsm doctor's note all say so."""
    state = torch.load(accumulated_run.last_checkpoint, weights_only=True)
    assert state["global_batch"] == 2
    lr = 0.05 * 2 / 16
    assert accumulated_run.history[0]["lr"] == pytest.approx(lr)  # x0.1 after epoch 1
    assert accumulated_run.history[1]["lr"] == pytest.approx(lr * 0.1)
    recipe = tiny_recipe(tiny_data, "train.batch_size=2", "train.accumulate=3")
    (note,) = run_checks.learning_rate(recipe, processes=2)
    assert note.message == (
        "optim.lr 0.05 is for a global batch of 16 (optim.reference_batch_size); this run's is "
        "2 a process x 2 process(es) x 3 accumulated (train.accumulate) = 12, so it trains at "
        "lr 0.0375 (scaled linearly)"
    )
    from tsmcli.engine.distributed import DistContext
    from tsmcli.engine.train_setup import build_optimisation

    data = type("Data", (), {"global_batch": 12, "epochs": 2, "iters_per_epoch": 3})()
    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="tsmcli.engine.train_setup"):
        optim = build_optimisation(recipe, TSN(recipe.model.spec(2)), data, ctx)
    assert optim.optimizer.defaults["lr"] == pytest.approx(0.0375)
    assert (
        "lr 0.0375 (0.05 for batch 16, global batch 12 = 2 x 2 processes x 3 accumulated)"
        in caplog.text
    )


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("0", "must be at least 1, got 0"),
        ("-2", "must be at least 1, got -2"),
        ("1.5", "must be an integer, got 1.5"),
        ("two", "must be an integer, got 'two'"),
        ("true", "must be an integer, got True"),
    ],
)
def test_a_bad_accumulate_is_one_line_naming_the_key(tiny_data, value, what):
    with pytest.raises(RecipeError) as info:
        tiny_recipe(tiny_data, f"train.accumulate={value}")
    assert str(info.value) == f"--set train.accumulate={value}: train.accumulate {what}"


def test_a_list_too_short_for_one_step_names_accumulate(tiny_data, tmp_path):
    """6 videos make no step of 4 x 2 batches: one line, before any training, from the CLI
    too."""
    recipe = tiny_recipe(tiny_data, "train.batch_size=4", "train.accumulate=2")
    out = str(tmp_path / "cli")
    message = _cli_error(["train", "--recipe", _recipe_file(tmp_path, recipe), "--out", out])
    assert message == (
        f"{tiny_data / 'train.txt'}: 6 videos make no full batch of 4 x 1 process(es) x 2 "
        "accumulated; lower train.batch_size or train.accumulate"
    )
    with pytest.raises(TrainingError, match="lower train.batch_size or train.accumulate"):
        train(recipe, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cli").exists()


def test_only_the_last_batch_of_a_step_all_reduces(tiny_data, tmp_path, monkeypatch):
    """Under DistributedDataParallel (a stand-in here with its ``no_sync``) every batch of a
    step but the last runs its forward and backward inside ``no_sync``, so the gradients are
    all-reduced once a step; validation runs the unwrapped model."""
    synced = []

    class Wrapped(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.module, self.local = model, False

        @contextlib.contextmanager
        def no_sync(self):
            self.local = True
            try:
                yield
            finally:
                self.local = False

        def forward(self, clips):
            synced.append(not self.local)
            return self.module(clips)

    build = train_module.build_run_model

    def wrapping_build(*args, **kwargs):
        parts = build(*args, **kwargs)
        parts.net = Wrapped(parts.model)
        return parts

    monkeypatch.setattr(train_module, "build_run_model", wrapping_build)
    recipe = tiny_recipe(tiny_data, "train.epochs=1", "train.batch_size=1", "train.accumulate=3")
    train(recipe, out_dir=tmp_path / "run")
    assert synced == [False, False, True] * 2  # 6 batches, 2 steps of 3


@pytest.mark.distributed
def test_two_gloo_processes_accumulate_in_step(tmp_path):
    """2 processes x batch 1 x 2 accumulated under torchrun (DistributedDataParallel with
    ``no_sync``): the ranks end with the same weights, the run's global batch is 4 and its
    lr is scaled to it."""
    from conftest import write_video
    from test_distributed_train import _torchrun
    from test_train import _write_split

    root = tmp_path / "data"
    _write_split(root, write_video, "train", [0, 1, 0, 1, 0, 1, 0, 1], seed=0)
    (root / "classes.txt").write_text("dark\nbright\n")
    recipe = tiny_recipe(
        root,
        "data.val_list=",
        "train.epochs=1",
        "train.deterministic=false",
        "train.batch_size=1",
        "train.accumulate=2",
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(recipe.to_yaml())
    returncode, output = _torchrun(path, tmp_path, tmp_path / "report")
    assert returncode == 0, output[-3000:]
    report = {r: json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in range(2)}
    assert report[0]["a"] == report[1]["a"] == report[0]["b"]  # in step, and reproducible
    state = torch.load(tmp_path / "run_a" / "last.pt", weights_only=True)
    assert state["global_batch"] == 4 and state["world_size"] == 2
    assert state["history"][0]["lr"] == pytest.approx(recipe.optim.lr * 4 / 16)
