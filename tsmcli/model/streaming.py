"""StreamingTSM: the online model, one frame in, logits and new shift buffers out.

The offline one-way model shifts channels ``[0, fold)`` of every shifted block's input one
frame forward in time (zero at t=0). Frame by frame, that is: keep those channels of the
current frame's input in a buffer, and replace them by the buffer of the previous frame.
With zero buffers at the start of a stream, the per-frame outputs are exactly those of the
offline unidirectional model on the whole clip (``tests/model/test_streaming.py``).

The streaming model is not a second copy of the network: it is the offline backbone's own
forward, traced with ``torch.fx``, in which each ``TemporalShift`` call becomes
``swap_in -> net -> restore`` (same module, same weights). ``swap_in`` writes the buffer, an
explicit graph input, over the first ``fold`` channels of the block's input *in place* and
returns what was there: the new buffer, an explicit graph output. The shifted layer then reads
the spliced input where it lies, and ``restore`` writes the frame's channels back so the
residual sees the block input unchanged. Per shifted block that is three copies of 1/8 of its
input, instead of a spliced copy of all of it (or a second matrix product): a step costs
about 2% more than the 2D network (ResNet-50 and MobileNetV2, ``bench/online.py``). The in-place pair is safe because
nothing else runs between the two writes: the layer in between is one module call.

No Python state is kept between frames, so ``torch.jit.trace`` and ``torch.onnx.export`` see
the whole data flow (the dynamo exporter turns the in-place writes into slice updates), and
every export is checked frame by frame against the offline model before it is written
(``tsmcli.model.export``). Inference only: under autograd the in-place writes would break the
backward of the layers that saved the block input.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.fx as fx
from torch import Tensor, nn

from tsmcli.model.shift import TemporalShift
from tsmcli.model.spec import check_streamable

# step(frame (1, 3, H, W), *buffers) -> (logits (1, K), *new_buffers)
StepFn = Callable[..., Sequence[Tensor]]


def swap_in(x: Tensor, buffer: Tensor, fold_div: int) -> tuple[Tensor, Tensor]:
    """Put the previous frame's channels into ``x`` in place: ``(new buffer, head)``.

    ``x`` (1, C, H, W), ``buffer`` (1, fold, H, W). Afterwards channels ``[0, fold)`` of ``x``
    (``head``, a view) hold ``buffer``: ``x`` *is* the spliced input, and only 1/8 of it was
    written. The new buffer is what ``head`` held: this frame's channels, which ``restore``
    puts back once the shifted layer has read ``x``.
    """
    head = x.narrow(1, 0, x.shape[1] // fold_div)
    new_buffer = head.clone()
    head.copy_(buffer)
    return new_buffer, head


def restore(result: Tensor, head: Tensor, new_buffer: Tensor) -> Tensor:
    """Undo ``swap_in`` (the block input's other readers, such as the residual, see the frame
    as it was) and pass the shifted layer's ``result`` on, which orders the write after the
    read for every exporter."""
    head.copy_(new_buffer)
    return result


class _ShiftLeafTracer(fx.Tracer):
    """Trace through the backbone but keep each ``TemporalShift`` as one call to rewrite, and
    each convolution as one call (a subclass, such as ``OneOutputConv2d``, too: its path
    depends on the frame size, which tracing cannot follow)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, TemporalShift | nn.Conv2d):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _rewrite_backbone(backbone: nn.Module, streaming: bool) -> tuple[fx.GraphModule, int]:
    """The backbone's forward with each shift made streaming (or removed), sharing its modules.

    Streaming: ``(frame, buffer_0, ..., buffer_{N-1}) -> (features, new_buffer_0, ...)``,
    buffers in the order the shifted blocks run. Not streaming: ``frame -> features``, the
    same 2D network without any shift (the latency baseline).
    """
    graph = _ShiftLeafTracer().trace(backbone)
    modules = dict(backbone.named_modules())
    owned: dict[str, object] = {}
    last_input = next(node for node in graph.nodes if node.op == "placeholder")
    new_buffers: list[fx.Node] = []
    for node in list(graph.nodes):
        if node.op == "get_attr":
            owned[node.target] = operator.attrgetter(node.target)(backbone)
            continue
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if not isinstance(module, TemporalShift):
            owned[node.target] = module
        elif not streaming:  # x -> net(x)
            node.target = f"{node.target}.net"
            owned[node.target] = module.net
        else:  # x -> swap_in(x, buffer) -> net(x) -> restore(x): out, new buffer
            with graph.inserting_after(last_input):
                buffer = graph.placeholder(f"buffer_{len(new_buffers)}")
            last_input = buffer
            x = node.args[0]
            with graph.inserting_before(node):
                swapped = graph.call_function(swap_in, (x, buffer, module.fold_div))
                new_buffer = graph.call_function(operator.getitem, (swapped, 0))
                head = graph.call_function(operator.getitem, (swapped, 1))
            node.target = f"{node.target}.net"
            owned[node.target] = module.net
            with graph.inserting_after(node):
                result = graph.call_function(restore, (node, head, new_buffer))
            node.replace_all_uses_with(result, delete_user_cb=lambda user, r=result: user is not r)
            new_buffers.append(new_buffer)
    if new_buffers:
        output = next(node for node in graph.nodes if node.op == "output")
        output.args = ((output.args[0], *new_buffers),)
    graph.lint()
    return fx.GraphModule(owned, graph), len(new_buffers)


class _BufferShapeProbe(fx.Interpreter):
    """Run the streaming backbone once, feeding each ``swap_in`` a zero buffer cut to its input."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.shapes: list[tuple[int, ...]] = []

    def call_function(self, target, args, kwargs):
        if target is not swap_in:
            return super().call_function(target, args, kwargs)
        x, _, fold_div = args  # x (1, C, H', W'); the buffer placeholder holds None
        buffer = x.new_zeros(x.shape[0], x.shape[1] // fold_div, *x.shape[2:])
        self.shapes.append(tuple(buffer.shape))
        return swap_in(x, buffer, fold_div)  # (new buffer, head)


class StreamingTSM(nn.Module):
    """A TSN run one frame at a time: ``forward(frame, *buffers) -> (logits, *new_buffers)``.

    Built from an offline TSN of any shift mode; it shares that model's modules (and so its
    weights) and always shifts one way, from the past. ``frame`` is ``(1, 3, H, W)``,
    normalised like the offline input; there is one buffer per shifted block, shaped
    ``(1, C // fold_div, H', W')`` like that block's input, all zero at the start of a stream
    (``initial_buffers``). Inference only: put the model in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        spec = getattr(model, "spec", None)
        if spec is not None:  # a flow model's segment is not one frame: refused here
            check_streamable(spec, f"this {spec.arch} model")
        self.backbone, self.num_buffers = _rewrite_backbone(model.base_model, streaming=True)
        self.dropout = model.dropout
        self.new_fc = model.new_fc
        self._shapes: dict[tuple[int, int], list[tuple[int, ...]]] = {}

    def forward(self, frame: Tensor, *buffers: Tensor) -> tuple[Tensor, ...]:
        features, *new_buffers = self.forward_features(frame, *buffers)  # (1, D)
        return (self.new_fc(self.dropout(features)), *new_buffers)  # (1, K), ...

    def forward_features(self, frame: Tensor, *buffers: Tensor) -> tuple[Tensor, ...]:
        """``(features (1, D), *new_buffers)``: the backbone output before dropout and head."""
        if len(buffers) != self.num_buffers:
            raise ValueError(f"expected {self.num_buffers} buffers, got {len(buffers)}")
        out = self.backbone(frame, *buffers)
        return tuple(out) if self.num_buffers else (out,)

    def buffer_shapes(self, height: int, width: int) -> list[tuple[int, ...]]:
        """Shape of each buffer for frames of ``height x width``, by one dry run (cached)."""
        key = (int(height), int(width))
        if key not in self._shapes:
            probe = _BufferShapeProbe(self.backbone)
            parameter = next(self.parameters())
            frame = torch.zeros(1, 3, *key, dtype=parameter.dtype, device=parameter.device)
            with torch.no_grad():
                probe.run(frame, *([None] * self.num_buffers))
            self._shapes[key] = probe.shapes
        return list(self._shapes[key])

    def initial_buffers(self, height: int, width: int) -> list[Tensor]:
        """Zero buffers that start a stream of ``height x width`` frames."""
        parameter = next(self.parameters())
        return [
            torch.zeros(shape, dtype=parameter.dtype, device=parameter.device)
            for shape in self.buffer_shapes(height, width)
        ]

    def cache_bytes(self, height: int, width: int) -> int:
        """Memory the shift buffers hold between frames: the whole cost of streaming state."""
        size = next(self.parameters()).element_size()
        return sum(size * _numel(shape) for shape in self.buffer_shapes(height, width))


class FrameModel(nn.Module):
    """The same 2D network without any shift, one frame to logits: the latency baseline."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, _ = _rewrite_backbone(model.base_model, streaming=False)
        self.dropout = model.dropout
        self.new_fc = model.new_fc

    def forward(self, frame: Tensor) -> Tensor:
        return self.new_fc(self.dropout(self.backbone(frame)))  # (1, K)


class Stream(NamedTuple):
    """What ``run_stream`` returns."""

    outputs: Tensor  # (T, ...): the first output of every step, e.g. per-frame logits
    buffers: list[Tensor]  # the state after the last frame


def run_stream(step: StepFn, frames: Tensor, buffers: Sequence[Tensor]) -> Stream:
    """Feed ``frames (T, 3, H, W)`` one at a time through ``step``, threading the buffers.

    ``step`` is anything with the streaming signature: the PyTorch model, its TorchScript
    trace, or an ONNX session wrapped in a function.
    """
    outputs = []
    buffers = list(buffers)
    for frame in frames:
        first, *buffers = step(frame.unsqueeze(0), *buffers)
        outputs.append(first)
    return Stream(torch.cat(outputs), buffers)


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
