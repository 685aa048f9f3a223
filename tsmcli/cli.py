"""The ``tsm`` command line: parse options, call one public API function, print a summary.

This module is the door: the group, the one table that maps errors to one-line messages,
logging, ``main``. The commands live in ``tsmcli.commands`` (one module per area). No logic
lives there that a Python user could not reach through ``import tsmcli``. torch is imported
only inside the commands, so ``tsm --help`` is instant.
"""

from __future__ import annotations

import os
import sys

import click

from tsmcli import __version__
from tsmcli.commands import convert, data, doctor, evaluate, explain, fuse, predict, train, zoo
from tsmcli.errors import TSMError


def _friendly(exc: BaseException) -> tuple[str, int]:
    """Map an exception to (one-line message, exit code): the one table of known errors."""
    if isinstance(exc, TSMError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or exc}: no such file or directory; check the path", 1
    if isinstance(exc, PermissionError):
        return f"{exc.filename or exc}: permission denied; check the folder's permissions", 1
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return (
            "out of memory: lower train.batch_size (or --batch-size), the number of "
            "segments or the input size"
        ), 1
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"internal error: {type(exc).__name__}: {first_line} "
        "(run again with TSM_DEBUG=1 for the traceback, and please report it)"
    ), 1


class _Group(click.Group):
    """A click group that prints user errors as one line; ``TSM_DEBUG=1`` re-raises them."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """click's main, with its own errors as one line too: a wrong command line is
        ``error: <what>; see 'tsm CMD --help'`` and exit 2 (click prints four lines)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "tsm"
            what = exc.format_message().rstrip(".")
            click.echo(f"error: {what}; see '{where} --help'", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # the reader went away (tsm stream ... | head): stop quietly, as a pipe stage should
            _silence_stdout()
            ctx.exit(0)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - this is the error boundary
            if os.environ.get("TSM_DEBUG", "") not in ("", "0"):
                raise
            message, code = _friendly(exc)
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered for a closed pipe does not print an error on the way out."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (tests): nothing to flush
        pass


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tsm")
def cli() -> None:
    """Temporal Shift Module: videos to a trained, evaluated, deployable model."""
    _setup_logging()


def _setup_logging() -> None:
    """Progress lines from tsmcli on stderr: INFO on the main process (rank 0 under torchrun),
    warnings only on the others and from other libraries."""
    import logging

    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("tsmcli").setLevel(logging.INFO if main_rank else logging.WARNING)


for _command in (
    data.extract,
    data.build_list,
    data.synth,
    doctor.doctor,
    train.train,
    evaluate.evaluate,
    fuse.fuse,
    convert.convert_online,
    convert.export,
    predict.predict,
    predict.stream,
    explain.explain,
    explain.features,
    train.demo,
    zoo.zoo,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="tsm")


if __name__ == "__main__":
    main()
