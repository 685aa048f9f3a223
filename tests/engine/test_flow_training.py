"""A flow model from videos to fused scores, as a user runs it: tsm extract --flow, a list of
the flow folders, training with the checks a run starts with, evaluation and fusion with an
RGB model evaluated on the same videos."""

from __future__ import annotations

import pytest
import torch

import tsmcli
from tsmcli.data.layout import FLOW_X_TEMPLATE
from tsmcli.engine.fuse import fuse
from tsmcli.engine.reports import read_scores
from tsmcli.engine.run_checks import model_numel
from tsmcli.model.checkpoint import read_checkpoint
from tsmcli.model.tsn import TSN

CLASSES = ["moving_left", "moving_right"]
TINY = ["train.steps=2", "train.batch_size=2", "data.frame_cache_mb=0"]


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    """Synthetic videos, their frames and their flow, one list split of each."""
    out = tmp_path_factory.mktemp("two_streams")
    tsmcli.synth(out / "videos", per_class=3, classes=CLASSES, seed=0)
    tsmcli.extract(out / "videos", out / "frames", short_side=0, workers=1)
    tsmcli.extract(out / "videos", out / "flow", short_side=0, workers=1, flow=True)
    tsmcli.build_list("folder", out / "frames", out / "rgb_lists", source="frames", seed=0)
    tsmcli.build_list(
        "folder",
        out / "flow",
        out / "flow_lists",
        source="frames",
        seed=0,
        template=FLOW_X_TEMPLATE,
    )
    return out


def _recipe(out, modality: str):
    lists = out / f"{modality}_lists"
    flow = [
        "model.modality=flow",
        f"data.frame_template={FLOW_X_TEMPLATE}",
        "data.colour_jitter=0",
    ]
    return tsmcli.load_recipe(
        "demo",
        [
            *TINY,
            "data.source=frames",
            f"data.root={out / ('flow' if modality == 'flow' else 'frames')}",
            f"data.train_list={lists / 'train.txt'}",
            f"data.val_list={lists / 'val.txt'}",
            *(flow if modality == "flow" else []),
        ],
    )


def test_the_checks_count_a_flow_models_weights_as_it_is_built():
    flow = [
        "data.source=frames",
        f"data.frame_template={FLOW_X_TEMPLATE}",
        "model.modality=flow",
        "data.colour_jitter=0",
    ]
    recipe = tsmcli.load_recipe("demo", flow)
    built = TSN(recipe.model.spec(8))
    assert built.base_model.conv1.weight.shape[1] == 10
    assert model_numel(recipe, 8) == sum(t.numel() for t in built.state_dict().values())


def test_a_flow_model_trains_evaluates_and_fuses_with_an_rgb_one(two_streams, tmp_path):
    out = two_streams
    evaluations = []
    for modality in ("rgb", "flow"):
        run = tmp_path / modality
        tsmcli.train(_recipe(out, modality), run)
        checkpoint = read_checkpoint(run / "last.pt")
        assert checkpoint.model_config["modality"] == modality
        first = checkpoint.state_dict["base_model.conv1.weight"]
        assert first.shape[1] == (10 if modality == "flow" else 3)
        assert torch.isfinite(first).all()
        lists = out / f"{modality}_lists"
        root = out / ("flow" if modality == "flow" else "frames")
        result = tsmcli.evaluate(
            run / "last.pt", lists / "val.txt", root, out_dir=tmp_path / f"eval_{modality}"
        )
        assert result.num_videos == len(read_scores(tmp_path / f"eval_{modality}").videos)
        evaluations.append(tmp_path / f"eval_{modality}")
    rgb, flow = (read_scores(e) for e in evaluations)
    assert rgb.videos == flow.videos  # one split of the same videos
    fused = fuse(evaluations).result
    assert torch.allclose(fused.scores.double(), (rgb.scores + flow.scores) / 2, atol=1e-6)
