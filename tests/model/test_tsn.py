"""The TSN wrapper: shapes, consensus, what the shift changes, config round trip, partial BN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsmcli.errors import UsageError
from tsmcli.model.tsn import TSN, build_model

CLIPS, SEGMENTS, SIZE = 2, 4, 32


def clip_batch(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(CLIPS, SEGMENTS, 3, SIZE, SIZE, generator=generator)  # (B, T, 3, H, W)


def model_with(shift: str, arch: str = "resnet18", **kwargs) -> TSN:
    torch.manual_seed(0)
    model = build_model(arch, 5, num_segments=SEGMENTS, shift=shift, **kwargs).eval()
    nn.init.normal_(model.new_fc.weight, 0.0, 1.0)  # visible logits, not ~0.001 * features
    return model


def test_shapes():
    model = model_with("bidirectional")
    x = clip_batch()
    with torch.no_grad():
        assert model(x).shape == (CLIPS, 5)
        assert model.frame_logits(x).shape == (CLIPS, SEGMENTS, 5)
        assert model.features(x).shape == (CLIPS, SEGMENTS, 512)
    assert (model.num_segments, model.num_classes, model.shift) == (SEGMENTS, 5, "bidirectional")
    assert isinstance(model.base_model.fc, nn.Identity)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5


def test_head_init_is_the_official_one():
    torch.manual_seed(0)
    model = build_model("resnet18", 40, num_segments=2, shift="none")
    assert torch.count_nonzero(model.new_fc.bias) == 0
    std = model.new_fc.weight.std().item()  # 40 * 512 samples of N(0, 0.001)
    assert 0.00097 < std < 0.00103


def test_consensus_is_the_mean_of_frame_logits_and_the_head_runs_per_frame():
    model = model_with("bidirectional")
    x = clip_batch()
    with torch.no_grad():
        frames = model.frame_logits(x)
        assert torch.allclose(model(x), frames.mean(dim=1), atol=1e-6)
        # per frame: the head applied to each frame's feature, not to pooled features
        features = model.features(x)  # (B, T, D)
        head = features @ model.new_fc.weight.T + model.new_fc.bias
        assert torch.allclose(frames, head, rtol=1e-5, atol=1e-4)


def test_without_shift_frames_are_independent_and_order_does_not_matter():
    model = model_with("none")
    x = clip_batch()
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(model(x.flip(1)), logits, atol=1e-5)  # time reversal
        assert torch.allclose(
            model.frame_logits(x.flip(1)), model.frame_logits(x).flip(1), atol=1e-5
        )


@pytest.mark.parametrize("shift", ["bidirectional", "unidirectional"])
def test_with_shift_time_order_matters(shift):
    model = model_with(shift)
    x = clip_batch()
    with torch.no_grad():
        difference = (model(x.flip(1)) - model(x)).abs().max().item()
    assert difference > 1e-2


def test_unidirectional_frames_do_not_see_the_future():
    model = model_with("unidirectional")
    x = clip_batch()
    changed = x.clone()
    changed[:, -1] = torch.randn_like(changed[:, -1])  # only the last frame differs
    with torch.no_grad():
        before, after = model.frame_logits(x), model.frame_logits(changed)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5)
    assert not torch.allclose(before[:, -1], after[:, -1], atol=1e-3)


def test_config_round_trip():
    model = model_with("unidirectional", shift_div=4, dropout=0.3, partial_bn=True)
    config = model.config()
    assert config == {
        "arch": "resnet18",
        "num_classes": 5,
        "num_segments": SEGMENTS,
        "shift": "unidirectional",
        "shift_div": 4,
        "shift_place": "blockres",
        "dropout": 0.3,
        "partial_bn": True,
        "modality": "rgb",
        "new_length": 1,
    }
    rebuilt = build_model(**config)
    assert rebuilt.config() == config
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = clip_batch()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def batch_norms(model: TSN) -> list[nn.BatchNorm2d]:
    return [m for m in model.base_model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_partial_bn_freezes_every_batchnorm_but_the_first():
    model = model_with("bidirectional", partial_bn=True)
    norms = batch_norms(model)
    # frozen from construction on, so an optimizer built before train() leaves them out
    assert [n.weight.requires_grad for n in norms] == [True] + [False] * (len(norms) - 1)
    model.train()
    assert model.training and model.dropout.training
    assert [n.training for n in norms] == [True] + [False] * (len(norms) - 1)
    before = [n.running_mean.clone() for n in norms]
    model(clip_batch())
    assert not torch.equal(norms[0].running_mean, before[0])  # first BN still learns stats
    assert all(torch.equal(n.running_mean, b) for n, b in zip(norms[1:], before[1:], strict=True))
    model.eval()
    assert not any(n.training for n in norms)


def test_without_partial_bn_all_batchnorms_train():
    model = model_with("bidirectional").train()
    norms = batch_norms(model)
    assert all(n.training and n.weight.requires_grad for n in norms)


def test_wrong_clip_length_is_refused():
    model = model_with("bidirectional")
    with pytest.raises(ValueError, match="num_segments=3"):
        model(torch.randn(1, 3, 3, SIZE, SIZE))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shift": "both"}, "model shift must be one of none, bidirectional, unidirectional"),
        ({"num_segments": 0}, "model num_segments must be at least 1, got 0"),
        ({"dropout": 1.0}, "model dropout must be in"),
        ({"shift_place": "res"}, "model shift_place must be one of blockres, block"),
    ],
)
def test_bad_arguments_name_the_option(kwargs, message):
    with pytest.raises(UsageError, match=message):
        build_model("resnet18", 5, **kwargs)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_channels_last_trains_like_the_plain_layout(arch):
    # train.channels_last is a speed setting: the same step must give the same loss and
    # gradients, with the shift kept in the tensors' own layout. In float64 the two layouts
    # agree to rounding; in float32, 50 layers of batch-statistics backward let the kernels'
    # different summation orders grow to ~1% in the first layers, which would hide a bug.
    torch.manual_seed(0)
    plain = build_model(arch, num_classes=5, num_segments=4, dropout=0.0).double()
    fast = build_model(arch, num_classes=5, num_segments=4, dropout=0.0).double()
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    clips = torch.randn(2, 4, 3, 32, 32, dtype=torch.float64)  # (B, T, 3, H, W)
    labels = torch.tensor([1, 3])
    losses, grads = [], []
    for model in (plain, fast):
        loss = nn.functional.cross_entropy(model(clips), labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert torch.allclose(losses[0], losses[1], rtol=1e-10, atol=0)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], rtol=1e-7, atol=1e-10), name
