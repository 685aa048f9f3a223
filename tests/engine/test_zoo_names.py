"""Model zoo names wherever a checkpoint is taken (issue 12, deliverables 2 and 4): eval,
convert-online and stream, load_model, and the recipe keys model.init_from /
model.pretrained / train.distill_from; and the bad input: an unknown name, a name whose
file is not cached without network, classes that disagree with the list's classes.txt.

No network: $TSM_HOME is in tmp_path, the registry entries used are replaced by tiny models
(ResNet-18, MobileNetV2 at 32 px) whose files the test writes at their cache paths with a
matching hash, and every URL points at a closed loopback port (``zoo_files.use_zoo``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from zoo_files import online_demo_layout, randomize, use_zoo

from tsmcli import zoo
from tsmcli.cli import cli
from tsmcli.engine.evaluate import run_eval
from tsmcli.engine.train import train
from tsmcli.errors import CheckpointError, RecipeError, UsageError
from tsmcli.model.checkpoint import (
    ArchOverrides,
    load_model,
    load_weights_for_finetune,
    read_checkpoint,
)
from tsmcli.model.tsn import build_model
from tsmcli.recipe import load_recipe
from tsmcli.zoo_cache import cache_path

K400 = "tsm-k400-r50-8f"
JESTER = "tsm-jester-mbv2-online"
TYPO = "tsm-k400-r50-9f"
TYPO_LINE = (
    f"error: {TYPO!r} is neither a checkpoint file nor a model zoo name; did you mean "
    "'tsm-k400-r50-8f' or 'tsm-k400-r50-16f' or 'tsn-k400-r50'?"
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three 32 px videos of 8 frames, labels 0 1 2, listed in val.txt (no classes.txt)."""
    from conftest import write_video

    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(root / f"v{i}.mp4", num_frames=8, size=32, seed=i)
    (root / "val.txt").write_text("".join(f"v{i}.mp4 8 {i}\n" for i in range(3)))
    return root


def k400_file() -> dict:
    """A tiny stand-in for tsm-k400-r50-8f in the official layout: ResNet-18, 2 frames, 400
    classes (official ResNet keys are ours, under DataParallel's ``module.``)."""
    torch.manual_seed(0)
    model = randomize(build_model("resnet18", 400, num_segments=2, shift="bidirectional"))
    return {"epoch": 50, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


TINY_K400 = {"arch": "resnet18", "segments": 2}


def tiny_zoo(monkeypatch, tmp_path, **files) -> dict:
    """$TSM_HOME in tmp_path; ``files`` maps a zoo name (``-`` as ``_``) to (changes,
    content or None)."""
    return use_zoo(
        monkeypatch, tmp_path / "home", {k.replace("_", "-"): v for k, v in files.items()}
    )


def cli_line(args: list[str], code: int) -> str:
    """Run the CLI: it must exit ``code`` and print exactly one line, the error."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    (line,) = result.output.strip().splitlines()
    return line


# ---------------------------------------------------------------------------------------------
# eval and load_model


def test_eval_by_name_is_the_file_with_its_flags_and_class_names(tmp_path, monkeypatch, videos):
    entries = tiny_zoo(monkeypatch, tmp_path, tsm_k400_r50_8f=(TINY_K400, k400_file()))
    common = {"source": "videos", "workers": 0, "device": "cpu"}
    by_name = run_eval(videos / "val.txt", videos, checkpoint=K400, **common)
    path = cache_path(entries[K400])
    flags = ArchOverrides(arch="resnet18", num_segments=2, shift="bidirectional")
    by_path = run_eval(videos / "val.txt", videos, checkpoint=path, arch=flags, **common)
    assert torch.equal(by_name.scores, by_path.scores) and by_name.checkpoint == str(path)
    assert by_name.classes == entries[K400].class_names() and len(by_name.classes) == 400
    assert by_path.classes == [str(i) for i in range(400)]  # the file alone has no names
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        cli,
        ["eval", "--checkpoint", K400, "--list", str(videos / "val.txt"), "--root", str(videos)]
        + ["--source", "videos", "--workers", "0", "--device", "cpu", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["top1"] == by_name.top1


def test_load_model_by_name_given_keys_win_within_limits(tmp_path, monkeypatch, caplog):
    entries = tiny_zoo(monkeypatch, tmp_path, tsm_k400_r50_8f=(TINY_K400, k400_file()))
    model = load_model(K400)
    assert model.config() == {
        "arch": "resnet18",
        "num_classes": 400,
        "num_segments": 2,
        "shift": "bidirectional",
        "shift_div": 8,
        "shift_place": "blockres",
        "dropout": 0.5,
        "partial_bn": False,
        "modality": "rgb",
        "new_length": 1,
    }
    with caplog.at_level(logging.WARNING, logger="tsmcli"):
        caplog.clear()
        assert load_model(K400, num_segments=4).num_segments == 4  # a test-time choice
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert load_model(K400, shift="unidirectional").shift == "unidirectional"
    path = cache_path(entries[K400])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"{K400} ({path}): shift='unidirectional' as given, not 'bidirectional' (the model "
        f"zoo's {K400}): the weights were trained otherwise"
    ]
    with pytest.raises(UsageError) as info:
        load_model(K400, arch="resnet50")
    assert str(info.value) == (
        f"{K400} ({path}): is arch='resnet18' (the model zoo's {K400}), so arch='resnet50' "
        "cannot fit its weights; drop the arch option"
    )
    with pytest.raises(CheckpointError, match=rf"^{K400} \(.*\): holds resnet18 weights, the"):
        load_weights_for_finetune(build_model("resnet34", 3, num_segments=2), K400)


def test_an_arch_that_contradicts_a_name_is_refused_before_any_download(tmp_path, monkeypatch):
    """Nothing is cached and there is no network: the arch error comes first, and nothing is
    fetched (a download would fail with 'cannot download')."""
    entries = tiny_zoo(monkeypatch, tmp_path, tsm_k400_r50_8f=(TINY_K400, None))
    expected = (
        f"{K400} ({cache_path(entries[K400])}): is arch='resnet18' (the model zoo's {K400}), "
        "so arch='resnet101' cannot fit its weights; drop the arch option"
    )
    with pytest.raises(UsageError) as info:
        load_model(K400, arch="resnet101")
    assert str(info.value) == expected
    with pytest.raises(UsageError) as info:
        read_checkpoint(K400, ArchOverrides(arch="resnet101", num_segments=8))
    assert str(info.value) == expected
    listed = tmp_path / "val.txt"
    listed.write_text("v.mp4 8 0\n")
    for args in (  # the commands check it before their download too
        ["eval", "--checkpoint", K400, "--arch", "resnet101", "--list", listed, "--root", "."],
        ["predict", "x.mp4", "--checkpoint", K400, "--arch", "resnet101"],
        ["convert-online", "--checkpoint", K400, "--arch", "resnet101", "--out", tmp_path / "o"],
    ):
        assert cli_line(args, 2) == f"error: {expected}"
    assert not (tmp_path / "home").exists()


# ---------------------------------------------------------------------------------------------
# bad input, on every command path


def test_an_unknown_name_is_one_line_with_the_closest_names(tmp_path, videos):
    eval_args = ["eval", "--checkpoint", TYPO, "--list", videos / "val.txt", "--root", videos]
    assert cli_line(eval_args, 2) == TYPO_LINE
    convert_args = ["convert-online", "--checkpoint", TYPO, "--out", tmp_path / "online"]
    assert cli_line(convert_args, 2) == TYPO_LINE
    assert not (tmp_path / "online").exists()
    with pytest.raises(UsageError) as info:
        load_model(TYPO)
    assert f"error: {info.value}" == TYPO_LINE
    # recipe keys: checked when training starts, before any work, naming the key
    train_args = ["train", "--recipe", "demo", "--out", tmp_path / "run", "--set"]
    line = cli_line([*train_args, f"model.init_from={TYPO}"], 1)
    assert line == f"error: model.init_from: {TYPO_LINE[len('error: ') :]}"
    line = cli_line([*train_args, "model.pretrained=imagenet-resnet5"], 1)
    close = zoo.suggest("imagenet-resnet5", list(zoo.shipped_entries()))
    assert close.startswith("did you mean 'imagenet-resnet50'")
    assert line == (
        "error: model.pretrained: 'imagenet-resnet5' is neither a checkpoint file nor a "
        f"model zoo name; {close}"
    )
    assert not (tmp_path / "run").exists()


def _offline_line(entry, home: Path) -> tuple[str, str]:
    """The start and end of the one line a name not cached without network gives."""
    url = entry.urls[0]
    start = f"error: {entry.name}: cannot download {entry.file} ({url}: "
    end = f"without network, put the file at {home / 'checkpoints' / entry.file} (from {url}) and run again"
    return start, end


def test_a_name_not_cached_without_network_says_where_to_put_the_file(
    tmp_path, monkeypatch, videos
):
    entries = tiny_zoo(
        monkeypatch,
        tmp_path,
        tsm_k400_r50_8f=(TINY_K400, None),
        imagenet_resnet50=({"arch": "resnet18"}, None),
    )
    home = tmp_path / "home"
    start, end = _offline_line(entries[K400], home)
    eval_args = ["eval", "--checkpoint", K400, "--list", videos / "val.txt", "--root", videos]
    for args in (eval_args, ["convert-online", "--checkpoint", K400, "--out", tmp_path / "o"]):
        line = cli_line(args, 1)
        assert line.startswith(start) and line.endswith(end), line
    # model.pretrained: the recipe is valid offline; its file is fetched when the model is built
    start, end = _offline_line(entries["imagenet-resnet50"], home)
    line = cli_line(
        ["train", "--recipe", "demo", "--out", tmp_path / "run"]
        + [f"--set={item}" for item in _tiny_run(videos, "model.pretrained=imagenet-resnet50")],
        1,
    )
    assert line.startswith(start) and line.endswith(end), line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_classes_that_disagree_with_the_list_are_the_clear_error(tmp_path, monkeypatch, videos):
    entries = tiny_zoo(monkeypatch, tmp_path, tsm_k400_r50_8f=(TINY_K400, k400_file()))
    path = cache_path(entries[K400])
    listed = tmp_path / "list"
    listed.mkdir()
    (listed / "val.txt").write_text((videos / "val.txt").read_text())
    args = ["eval", "--checkpoint", K400, "--list", listed / "val.txt", "--root", videos]
    args += ["--source", "videos", "--workers", "0", "--device", "cpu"]
    (listed / "classes.txt").write_text("wave\nclap\njump\n")
    assert cli_line(args, 1) == (
        f"error: {path}: the model has 400 classes but {listed / 'classes.txt'} lists 3; "
        "evaluate on a list of the dataset the model was trained on"
    )
    names = entries[K400].class_names()
    (listed / "classes.txt").write_text("".join(f"{n}\n" for n in reversed(names)))
    assert cli_line(args, 1) == (
        f"error: {listed / 'classes.txt'}: lists the classes of {path} in another order, so "
        "each label would be scored against another class's output; rebuild the list in the "
        "checkpoint's order (tsm build-list --dataset kinetics400 --label-order official)"
    )


# ---------------------------------------------------------------------------------------------
# recipe keys


def _tiny_run(videos: Path, *overrides: str) -> list[str]:
    """The demo recipe on the three videos: ResNet-18, 2 frames, 32 px, one short epoch."""
    return [
        "model.arch=resnet18",  # the tests load ResNet-18 ImageNet weights by name
        "train.steps=0",
        "data.flip=off",
        f"data.root={videos}",
        f"data.train_list={videos / 'val.txt'}",
        "data.val_list=",
        "model.num_classes=3",
        "model.num_segments=2",
        "train.batch_size=3",
        "train.workers=0",
        "train.epochs=1",
        "train.device=cpu",
        "optim.lr=1e-12",
        *overrides,
    ]


def test_recipe_keys_take_names(tmp_path, monkeypatch, videos):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18().state_dict()
    official = k400_file()
    tiny_zoo(
        monkeypatch,
        tmp_path,
        tsm_k400_r50_8f=(TINY_K400, official),
        imagenet_resnet50=({"arch": "resnet18"}, imagenet),
    )
    tuned = train(load_recipe("demo", _tiny_run(videos, f"model.init_from={K400}")), tmp_path / "a")
    state = tuned.model.state_dict()
    body = [k for k in state if k.startswith("base_model.") and k.endswith("weight")]
    weights = official["state_dict"]  # at lr 1e-12 a step moves nothing measurable
    assert body and all(torch.allclose(state[k], weights[f"module.{k}"], atol=1e-8) for k in body)
    assert tuned.model.new_fc.out_features == 3  # the 400-class head starts fresh
    run = train(
        load_recipe("demo", _tiny_run(videos, "model.pretrained=imagenet-resnet50")), tmp_path / "b"
    )
    assert torch.allclose(run.model.base_model.conv1.weight, imagenet["conv1.weight"], atol=1e-8)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["model.pretrained=imagenet-resnet50", "model.arch=resnet34"],
            "model.pretrained: imagenet-resnet50 is an ImageNet resnet18 backbone and model.arch "
            "is resnet34; give a torchvision resnet34 state dict",
        ),
        (
            ["model.pretrained=tsm-k400-r50-8f"],
            "model.pretrained: tsm-k400-r50-8f is a video model, not an ImageNet backbone; give "
            "it as model.init_from",
        ),
        (
            ["model.init_from=tsm-k400-r50-8f", "model.arch=resnet34"],
            "model.init_from: tsm-k400-r50-8f holds resnet18 weights and model.arch is resnet34; "
            "set model.arch to resnet18 or initialise from a resnet34 checkpoint",
        ),
        (
            ["train.distill_from=imagenet-resnet50"],
            "train.distill_from: imagenet-resnet50 is an ImageNet backbone without a video head; "
            "a teacher is a video model",
        ),
    ],
)
def test_a_name_that_does_not_fit_the_recipe_is_refused_offline(
    tmp_path, monkeypatch, videos, overrides, expected
):
    """Checked when training starts, before any data or download (nothing is cached)."""
    tiny_zoo(
        monkeypatch,
        tmp_path,
        tsm_k400_r50_8f=(TINY_K400, None),
        imagenet_resnet50=({"arch": "resnet18"}, None),
    )
    with pytest.raises(RecipeError) as info:
        train(load_recipe("demo", _tiny_run(videos, *overrides)), tmp_path / "run")
    assert str(info.value) == expected
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()


# ---------------------------------------------------------------------------------------------
# the official online Jester model, by name, through convert-online and stream


def test_the_jester_online_model_streams_by_name(tmp_path, monkeypatch, videos):
    torch.manual_seed(2)
    model = build_model("mobilenet_v2", 27, num_segments=4, shift="unidirectional")
    entries = tiny_zoo(
        monkeypatch, tmp_path, tsm_jester_mbv2_online=({}, online_demo_layout(randomize(model)))
    )
    out = tmp_path / "jester"
    result = CliRunner().invoke(
        cli,
        ["convert-online", "--checkpoint", JESTER, "--out", str(out)]
        + ["--height", "32", "--width", "32"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    names = entries[JESTER].class_names()
    assert names == sorted(names) and len(names) == 27 and report["classes"] == names
    assert (out / "classes.txt").read_text().splitlines() == names
    assert report["converted_from_bidirectional"] is False
    config = report["model_config"]
    assert (config["arch"], config["shift"], config["shift_div"]) == (
        "mobilenet_v2",
        "unidirectional",
        8,
    )
    assert report["checkpoint"] == str(cache_path(entries[JESTER]))
    streamed = CliRunner().invoke(
        cli, ["stream", str(videos / "v0.mp4"), "--model", str(out), "--topk", "1"]
    )
    assert streamed.exit_code == 0, streamed.output
    lines = streamed.stdout.strip().splitlines()  # stderr: the summary at the end
    assert [line.split()[:2] for line in lines] == [["frame", str(i)] for i in range(8)]
    assert "8 frames scored" in streamed.stderr and "0 dropped (8 decoded)" in streamed.stderr
    labels = [line.split(" ms  ", 1)[1].rsplit(" ", 1)[0] for line in lines]
    assert set(labels) <= set(names)  # every frame's top-1 is a Jester class, by name
