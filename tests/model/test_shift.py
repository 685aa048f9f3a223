"""The temporal shift against references written straight from the seed's formula."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from tsmcli.model.shift import TemporalShift, shift_plan, shifted_pointwise_conv, temporal_shift


def seed_shift(x: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """The seed document's ``shift``, verbatim in behaviour: zeros, then three slice copies."""
    nt, c, h, w = x.size()
    x = x.view(nt // n_segment, n_segment, c, h, w)
    out = torch.zeros_like(x)
    fold = c // fold_div
    out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # shift right
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]  # not shift
    return out.view(nt, c, h, w)


def online_shift(x: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """What the online model's buffer computes: channels [0, fold) from the previous frame."""
    nt, c, h, w = x.size()
    x = x.view(nt // n_segment, n_segment, c, h, w)
    out = torch.zeros_like(x)
    fold = c // fold_div
    out[:, 1:, :fold] = x[:, :-1, :fold]
    out[:, :, fold:] = x[:, :, fold:]
    return out.view(nt, c, h, w)


REFERENCES = {"bidirectional": seed_shift, "unidirectional": online_shift}


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("segments", [1, 2, 3, 8])
def test_shift_equals_reference_exactly(direction, segments):
    for channels in (1, 3, 7, 13, 17, 64):  # most not divisible by 8
        for fold_div in (1, 2, 3, 8):
            x = torch.randn(2 * segments, channels, 3, 2)
            before = x.clone()
            out = temporal_shift(x, segments, fold_div, direction)
            assert torch.equal(out, REFERENCES[direction](x, segments, fold_div)), (
                channels,
                fold_div,
            )
            assert torch.equal(x, before)  # the input is not modified


def test_shift_moves_the_documented_channels():
    # clip of 3 frames whose values say (frame, channel): 100 * t + c
    t = torch.arange(3).view(3, 1, 1, 1)
    c = torch.arange(16).view(1, 16, 1, 1)
    x = (100 * t + c).float().expand(3, 16, 1, 1).contiguous()
    out = temporal_shift(x, 3, 8)[:, :, 0, 0]  # (T, C), fold = 2
    assert out[0, :2].tolist() == [100, 101]  # from t+1
    assert out[2, :2].tolist() == [0, 0]  # no t+1 after the last frame
    assert out[1, 2:4].tolist() == [2, 3]  # from t-1
    assert out[0, 2:4].tolist() == [0, 0]  # no t-1 before the first frame
    assert out[1, 4:].tolist() == [100 + k for k in range(4, 16)]  # unchanged
    one_way = temporal_shift(x, 3, 8, "unidirectional")[:, :, 0, 0]
    assert one_way[2, :2].tolist() == [100, 101] and one_way[0, :2].tolist() == [0, 0]
    assert torch.equal(one_way[:, 2:], x[:, 2:, 0, 0])


def test_plan():
    assert shift_plan(16, 8, "bidirectional") == ((0, 2, 1), (2, 4, -1), (4, 16, 0))
    assert shift_plan(16, 8, "unidirectional") == ((0, 2, -1), (2, 16, 0))
    assert shift_plan(16, 1, "bidirectional") == ((0, 16, 1),)  # as the seed's slices
    assert shift_plan(5, 8, "bidirectional") == ((0, 5, 0),)  # fold 0: nothing moves
    with pytest.raises(ValueError, match="sideways"):
        shift_plan(16, 8, "sideways")


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_gradcheck(direction):
    x = torch.randn(2 * 3, 16, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: temporal_shift(v, 3, 8, direction), (x,))


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("clips", [1, 3])
def test_fused_pointwise_conv_equals_shift_then_conv(direction, clips):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 5, 1).double()
    shifted = TemporalShift(conv, 4, 8, direction)
    assert shifted.fused
    x = torch.randn(clips * 4, 24, 3, 5, dtype=torch.float64)
    with torch.no_grad():  # the fused product serves the forward alone
        expected = conv(REFERENCES[direction](x, 4, 8))
        assert torch.allclose(shifted(x), expected, rtol=0, atol=1e-12)
        # float32 and no bias
        conv32 = nn.Conv2d(24, 7, 1, bias=False)
        x32 = torch.randn(clips * 4, 24, 6, 6)
        out = TemporalShift(conv32, 4, 8, direction)(x32)
        assert torch.allclose(out, conv32(REFERENCES[direction](x32, 4, 8)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_fused_gradcheck_and_same_gradients_as_plain(direction):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 3, 1).double()
    x = torch.randn(2 * 3, 16, 2, 2, dtype=torch.float64, requires_grad=True)
    plan = shift_plan(16, 8, direction)
    assert torch.autograd.gradcheck(
        lambda v, w, b: shifted_pointwise_conv(v, w, b, 3, plan), (x, conv.weight, conv.bias)
    )
    upstream = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    fused = shifted_pointwise_conv(x, conv.weight, conv.bias, 3, plan)
    plain = TemporalShift(conv, 3, 8, direction, fuse=False)(x)
    grads = [
        torch.autograd.grad((out * upstream).sum(), (x, conv.weight, conv.bias))
        for out in (fused, plain)
    ]
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def _count_fused_calls(monkeypatch) -> list[int]:
    import tsmcli.model.shift as shift_module

    calls = [0]
    real = shift_module.shifted_pointwise_conv

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(shift_module, "shifted_pointwise_conv", counting)
    return calls


def test_autograd_takes_the_plain_shift_and_inference_the_fused_product(monkeypatch):
    calls = _count_fused_calls(monkeypatch)
    conv = nn.Conv2d(16, 4, 1)
    shifted = TemporalShift(conv, 4)
    x = torch.randn(8, 16, 3, 3)
    train_out = shifted(x)  # grad enabled: its backward is cheaper without the fused product
    assert calls[0] == 0 and train_out.requires_grad
    with torch.no_grad():
        eval_out = shifted(x)
    assert calls[0] == 1
    assert torch.allclose(train_out, eval_out, rtol=0, atol=1e-5)
    assert torch.allclose(train_out, conv(seed_shift(x, 4, 8)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
def test_channels_last_stays_channels_last_with_the_same_values_and_gradients(direction):
    x = torch.randn(2 * 3, 16, 3, 2, dtype=torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = temporal_shift(x_cl, 3, 8, direction)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, REFERENCES[direction](x, 3, 8))
    assert torch.autograd.gradcheck(lambda v: temporal_shift(v, 3, 8, direction), (x_cl,))
    upstream = torch.randn_like(x)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x_cl)
    plain = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad((REFERENCES[direction](plain, 3, 8) * upstream).sum(), plain)
    assert torch.equal(grad, expected)


def test_fused_under_cpu_autocast_matches_the_conv():
    conv = nn.Conv2d(16, 4, 1)
    x = torch.randn(8, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = TemporalShift(conv, 4)(x)
        expected = conv(seed_shift(x, 4, 8))
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected.float(), atol=0.05)


def test_non_pointwise_net_uses_the_plain_shift():
    conv = nn.Conv2d(16, 4, 3, padding=1)
    shifted = TemporalShift(conv, 4, 4)
    assert not shifted.fused
    x = torch.randn(8, 16, 5, 5)
    assert torch.equal(shifted(x), conv(seed_shift(x, 4, 4)))
    assert set(shifted.state_dict()) == {"net.weight", "net.bias"}  # official key layout


class _Net(nn.Module):
    def __init__(self, fuse: bool):
        super().__init__()
        self.pre = nn.Conv2d(16, 16, 1)
        self.shift = TemporalShift(nn.Conv2d(16, 8, 1), 4, 8, fuse=fuse)

    def forward(self, x):
        return self.shift(self.pre(x))


@pytest.mark.parametrize("fuse", [True, False])
def test_trace_does_not_bake_batch_or_size(fuse):
    net = _Net(fuse).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace deprecation notice
        traced = torch.jit.trace(net, torch.randn(4, 16, 5, 5))
    other = torch.randn(3 * 4, 16, 7, 6)  # three clips, another size
    expected = net.shift.net(seed_shift(net.pre(other), 4, 8))
    assert torch.allclose(traced(other), expected, atol=1e-5)


def test_onnx_export_is_correct_on_another_batch():
    ort = pytest.importorskip("onnxruntime")
    net = _Net(fuse=True).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(4, 16, 5, 5),),
            buffer,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "frames"}},
        )
    session = ort.InferenceSession(buffer.getvalue())
    other = torch.randn(2 * 4, 16, 5, 5)
    (out,) = session.run(None, {"x": other.numpy()})
    expected = net.shift.net(seed_shift(net.pre(other), 4, 8))
    assert torch.allclose(torch.from_numpy(out), expected, atol=1e-5)
