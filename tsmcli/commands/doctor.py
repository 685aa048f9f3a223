"""``tsm doctor``: a dataset's and a recipe's problems, each with its fix, before a run."""

from __future__ import annotations

from pathlib import Path

import click

from tsmcli import choices
from tsmcli.commands import overwrite_option


@click.command()
@click.option("--recipe", default=None, help="A shipped recipe name or a YAML path: its lists.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key (with --list: the default recipe's data and model keys).",
)
@click.option(
    "--list",
    "lists",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A bare list file instead of a recipe's (repeatable: train, then val).",
)
@click.option(
    "--root", type=click.Path(path_type=Path), default=None, help="The folder of --list's paths."
)
@click.option(
    "--source",
    type=click.Choice(choices.SOURCES),
    default=None,
    help="What --list's paths are (default: videos if every path is named like one).",
)
@click.option(
    "--checkpoint",
    default=None,
    help="A checkpoint file or model zoo name whose classes the lists must match.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write every finding here.",
)
@overwrite_option
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@click.option("--full", is_flag=True, help="Decode every frame (default: first, middle, last).")
@click.option("--no-decode", is_flag=True, help="The list and recipe checks only (fast).")
@click.option("--workers", type=int, default=None, help="Decoding threads (default: the cores).")
@click.option("--gpus", type=int, default=1, show_default=True, help="Processes per node.")
@click.option("--nodes", type=int, default=1, show_default=True, help="Nodes of the run.")
def doctor(
    recipe,
    overrides,
    lists,
    root,
    source,
    checkpoint,
    json_path,
    overwrite,
    strict,
    full,
    no_decode,
    workers,
    gpus,
    nodes,
) -> None:
    """Find what is wrong with a dataset and a recipe before training on them.

    Checks the lists (duplicates, train/val overlap, labels, classes.txt, imbalance), the
    recipe (lr for the global batch of --gpus x --nodes, batch norm, mirroring, segments,
    workers, decoder, disk space) and, unless --no-decode, opens and decodes every video or
    frame folder. Prints the findings by severity with the fix for each; exit 1 on an error
    (--strict: on a warning too). Reads only: --json is the one file it writes.
    """
    from tsmcli.engine.doctor import doctor as run_doctor
    from tsmcli.errors import UsageError
    from tsmcli.recipe import Recipe, apply_overrides, find_recipe, load_recipe

    if recipe is not None and lists:
        raise UsageError(
            "give --recipe (its lists) or --list (bare lists), not both; to check other lists "
            "with a recipe, --set data.train_list=... data.val_list=..."
        )
    loaded, inputs = None, []
    if recipe is not None:
        loaded, inputs = load_recipe(recipe, overrides), [find_recipe(recipe)]
    elif lists:  # the default recipe's data and model keys read the lists
        loaded = apply_overrides(Recipe(), overrides)
    result = run_doctor(
        loaded,
        lists=lists,
        root=root,
        source=source,
        checkpoint=checkpoint,
        decode=not no_decode,
        full=full,
        workers=workers,
        processes=gpus,
        nodes=nodes,
        json_path=json_path,
        overwrite=overwrite,
        inputs=inputs,
    )
    click.echo(result.table())
    click.get_current_context().exit(result.exit_code(strict))
