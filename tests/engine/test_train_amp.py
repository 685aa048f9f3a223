"""``train.amp`` on the CPU: bf16 autocast where the CPU has native bf16, a one-line refusal
where it would be emulated (bf16 without it, fp16 on any CPU)."""

from __future__ import annotations

import pytest
import test_train
import torch
from test_train import _cli_error, _recipe_file, tiny_recipe

import tsmcli.engine.precision as precision
from tsmcli.engine.train import train
from tsmcli.errors import RecipeError
from tsmcli.model.tsn import TSN

# test_train's fixtures: one intra-op thread, 6 train and 3 val videos of 2 classes
one_thread, tiny_data = test_train.one_thread, test_train.tiny_data


def test_bf16_on_a_cpu_without_native_bf16_is_refused_in_one_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    monkeypatch.setattr(precision, "cpu_isa", lambda: "AVX2")
    recipe = tiny_recipe(tiny_data, "train.amp=bf16")
    with pytest.raises(RecipeError) as info:
        train(recipe, out_dir=tmp_path / "run")
    assert str(info.value) == (
        "train.amp: bf16 on this CPU (AVX2), which has no native bf16 (no avx512_bf16/amx_bf16), "
        "would be emulated and train slower than fp32; set train.amp=none"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fp16_on_the_cpu_is_refused_in_one_line_even_with_native_bf16(
    tiny_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    recipe = tiny_recipe(tiny_data, "train.amp=fp16")
    out = str(tmp_path / "run")
    message = _cli_error(["train", "--recipe", _recipe_file(tmp_path, recipe), "--out", out])
    assert message == (
        "train.amp: fp16 on the CPU would be emulated and train slower than fp32 (fp16 is for "
        "CUDA); set train.amp=none, or bf16 on a CPU with native bf16"
    )
    assert not (tmp_path / "run").exists()


def test_bf16_on_a_cpu_with_native_bf16_trains_under_autocast(tiny_data, tmp_path, monkeypatch):
    """Every forward, training and validation, runs under CPU autocast to bf16 (its logits
    come out in bf16); the weights the optimizer keeps stay float32 and finite, and differ
    from the fp32 run's by bf16's rounding, not by more."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    forward = TSN.forward
    seen = []

    def recording_forward(self, x):
        out = forward(self, x)
        seen.append(
            (
                self.training,
                torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"),
                out.dtype,
            )
        )
        return out

    monkeypatch.setattr(TSN, "forward", recording_forward)
    result = train(
        tiny_recipe(tiny_data, "train.epochs=1", "train.amp=bf16"), out_dir=tmp_path / "a"
    )
    assert [s[0] for s in seen] == [True] * 3 + [False] * 2  # 6 videos / 2; val: 3 in 2 batches
    assert {s[1:] for s in seen} == {(True, torch.bfloat16, torch.bfloat16)}
    weights = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert all(w.dtype != torch.bfloat16 for w in weights.values())
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    seen.clear()
    full = train(tiny_recipe(tiny_data, "train.epochs=1"), out_dir=tmp_path / "b")
    assert {s[1] for s in seen} == {False}  # train.amp none: no autocast
    reference = torch.load(full.last_checkpoint, weights_only=True)["state_dict"]
    differ = [k for k in weights if not torch.equal(weights[k], reference[k])]
    assert differ  # bf16 arithmetic did run
    assert result.history[0]["loss"] == pytest.approx(full.history[0]["loss"], rel=0.05)
