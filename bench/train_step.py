"""One SGD step of TSM-R50 8x224 against an official-style reference, same batch, interleaved.

The reference is written here as the official TSM code runs: torchvision's ResNet-50 with the
seed's shift (a zero-filled output and three slice copies) before ``conv1`` of every block,
dropout 0.5 and a new fc, plain SGD (momentum 0.9) over the official parameter groups,
gradient clipping at 20, in plain (NCHW) memory format. Ours is ``build_model`` with the
optimizer, clipping and memory format that ``tsm train --recipe kinetics_r50`` uses. Both start
from the same weights, take the same batch, and are timed rep by rep in turn (forward, loss,
backward, clip, step); the ratio of the medians is reported. Target (issue 15): ours /
reference <= 0.85 on CPU; on a GPU with AMP + channels_last, <= 0.5.

    .venv/bin/python bench/train_step.py [--reps 5] [--size 224] [--batch 2] [--threads 2]
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
from common import interleaved_medians, write_section  # noqa: E402
from shift import seed_shift  # noqa: E402  (the seed's shift, as bench/shift.py times it)

from tsmcli.engine.optim import build_optimizer, parameter_groups  # noqa: E402
from tsmcli.model.tsn import TSN, build_model  # noqa: E402
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
) -> Callable[[], None]:
    def step() -> None:
        loss = nn.functional.cross_entropy(model(clips), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()

    return step


def build_pair(
    size: int, batch: int, device: torch.device
) -> tuple[dict[str, Callable[[], None]], str]:
    recipe = load_recipe("kinetics_r50", ["model.pretrained="])
    m, o, t = recipe.model, recipe.optim, recipe.train
    torch.manual_seed(0)
    ours: TSN = build_model(**m.architecture(NUM_CLASSES)).to(device).train()
    reference = ReferenceTSN(m.num_segments, NUM_CLASSES).to(device).train()
    reference.load_state_dict(ours.state_dict())  # the same weights, key for key
    if t.channels_last:
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
    setting = f"channels_last={t.channels_last}"
    return {
        "reference": sgd_step(reference, reference_opt, clips, labels, o.clip_grad),
        "ours": sgd_step(ours, ours_opt, clips, labels, o.clip_grad),
    }, setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, setting = build_pair(args.size, args.batch, torch.device("cpu"))
    times = interleaved_medians(steps, reps=args.reps)
    ratio = times["ours"] / times["reference"]
    isa = torch.backends.cpu.get_cpu_capability()
    print(
        f"{isa}: reference {times['reference']:.2f} s, ours {times['ours']:.2f} s, ratio {ratio:.3f}"
    )
    body = "\n".join(
        [
            "| CPU ISA | threads | batch | reference s/step | ours s/step | ours / reference | target |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| {isa} | {args.threads} | {args.batch} x 8 x {args.size} | {times['reference']:.2f} | "
            f"{times['ours']:.2f} | {ratio:.3f} | <= {CPU_TARGET} |",
            "",
            f"Ours as `kinetics_r50` trains ({setting}; the shift written once per block in the "
            "input's memory format with its opposite shift as the backward); the reference as the "
            f"official code (seed shift, NCHW). Median of {args.reps} interleaved steps each.",
        ]
    )
    print(
        write_section(
            "train_step", "Training step against the official code (bench/train_step.py)", body
        )
    )


if __name__ == "__main__":
    main()
