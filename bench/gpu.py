"""CUDA throughput of TSM-R50 8x224: training and eval clips/s in fp32, AMP and AMP +
channels_last, with and without the shift, on in-memory clips (no data loading).

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

from tsmcli.model.tsn import build_model  # noqa: E402


def _throughput(model, batch: int, segments: int, size: int, train: bool, amp: bool,
                channels_last: bool, steps: int) -> float:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.py runs only on a GPU machine")
        return 0
    torch.backends.cudnn.benchmark = True
    rows = ["| model | mode | fp32 clips/s | bf16 AMP clips/s | AMP + channels_last clips/s |",
            "|---|---|---:|---:|---:|"]
    for shift, name in (("bidirectional", "TSM-R50 8x224"), ("none", "TSN-R50 8x224")):
        for train in (True, False):
            cells = []
            for amp, channels_last in ((False, False), (True, False), (True, True)):
                model = build_model("resnet50", num_classes=400, num_segments=8, shift=shift)
                cells.append(_throughput(model, args.batch, 8, 224, train, amp, channels_last, args.steps))
            mode = "train" if train else "eval"
            rows.append(f"| {name} | {mode} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    body = (f"Batch {args.batch} clips, synthetic in-memory input, SGD step included in train.\n\n"
            + "\n".join(rows))
    print(body)
    write_section("gpu", f"GPU throughput ({torch.cuda.get_device_name()})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
