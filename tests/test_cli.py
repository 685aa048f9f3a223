"""The CLI skeleton: commands listed, version, one-line errors, TSM_DEBUG tracebacks."""

from __future__ import annotations

from click.testing import CliRunner

from tsmcli import __version__
from tsmcli.cli import cli
from tsmcli.errors import DataError

COMMANDS = ["extract", "build-list", "train", "eval", "predict", "stream", "convert-online", "demo"]


def test_help_lists_every_command_with_a_summary():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for name in COMMANDS:
        row = next((line for line in lines if line.strip().startswith(name + " ")), None)
        assert row is not None, name
        assert len(row.split()) > 1  # a one-line summary follows the name


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_user_error_is_one_line_and_debug_shows_traceback(monkeypatch):
    @cli.command("boom-test")
    def boom() -> None:
        raise DataError("clip.mp4: cannot open video; the file is missing or corrupt")

    try:
        monkeypatch.delenv("TSM_DEBUG", raising=False)
        result = CliRunner().invoke(cli, ["boom-test"])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "error: clip.mp4: cannot open video; the file is missing or corrupt"
        ]
        monkeypatch.setenv("TSM_DEBUG", "1")
        result = CliRunner().invoke(cli, ["boom-test"])
        assert isinstance(result.exception, DataError)
    finally:
        cli.commands.pop("boom-test")


def test_every_choice_of_every_command_is_one_of_tsmclis_choices():
    """The commands take their closed sets from ``tsmcli.choices`` (the one module they may
    import for them: importing the engine would slow ``tsm --help``), never a list of their
    own; crops are offered as text."""
    import click

    from tsmcli import choices

    named = {
        name: tuple(map(str, value))
        for name, value in vars(choices).items()
        if name.isupper() and isinstance(value, tuple)
    }

    def commands(group: click.Group, path: str):
        for name, command in group.commands.items():
            yield f"{path} {name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{path} {name}")

    seen = 0
    for path, command in commands(cli, "tsm"):
        for param in command.params:
            if isinstance(param.type, click.Choice):
                offered = tuple(map(str, param.type.choices))
                assert offered in named.values(), f"{path} {param.opts[0]}: {offered}"
                seen += 1
    assert seen >= 14  # protocol, crops, average, backend, shift, shift-place, device, ...


def test_cuda_without_a_gpu_is_blamed_on_the_option_the_user_gave(monkeypatch, tmp_path):
    """eval and predict name --device and exit 2 (a usage error), before reading anything;
    a recipe names its key, train.device (a recipe error, exit 1)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    given = {
        ("eval", "--checkpoint", "c.pt", "--list", "l.txt", "--root", "."): (
            "error: --device cuda but no GPU is visible; use --device auto or cpu",
            2,
        ),
        ("predict", "x.mp4", "--checkpoint", "c.pt"): (
            "error: --device cuda but no GPU is visible; use --device auto or cpu",
            2,
        ),
    }
    for args, (message, code) in given.items():
        result = runner.invoke(cli, [*args, "--device", "cuda"], prog_name="tsm")
        assert (result.output.strip().splitlines(), result.exit_code) == ([message], code)
    out = tmp_path / "run"
    result = runner.invoke(
        cli, ["train", "--recipe", "demo", "--set", "train.device=cuda", "--out", str(out)]
    )
    expected = (
        "error: train.device is cuda but no GPU is visible; use --set train.device=auto or cpu"
    )
    assert (result.output.strip().splitlines(), result.exit_code) == ([expected], 1)
    assert not out.exists()  # refused before the run dir was made


def test_a_wrong_command_line_is_one_line_too():
    runner = CliRunner()
    cases = {
        ("eval", "--list", "l.txt"): "error: Missing option '--root'; see 'tsm eval --help'",
        ("evl",): "error: No such command 'evl'. Did you mean 'eval'?; see 'tsm --help'",
        ("predict", "x.mp4", "--checkpoint", "c.pt", "--topk", "0"): (
            "error: Invalid value for '--topk': 0 is not in the range x>=1; "
            "see 'tsm predict --help'"
        ),
    }
    for args, expected in cases.items():
        result = runner.invoke(cli, list(args), prog_name="tsm")
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [expected]
    bare = runner.invoke(cli, ["zoo"], prog_name="tsm")  # a group alone: its help, as click gives
    assert bare.output.startswith("Usage: tsm zoo [OPTIONS] COMMAND [ARGS]...")


def test_every_public_name_resolves_to_what_its_module_defines():
    import importlib

    import tsmcli

    for name, module in tsmcli._API.items():
        assert getattr(tsmcli, name) is getattr(importlib.import_module(module), name)
    assert "read_checkpoint" in dir(tsmcli)  # the README's `read_checkpoint(NAME)`
