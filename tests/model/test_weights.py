"""Weight files: the safe load refuses code, the save refuses what it could not read back and
leaves the old file on any failure, the strict loader names every mismatch in one line."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from tsmcli.errors import CheckpointError, OutputError
from tsmcli.model.checkpoint import load_model
from tsmcli.model.weights import load_checkpoint, load_state_dict_strict, save_checkpoint


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a checkpoint"):
        load_checkpoint(garbage)
    noise = tmp_path / "noise.pt"  # random bytes: the safe unpickler fails on an opcode
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(noise)
    assert str(info.value).startswith(f"{noise}: not a checkpoint (")
    assert "Python objects" not in str(info.value) and "safe loader" not in str(info.value)
    torchvision_file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), torchvision_file)
    with pytest.raises(CheckpointError, match="ImageNet backbone without a video head"):
        load_model(torchvision_file)


@dataclasses.dataclass
class Args:
    lr: float


class RunsCode:
    """What a malicious checkpoint pickles: unpickling it would call os.system."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.parametrize(
    ("content", "culprit"),
    [
        ({"state_dict": {}, "args": Args(lr=0.1)}, f"{__name__}.Args"),  # not on the allow list
        ({"state_dict": {}, "x": RunsCode()}, f"{os.system.__module__}.system"),  # blocked module
    ],
)
def test_a_file_holding_python_objects_is_refused_naming_the_object(tmp_path, content, culprit):
    unsafe = tmp_path / "unsafe.pth"
    torch.save(content, unsafe)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(unsafe)
    assert str(info.value) == (
        f"{unsafe}: holds Python objects that loading would run ({culprit}); refused: tsmcli "
        "loads weights only. If you trust the file, re-save its state dict with "
        "torch.save(model.state_dict()) where it was made"
    )


def test_save_refuses_what_a_safe_load_could_not_read(tmp_path):
    path = tmp_path / "ckpt.pth"
    with pytest.raises(TypeError, match=r"checkpoint\['recipe'\] is a Args"):
        save_checkpoint({"recipe": Args(lr=0.1)}, path)
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\[0\]\['top1'\] is a float64"):
        save_checkpoint({"history": [{"top1": np.float64(50.0)}]}, path)  # a float subclass
    assert list(tmp_path.iterdir()) == []
    plain = {"rng": (1, [2.5, None]), "sizes": torch.Size([2]), "dtype": torch.float16}
    save_checkpoint({"state": OrderedDict(w=torch.ones(2)), **plain}, path)
    loaded = load_checkpoint(path)
    assert loaded["rng"] == (1, [2.5, None]) and loaded["dtype"] == torch.float16


@pytest.mark.parametrize("failure", ["save", "fsync"])
def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1, "w": torch.arange(10)}, path)
    old = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    if failure == "save":
        monkeypatch.setattr(torch, "save", broken_save)
    else:
        monkeypatch.setattr(os, "fsync", broken_fsync)
    # a full disk is one line naming the folder; any other OSError stays what it is
    expected = OutputError if failure == "save" else OSError
    with pytest.raises(expected) as info:
        save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    if failure == "save":
        assert str(info.value).startswith(
            f"no space left on {tmp_path.resolve()} while writing last.pth;"
        )
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_strict_loader_accepts_files_without_batch_counters():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_state_dict_strict(model, state, "old.pth")  # torch < 0.4.1 files lack the counter
    with pytest.raises(CheckpointError, match=r"old.pth: .*1 missing \(1.weight\)"):
        load_state_dict_strict(
            model, {k: v for k, v in state.items() if k != "1.weight"}, "old.pth"
        )
