"""``--precision``: which number format a command runs its model in, and whether the hardware
has it.

- ``fp32``: the model as trained.
- ``bf16``: the PyTorch model under ``torch.autocast`` with bfloat16, only where bf16 is native:
  a CUDA device, or a CPU with AVX512_BF16 or AMX (``native_bf16``). Elsewhere autocast still
  runs, but every bf16 operation is emulated through fp32 and the model is slower than fp32
  for nothing: that is refused with the reason, in one line.
- ``int8``: an exported ONNX model quantized with calibration (``online.int8.onnx`` of an
  online model dir, ``model.int8.onnx`` of ``tsm export``), run by ONNX Runtime; the commands
  that take it say where it comes from.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from tsmcli.choices import PRECISIONS
from tsmcli.errors import UsageError

# /proc/cpuinfo flags of CPUs with bf16 arithmetic (x86: AVX512_BF16, AMX; Arm: the BF16
# extension, listed as "bf16" in its Features line)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def check_precision(precision: str, option: str = "--precision") -> str:
    """``precision`` when it is one of ``choices.PRECISIONS``, else a ``UsageError``."""
    if precision not in PRECISIONS:
        raise UsageError(f"{option} {precision}: choose one of {', '.join(PRECISIONS)}")
    return precision


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_isa() -> str:
    """The instruction set torch's CPU kernels use (``AVX2``, ``AVX512``, ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic is native on ``device``: any CUDA device torch reports bf16
    for, or a CPU with one of ``BF16_FLAGS``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & set(BF16_FLAGS)) or "AMX" in cpu_isa()


def require_bf16(device: torch.device, option: str = "--precision bf16") -> None:
    """A ``UsageError`` saying why, when bf16 is not native on ``device``."""
    if native_bf16(device):
        return
    raise UsageError(
        f"{option}: this CPU ({cpu_isa()}) has no native bf16 (no avx512_bf16/amx_bf16): "
        "bf16 would be emulated and slower than fp32; use --precision fp32 or int8"
    )


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast`` with bfloat16 on ``device``, its outputs back
    in float32 (scores are averaged and ranked in fp32). Keeps the model's attributes that
    callers read (``num_classes``, ``num_segments``)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device_type = model, device.type
        for name in ("num_classes", "num_segments"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(*inputs)
        if isinstance(out, Tensor):
            return out.float()
        return tuple(t.float() for t in out)


def in_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The PyTorch ``model`` as ``precision`` runs it: itself for fp32, under bf16 autocast
    (where native, else ``require_bf16``'s error) for bf16. int8 is not a PyTorch model here:
    a ``UsageError`` naming the ONNX export."""
    if precision == "fp32":
        return model
    if precision == "bf16":
        require_bf16(device)
        return Autocast(model, device)
    raise UsageError(
        "--precision int8 runs an exported int8 ONNX model: export one with tsm export "
        "--precision int8 --calib-list LIST --root ROOT and pass --model DIR (or, streaming, "
        "tsm convert-online --precision int8 and --online/--model DIR)"
    )
