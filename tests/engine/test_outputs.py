"""The files tsm predict, eval and stream write follow one rule (``fileio.check_outputs``):
never one of the command's inputs, never two on one path, an earlier file replaced only with
``--overwrite``. Each case is refused before any work, and the input is left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tsmcli.cli import cli
from tsmcli.engine.convert import convert_online
from tsmcli.model.checkpoint import checkpoint_dict
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two videos with their list, a two-way checkpoint, a converted one-way model dir."""
    from conftest import write_video

    root = tmp_path_factory.mktemp("outputs")
    for i in range(2):
        write_video(root / f"v{i}.mp4", num_frames=8, size=32, seed=i)
    (root / "val.txt").write_text("v0.mp4 8 0\nv1.mp4 8 1\n")
    torch.manual_seed(0)
    paths = {}
    for shift in ("bidirectional", "unidirectional"):
        model = build_model("resnet18", num_classes=2, num_segments=4, shift=shift)
        recipe = Recipe(
            name="tiny",
            model=ModelConfig(arch="resnet18", num_classes=2, num_segments=4, shift=shift),
            data=DataConfig(input_size=32, scale_size=32, source="videos"),
        )
        paths[shift] = root / f"{shift}.pt"
        save_checkpoint(
            checkpoint_dict(model, recipe=recipe.to_dict(), classes=["a", "b"]), paths[shift]
        )
    convert_online(paths["unidirectional"], root / "online", verify_frames=3, latency_reps=1)
    return root, paths["bidirectional"], root / "online"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_an_output_onto_an_input_is_refused_and_the_input_kept(setup):
    root, checkpoint, online = setup
    video, listed = root / "v0.mp4", root / "val.txt"
    kept = {p: p.read_bytes() for p in (video, checkpoint, listed, online / "online_weights.pt")}
    evaluation = ["eval", "--checkpoint", checkpoint, "--list", listed, "--root", root]
    cases = [
        (["predict", video, "--checkpoint", checkpoint, "--json", video], "--json", video),
        (
            ["predict", video, "--checkpoint", checkpoint, "--window", "1", "--plot", video],
            "--plot",
            video,
        ),
        (["predict", root, "--checkpoint", checkpoint, "--csv", video], "--csv", video),
        ([*evaluation, "--json", checkpoint], "--json", checkpoint),
        ([*evaluation, "--json", listed], "--json", listed),
        (["stream", video, "--model", online, "--jsonl", video], "--jsonl", video),
        (
            ["stream", video, "--model", online, "--jsonl", online / "online_weights.pt"],
            "--jsonl",
            online / "online_weights.pt",
        ),
    ]
    for args, option, path in cases:
        result = run(*args, "--overwrite")  # not even with --overwrite
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {option} {path}: is an input of this command")
        assert result.output.rstrip().endswith("so choose another path")
    assert {p: p.read_bytes() for p in kept} == kept


def test_two_outputs_on_one_path_are_refused(setup, tmp_path):
    root, checkpoint, _ = setup
    same = tmp_path / "p.txt"
    result = run(
        "predict", root / "v0.mp4", "--checkpoint", checkpoint, "--json", same, "--csv", same
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: --json {same} and --csv {same}: the same file; give each output its own path"
    )
    assert not same.exists()


def test_an_earlier_evaluation_is_replaced_only_with_overwrite(setup, tmp_path):
    root, checkpoint, _ = setup
    args = ["eval", "--checkpoint", checkpoint, "--list", root / "val.txt", "--root", root]
    out, summary = tmp_path / "eval", tmp_path / "eval.json"
    first = run(*args, "--out", out, "--json", summary)
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {
        "per_class.csv",
        "confusion.csv",
        "confusion.png",
        "predictions.csv",
        "scores.csv",
    }
    again = run(*args, "--out", out)
    assert again.exit_code == 2
    assert again.output.strip() == (
        f"error: --out {out / 'per_class.csv'}: already exists; pass --overwrite to replace it, "
        "or choose another path"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    json_again = run(*args, "--json", summary)
    assert json_again.exit_code == 2 and "already exists" in json_again.output
    replaced = run(*args, "--out", out, "--json", summary, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(summary.read_text())["num_videos"] == 2


def test_a_stream_log_that_exists_needs_overwrite(setup, tmp_path):
    root, _, online = setup
    events = tmp_path / "events.jsonl"
    events.write_text("an earlier run\n")
    refused = run("stream", root / "v0.mp4", "--model", online, "--jsonl", events)
    assert refused.exit_code == 2 and "already exists; pass --overwrite" in refused.output
    assert events.read_text() == "an earlier run\n"
    replaced = run("stream", root / "v0.mp4", "--model", online, "--jsonl", events, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert [json.loads(line)["index"] for line in events.read_text().splitlines()] == list(range(8))
