"""tsm doctor on datasets with planted problems: each one named with its file, exit 1; a clean
dataset: nothing above a note, exit 0; and the same lines as tsm train says."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.io import encode_jpeg

import tsmcli.engine.run_checks as run_checks
from tsmcli.cli import cli
from tsmcli.data.synth import first_classes, synth
from tsmcli.engine.doctor import doctor
from tsmcli.errors import DataError, RecipeError
from tsmcli.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["pushing", "swiping_left", "waving"]


def _write_audio(path: Path) -> Path:
    """An audio-only .mp4 (no video stream)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for _ in range(3):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _recipe(root: Path, *overrides: str):
    """The demo recipe on ``root``'s lists: 4 segments, 32 px, batch 2, on the CPU."""
    return load_recipe(
        "demo",
        [
            f"data.root={root}",
            f"data.train_list={root / 'train.txt'}",
            f"data.val_list={root / 'val.txt'}",
            "data.source=videos",
            "data.input_size=32",
            "data.scale_size=48",
            "data.flip=off",
            "model.num_segments=4",
            "train.batch_size=16",
            "train.workers=0",
            f"train.out_dir={root / 'runs'}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory, make_video_module):
    """Videos with one planted problem each, and lists with theirs.

    train.txt: 11 'pushing' videos and 1 'swiping_left' (imbalanced 11:1, 'waving' has none),
    one of them listed twice, one with 20 frames listed where 16 are, a 3-frame video (fewer
    than the 4 segments), a 16x16 one (under half of data.scale_size 48), a corrupt file, an
    audio-only file, a missing file and a label out of range. val.txt: a 'pushing' video
    that is also in train ('swiping_left' has no val video)."""
    root = tmp_path_factory.mktemp("planted")
    write = make_video_module
    train = []
    for i in range(11):
        write(root / f"pushing/v{i}.mp4", num_frames=16, size=32, seed=i)
        train.append(f"pushing/v{i}.mp4 {20 if i == 2 else 16} 0")
    write(root / "swiping_left/s0.mp4", num_frames=16, size=32, seed=20)
    write(root / "swiping_left/short.mp4", num_frames=3, size=32, seed=21)
    write(root / "swiping_left/tiny.mp4", num_frames=16, size=16, seed=22)
    (root / "swiping_left/corrupt.mp4").write_bytes(b"\x00\x01not a video" * 64)
    _write_audio(root / "swiping_left/audio.mp4")
    train += [
        "swiping_left/s0.mp4 16 1",
        "pushing/v0.mp4 16 0",  # listed again
        "swiping_left/short.mp4 3 0",
        "swiping_left/tiny.mp4 16 0",
        "swiping_left/corrupt.mp4 16 0",
        "swiping_left/audio.mp4 16 0",
        "swiping_left/gone.mp4 16 0",
        "pushing/v1.mp4 16 7",  # label out of range (and listed twice with two labels)
    ]
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("pushing/v3.mp4 16 0\n")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root


@pytest.fixture(scope="module")
def make_video_module():
    from conftest import write_video

    return write_video


def _by_check(result) -> dict[str, list]:
    found: dict[str, list] = {}
    for finding in result.findings:
        found.setdefault(finding.check, []).append(finding)
    return found


def test_every_planted_problem_is_named_with_its_file(planted, monkeypatch):
    root = planted
    monkeypatch.setattr(run_checks, "available_cores", lambda: 2)
    recipe = _recipe(
        root,
        "data.flip=on",
        "train.workers=3",
        "train.batch_size=2",
        f"model.init_from={_dummy_checkpoint(root)}",
    )
    result = doctor(recipe, workers=2, processes=1)
    found = _by_check(result)
    train, val = root / "train.txt", root / "val.txt"

    def only(check: str):
        assert len(found[check]) == 1, found[check]
        return found[check][0]

    # the rules train enforces, as findings, naming the list file
    assert only("list.labels").line == (
        f"{train}:19: label 7 is outside 0..2 (the model has 3 classes); "
        "fix the list or model.num_classes"
    )
    missing = only("list.missing")
    assert missing.file == str(train) and missing.severity == "error"
    assert missing.message.startswith(f"{root / 'swiping_left/gone.mp4'}: no such video")
    # the list's own findings
    assert [f.message for f in found["list.duplicates"]] == [
        f"{train}:13: pushing/v0.mp4 is listed again (first at line 1)"
    ]
    assert [f.message for f in found["list.conflicting_labels"]] == [
        f"{train}:19: pushing/v1.mp4 is labelled 7 here and 0 at line 2"
    ]
    assert only("list.overlap").message == (f"{val}:1: pushing/v3.mp4 is also in {train} (line 4)")
    assert only("list.imbalance").message == (
        f"{train}: the largest class ('pushing', 17 videos) has 17.0x the videos of the "
        "smallest ('swiping_left', 1), over 10:1"
    )
    assert "data.sampler=balanced" in only("list.imbalance").fix
    assert only("list.empty_classes").message == (
        f"{train}: 1 of the 3 classes have no video ('waving')"
    )
    assert only("list.val_classes").message == (
        f"{val}: 1 of the 2 classes of {train} have no video here ('swiping_left')"
    )
    # the recipe against the lists and the machine
    flip = only("recipe.flip")
    assert flip.severity == "error" and flip.file == str(root / "classes.txt")
    assert "('swiping_left')" in flip.message and flip.fix.startswith("set data.flip=off")
    assert only("recipe.segments").message == (
        f"{train}: 1 of 19 videos have fewer frames than model.num_segments (4); the shortest "
        "is swiping_left/short.mp4 (3 frames, line 14)"
    )
    assert only("recipe.batch_norm").severity == "warning"
    assert only("recipe.workers").message == (
        "train.workers 3: 1 training process(es) with 3 loader workers each make 4 processes "
        "on 2 cores"
    )
    assert only("recipe.lr").severity == "note"
    # each file, decoded
    files = {check: {f.file for f in found[check]} for check in found}
    assert files["data.frame_count"] == {str(root / "pushing/v2.mp4")}
    assert only("data.frame_count").line == (
        f"{root / 'pushing/v2.mp4'}: 16 frames on disk, but {train}:3 says 20; rebuild the "
        "list with tsm build-list (a clip would ask for frames past the end)"
    )
    assert files["data.too_short"] == {str(root / "swiping_left/short.mp4")}
    assert files["data.small"] == {str(root / "swiping_left/tiny.mp4")}
    assert files["data.unreadable"] == {str(root / "swiping_left/corrupt.mp4")}
    assert only("data.no_video_stream").line == (
        f"{root / 'swiping_left/audio.mp4'}: has no video stream (audio only?); give a video"
    )
    assert only("data.summary").severity == "note"
    assert result.exit_code() == 1
    assert result.decoded == 14  # 16 files listed, one missing, one corrupt, one audio


def _dummy_checkpoint(root: Path) -> Path:
    """A file for model.init_from: the recipe's checks only look for it."""
    path = root / "init.pt"
    path.write_bytes(b"weights")
    return path


def test_decoder_and_disk_space_problems(planted, monkeypatch):
    real_import = run_checks.importlib.import_module

    def no_decord(name: str):
        if name == "decord":
            raise ImportError("No module named 'decord'")
        return real_import(name)

    monkeypatch.setattr(run_checks.importlib, "import_module", no_decord)
    monkeypatch.setattr(
        run_checks.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(9, 9, 1)
    )
    result = doctor(_recipe(planted), decode=False)
    found = _by_check(result)
    (decoder,) = found["recipe.decoder"]
    assert decoder.line == (
        "data.backend decord: the decord package does not import (No module named 'decord'); "
        "install it (pip install decord2) or set data.backend=pyav"
    )
    (disk,) = found["recipe.disk"]
    assert disk.severity == "error" and disk.file == str(planted / "runs" / "demo")
    assert disk.message.startswith(f"{planted / 'runs' / 'demo'}: 1 B free on its disk")
    assert not any(check.startswith("data.") for check in found)  # --no-decode


def test_frame_folders_with_planted_problems(tmp_path):
    """Frame 0 under a 1-based template, a gap, a stray file, more and fewer frames than
    listed, a corrupt JPEG: each named with its folder."""
    jpeg = encode_jpeg(torch.full((3, 16, 16), 90, dtype=torch.uint8)).numpy().tobytes()
    layouts = {
        "ok": range(1, 9),
        "zero": range(0, 8),
        "gap": [1, 2, 3, 5, 6, 7, 8],
        "extra": range(1, 9),
        "more": range(1, 11),
        "fewer": range(1, 7),
        "bad": range(1, 9),
    }
    for name, numbers in layouts.items():
        (tmp_path / name).mkdir()
        for k in numbers:
            (tmp_path / name / f"img_{k:05d}.jpg").write_bytes(jpeg)
    (tmp_path / "extra" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "bad" / "img_00005.jpg").write_bytes(b"not a jpeg")  # the middle frame
    (tmp_path / "list.txt").write_text("".join(f"{name} 8 0\n" for name in layouts))
    result = doctor(lists=[tmp_path / "list.txt"], root=tmp_path, workers=2)
    found = _by_check(result)
    files = {c: sorted(Path(f.file).name for f in found[c] if f.file) for c in found}
    assert files["data.start_index"] == ["zero"]
    assert found["data.start_index"][0].message == (
        f"{tmp_path / 'zero'}: its frames start at img_00000.jpg, but data.frame_template "
        "'img_{:05d}.jpg' counts from img_00001.jpg"
    )
    assert files["data.missing_frames"] == ["gap"]
    assert found["data.missing_frames"][0].message == (
        f"{tmp_path / 'gap'}: 1 of its frames img_00001.jpg to img_00008.jpg are missing "
        "(first: img_00004.jpg)"
    )
    assert files["data.extra_files"] == ["extra"]
    assert files["data.frame_count"] == ["fewer", "more"]
    severities = {Path(f.file).name: f.severity for f in found["data.frame_count"]}
    assert severities == {"more": "warning", "fewer": "error"}
    assert files["data.unreadable"] == ["bad"]
    assert "img_00005.jpg: cannot decode JPEG" in found["data.unreadable"][0].message
    # the presence rule train applies (first and last frame) names the list
    assert found["list.missing"][0].file == str(tmp_path / "list.txt")
    assert "2 of 7 entries are missing (first: zero, fewer)" in found["list.missing"][0].message
    assert result.decoded == 4  # ok, extra, more and fewer (its 6 frames)
    assert result.exit_code() == 1


def test_a_clean_dataset_has_nothing_above_a_note(tmp_path):
    synth(tmp_path / "synth", per_class=4, size=32, num_frames=8, classes=first_classes(4))
    runner = CliRunner()
    built = runner.invoke(
        cli,
        ["build-list", "--dataset", "folder", "--root", str(tmp_path / "synth"),
         "--out", str(tmp_path / "synth"), "--val-fraction", "0.25"],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    result = runner.invoke(
        cli,
        ["doctor", "--recipe", "demo", "--set", f"data.root={tmp_path / 'synth'}",
         "--set", f"data.train_list={tmp_path / 'synth/train.txt'}",
         "--set", f"data.val_list={tmp_path / 'synth/val.txt'}",
         "--set", f"train.out_dir={tmp_path / 'runs'}", "--workers", "2",
         "--json", str(tmp_path / "doctor.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["counts"] == {"error": 0, "warning": 0, "note": 4}
    assert Counter(f["check"] for f in report["findings"]) == Counter(
        ["list.balance", "recipe.lr", "recipe.disk", "data.summary"]
    )
    assert set(report["findings"][0]) == {"severity", "check", "message", "fix", "file"}
    assert result.output.splitlines()[-1].startswith("0 errors, 0 warnings, 4 notes")
    assert report["decoded"] == 16
    # --strict exits 1 on a warning: a video listed twice
    listed = (tmp_path / "synth/train.txt").read_text()
    (tmp_path / "synth/train.txt").write_text(listed + listed.splitlines()[0] + "\n")
    strict = runner.invoke(
        cli,
        ["doctor", "--recipe", "demo", "--set", f"data.root={tmp_path / 'synth'}",
         "--set", f"data.train_list={tmp_path / 'synth/train.txt'}",
         "--set", "data.val_list=null", "--no-decode", "--strict"],
    )  # fmt: skip
    assert strict.exit_code == 1
    assert "warning list.duplicates" in " ".join(strict.output.split())


def test_json_is_never_an_input_and_needs_overwrite(planted, tmp_path):
    runner = CliRunner()
    args = ["doctor", "--list", str(planted / "val.txt"), "--root", str(planted), "--no-decode"]
    clobber = runner.invoke(cli, [*args, "--json", str(planted / "val.txt")])
    assert clobber.exit_code == 2 and "is an input of this command" in clobber.output
    (tmp_path / "r.json").write_text("{}")
    exists = runner.invoke(cli, [*args, "--json", str(tmp_path / "r.json")])
    assert exists.exit_code == 2 and "already exists; pass --overwrite" in exists.output
    both = runner.invoke(cli, [*args, "--recipe", "demo"])
    assert both.exit_code == 2 and "not both" in both.output
    neither = runner.invoke(cli, ["doctor"])
    assert neither.exit_code == 2
    assert neither.output == "error: give a recipe (--recipe) or lists (--list with --root)\n"
    rootless = runner.invoke(cli, ["doctor", "--list", str(planted / "val.txt")])
    assert rootless.exit_code == 2 and "--list needs --root" in rootless.output


def test_remedies_turn_the_imbalance_into_a_note_and_both_at_once_warn(planted):
    found = _by_check(
        doctor(_recipe(planted, "data.sampler=balanced", "train.class_weights=auto"), decode=False)
    )
    assert "list.imbalance" not in found and found["list.balance"][0].severity == "note"
    assert found["recipe.remedies"][0].line == (
        "data.sampler is balanced and train.class_weights auto: the small classes are favoured "
        "twice, once in the draws and once in the loss; keep one of the two"
    )


def test_a_checkpoint_with_the_classes_in_another_order(planted, tmp_path):
    from tsmcli.model.checkpoint import checkpoint_dict
    from tsmcli.model.tsn import build_model
    from tsmcli.model.weights import save_checkpoint

    model = build_model("resnet18_narrow", num_classes=3, num_segments=4)
    path = tmp_path / "swapped.pt"
    save_checkpoint(checkpoint_dict(model, classes=[CLASSES[1], CLASSES[0], CLASSES[2]]), path)
    found = _by_check(doctor(_recipe(planted), checkpoint=path, decode=False))
    (order,) = found["checkpoint.classes"]
    assert order.severity == "error" and order.file == str(planted / "train.txt")
    assert order.line == (
        f"{planted / 'classes.txt'}: lists the classes of {path} in another order, so each "
        "label would be scored against another class's output; rebuild the list in the "
        "checkpoint's order (the order it was trained with)"
    )


def test_train_says_what_doctor_says(planted, tmp_path, caplog):
    """A warning doctor reports is the line train logs; an error doctor reports is the line
    train stops with, before any work."""
    from tsmcli.engine.train import train

    root = tmp_path / "data"
    shutil.copytree(planted / "pushing", root / "pushing")
    (root / "classes.txt").write_text("dark\nbright\n")
    lines = ["pushing/v0.mp4 16 0", "pushing/v1.mp4 16 1", "pushing/v0.mp4 16 0"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("pushing/v1.mp4 16 1\n")
    recipe = _recipe(root, "train.steps=1", "train.batch_size=2", "train.device=cpu")
    (duplicate,) = _by_check(doctor(recipe, decode=False))["list.duplicates"]
    with caplog.at_level(logging.WARNING, logger="tsmcli"):
        train(recipe, out_dir=tmp_path / "run")
    assert duplicate.line in caplog.messages

    (root / "classes.txt").write_text("turn_left\nturn_right\n")
    flipped = _recipe(root, "data.flip=on")
    (flip,) = _by_check(doctor(flipped, decode=False))["recipe.flip"]
    with pytest.raises(RecipeError) as stopped:
        train(flipped, out_dir=tmp_path / "run2")
    assert str(stopped.value) == flip.line
    assert not (tmp_path / "run2").exists()  # stopped before writing anything

    (root / "train.txt").write_text("pushing/v0.mp4 16 0\npushing/v1.mp4 16 5\n")
    (label,) = _by_check(doctor(recipe, decode=False))["list.labels"]
    with pytest.raises(DataError) as stopped:
        train(recipe, out_dir=tmp_path / "run3")
    assert str(stopped.value) == label.line


def test_a_model_zoo_name_is_checked_by_its_entry_without_a_download(
    planted, tmp_path, monkeypatch
):
    monkeypatch.setenv("TSM_HOME", str(tmp_path / "home"))
    found = _by_check(doctor(_recipe(planted), checkpoint="tsm-k400-r50-8f", decode=False))
    (count,) = found["checkpoint.classes"]
    assert count.line.startswith("tsm-k400-r50-8f (")
    assert count.line.endswith(
        f"the model has 400 classes but {planted / 'classes.txt'} lists 3; evaluate on a list "
        "of the dataset the model was trained on"
    )
    assert "checkpoint.read" not in found
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.pth"))


def test_full_decodes_the_frames_between_first_middle_and_last(tmp_path):
    jpeg = encode_jpeg(torch.full((3, 16, 16), 90, dtype=torch.uint8)).numpy().tobytes()
    (tmp_path / "clip").mkdir()
    for k in range(1, 9):
        (tmp_path / "clip" / f"img_{k:05d}.jpg").write_bytes(jpeg)
    (tmp_path / "clip" / "img_00003.jpg").write_bytes(b"not a jpeg")  # neither end nor middle
    (tmp_path / "list.txt").write_text("clip 8 0\n")
    quick = doctor(lists=[tmp_path / "list.txt"], root=tmp_path, workers=1)
    assert quick.exit_code() == 0
    full = doctor(lists=[tmp_path / "list.txt"], root=tmp_path, workers=1, full=True)
    (bad,) = _by_check(full)["data.unreadable"]
    assert bad.file == str(tmp_path / "clip") and "img_00003.jpg: cannot decode JPEG" in bad.line
