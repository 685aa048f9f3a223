"""Files in the published layouts, built in tests from our models, and a model zoo made of
them: what the tests of zoo names and of the online demo's layout need (no network).

- ``official_mobilenet_layout`` / ``online_demo_layout``: our MobileNetV2 TSN's weights as the
  official offline release (``module.base_model.features.3.conv.0.net.weight``) and as the
  official online demo's plain state dict (``features.3.conv.0.weight``, ``classifier``).
- ``OnlineDemoMobileNetV2``: an independent rebuild of the online demo's network, from the
  structure of ``online_demo/mobilenet_v2_tsm.py`` in mit-han-lab/temporal-shift-module at
  commit 436e7cf0bec151a73b25fe91e06709af876a04df (read for this; not copied): a ModuleList
  ``features`` (stem, 17 flat inverted residual blocks, a last 1x1 conv), of which the blocks
  at shift_block_idx 2, 4, 5, 7, 8, 9, 11, 12, 14, 15 (counted from the first block) splice
  the previous frame's first 1/8 channels into their residual branch, and ``classifier``.
- ``use_zoo``: the registry as the tests want it (entries replaced by tiny ones whose files
  sit in ``$TSM_HOME`` with a matching hash, URLs on a closed loopback port).
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tsmcli import zoo, zoo_cache

# (expansion t, channels c, blocks n, first stride s): MobileNetV2's table
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
SETTING += [(6, 160, 3, 2), (6, 320, 1, 1)]
SHIFT_BLOCK_IDX = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)  # the demo's, counted from block 0

# torchvision's nesting of a block's conv Sequential -> the official flat index
_EXPANDED = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
_PLAIN = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters and a random head, logits O(1); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.2 + 0.3 * torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
            elif isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def _flat_key(key: str) -> str:
    """``base_model.features.3.conv.1.1.weight`` (torchvision nesting, ours) ->
    ``features.3.conv.4.weight`` (the official flat block); the shift wrapper's ``.net``
    is kept (the caller drops it for the online demo)."""
    key = key[len("base_model.") :]
    parts = key.split(".")
    if len(parts) < 4 or parts[0] != "features" or parts[2] != "conv":
        return key
    block, rest = parts[1], parts[3:]
    expanded = int(block) > 1  # features.1 is the only block without an expansion
    table = _EXPANDED if expanded else _PLAIN
    two = ".".join(rest[:2])
    if two in table:
        return ".".join(["features", block, "conv", table[two], *rest[2:]])
    return ".".join(["features", block, "conv", table[rest[0]], *rest[1:]])


def official_mobilenet_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """The official offline training script's file of our MobileNetV2 TSN (DataParallel)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key if key.startswith("new_fc.") else "base_model." + _flat_key(key)
        state["module." + new] = value.clone()
    return state


def online_demo_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """The online demo's plain state dict of our MobileNetV2 TSN: no ``base_model.``, no
    shift module, the head as ``classifier``."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("new_fc."):
            state["classifier." + key[len("new_fc.") :]] = value.clone()
        else:
            state[_flat_key(key).replace(".net.", ".")] = value.clone()
    return state


# ---------------------------------------------------------------------------------------------
# the online demo's network, rebuilt from its structure


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int, groups: int = 1) -> list:
    return [
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    ]


class _Block(nn.Module):
    """One inverted residual block, one flat Sequential ``conv``; ``shifted`` blocks take the
    previous frame's first C/8 channels in their residual branch and hand theirs on."""

    def __init__(self, inp: int, oup: int, stride: int, t: int, shifted: bool):
        super().__init__()
        hidden = inp * t
        layers = [] if t == 1 else _conv_bn_relu(inp, hidden, 1, 1)
        layers += _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == oup
        self.shifted = shifted

    def forward(self, x, buffer=None):
        if not self.shifted:
            return x + self.conv(x) if self.residual else self.conv(x)
        fold = x.shape[1] // 8
        mixed = torch.cat((buffer, x[:, fold:]), dim=1)
        return x + self.conv(mixed), x[:, :fold]


class OnlineDemoMobileNetV2(nn.Module):
    """``forward(frame, *buffers) -> (logits, *new_buffers)``, as the online demo runs."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers = [nn.Sequential(*_conv_bn_relu(3, 32, 3, 2))]
        channels, index = 32, 0
        for t, c, n, s in SETTING:
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(_Block(channels, c, stride, t, index in SHIFT_BLOCK_IDX))
                channels, index = c, index + 1
        layers.append(nn.Sequential(*_conv_bn_relu(320, 1280, 1, 1)))
        self.features = nn.ModuleList(layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x, *buffers):
        pending, out = list(buffers), []
        for layer in self.features:
            if isinstance(layer, _Block) and layer.shifted:
                x, new = layer(x, pending.pop(0))
                out.append(new)
            else:
                x = layer(x)
        return (self.classifier(x.mean(3).mean(2)), *out)


# ---------------------------------------------------------------------------------------------
# a model zoo of tiny files


def closed_port_url(path: str) -> str:
    """A loopback URL nothing listens on: a download fails at once, as without network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def use_zoo(monkeypatch, home: Path, files: dict[str, tuple[dict, object | None]]) -> dict:
    """Point ``$TSM_HOME`` at ``home`` and replace registry entries: ``files`` maps a shipped
    name to (the fields to change, and the object to ``torch.save`` at its cache path, or
    None to leave the file uncached). Every replaced entry downloads from a closed port and
    carries the SHA-256 of its file. Returns the registry as the code under test sees it."""
    monkeypatch.setenv("TSM_HOME", str(home))
    entries = dict(zoo.shipped_entries())
    for name, (changes, content) in files.items():
        entry = replace(entries[name], **changes)
        entry = replace(entry, urls=(closed_port_url(f"/m/{entry.file}"),), sha256=None)
        if content is not None:
            path = zoo_cache.cache_path(entry)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(content, path)
            entry = replace(entry, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        entries[name] = entry
    monkeypatch.setattr(zoo, "shipped_entries", lambda: entries)
    monkeypatch.setattr(zoo_cache, "shipped_entries", lambda: entries)
    return entries
