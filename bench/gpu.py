"""CUDA throughput of TSM-R50 8x224: training and eval clips/s in fp32, AMP and AMP +
channels_last, with and without the shift, on in-memory clips (no data loading); and the
time the trainer spends finishing a batch of uint8 crops on the GPU (``ClipBatch.model_input``:
transfer, resize, flip, normalise), checked against the same batch finished on the CPU.

Run on a lent GPU machine (see DEVELOPERS.md); it writes bench/results/gpu.md, which
`make bench` keeps in BENCHMARKS.md. Without CUDA it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

from tsmcli.data.dataset import Sample, collate_clips  # noqa: E402
from tsmcli.data.transforms import multiscale_crop_sizes  # noqa: E402
from tsmcli.model.tsn import build_model  # noqa: E402


def _throughput(
    model,
    batch: int,
    segments: int,
    size: int,
    train: bool,
    amp: bool,
    channels_last: bool,
    steps: int,
) -> float:
    device = torch.device("cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt)
    clips = torch.randn(batch, segments, 3, size, size, device=device)  # (B, T, 3, H, W)
    labels = torch.randint(0, 400, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(train)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            if train:
                loss = torch.nn.functional.cross_entropy(model(clips), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                with torch.no_grad():
                    model(clips)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def _input_finishing(batch: int, steps: int) -> tuple[float, float]:
    """(ms per batch on the GPU, largest difference from the CPU result) for a train batch of
    8-frame uint8 crops of the official multi-scale sizes of a 341x256 frame."""
    gen = torch.Generator().manual_seed(0)
    sizes = multiscale_crop_sizes(341, 256, 224)
    samples = []
    for i in range(batch):
        width, height = sizes[i % len(sizes)]
        frames = torch.randint(0, 256, (8, height, width, 3), dtype=torch.uint8, generator=gen)
        samples.append(Sample(frames.permute(0, 3, 1, 2), 0, i, flip=i % 2 == 1, resize_to=224))
    on_cpu = collate_clips(samples)
    pinned = on_cpu._replace(clips=on_cpu.clips.pin_memory())  # as the DataLoader hands it
    worst = (pinned.model_input("cuda").cpu() - on_cpu.model_input("cpu")).abs().max().item()
    for _ in range(3):
        pinned.model_input("cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        pinned.model_input("cuda")
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.py runs only on a GPU machine")
        return 0
    torch.backends.cudnn.benchmark = True
    rows = [
        "| model | mode | fp32 clips/s | bf16 AMP clips/s | AMP + channels_last clips/s |",
        "|---|---|---:|---:|---:|",
    ]
    for shift, name in (("bidirectional", "TSM-R50 8x224"), ("none", "TSN-R50 8x224")):
        for train in (True, False):
            cells = []
            for amp, channels_last in ((False, False), (True, False), (True, True)):
                model = build_model("resnet50", num_classes=400, num_segments=8, shift=shift)
                cells.append(
                    _throughput(model, args.batch, 8, 224, train, amp, channels_last, args.steps)
                )
            mode = "train" if train else "eval"
            rows.append(f"| {name} | {mode} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    finish_ms, worst = _input_finishing(args.batch, args.steps)
    body = (
        f"Batch {args.batch} clips, synthetic in-memory input, SGD step included in train.\n\n"
        + "\n".join(rows)
        + f"\n\nFinishing a train batch of {args.batch} uint8 crops on the GPU "
        f"(`ClipBatch.model_input`: pinned host-to-GPU copy, per-clip antialiased resize to "
        f"224, flip, normalise): {finish_ms:.2f} ms per batch; largest difference from the "
        f"same batch finished on the CPU (uint8 resize): {worst:.4f} (normalised units; one "
        f"grey level is ~0.017)."
    )
    print(body)
    write_section("gpu", f"GPU throughput ({torch.cuda.get_device_name()})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
