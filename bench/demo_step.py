"""The demo recipe's training step with 1x1-output convolutions as matrix products, against
the same network with every convolution left to ``nn.Conv2d``: same weights, same batch,
interleaved; and its online fine-tuning step with the teacher beside the student.

At the demo's 32 px the last stage of ``resnet18_narrow`` runs on 1x1 frames, where a 3x3
convolution reads only its centre tap and the convolution kernels multiply the other eight
by zero padding (``OneOutputConv2d`` in tsmcli/model/backbones.py). The step is the demo's:
the offline TSM, a batch of 16 clips of 8 frames, fused AdamW, gradient clipping, one
thread. With ``--stand-in`` the same is run again in a child process forced to the AVX2
kernels (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), a stand-in for an AVX2-only
CPU, and both rows are written.

    .venv/bin/python bench/demo_step.py [--reps 30] [--stand-in]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, machine, write_section  # noqa: E402
from train_step import sgd_step  # noqa: E402

from tsmcli.engine.optim import build_optimizer  # noqa: E402
from tsmcli.model.backbones import convert_convs  # noqa: E402
from tsmcli.model.tsn import TSN  # noqa: E402
from tsmcli.recipe import load_recipe  # noqa: E402

NUM_CLASSES = 8
STAND_IN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def build_steps() -> dict[str, Callable[[], None]]:
    """A training step of each network, from the same weights on the same batch."""
    recipe = load_recipe("demo")
    m, o, d = recipe.model, recipe.optim, recipe.data
    steps = {}
    for name in ("nn.Conv2d", "OneOutputConv2d"):
        torch.manual_seed(0)
        model = TSN(m.spec(NUM_CLASSES)).train()
        if name == "nn.Conv2d":
            convert_convs(model, nn.Conv2d)
        optimizer = build_optimizer(model, o, o.lr, fc_lr5=False)
        generator = torch.Generator().manual_seed(1)
        shape = (recipe.train.batch_size, m.num_segments, 3, d.input_size, d.input_size)
        clips = torch.randn(shape, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (recipe.train.batch_size,), generator=generator)
        steps[name] = sgd_step(model, optimizer, clips, labels, o.clip_grad)
    return steps


def build_fine_tune_steps() -> dict[str, Callable[[], None]]:
    """The demo's online fine-tuning step (the one-way model learning from the offline one's
    outputs as well as the labels), with the teacher's forward after the student's and
    beside it in a second thread (``train_loop.teacher_logits``)."""
    from tsmcli.engine.train_loop import _loss, teacher_logits
    from tsmcli.showcase import ONLINE_DISTILL

    recipe = load_recipe("demo", ONLINE_DISTILL)
    m, o, d, t = recipe.model, recipe.optim, recipe.data, recipe.train
    torch.manual_seed(0)
    teacher = TSN(m.spec(NUM_CLASSES)).eval()
    generator = torch.Generator().manual_seed(1)
    clips = torch.randn(
        (t.batch_size, m.num_segments, 3, d.input_size, d.input_size), generator=generator
    )
    labels = torch.randint(0, NUM_CLASSES, (t.batch_size,), generator=generator)
    steps = {}
    for beside in (False, True):
        student = TSN(replace(m.spec(NUM_CLASSES), shift="unidirectional"))
        optimizer = build_optimizer(student, o, o.lr, fc_lr5=False)

        def step(student=student, optimizer=optimizer, beside=beside) -> None:
            taught = teacher_logits(teacher, clips, contextlib.nullcontext, beside=beside)
            logits = student(clips)
            loss = _loss(logits, labels, taught(), t.distill_weight, t.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), o.clip_grad)
            optimizer.step()

        steps["beside" if beside else "after"] = step
    return steps


def measure(reps: int) -> dict[str, object]:
    torch.set_num_threads(1)
    times = interleaved_medians(build_steps(), reps=reps, warmup=3)
    fine_tune = interleaved_medians(build_fine_tune_steps(), reps=reps, warmup=3)
    return {
        "machine": machine(),
        "plain": times["nn.Conv2d"],
        "ours": times["OneOutputConv2d"],
        "after": fine_tune["after"],
        "beside": fine_tune["beside"],
    }


def row(result: dict[str, object]) -> str:
    plain, ours = float(result["plain"]), float(result["ours"])
    after, beside = float(result["after"]), float(result["beside"])
    return (
        f"| {result['machine']} | {plain * 1e3:.1f} | {ours * 1e3:.1f} | {ours / plain:.3f} | "
        f"{after * 1e3:.1f} | {beside * 1e3:.1f} | {beside / after:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--stand-in", action="store_true", help="also run forced to AVX2")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.reps)))
        return
    results = [measure(args.reps)]
    if args.stand_in:
        command = [sys.executable, __file__, "--reps", str(args.reps), "--json"]
        child = subprocess.run(
            command, env={**os.environ, **STAND_IN}, capture_output=True, text=True, check=True
        )
        results.append(json.loads(child.stdout.splitlines()[-1]))
    lines = [
        "| machine | nn.Conv2d ms/step | OneOutputConv2d ms/step | ratio | fine-tune, teacher "
        "after ms/step | teacher beside ms/step | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(row(result) for result in results),
        "",
        "The demo's training step (offline TSM, 16 clips x 8 frames x 32 px, fused AdamW, one "
        "thread) with the 1x1-output convolutions of the last stage as matrix products, against "
        "the same weights with every convolution left to `nn.Conv2d`; and the online fine-tuning "
        "step (distilling from the offline model) with the teacher's forward after the "
        "student's, or beside it in a second thread on the core the demo has spare (the same "
        f"weights bit for bit). Median of {args.reps} interleaved steps each. The forced-AVX2 "
        "row is a stand-in for an AVX2-only CPU: the same kernels on a faster core.",
    ]
    for line in lines[2 : 2 + len(results)]:
        print(line)
    title = "The demo's training steps: 1x1 outputs as matrix products, the teacher beside (bench/demo_step.py)"
    print(write_section("demo_step", title, "\n".join(lines)))


if __name__ == "__main__":
    main()
