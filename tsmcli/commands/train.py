"""``tsm train`` and ``tsm demo``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--recipe", required=True, help="A shipped recipe name (kinetics_r50) or a YAML path."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set optim.lr=0.01.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run dir (default: train.out_dir/<recipe name>).",
)
@click.option("--resume", is_flag=True, help="Continue from last.pt in the run dir.")
def train(recipe, overrides, out, resume) -> None:
    """Train a TSM (or TSN) model from a recipe."""
    from tsmcli.engine.distributed import env_rank
    from tsmcli.engine.train import train as train_recipe
    from tsmcli.recipe import load_recipe

    main_rank = env_rank() == 0  # under torchrun only rank 0 logs and prints
    result = train_recipe(load_recipe(recipe, overrides), out_dir=out, resume=resume)
    if main_rank:
        best = (
            f"{result.best_top1:.2f}%" if result.best_top1 is not None else "n/a (no data.val_list)"
        )
        epochs = f"{result.epochs} epoch" + ("s" if result.epochs != 1 else "")
        click.echo(f"trained {epochs}: best top-1 {best}, run dir {result.run_dir}")


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Folder for the data, runs and report.md; a re-run reuses finished steps.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=2),
    default=None,
    help="Synthetic videos per class (default: 40, of which 30 train).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the synthetic set and its split.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Train every model this many epochs instead of the demo recipe's length.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of the demo recipe.",
)
def demo(out, per_class, seed, epochs, overrides) -> None:
    """Run everything on the embedded synthetic dataset and write a report.

    Logs each step's time, the projected total after the first training epoch, and the total.
    """
    from tsmcli.showcase import demo as run_demo

    result = run_demo(out, per_class=per_class, seed=seed, epochs=epochs, overrides=overrides)
    click.echo(result.table())
    click.echo(f"report: {result.report} ({result.seconds / 60:.1f} min)")
