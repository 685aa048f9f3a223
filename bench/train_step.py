"""One SGD step of TSM-R50 8x224 against an official-style reference, same batch, interleaved.

The reference is written here as the official TSM code runs: torchvision's ResNet-50 with the
seed's shift (a zero-filled output and three slice copies) before ``conv1`` of every block,
dropout 0.5 and a new fc, plain SGD (momentum 0.9) over the official parameter groups,
gradient clipping at 20, in plain (NCHW) memory format. Ours is the recipe's ``TSN`` with the
optimizer, clipping and memory format that ``tsm train --recipe kinetics_r50`` uses. Both start
from the same weights, take the same batch, and are timed rep by rep in turn (forward, loss,
backward, clip, step), and so is an eval forward of each (no autograd); the ratios of the
medians are reported. Targets: ours / reference <= 0.85 for the step and for the forward on
CPU; on a GPU with AMP + channels_last, <= 0.5 for the step.

The machine's limit is measured in the same run: a large float32 matrix product on the same
threads (``common.dense_peak``). Each model's achieved FLOP/s (its forward's FLOPs as torch's
counter counts them, three times that for a training step: the backward costs about twice the
forward) is given as a fraction of it.

    .venv/bin/python bench/train_step.py [--reps 5] [--size 224] [--batch 2] [--threads 2]
    .venv/bin/python bench/train_step.py --device cuda --batch 16   # on a lent GPU: ours with
        # bf16 AMP + channels_last against the reference in fp32, as the official code trains
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    dense_peak,
    forward_flops,
    interleaved_medians,
    machine_kind,
    write_section,
)
from shift import seed_shift  # noqa: E402  (the seed's shift, as bench/shift.py times it)

from tsmcli.engine.optim import build_optimizer, parameter_groups  # noqa: E402
from tsmcli.model.tsn import TSN  # noqa: E402
from tsmcli.recipe import load_recipe  # noqa: E402

CPU_TARGET, GPU_TARGET = 0.85, 0.5
NUM_CLASSES = 400


class SeedShift(nn.Module):
    """The official wrapper: shift, then ``net`` (so state dict keys match ours)."""

    def __init__(self, net: nn.Module, n_segment: int):
        super().__init__()
        self.net, self.n_segment = net, n_segment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(seed_shift(x, self.n_segment))


class ReferenceTSN(nn.Module):
    """The official TSN/TSM model, ResNet-50 blockres, average consensus."""

    def __init__(self, num_segments: int, num_classes: int):
        super().__init__()
        self.num_segments = num_segments
        base = torchvision.models.resnet50(weights=None)
        base.fc = nn.Identity()
        for stage in (base.layer1, base.layer2, base.layer3, base.layer4):
            for block in stage:
                block.conv1 = SeedShift(block.conv1, num_segments)
        self.base_model = base
        self.dropout = nn.Dropout(0.5)
        self.new_fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        features = self.base_model(x.flatten(0, 1))  # (B*T, 2048)
        return self.new_fc(self.dropout(features)).view(batch, self.num_segments, -1).mean(1)


def sgd_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    clips: torch.Tensor,
    labels: torch.Tensor,
    clip_grad: float,
    amp: bool = False,
) -> Callable[[], None]:
    """One training step; on CUDA it waits for the GPU, so that the wall clock times it.
    ``amp``: the forward under bf16 autocast."""
    cuda = clips.device.type == "cuda"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(clips), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    return step


def build_pair(
    size: int, batch: int, device: torch.device
) -> tuple[dict[str, Callable[[], None]], str]:
    recipe = load_recipe("kinetics_r50", ["model.pretrained="])
    m, o, t = recipe.model, recipe.optim, recipe.train
    torch.manual_seed(0)
    ours: TSN = TSN(m.spec(NUM_CLASSES)).to(device).train()
    reference = ReferenceTSN(m.num_segments, NUM_CLASSES).to(device).train()
    reference.load_state_dict(ours.state_dict())  # the same weights, key for key
    gpu = device.type == "cuda"
    if t.channels_last or gpu:
        ours.to(memory_format=torch.channels_last)
    lr = o.lr
    ours_opt = build_optimizer(ours, o, lr, fc_lr5=False)
    reference_opt = torch.optim.SGD(
        [
            {
                "params": g["params"],
                "lr": lr * g["lr_mult"],
                "weight_decay": o.weight_decay * g["decay_mult"],
            }
            for g in parameter_groups(reference, fc_lr5=False)
        ],
        lr=lr,
        momentum=0.9,
        weight_decay=o.weight_decay,
    )
    clips = torch.randn(batch, m.num_segments, 3, size, size, device=device)  # (B, T, 3, S, S)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    setting = "bf16 AMP, channels_last" if gpu else f"channels_last={t.channels_last}"
    forwards = {"reference forward": eval_forward(reference, clips)}
    forwards["ours forward"] = eval_forward(ours, clips, amp=gpu)
    return {
        "reference": sgd_step(reference, reference_opt, clips, labels, o.clip_grad),
        "ours": sgd_step(ours, ours_opt, clips, labels, o.clip_grad, amp=gpu),
        **forwards,
    }, setting


def eval_forward(model: nn.Module, clips: torch.Tensor, amp: bool = False) -> Callable[[], None]:
    """An evaluation forward of ``model`` (eval mode, no autograd), as ``tsm eval`` runs it."""
    cuda = clips.device.type == "cuda"

    def forward() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            model(clips)
        model.train()
        if cuda:
            torch.cuda.synchronize()

    return forward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; nothing measured", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps, setting = build_pair(args.size, args.batch, device)
    times = interleaved_medians(steps, reps=args.reps, warmup=3 if args.device == "cuda" else 1)
    ratio = times["ours"] / times["reference"]
    forward_ratio = times["ours forward"] / times["reference forward"]
    if args.device == "cuda":
        where, target, name = torch.cuda.get_device_name(), GPU_TARGET, "train_step_gpu"
        peak, flops = None, None
    else:
        where, target = torch.backends.cpu.get_cpu_capability(), CPU_TARGET
        name = f"train_step_{machine_kind()[0]}"  # one section per kind of CPU
        peak = dense_peak()
        recipe = load_recipe("kinetics_r50", ["model.pretrained="])
        clips = torch.randn(args.batch, recipe.model.num_segments, 3, args.size, args.size)
        flops = forward_flops(TSN(recipe.model.spec(NUM_CLASSES)).eval(), clips)
    print(
        f"{where}: reference {times['reference']:.3f} s, ours {times['ours']:.3f} s, "
        f"ratio {ratio:.3f}; forward ratio {forward_ratio:.3f}"
    )
    body = "\n".join(
        [
            "| device | threads | batch | what | reference s | ours s | ours / reference | "
            "target | ours: share of the machine's limit |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
            *(
                f"| {where} | {args.threads} | {args.batch} x 8 x {args.size} | {what} | "
                f"{times[ref]:.3f} | {times[own]:.3f} | {times[own] / times[ref]:.3f} | "
                f"{'<= ' + str(target) if what == 'training step' or peak else '-'} | "
                + (f"{share:.1%} |" if (share := _share(flops, mult, times[own], peak)) else "- |")
                for what, ref, own, mult in (
                    ("training step", "reference", "ours", 3),
                    ("eval forward", "reference forward", "ours forward", 1),
                )
            ),
            "",
            f"Ours as `kinetics_r50` trains ({setting}; the shift written once per block in the "
            "input's memory format with its opposite shift as the backward); the reference as the "
            f"official code (seed shift, NCHW, fp32). Median of {args.reps} interleaved runs each."
            + (
                f" The machine's limit: a 2048 x 2048 float32 matrix product at "
                f"{peak / 1e9:.0f} GFLOP/s on {args.threads} threads; ours does "
                f"{flops / 1e9:.0f} GFLOP a forward ({3 * flops / 1e9:.0f} a training step)."
                if peak
                else ""
            ),
        ]
    )
    title = "Training step against the official code (bench/train_step.py)"
    if args.device == "cuda":
        title = "Training step against the official code on a GPU (bench/train_step.py)"
    print(write_section(name, title, body))
    return 0


def _share(flops: int | None, mult: int, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP/s of ``mult`` forwards' worth of work in ``seconds``, over ``peak``."""
    return None if flops is None or not peak else mult * flops / seconds / peak


if __name__ == "__main__":
    sys.exit(main())
