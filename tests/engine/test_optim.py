"""Parameter groups of the official policy, and the lr schedule at hand-computed points."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tsmcli.engine.optim import (
    LRSchedule,
    build_optimizer,
    fc_lr5_enabled,
    parameter_groups,
    scaled_lr,
)
from tsmcli.recipe import OptimConfig, load_recipe


class Tiny(nn.Module):
    """conv(bias) -> bn -> conv(no bias) -> frozen bn -> linear: one of each policy case."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.bn2.weight.requires_grad_(False)  # as partial BN freezes it
        self.bn2.bias.requires_grad_(False)
        self.new_fc = nn.Linear(4, 2)


def _by_name(groups):
    return {g["name"]: g for g in groups}


@pytest.mark.parametrize("fc_lr5", [False, True])
def test_groups_follow_the_official_policy(fc_lr5):
    model = Tiny()
    groups = _by_name(parameter_groups(model, fc_lr5=fc_lr5))
    ids = {name: [id(p) for p in g["params"]] for name, g in groups.items()}
    assert ids["first_conv_weight"] == [id(model.conv1.weight)]
    assert ids["first_conv_bias"] == [id(model.conv1.bias)]
    assert ids["norm"] == [id(model.bn1.weight), id(model.bn1.bias)]  # frozen bn2 left out
    mults = {name: (g["lr_mult"], g["decay_mult"]) for name, g in groups.items()}
    assert mults["first_conv_weight"] == (1, 1) and mults["first_conv_bias"] == (2, 0)
    assert mults["norm"] == (1, 0)
    if fc_lr5:
        assert ids["normal_weight"] == [id(model.conv2.weight)]
        assert ids["fc_weight_lr5"] == [id(model.new_fc.weight)] and mults["fc_weight_lr5"] == (
            5,
            1,
        )
        assert ids["fc_bias_lr10"] == [id(model.new_fc.bias)] and mults["fc_bias_lr10"] == (10, 0)
        assert "normal_bias" not in groups  # empty groups are left out
    else:
        assert ids["normal_weight"] == [id(model.conv2.weight), id(model.new_fc.weight)]
        assert ids["normal_bias"] == [id(model.new_fc.bias)] and mults["normal_bias"] == (2, 0)
        assert "fc_weight_lr5" not in groups
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [i for g in groups.values() for i in (id(p) for p in g["params"])]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter exactly once


def test_optimizer_lr_and_decay_per_group():
    config = OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-4)
    optimizer = build_optimizer(Tiny(), config, lr=0.05, fc_lr5=True)
    got = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert got["first_conv_weight"] == pytest.approx((0.05, 1e-4))
    assert got["first_conv_bias"] == pytest.approx((0.1, 0.0))
    assert got["norm"] == pytest.approx((0.05, 0.0))
    assert got["fc_weight_lr5"] == pytest.approx((0.25, 1e-4))
    assert got["fc_bias_lr10"] == pytest.approx((0.5, 0.0))
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_adamw_keeps_the_same_groups():
    sgd = build_optimizer(Tiny(), OptimConfig(weight_decay=1e-4), lr=0.05, fc_lr5=True)
    adamw = build_optimizer(
        Tiny(), OptimConfig(optimizer="adamw", weight_decay=1e-4), lr=0.05, fc_lr5=True
    )
    assert isinstance(adamw, torch.optim.AdamW)

    def settings(optimizer):
        return {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}

    assert settings(adamw) == settings(sgd)  # decoupled decay still off for biases and BN


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop():
    """The fused AdamW makes the same update as torch's per-tensor AdamW, to float rounding."""
    torch.manual_seed(0)
    fused_model, loop_model = Tiny(), Tiny()
    loop_model.load_state_dict(fused_model.state_dict())
    start = fused_model.conv1.weight.detach().clone()
    config = OptimConfig(optimizer="adamw", weight_decay=1e-2)
    fused = build_optimizer(fused_model, config, lr=0.01, fc_lr5=True)
    assert fused.defaults["fused"] is True
    params = dict(loop_model.named_parameters())
    groups = [
        {**group, "params": [params[name] for name in names]}
        for group, names in zip(fused.param_groups, _group_names(fused_model, fused), strict=True)
    ]
    loop = torch.optim.AdamW(groups, foreach=False)
    for step in range(3):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            _forward(model, x).square().sum().backward()
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert (fused_model.conv1.weight != start).all()  # every weight moved


def _forward(model: Tiny, x: torch.Tensor) -> torch.Tensor:
    features = model.bn2(model.conv2(model.bn1(model.conv1(x))))  # (N, 4, H', W')
    return model.new_fc(features.mean(dim=(2, 3)))  # (N, 2)


def _group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def test_unknown_parametrised_module_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.PReLU())
    with pytest.raises(ValueError, match="PReLU"):
        parameter_groups(model, fc_lr5=False)


def test_fc_lr5_auto_and_linear_scaling():
    assert fc_lr5_enabled(load_recipe("kinetics_r50")) is True  # from ImageNet
    assert fc_lr5_enabled(load_recipe("demo")) is False  # from scratch
    assert fc_lr5_enabled(load_recipe("demo", ["model.init_from=k.pt"])) is True
    assert fc_lr5_enabled(load_recipe("kinetics_r50", ["optim.fc_lr5=false"])) is False
    assert scaled_lr(0.02, 128, 256) == pytest.approx(0.04)  # the README's example
    assert scaled_lr(0.02, 128, 16) == pytest.approx(0.0025)


def test_step_schedule_with_warmup():
    s = LRSchedule(
        base_lr=0.1, epochs=10, iters_per_epoch=4, schedule="step", lr_steps=(3, 6), warmup_epochs=1
    )
    assert s.warmup_iters == 4
    assert [s.lr_at(0, i) for i in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert s.lr_at(1, 0) == pytest.approx(0.1)
    assert s.lr_at(2, 3) == pytest.approx(0.1)
    assert s.lr_at(3, 0) == pytest.approx(0.01)
    assert s.lr_at(6, 2) == pytest.approx(0.001)


def test_step_schedule_at_fractional_steps_decays_mid_epoch():
    s = LRSchedule(base_lr=1.0, epochs=4, iters_per_epoch=4, schedule="step", lr_steps=(1.5,))
    assert [s.lr_at(1, i) for i in range(4)] == pytest.approx([1, 1, 0.1, 0.1])


def test_cosine_schedule():
    s = LRSchedule(base_lr=0.2, epochs=4, iters_per_epoch=5, schedule="cosine")
    assert s.lr_at(0, 0) == pytest.approx(0.2)
    assert s.lr_at(2, 0) == pytest.approx(0.1)  # half way
    assert s.lr_at(3, 0) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.75)))
    assert s.lr_at(1, 2) == pytest.approx(0.1 * (1 + math.cos(math.pi * 1.4 / 4)))
    warm = LRSchedule(
        base_lr=0.2, epochs=4, iters_per_epoch=5, schedule="cosine", warmup_epochs=0.4
    )
    assert warm.lr_at(0, 0) == pytest.approx(0.1)  # step 1 of 2 of warmup
    assert warm.lr_at(0, 2) == pytest.approx(s.lr_at(0, 2))  # warmup over


def test_apply_sets_group_lrs_from_the_schedule_alone():
    model = Tiny()
    optimizer = build_optimizer(model, OptimConfig(), lr=0.1, fc_lr5=True)
    s = LRSchedule(base_lr=0.1, epochs=10, iters_per_epoch=3, lr_steps=(2,))
    assert s.apply(optimizer, 2, 1) == pytest.approx(0.01)
    got = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert got["fc_bias_lr10"] == pytest.approx(0.1) and got["normal_weight"] == pytest.approx(0.01)
    # a fresh optimizer at the same (epoch, iteration) gets the same rates: nothing to resume
    fresh = build_optimizer(model, OptimConfig(), lr=0.1, fc_lr5=True)
    s.apply(fresh, 2, 1)
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_policy_on_a_tsn_model():
    from tsmcli.model.tsn import build_model

    model = build_model("resnet18", num_classes=5, num_segments=2, pretrained=None)
    groups = _by_name(parameter_groups(model, fc_lr5=True))
    first = model.base_model.conv1
    first = getattr(first, "net", first)
    assert [id(p) for p in groups["first_conv_weight"]["params"]] == [id(first.weight)]
    assert {id(p) for p in groups["fc_weight_lr5"]["params"]} == {id(model.new_fc.weight)}
    assert {id(p) for p in groups["fc_bias_lr10"]["params"]} == {id(model.new_fc.bias)}
    bn_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in m.parameters()
        if p.requires_grad
    }
    assert {id(p) for p in groups["norm"]["params"]} == bn_params
    assert sum(len(g["params"]) for g in groups.values()) == sum(
        1 for p in model.parameters() if p.requires_grad
    )
    assert torch.is_tensor(groups["normal_weight"]["params"][0])


def test_a_flow_models_first_conv_learns_at_5x_and_its_bias_at_10x():
    """The official get_optim_policies for modality Flow; every other group as for RGB."""
    from tsmcli.model.tsn import build_model

    model = Tiny()
    model.modality = "flow"  # as TSN has it, from its spec
    flow = _by_name(parameter_groups(model, fc_lr5=True))
    rgb = _by_name(parameter_groups(Tiny(), fc_lr5=True))
    mults = {name: (g["lr_mult"], g["decay_mult"]) for name, g in flow.items()}
    assert mults["first_conv_weight"] == (5, 1) and mults["first_conv_bias"] == (10, 0)
    for name in set(flow) - {"first_conv_weight", "first_conv_bias"}:
        assert (rgb[name]["lr_mult"], rgb[name]["decay_mult"]) == mults[name], name
    tsn = build_model("resnet18", num_classes=5, num_segments=2, modality="flow")
    groups = _by_name(parameter_groups(tsn, fc_lr5=False))
    assert [id(p) for p in groups["first_conv_weight"]["params"]] == [
        id(tsn.base_model.conv1.weight)
    ]
    assert groups["first_conv_weight"]["lr_mult"] == 5
    optimizer = build_optimizer(tsn, OptimConfig(lr=0.02), lr=0.01, fc_lr5=False)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["first_conv_weight"] == pytest.approx(0.05) and lrs["normal_weight"] == 0.01
