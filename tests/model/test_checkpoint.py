"""Checkpoint I/O: official TSM and mmaction2 files give the official model's logits; our
format round-trips; mismatches are one clear line; saving is atomic."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tsmcli.errors import CheckpointError, UsageError
from tsmcli.model.checkpoint import (
    checkpoint_dict,
    load_model,
    load_weights_for_finetune,
    read_checkpoint,
)
from tsmcli.model.tsn import build_model, load_pretrained_backbone
from tsmcli.model.weights import load_checkpoint, save_checkpoint

SEGMENTS, SIZE = 4, 32


# ---------------------------------------------------------------------------------------------
# an independent minimal reference of the official model, from the official code's behaviour


def seed_shift(x: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """The seed's shift: zeros, then three slice copies."""
    nt, c, h, w = x.size()
    x = x.view(nt // n_segment, n_segment, c, h, w)
    out = torch.zeros_like(x)
    fold = c // fold_div
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class OfficialShift(nn.Module):
    def __init__(self, net: nn.Module, n_segment: int, n_div: int):
        super().__init__()
        self.net, self.n_segment, self.fold_div = net, n_segment, n_div

    def forward(self, x):
        return self.net(seed_shift(x, self.n_segment, self.fold_div))


def official_resnet_shift(net: nn.Module, n_segment: int, n_div: int, place: str) -> None:
    n_round = 2 if len(list(net.layer3.children())) >= 23 else 1
    for name in ("layer1", "layer2", "layer3", "layer4"):
        blocks = list(getattr(net, name).children())
        for i, b in enumerate(blocks):
            if place == "block":
                blocks[i] = OfficialShift(b, n_segment, n_div)
            elif i % n_round == 0:
                b.conv1 = OfficialShift(b.conv1, n_segment, n_div)
        setattr(net, name, nn.Sequential(*blocks))


class OfficialInvertedResidual(nn.Module):
    """The official repository's MobileNetV2 block: one flat Sequential."""

    def __init__(self, inp: int, oup: int, stride: int, t: int):
        super().__init__()
        hidden = inp * t
        self.use_res_connect = stride == 1 and inp == oup
        dw = [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
        ]
        pw_linear = [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        expand = (
            [
                nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
            if t != 1
            else []
        )
        self.conv = nn.Sequential(*expand, *dw, *pw_linear)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class OfficialMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        layers = [
            nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)
            )
        ]
        channels = 32
        for t, c, n, s in [
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 3, 2],
            [6, 64, 4, 2],
            [6, 96, 3, 1],
            [6, 160, 3, 2],
            [6, 320, 1, 1],
        ]:
            for i in range(n):
                layers.append(OfficialInvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(
            nn.Sequential(
                nn.Conv2d(320, 1280, 1, 1, 0, bias=False),
                nn.BatchNorm2d(1280),
                nn.ReLU6(inplace=True),
            )
        )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, 1000)

    def forward(self, x):
        return self.classifier(self.features(x).mean(3).mean(2))


class OfficialTSN(nn.Module):
    """base_model with shift, its last layer replaced by Dropout (or by the head when
    dropout is 0), new_fc per frame, reshape to (B, T, K), mean."""

    def __init__(
        self,
        arch: str,
        num_class: int,
        num_segments: int,
        is_shift: bool = True,
        n_div: int = 8,
        place: str = "blockres",
        dropout: float = 0.5,
    ):
        super().__init__()
        self.num_segments = num_segments
        if arch == "mobilenetv2":
            self.base_model = OfficialMobileNetV2()
            last = "classifier"
            if is_shift:
                for m in self.base_model.modules():
                    if (
                        isinstance(m, OfficialInvertedResidual)
                        and len(m.conv) == 8
                        and m.use_res_connect
                    ):
                        m.conv[0] = OfficialShift(m.conv[0], num_segments, n_div)
        else:
            self.base_model = getattr(torchvision.models, arch)(weights=None)
            last = "fc"
            if is_shift:
                official_resnet_shift(self.base_model, num_segments, n_div, place)
        feature_dim = getattr(self.base_model, last).in_features
        if dropout == 0:
            setattr(self.base_model, last, nn.Linear(feature_dim, num_class))
            self.new_fc = None
        else:
            setattr(self.base_model, last, nn.Dropout(p=dropout))
            self.new_fc = nn.Linear(feature_dim, num_class)

    def forward(self, input):  # (B, T*3, H, W)
        base_out = self.base_model(input.view((-1, 3) + input.size()[-2:]))
        if self.new_fc is not None:
            base_out = self.new_fc(base_out)
        base_out = base_out.view((-1, self.num_segments) + base_out.size()[1:])
        return base_out.mean(dim=1)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and statistics and a random head (convolutions keep their
    random init), at scales that keep logits O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(
                    0.2 + 0.3 * torch.rand(module.weight.shape, generator=generator)
                )
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
                module.running_mean.copy_(
                    0.1 * torch.randn(module.running_mean.shape, generator=generator)
                )
                module.running_var.copy_(
                    0.5 + torch.rand(module.running_var.shape, generator=generator)
                )
            elif isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def clips(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, SEGMENTS, 3, SIZE, SIZE, generator=generator)  # (B, T, 3, H, W)


def official_file(tmp_path: Path, reference: OfficialTSN, name: str = "official.pth") -> Path:
    """As the official training script saves: DataParallel keys, plus epoch / arch / best."""
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / name
    torch.save({"epoch": 50, "arch": "resnet", "state_dict": state, "best_prec1": 71.2}, path)
    return path


def reference_logits(reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(x.reshape(x.shape[0], -1, *x.shape[-2:]))  # official input (B, T*3, H, W)


# ---------------------------------------------------------------------------------------------
# official and mmaction2 files give the official model's logits


@pytest.mark.parametrize(
    ("arch", "place", "dropout"),
    [
        ("resnet50", "blockres", 0.5),
        ("resnet18", "block", 0.5),
        ("resnet18", "blockres", 0.0),
        ("mobilenetv2", "blockres", 0.5),
    ],
)
def test_official_checkpoint_gives_the_official_logits(tmp_path, arch, place, dropout):
    torch.manual_seed(0)
    reference = randomize(OfficialTSN(arch, 7, SEGMENTS, place=place, dropout=dropout))
    path = official_file(tmp_path, reference)
    ours = arch if arch != "mobilenetv2" else "mobilenet_v2"
    model = load_model(
        path, arch=ours, num_segments=SEGMENTS, shift="bidirectional", shift_place=place
    )
    assert not model.training and model.num_classes == 7
    x = clips()
    expected = reference_logits(reference, x)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero logits
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-4)


def to_mmaction2_key(key: str) -> str:
    """An official/torchvision TSN key in mmaction2's ResNetTSM + TSMHead layout."""
    if key.startswith("new_fc."):
        return "cls_head.fc_cls." + key[len("new_fc.") :]
    parts = key[len("base_model.") :].split(".")
    if parts[0] in ("conv1", "bn1"):  # stem: ConvModule(conv, bn)
        return "backbone.conv1." + ("conv." if parts[0] == "conv1" else "bn.") + ".".join(parts[1:])
    stage, index, layer, rest = parts[0], parts[1], parts[2], parts[3:]
    if layer.startswith("conv"):
        layer = f"{layer}.conv"
    elif layer.startswith("bn"):
        layer = f"conv{layer[2:]}.bn"
    elif layer == "downsample":
        layer = "downsample." + {"0": "conv", "1": "bn"}[rest[0]]
        rest = rest[1:]
    return "backbone." + ".".join([stage, index, layer, *rest])


def test_mmaction2_checkpoint_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    reference = randomize(OfficialTSN("resnet50", 6, SEGMENTS), seed=3)
    state = {to_mmaction2_key(k): v for k, v in reference.state_dict().items()}
    assert "backbone.layer1.0.conv1.conv.net.weight" in state
    assert "backbone.layer1.0.downsample.bn.running_var" in state
    assert "backbone.conv1.bn.weight" in state and "cls_head.fc_cls.bias" in state
    path = tmp_path / "tsm_mm.pth"
    torch.save({"meta": {"epoch": 50, "mmaction_version": "1.2.0"}, "state_dict": state}, path)
    model = load_model(path, arch="resnet50", num_segments=SEGMENTS, shift="bidirectional")
    x = clips()
    with torch.no_grad():
        assert torch.allclose(model(x), reference_logits(reference, x), rtol=0, atol=1e-4)


def test_official_checkpoint_needs_the_architecture(tmp_path):
    reference = OfficialTSN("resnet18", 3, SEGMENTS)
    path = official_file(tmp_path, reference)
    with pytest.raises(CheckpointError) as info:
        load_model(path, arch="resnet18")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "pass num_segments=, shift=" in message


def test_mismatch_is_one_line_with_counts_and_keys(tmp_path):
    reference = OfficialTSN("resnet18", 3, SEGMENTS)
    path = official_file(tmp_path, reference)
    with torch.device("meta"):  # key names only
        r34 = list(OfficialTSN("resnet34", 3, SEGMENTS).state_dict())
    missing = [k for k in r34 if k not in reference.state_dict()]
    with pytest.raises(CheckpointError) as info:
        load_model(path, arch="resnet34", num_segments=SEGMENTS, shift="bidirectional")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: weights do not fit the model")
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert f"{len(missing)} missing ({missing[0]}, {missing[1]}, {missing[2]}, ...)" in message
    assert "unexpected" not in message

    # a TSM file read as TSN: every shift wrapper's key is unexpected, and missing unwrapped
    with pytest.raises(CheckpointError) as info:
        load_model(path, arch="resnet18", num_segments=SEGMENTS, shift="none")
    assert "8 missing (base_model.layer1.0.conv1.weight" in str(info.value)
    assert "8 unexpected (base_model.layer1.0.conv1.net.weight" in str(info.value)

    with pytest.raises(
        CheckpointError,
        match=r"2 of another shape, file vs model \(new_fc.weight "
        r"\(3, 512\) vs \(5, 512\), new_fc.bias \(3,\) vs \(5,\)\)",
    ):
        load_model(
            path, arch="resnet18", num_segments=SEGMENTS, shift="bidirectional", num_classes=5
        )


# ---------------------------------------------------------------------------------------------
# our format


def test_our_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomize(
        build_model("resnet18", 4, num_segments=SEGMENTS, shift="unidirectional", shift_div=4)
    )
    path = save_checkpoint(
        checkpoint_dict(
            model,
            recipe={"model": {"arch": "resnet18"}},
            classes=["a", "b", "c", "d"],
            epoch=3,
            best_top1=55.5,
        ),
        tmp_path / "run" / "last.pth",
    )
    raw = load_checkpoint(path)
    assert raw["format"] == "tsmcli" and raw["format_version"] == 1 and raw["epoch"] == 3
    assert raw["model_config"] == model.config() and raw["classes"] == ["a", "b", "c", "d"]
    loaded = load_model(path)
    assert not loaded.training and loaded.config() == model.config()
    x = clips()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    longer = load_model(path, num_segments=2 * SEGMENTS)  # same weights, longer clips
    assert longer.num_segments == 2 * SEGMENTS


def test_a_checkpoint_read_once_builds_what_the_path_builds(tmp_path, monkeypatch):
    """CheckpointInfo holds what the commands need; load_model and the fine-tuning init take
    it instead of the path and do not read the file again."""
    torch.manual_seed(0)
    model = randomize(build_model("resnet18", 3, num_segments=SEGMENTS))
    recipe = {"name": "tiny", "data": {"input_size": 112}}
    path = save_checkpoint(
        checkpoint_dict(model, recipe=recipe, classes=("a", "b", "c"), epoch=2),
        tmp_path / "last.pt",
    )
    info = read_checkpoint(path)
    assert (info.path, info.format, info.classes, info.recipe) == (
        path,
        "tsmcli",
        ("a", "b", "c"),
        recipe,
    )
    assert info.model_config == model.config() and info.content["epoch"] == 2
    official = read_checkpoint(official_file(tmp_path, OfficialTSN("resnet18", 3, SEGMENTS)))
    assert (official.format, official.classes, official.recipe) == ("official", None, None)

    def no_second_read(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(torch, "load", no_second_read)
    x = clips()
    with torch.no_grad():
        assert torch.equal(load_model(info)(x), model.eval()(x))
    other = build_model("resnet18", 3, num_segments=SEGMENTS)
    assert load_weights_for_finetune(other, info).head_loaded
    assert torch.equal(other.new_fc.weight, model.new_fc.weight)


# ---------------------------------------------------------------------------------------------
# ImageNet weights and fine-tuning


@pytest.mark.parametrize(
    ("arch", "place"),
    [("resnet18", "blockres"), ("resnet18", "block"), ("mobilenet_v2", "blockres")],
)
def test_pretrained_backbone_maps_onto_the_shift_wrappers(tmp_path, arch, place):
    torch.manual_seed(0)
    imagenet = getattr(torchvision.models, arch)(weights=None).state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save(imagenet, path)
    model = build_model(
        arch, 3, num_segments=SEGMENTS, shift="bidirectional", shift_place=place, pretrained=path
    )
    ours = model.base_model.state_dict()
    head = "fc." if arch.startswith("resnet") else "classifier."
    plain = {k.replace(".net.", "."): v for k, v in ours.items()}
    assert set(plain) == {k for k in imagenet if not k.startswith(head)}
    assert all(torch.equal(plain[k], imagenet[k]) for k in plain)
    assert any(".net." in k for k in ours)


def test_finetune_init_keeps_the_backbone_and_resets_a_head_of_other_size(tmp_path):
    torch.manual_seed(0)
    reference = randomize(OfficialTSN("resnet18", 7, SEGMENTS))
    path = official_file(tmp_path, reference)
    same = build_model("resnet18", 7, num_segments=2, shift="bidirectional")
    report = load_weights_for_finetune(same, path)
    assert report.source_format == "official" and report.head_loaded
    assert torch.equal(same.new_fc.weight, reference.new_fc.weight)

    other = build_model("resnet18", 3, num_segments=SEGMENTS, shift="bidirectional")
    fresh_head = other.new_fc.weight.clone()
    report = load_weights_for_finetune(other, path)
    assert not report.head_loaded
    assert torch.equal(other.new_fc.weight, fresh_head)
    assert torch.equal(
        other.base_model.layer4[1].conv1.net.weight, reference.base_model.layer4[1].conv1.net.weight
    )


# ---------------------------------------------------------------------------------------------
# damaged weights


def test_weights_with_nan_or_inf_are_refused_wherever_a_model_is_built_from_them(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 3, num_segments=SEGMENTS)
    with torch.no_grad():
        model.base_model.bn1.running_var[:2] = float("nan")  # a buffer counts as a weight
        model.new_fc.weight[0, 0] = float("inf")
    path = save_checkpoint(checkpoint_dict(model), tmp_path / "diverged.pt")
    total = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    expected = (
        f"{path}: 3 of {total} weights are NaN or infinite (first: base_model.bn1.running_var); "
        "the checkpoint is damaged or came from a diverged run; use an earlier checkpoint"
    )
    assert read_checkpoint(path).format == "tsmcli"  # reading is fine; using is not
    with pytest.raises(CheckpointError) as info:
        load_model(path)  # eval, predict, convert-online, stream, train.distill_from
    assert str(info.value) == expected
    with pytest.raises(CheckpointError) as info:
        load_weights_for_finetune(build_model("resnet18", 3, num_segments=2), path)  # init_from
    assert str(info.value) == expected

    official = official_file(tmp_path, OfficialTSN("resnet18", 3, SEGMENTS))
    raw = torch.load(official, weights_only=True)
    raw["state_dict"]["module.new_fc.bias"][1] = float("-inf")
    torch.save(raw, official)
    with pytest.raises(CheckpointError, match=r"1 of \d+ weights .* \(first: new_fc.bias\)"):
        load_model(official, arch="resnet18", num_segments=SEGMENTS, shift="bidirectional")
    imagenet = torchvision.models.resnet18().state_dict()
    imagenet["conv1.weight"][0] = float("nan")
    torch.save(imagenet, tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=r"\(first: conv1.weight\)"):
        load_weights_for_finetune(build_model("resnet18", 3), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=r"\(first: conv1.weight\)"):  # model.pretrained
        load_pretrained_backbone(build_model("resnet18", 3), tmp_path / "resnet18.pth")


# ---------------------------------------------------------------------------------------------
# options given beside one of our checkpoints


def test_options_given_beside_our_checkpoint_win_within_limits(tmp_path, caplog):
    """shift and shift_div change what the same weights compute: they win, with a warning;
    num_segments simply wins; arch and shift_place cannot fit the weights: an error."""
    torch.manual_seed(0)
    model = randomize(build_model("resnet18", 3, num_segments=SEGMENTS, shift_place="block"))
    path = save_checkpoint(checkpoint_dict(model), tmp_path / "best.pt")
    with caplog.at_level(logging.WARNING, logger="tsmcli"):
        longer = load_model(path, num_segments=2 * SEGMENTS)
        assert longer.num_segments == 2 * SEGMENTS and caplog.records == []
        one_way = load_model(path, shift="unidirectional", shift_div=4)
        tsn = load_model(path, shift="none")  # a shift has no weights: keys leave the wrappers
    assert (one_way.shift, one_way.shift_div, tsn.shift) == ("unidirectional", 4, "none")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: {key}={given!r} as given, not {stored!r} (its model_config): the weights were "
        "trained otherwise"
        for key, given, stored in [
            ("shift", "unidirectional", "bidirectional"),
            ("shift_div", 4, 8),
            ("shift", "none", "bidirectional"),
        ]
    ]
    weights = {k.replace(".net.", "."): v for k, v in model.state_dict().items()}
    assert "base_model.layer1.0.net.conv1.weight" in model.state_dict()
    assert tsn.state_dict().keys() == weights.keys()
    assert all(torch.equal(v, weights[k]) for k, v in tsn.state_dict().items())
    init = build_model("resnet18", 3, num_segments=2, shift="none")  # model.init_from, as TSN
    assert load_weights_for_finetune(init, path).head_loaded
    assert all(torch.equal(v, weights[k]) for k, v in init.state_dict().items())
    # and back: a TSN checkpoint given a shift takes its keys into the wrappers
    tsn_path = save_checkpoint(checkpoint_dict(tsn), tmp_path / "tsn.pt")
    shifted = load_model(tsn_path, shift="bidirectional", shift_place="block")
    x = clips()
    with torch.no_grad():
        assert torch.equal(shifted(x), model(x))
    for key, value in (("arch", "resnet34"), ("shift_place", "blockres")):
        with pytest.raises(UsageError) as info:
            load_model(path, **{key: value})
        stored = model.config()[key]
        assert str(info.value) == (
            f"{path}: is {key}={stored!r} (its model_config), so {key}={value!r} cannot fit "
            f"its weights; drop the {key} option"
        )
