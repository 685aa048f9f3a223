"""When an int8 model may be written: the rule, measured on real clips, shared by
``tsm convert-online --precision int8`` (``engine.int8_stream``) and ``tsm export --precision
int8`` (``engine.int8_clip``).

The clips of the calibration list are split: up to ``calib_clips`` of them, spread evenly over
the list, calibrate the activation ranges; up to ``check_clips`` of the others (held back:
never seen by the calibration) are scored by the fp32 and the int8 model, and the int8 model
is refused, with what was measured, when

- it collapsed: one class for every clip, where the fp32 model gives several (a quantizer
  that lost the signal, as mmdeploy's int8 TSM did, says so here instead of shipping);
- its top-1 agrees with fp32's on fewer than ``AGREEMENT_MIN`` percent of the clips;
- its top-1 accuracy on the clips' labels is more than ``ACCURACY_DROP_MAX`` points below
  fp32's;
- streaming: its per-frame logits are further from the fp32 streaming model's than
  ``LOGIT_TOLERANCE`` (see there).

A list too short to hold clips back is used whole for both, and the report says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tsmcli.data.lists import ListFile
from tsmcli.errors import ExportError, UsageError

AGREEMENT_MIN = 98.0  # percent of the checked clips
ACCURACY_DROP_MAX = 1.0  # points of top-1
# Streaming: the int8 model's per-frame logits against the fp32 streaming model's, as the
# root-mean-square difference over the fp32 logits' root mean square, over every frame of
# every checked clip (an inverse signal-to-quantization-noise ratio: 0.25 is 12 dB). 8-bit
# activations carry a rounding step of 1/255 of each tensor's calibrated range; over the ~20
# quantized layers of ResNet-18 / MobileNetV2 and the buffers carried from frame to frame,
# the measured ratio was 0.03-0.08 (the demo's model, MobileNetV2 and ResNet-50 at 224 px,
# bench/deploy.py). A model whose buffers drift, or whose calibration missed a range,
# lands far above: 0.25 leaves 3x the measured error before refusing.
LOGIT_TOLERANCE = 0.25
DEFAULT_CALIB_CLIPS = 32
DEFAULT_CHECK_CLIPS = 256


class Int8Refused(ExportError):
    """The int8 model did not pass the checks: what was measured, and that nothing was
    written (an ``ExportError``, printed as one line)."""


@dataclass(frozen=True)
class ClipSplit:
    """Which clips of the list calibrate and which check (indices into its entries)."""

    calibration: tuple[int, ...]
    check: tuple[int, ...]
    held_back: bool  # the check clips are none of the calibration clips


def split_clips(count: int, calib_clips: int, check_clips: int) -> ClipSplit:
    """``calib_clips`` clips spread evenly over ``count`` for calibration, and up to
    ``check_clips`` of the rest, spread evenly, to check; when fewer than ``calib_clips``
    would be left to check, every clip does both."""
    if calib_clips < 1 or check_clips < 1:
        raise UsageError(
            f"--calib-clips and --check-clips must be at least 1, got {calib_clips}, {check_clips}"
        )
    calibration = _spread(range(count), calib_clips)
    rest = [i for i in range(count) if i not in set(calibration)]
    if len(rest) < min(calib_clips, check_clips):
        return ClipSplit(tuple(calibration), tuple(_spread(range(count), check_clips)), False)
    return ClipSplit(tuple(calibration), tuple(_spread(rest, check_clips)), True)


def _spread(items, count: int) -> list[int]:
    """``count`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    items = list(items)
    if count >= len(items):
        return items
    return [items[(k * len(items)) // count] for k in range(count)]


def subset(listed: ListFile, indices: tuple[int, ...]) -> ListFile:
    """The list of these entries, each keeping its line number for messages."""
    return dataclasses.replace(
        listed,
        entries=tuple(listed.entries[i] for i in indices),
        lines=tuple(listed.line(i) for i in indices),
    )


@dataclass(frozen=True)
class Int8Checks:
    """What the int8 model was checked on and what was measured (``report.json``)."""

    clips: int  # checked
    agreement: float  # percent of the checked clips whose int8 top-1 is fp32's
    fp32_top1: float  # percent, against the list's labels
    int8_top1: float
    fp32_classes: int  # distinct top-1 classes over the checked clips
    int8_classes: int
    calibration_clips: int
    calibration_inputs: int  # frames (streaming) or clips (clip model) fed to the calibration
    held_back: bool
    logit_error: float | None = None  # streaming: RMS difference / RMS of the fp32 logits
    logit_tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields.update(agreement_min=AGREEMENT_MIN, accuracy_drop_max=ACCURACY_DROP_MAX)
        return fields


def judge(
    fp32: Tensor,
    int8: Tensor,
    labels: Tensor,
    *,
    what: str,
    calibration: tuple[int, int],
    held_back: bool,
    logit_error: float | None = None,
) -> Int8Checks:
    """Check the int8 scores ``(N, K)`` against the fp32 ones on the same clips (``labels``
    ``(N,)``) by the rules above; ``what`` names the model in the message. ``calibration``:
    (clips, inputs) it was calibrated on. Returns what was measured, or raises
    ``ExportError`` saying what failed, with the numbers, and that nothing was written."""
    fp32_top1, int8_top1 = fp32.argmax(1), int8.argmax(1)
    n = len(labels)

    def percent(hits: Tensor) -> float:  # from the count: 98 of 100 is 98.0, exactly
        return 100.0 * int(hits.sum()) / max(n, 1)

    checks = Int8Checks(
        clips=n,
        agreement=percent(fp32_top1 == int8_top1),
        fp32_top1=percent(fp32_top1 == labels),
        int8_top1=percent(int8_top1 == labels),
        fp32_classes=len(torch.unique(fp32_top1)),
        int8_classes=len(torch.unique(int8_top1)),
        calibration_clips=calibration[0],
        calibration_inputs=calibration[1],
        held_back=held_back,
        logit_error=logit_error,
        logit_tolerance=LOGIT_TOLERANCE if logit_error is not None else None,
    )
    failure = _failure(checks, int(int8_top1[0]) if n else -1)
    if failure:
        clips = f"{n} {'held-back ' if held_back else ''}clips of the calibration list"
        raise Int8Refused(
            f"{what}: refused, {failure} on {clips}; nothing was written (keep --precision "
            "fp32, or calibrate on more clips of the data it will see: --calib-clips)"
        )
    return checks


def _failure(c: Int8Checks, first_class: int) -> str | None:
    """What breaks the rules, in words with the numbers (None: nothing)."""
    if c.int8_classes == 1 and c.fp32_classes > 1:
        return (
            f"it collapsed: class {first_class} for every clip, where fp32 predicts "
            f"{c.fp32_classes} classes (int8 top-1 {c.int8_top1:.1f}%, fp32 {c.fp32_top1:.1f}%)"
        )
    if c.agreement < AGREEMENT_MIN:
        return (
            f"its top-1 agrees with fp32's on {c.agreement:.1f}% of the clips (at least "
            f"{AGREEMENT_MIN:g}% needed)"
        )
    if round(c.fp32_top1 - c.int8_top1, 9) > ACCURACY_DROP_MAX:  # 99.0 - 98.0 is 1, not more
        return (
            f"its top-1 is {c.int8_top1:.2f}%, {c.fp32_top1 - c.int8_top1:.2f} points below "
            f"fp32's {c.fp32_top1:.2f}% (at most {ACCURACY_DROP_MAX:g} allowed)"
        )
    if c.logit_error is not None and not c.logit_error <= LOGIT_TOLERANCE:
        return (
            f"its per-frame logits differ from the fp32 streaming model's by "
            f"{c.logit_error:.3f} of their RMS (at most {LOGIT_TOLERANCE:g})"
        )
    return None


def relative_rms(differences: list[Tensor], references: list[Tensor]) -> float:
    """RMS of all ``differences`` over the RMS of all ``references`` (inf when not finite)."""
    diff = torch.cat([d.flatten() for d in differences]).double()
    ref = torch.cat([r.flatten() for r in references]).double()
    value = float(diff.square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-12))
    return value if value == value and value != float("inf") else float("inf")
