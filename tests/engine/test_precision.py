"""--precision bf16: autocast where the hardware has bf16, a one-line refusal saying why where
it would only be emulated."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from int8_fakes import write_checkpoint, write_clips

from tsmcli.cli import cli
from tsmcli.engine import precision
from tsmcli.engine.convert import convert_online
from tsmcli.engine.evaluate import evaluate
from tsmcli.engine.int8 import relative_rms
from tsmcli.engine.online import evaluate_online
from tsmcli.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
AVX2_ONLY = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
MESSAGE = (
    "--precision bf16: this CPU (AVX2) has no native bf16 (no avx512_bf16/amx_bf16): bf16 "
    "would be emulated and slower than fp32; use --precision fp32 or int8"
)


@pytest.fixture
def avx2_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(precision, "cpu_isa", lambda: "AVX2")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that says it has AVX512_BF16 (autocast then runs: emulated here, but it runs)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY | {"avx512_bf16"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    list_file = write_clips(root / "clips", 6)
    checkpoint = write_checkpoint(root / "ckpt.pt", root / "clips", list_file)
    convert_online(checkpoint, root / "online", verify_frames=3, latency_reps=1)
    return root, list_file, checkpoint


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    for flags, native in [
        (AVX2_ONLY, False),
        (AVX2_ONLY | {"avx512f", "avx512_vnni"}, False),  # AVX-512 without BF16: emulated
        (AVX2_ONLY | {"avx512_bf16"}, True),
        (AVX2_ONLY | {"amx_bf16", "amx_tile"}, True),
        (frozenset({"fp", "asimd", "bf16"}), True),  # an Arm core's Features line
    ]:
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        assert precision.native_bf16(cpu) is native, flags


def test_without_native_bf16_every_command_refuses_in_one_line(avx2_cpu, data):
    root, list_file, checkpoint = data
    with pytest.raises(UsageError) as refused:
        evaluate(checkpoint, list_file, root / "clips", precision="bf16")
    assert str(refused.value) == MESSAGE
    with pytest.raises(UsageError, match="no native bf16"):
        evaluate_online(root / "online", list_file, root / "clips", precision="bf16")
    for command in (
        ["stream", str(root / "clips" / "clip00"), "--model", str(root / "online")],
        ["predict", str(root / "clips" / "clip00"), "--checkpoint", str(checkpoint)],
    ):
        run = CliRunner().invoke(cli, [*command, "--precision", "bf16"])
        assert run.exit_code == 2
        assert run.output.strip().splitlines() == [f"error: {MESSAGE}"]


def test_with_native_bf16_the_model_runs_under_autocast(bf16_cpu, data, monkeypatch):
    root, list_file, checkpoint = data
    modes = []
    real = torch.autocast

    def spy(device_type, dtype=None, **kwargs):
        modes.append((device_type, dtype))
        return real(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(precision.torch, "autocast", spy)
    fp32 = evaluate(checkpoint, list_file, root / "clips", workers=0)
    bf16 = evaluate(checkpoint, list_file, root / "clips", workers=0, precision="bf16")
    assert modes and set(modes) == {("cpu", torch.bfloat16)}
    assert bf16.scores.dtype == torch.float32  # ranked and averaged in fp32
    assert not torch.equal(bf16.scores, fp32.scores)
    # bf16 keeps 8 bits of mantissa: per-layer rounding of 2^-9, a few percent at the logits
    assert relative_rms([bf16.scores - fp32.scores], [fp32.scores]) < 0.05
    assert torch.equal(bf16.scores.argmax(1), fp32.scores.argmax(1))
    streamed = evaluate_online(root / "online", list_file, root / "clips", precision="bf16")
    plain = evaluate_online(root / "online", list_file, root / "clips")
    assert relative_rms([streamed.scores - plain.scores], [plain.scores]) < 0.05


def test_int8_is_an_exported_models_precision():
    with pytest.raises(UsageError, match="export one with tsm export --precision int8"):
        precision.in_precision(torch.nn.Identity(), "int8", torch.device("cpu"))
    with pytest.raises(UsageError, match="--precision fp16: choose one of fp32, bf16, int8"):
        precision.check_precision("fp16")
