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


def test_view_choices_of_eval_and_predict_are_the_engines_tables():
    """The commands spell the choices out (importing the engine would slow `tsm --help`);
    this holds them equal to the protocol table and the crop counts the engine accepts."""
    from tsmcli.data.transforms import TEST_CROPS
    from tsmcli.engine.views import PROTOCOLS

    for name in ("eval", "predict"):
        params = {p.name: p for p in cli.commands[name].params}
        assert list(params["protocol"].type.choices) == list(PROTOCOLS)
        assert [int(c) for c in params["crops"].type.choices] == list(TEST_CROPS)


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
