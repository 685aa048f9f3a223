"""Distributed eval: two gloo processes under torchrun give exactly the single-process numbers.

The test starts ``python -m torch.distributed.run --standalone --nproc_per_node 2`` on this
very file; run as a script, each process evaluates and saves its result and the list
positions it scored itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tsmcli.errors import TSMError

NUM_VIDEOS = 5  # not a multiple of the 2 processes
SEGMENTS = 2
SIZE = 32


def _write_data(root: Path) -> Path:
    """Five textured frame folders, a list and classes.txt; returns the list path."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    lines = []
    for i in range(NUM_VIDEOS):
        folder = root / f"v{i}"
        folder.mkdir(parents=True)
        for k in range(1, 7):
            image = torch.randint(0, 256, (SIZE, 40, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(image.numpy()).save(folder / f"img_{k:05d}.jpg", quality=95)
        lines.append(f"v{i} 6 {i % 3}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root / "list.txt"


def _write_checkpoint(path: Path) -> Path:
    from tsmcli.model.tsn import build_model
    from tsmcli.recipe import DataConfig, ModelConfig, Recipe

    torch.manual_seed(0)
    model = build_model(arch="resnet18", num_classes=3, num_segments=SEGMENTS, dropout=0.0)
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=3, num_segments=SEGMENTS),
        data=DataConfig(source="frames", input_size=SIZE, scale_size=SIZE),
    )
    torch.save(
        {
            "format": "tsmcli",
            "format_version": 1,
            "model_config": model.config(),
            "recipe": recipe.to_dict(),
            "classes": ["a", "b", "c"],
            "state_dict": model.state_dict(),
            "epoch": 1,
        },
        path,
    )
    return path


def _evaluate(checkpoint: Path, list_file: Path, out: Path | None = None):
    from tsmcli.engine.evaluate import evaluate

    return evaluate(
        checkpoint,
        list_file,
        list_file.parent,
        views="sthv2",
        batch_size=1,
        workers=0,
        device="cpu",
        json_path=None if out is None else out / "eval.json",
    )


def _torchrun(checkpoint: Path, list_file: Path, out: Path) -> subprocess.CompletedProcess:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(checkpoint),
        str(list_file),
        str(out),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.distributed
def test_two_gloo_processes_score_each_video_once(tmp_path):
    list_file = _write_data(tmp_path / "data")
    checkpoint = _write_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "out"
    done = _torchrun(checkpoint, list_file, out)
    assert done.returncode == 0, done.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the one-thread ranks: bitwise equal scores
    try:
        alone = _evaluate(checkpoint, list_file)
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["shard"] == [0, 2, 4] and ranks[1]["shard"] == [1, 3]  # strided, no padding
    for rank in ranks:
        assert rank["num_videos"] == NUM_VIDEOS
        assert rank["views"] == alone.views == 6
        assert (rank["top1"], rank["top5"]) == (alone.top1, alone.top5)
        assert rank["mean_class_accuracy"] == alone.mean_class_accuracy
        assert torch.equal(rank["scores"], alone.scores)
        assert torch.equal(rank["confusion"], alone.confusion)
        assert int(rank["confusion"].sum()) == NUM_VIDEOS
    assert (out / "eval.json").is_file()


@pytest.mark.distributed
def test_a_bad_video_on_one_rank_fails_every_rank_without_hanging(tmp_path):
    list_file = _write_data(tmp_path / "data")
    # Frame 4 of v1 (rank 1's first video) is sampled by the sthv2 views and is not a JPEG.
    # It passes the up-front check (first and last frames exist) and fails while decoding.
    bad = list_file.parent / "v1" / "img_00004.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    done = _torchrun(_write_checkpoint(tmp_path / "best.pt"), list_file, out)
    assert done.returncode != 0
    messages = [(out / f"rank{r}.error").read_text() for r in range(2)]
    assert messages[0] == messages[1]  # rank 0 got rank 1's error through the gather
    assert messages[0].startswith(f"{bad}: cannot decode JPEG") and "\n" not in messages[0]


def _main(checkpoint: str, list_file: str, out: str) -> None:
    """One torchrun process: evaluate, record the list positions this rank scored."""
    from tsmcli.engine import evaluate as evaluate_module

    shard: list[int] = []
    score_shard = evaluate_module._score_shard

    def recording(*args, **kwargs):
        result = score_shard(*args, **kwargs)
        shard.extend(result.indices.tolist())
        return result

    evaluate_module._score_shard = recording
    try:
        result = _evaluate(Path(checkpoint), Path(list_file), Path(out))
    except TSMError as exc:
        (Path(out) / f"rank{os.environ['RANK']}.error").write_text(str(exc))
        sys.exit(1)
    torch.save(
        {
            "shard": shard,
            "num_videos": result.num_videos,
            "views": result.views,
            "top1": result.top1,
            "top5": result.top5,
            "mean_class_accuracy": result.mean_class_accuracy,
            "scores": result.scores,
            "confusion": result.confusion,
        },
        Path(out) / f"rank{os.environ['RANK']}.pt",
    )


if __name__ == "__main__":
    _main(*sys.argv[1:4])
