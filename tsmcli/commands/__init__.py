"""The ``tsm`` commands, one module per area (``tsmcli.cli`` registers them): each parses its
options, calls one public API function, and prints a summary. torch is imported only inside
the commands, so ``tsm --help`` is instant.
"""

from __future__ import annotations

import click


def print_rows(rows: list[tuple[str, str]]) -> None:
    """A summary: one ``name  value`` line a row, the values aligned."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace output files that exist (an input of the command is never replaced).",
)
