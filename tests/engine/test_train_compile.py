"""``train.compile``: the steps run through ``torch.compile``, the checkpoints keep the plain
model's weights (no ``_orig_mod.`` keys), and a compile that changes nothing (dynamo's
``eager`` backend: the same kernels in the same order) trains the same weights as eager."""

from __future__ import annotations

import test_train
import torch
from test_train import tiny_recipe

from tsmcli.engine.train import train

# test_train's fixtures: one intra-op thread, 6 train and 3 val videos of 2 classes
one_thread, tiny_data = test_train.one_thread, test_train.tiny_data


def test_a_compiled_run_trains_the_eager_runs_weights_and_saves_plain_keys(
    tiny_data, tmp_path, monkeypatch
):
    compiled = []
    real = torch.compile

    def recording_compile(model, **options):
        compiled.append(model)
        return real(model, backend="eager", **options)  # traced, not code-generated: quick

    monkeypatch.setattr(torch, "compile", recording_compile)
    result = train(
        tiny_recipe(tiny_data, "train.epochs=2", "train.compile=true"), out_dir=tmp_path / "c"
    )
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "TSN"
    torch._dynamo.reset()
    eager = train(tiny_recipe(tiny_data, "train.epochs=2"), out_dir=tmp_path / "eager")
    assert len(compiled) == 1  # train.compile false: not compiled
    weights = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    reference = torch.load(eager.last_checkpoint, weights_only=True)["state_dict"]
    assert list(weights) == list(reference)  # plain keys, no _orig_mod. prefix
    for key, value in weights.items():
        assert torch.allclose(value, reference[key], rtol=1e-5, atol=1e-6), key
    losses = [(a["loss"], b["loss"]) for a, b in zip(result.history, eager.history, strict=True)]
    assert all(abs(a - b) < 1e-5 for a, b in losses), losses
