"""Two gloo processes under torchrun on the CPU: one run dir, equal weights, each video once.

The test starts ``python -m torch.distributed.run --standalone --nproc_per_node 2`` on this
very file; run as a script, each process trains and writes a fingerprint of its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsmcli.engine.distributed import ShardedSampler


def test_sharded_sampler_splits_pads_and_reshuffles():
    shares = [ShardedSampler(7, rank=r, world_size=2, seed=3) for r in range(2)]
    for sampler in shares:
        sampler.set_epoch(0)
    a, b = (list(s) for s in shares)
    assert len(a) == len(b) == 4  # 7 padded to 8: every rank takes the same number of steps
    assert sorted(set(a) | set(b)) == list(range(7))
    alone = ShardedSampler(7, seed=3)
    alone.set_epoch(0)
    order = list(alone)
    assert [x for pair in zip(a, b, strict=True) for x in pair][
        :7
    ] == order  # rank r takes every 2nd
    alone.set_epoch(1)
    assert list(alone) != order and sorted(alone) == list(range(7))  # a new order each epoch
    alone.set_epoch(0, start=3)
    assert list(alone) == order[3:] and len(alone) == 4  # resuming inside an epoch
    evaluation = [
        list(ShardedSampler(5, rank=r, world_size=2, shuffle=False, pad=False)) for r in range(2)
    ]
    assert sorted(evaluation[0] + evaluation[1]) == list(range(5))  # each video exactly once


def _fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _torchrun(recipe: Path, out: Path, report: Path, timeout: float = 150) -> tuple[int, str]:
    """Run this file under torchrun in its own session; on timeout kill the whole group (the
    workers too, which a plain subprocess timeout would leave behind)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(recipe),
        str(out),
        str(report),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return -1, "timed out\n" + output
    return process.returncode, output


@pytest.mark.distributed
def test_two_gloo_processes_train_one_run(tmp_path):
    from conftest import write_video
    from test_train import _write_split, tiny_recipe

    root = tmp_path / "data"
    _write_split(root, write_video, "train", [0, 1, 0, 1, 0, 1, 0, 1], seed=0)
    _write_split(root, write_video, "val", [0, 1, 1, 0, 1], seed=100)
    (root / "classes.txt").write_text("dark\nbright\n")
    recipe = tiny_recipe(root, "train.epochs=1", "train.deterministic=false")
    path = tmp_path / "tiny.yaml"
    path.write_text(recipe.to_yaml())

    returncode, output = _torchrun(path, tmp_path, tmp_path / "report")
    assert returncode == 0, output[-3000:]
    report = {r: json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in range(2)}
    assert report[0]["a"] == report[1]["a"]  # DDP kept the ranks in step
    assert report[0]["b"] == report[0]["a"]  # a second run from the same seed: the same weights
    run = tmp_path / "run_a"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "curves.png",
        "last.pt",
        "metrics.jsonl",
        "recipe.yaml",
    ]  # written once, by rank 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["val_videos"] == 5  # 3 + 2 across the ranks, no padding duplicates
    assert round(rows[0]["top1"] * 5 / 100, 6) in {0, 1, 2, 3, 4, 5}
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["global_batch"] == 4 and len(state["rng"]) == 2
    assert not np.array_equal(state["rng"][0]["torch"].numpy(), state["rng"][1]["torch"].numpy())
    assert rows[0]["lr"] == pytest.approx(recipe.optim.lr * 4 / 16)  # scaled to the global batch 4


def _main(recipe_path: str, out: str, report: str) -> None:
    """One torchrun process: train twice (run_a, run_b), report this rank's weights each time
    (the second run reuses the first one's process group: no second launch to pay for)."""
    from tsmcli.engine.train import train
    from tsmcli.recipe import load_recipe

    torch.set_num_threads(1)
    info = {}
    for attempt in ("a", "b"):
        result = train(load_recipe(recipe_path), out_dir=Path(out) / f"run_{attempt}")
        info[attempt] = _fingerprint(result.model)
    Path(report).mkdir(parents=True, exist_ok=True)
    (Path(report) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    _main(*sys.argv[1:4])
