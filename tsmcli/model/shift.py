"""The temporal shift: the one implementation used by training, evaluation and export.

A 2D network runs on the N*T frames of N clips; before a shifted layer, a few channels of
each frame are replaced by the same channels of a neighbouring frame of the same clip (zero
where the neighbour would be outside the clip). No FLOPs, no parameters, and every layer
after it sees three frames.

- ``bidirectional`` (offline model): channels ``[0, fold)`` come from frame t+1 and
  ``[fold, 2*fold)`` from frame t-1; this is the seed's ``shift``.
- ``unidirectional`` (online model): channels ``[0, fold)`` come from frame t-1. Frame by
  frame this is a buffer holding the previous frame's first ``fold`` channels, which is what
  ``tsmcli.model.streaming`` runs.

``fold = C // fold_div``. Both directions are a *plan*, a list of ``(start, stop, offset)``
channel ranges, where output frame t takes input frame ``t + offset``; the plain shift and the
shift fused into a pointwise convolution (below) both execute the same plan.

Why the fused form exists: on CPU, writing a shifted copy of every shifted block's input
makes a ResNet-50 forward several percent slower than without shift (memory bandwidth, not
FLOPs; ``bench/shift.py`` measures it). When the shifted layer is a 1x1 convolution
(ResNet-50/101/152 bottlenecks, MobileNetV2 expansions), the shift is folded into its matrix
product instead: the convolution is split along its input channels, and each part multiplies
a strided view of the unshifted input taken one frame earlier or later. No activation is
copied; the result equals shift-then-convolve up to float rounding. That is for the forward
alone (evaluation, inference): under autograd, and elsewhere (3x3 ``conv1`` of
ResNet-18/34, the ``block`` placement, channels-last tensors, GPUs, ONNX export), the shifted
tensor is built once, in the input's memory format, by one autograd function whose backward
is the opposite shift.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsmcli.choices import SHIFT_DIRECTIONS

# (start, stop, offset): output channels [start, stop) of frame t come from frame t + offset.
Plan = tuple[tuple[int, int, int], ...]


def shift_plan(channels: int, fold_div: int = 8, direction: str = "bidirectional") -> Plan:
    """The channel ranges a shift moves, and by how many frames; empty ranges are dropped."""
    if direction not in SHIFT_DIRECTIONS:
        raise ValueError(f"unknown shift direction {direction!r}; use one of {SHIFT_DIRECTIONS}")
    if fold_div < 1:
        raise ValueError(f"fold_div must be at least 1, got {fold_div}")
    fold = channels // fold_div
    if direction == "bidirectional":
        parts = ((0, fold, 1), (fold, 2 * fold, -1), (2 * fold, channels, 0))
    else:
        parts = ((0, fold, -1), (fold, channels, 0))
    # fold_div 1 or 2 leaves later ranges past the last channel, as the seed's slices do
    clipped = ((min(start, channels), min(stop, channels), offset) for start, stop, offset in parts)
    return tuple(part for part in clipped if part[1] > part[0])


def temporal_shift(
    x: Tensor, num_segments: int, fold_div: int = 8, direction: str = "bidirectional"
) -> Tensor:
    """Shift channels between neighbouring frames of each clip in ``x`` of shape (N*T, C, H, W).

    Returns a new tensor; ``x`` is not modified.
    """
    if x.dim() != 4:
        raise ValueError(f"temporal_shift expects (N*T, C, H, W), got shape {tuple(x.shape)}")
    return _apply_plan(x, num_segments, shift_plan(x.shape[1], fold_div, direction))


def _apply_plan(x: Tensor, num_segments: int, plan: Plan) -> Tensor:
    """The shifted tensor, in ``x``'s memory format (channels-last stays channels-last).

    Each channel range is copied once into a fresh tensor, one frame later or earlier, and
    only the frame that has no neighbour is zeroed: no full-size zero fill (the seed's
    ``zeros_like``) and no temporary. The backward is the same plan run the other way
    (the adjoint of a shift is the opposite shift), written as one autograd function: slice
    assignment under autograd would clone the whole gradient once per range.
    Graph capture (``torch.jit.trace``, the TorchScript-based ONNX exporter) cannot record an
    autograd function, so there the same plan is built from split / pad / cat instead.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return _traceable_plan(x, num_segments, plan)
    return _PlanShift.apply(x, num_segments, plan)


def _traceable_plan(x: Tensor, num_segments: int, plan: Plan) -> Tensor:
    """``_apply_plan`` from plain ops a graph exporter records (Split / Pad / Concat)."""
    nt, c, h, w = x.shape
    x5 = x.view(-1, num_segments, c, h, w)  # (N, T, C, H, W)
    sizes = [stop - start for start, stop, _ in plan]
    pieces = []
    for part, (_, _, offset) in zip(x5.split(sizes, dim=2), plan, strict=True):
        if offset > 0:  # frame t takes t+1: drop the first frame, zero after the last
            part = nn.functional.pad(part[:, 1:], (0, 0, 0, 0, 0, 0, 0, 1))
        elif offset < 0:  # frame t takes t-1: zero before the first frame, drop the last
            part = nn.functional.pad(part[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0))
        pieces.append(part)
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)  # (N, T, C, H, W)
    return out.reshape(nt, c, h, w)


def _shift_into(out: Tensor, x: Tensor, num_segments: int, plan: Plan, sign: int) -> Tensor:
    """Write ``x`` shifted by ``plan`` (offsets times ``sign``) into ``out``, both (N*T, C, H, W)."""
    nt, c, h, w = x.shape
    source, target = x.view(-1, num_segments, c, h, w), out.view(-1, num_segments, c, h, w)
    for start, stop, offset in plan:
        src, dst = source[:, :, start:stop], target[:, :, start:stop]  # (N, T, c_i, H, W)
        offset *= sign
        if offset > 0:  # frame t takes t+1; the last frame has none
            dst[:, :-1].copy_(src[:, 1:])
            dst[:, -1:].zero_()
        elif offset < 0:  # frame t takes t-1; the first frame has none
            dst[:, 1:].copy_(src[:, :-1])
            dst[:, :1].zero_()
        else:
            dst.copy_(src)
    return out


class _PlanShift(torch.autograd.Function):
    """``_shift_into`` with its exact adjoint as the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, num_segments: int, plan: Plan) -> Tensor:
        ctx.num_segments, ctx.plan = num_segments, plan
        return _shift_into(torch.empty_like(x), x, num_segments, plan, sign=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return _shift_into(torch.empty_like(grad), grad, ctx.num_segments, ctx.plan, -1), None, None


def _is_pointwise(net: nn.Module) -> bool:
    """A plain 1x1, stride-1, ungrouped, unpadded convolution: one matrix per frame."""
    return (
        type(net) is nn.Conv2d
        and net.kernel_size == (1, 1)
        and net.stride == (1, 1)
        and net.padding in ((0, 0), "valid")
        and net.dilation == (1, 1)
        and net.groups == 1
        and net.padding_mode == "zeros"
    )


def shifted_pointwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, num_segments: int, plan: Plan
) -> Tensor:
    """``conv1x1(shift(x), weight, bias)`` without building the shifted input.

    For every range ``[a, b)`` moved by ``offset``, ``W[:, a:b] @ x[t + offset, a:b]`` is
    accumulated into output frame t with a batched matrix product over strided views. Taken
    over the flat N*T frame axis, ``t + offset`` crosses into the next or previous clip at
    one frame per clip boundary; that product is subtracted again for those frames (batch N-1,
    empty for a single clip), so the result stays exact to float rounding for any N.
    ``x`` (N*T, C, H, W) must be contiguous; ``weight`` is (C_out, C, 1, 1).
    """
    nt, c, h, w = x.shape
    c_out = weight.shape[0]
    frames = x.view(nt, c, h * w)  # (N*T, C, HW)
    weights = weight.reshape(c_out, c)  # (C_out, C)
    sizes = [stop - start for start, stop, _ in plan]
    x_parts = frames.split(sizes, dim=1)  # each (N*T, c_i, HW)
    w_parts = weights.split(sizes, dim=1)  # each (C_out, c_i)

    kept = [i for i, (_, _, offset) in enumerate(plan) if offset == 0]
    if len(kept) != 1:
        raise ValueError(f"the plan {plan} keeps no channel range in place; use the plain shift")
    # bmm over an expanded weight, not matmul: matmul copies a weight that requires grad
    w_kept, x_kept = w_parts[kept[0]], x_parts[kept[0]]
    out = torch.bmm(w_kept.expand(x_kept.shape[0], -1, -1), x_kept)  # (N*T, C_out, HW)
    clips = out.view(-1, num_segments, c_out, h * w)  # (N, T, C_out, HW)
    for (_, _, offset), x_part, w_part in zip(plan, x_parts, w_parts, strict=True):
        if offset == 0:
            continue
        x_clips = x_part.view(-1, num_segments, *x_part.shape[1:])  # (N, T, c_i, HW)
        if offset > 0:  # frame t += W_i x[t+1]; the last frame of a clip gets nothing
            target, source = out[:-1], x_part[1:]
            wrong_target, wrong_source = clips[:-1, -1], x_clips[1:, 0]
        else:  # frame t += W_i x[t-1]; the first frame of a clip gets nothing
            target, source = out[1:], x_part[:-1]
            wrong_target, wrong_source = clips[1:, 0], x_clips[:-1, -1]
        # in-place ops skip autocast: use the dtype bmm chose (no-op without autocast)
        w_part, source, wrong_source = (t.to(out.dtype) for t in (w_part, source, wrong_source))
        target.baddbmm_(w_part.expand(source.shape[0], -1, -1), source)
        wrong_target.baddbmm_(w_part.expand(wrong_source.shape[0], -1, -1), wrong_source, alpha=-1)
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, c_out, 1)
    return out.view(nt, c_out, h, w)


class TemporalShift(nn.Module):
    """Shift the input in time, then run ``net``.

    The wrapped module is the attribute ``net`` so state dict keys are those of the official
    release (``layer1.0.conv1.net.weight``). On CPU, when ``net`` is a pointwise convolution,
    the shift is fused into it (see the module docstring) unless ``fuse=False``; the result is
    the same up to float rounding.
    """

    def __init__(
        self,
        net: nn.Module,
        num_segments: int,
        fold_div: int = 8,
        direction: str = "bidirectional",
        fuse: bool = True,
    ):
        super().__init__()
        if direction not in SHIFT_DIRECTIONS:
            raise ValueError(
                f"unknown shift direction {direction!r}; use one of {SHIFT_DIRECTIONS}"
            )
        if num_segments < 1 or fold_div < 1:
            raise ValueError(
                f"num_segments and fold_div must be at least 1, got {num_segments} and {fold_div}"
            )
        self.net = net
        self.num_segments = num_segments
        self.fold_div = fold_div
        self.direction = direction
        self.fused = fuse and _is_pointwise(net)

    def forward(self, x: Tensor) -> Tensor:
        plan = shift_plan(x.shape[1], self.fold_div, self.direction)
        # The fused product pays off for the forward alone: under autograd its backward (grads
        # of strided bmm views) costs more than the copy it saves (bench/train.py). The
        # TorchScript-based ONNX exporter mistranslates in-place products on slices, so an
        # ONNX export always records the plain shift (Split/Pad/Concat, then the conv). A
        # trace records one path whatever the grad mode: the fused one, as before.
        inference = not torch.is_grad_enabled() or torch.jit.is_tracing()
        if (
            self.fused
            and inference
            and x.device.type == "cpu"
            and x.is_contiguous()
            and any(offset == 0 for _, _, offset in plan)
            and not torch.onnx.is_in_onnx_export()
        ):
            return shifted_pointwise_conv(
                x, self.net.weight, self.net.bias, self.num_segments, plan
            )
        return self.net(_apply_plan(x, self.num_segments, plan))

    def extra_repr(self) -> str:
        return (
            f"num_segments={self.num_segments}, fold_div={self.fold_div}, "
            f"direction={self.direction!r}, fused={self.fused}"
        )
