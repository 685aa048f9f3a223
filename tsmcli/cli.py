"""The ``tsm`` command line: parse options, call one public API function, print a summary.

No logic lives here that a Python user could not reach through ``import tsmcli``. torch is
imported only inside the commands, so ``tsm --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tsmcli import __version__
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
        return ("out of memory: lower train.batch_size (or --batch-size), the number of "
                "segments or the input size"), 1
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"internal error: {type(exc).__name__}: {first_line} "
            "(run again with TSM_DEBUG=1 for the traceback, and please report it)"), 1


class _Group(click.Group):
    """A click group that prints user errors as one line; ``TSM_DEBUG=1`` re-raises them."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - this is the error boundary
            if os.environ.get("TSM_DEBUG", "") not in ("", "0"):
                raise
            message, code = _friendly(exc)
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)


def _pending(issue: str) -> None:
    """Stand-in for a command whose issue has not landed yet (exit 2, one line)."""
    click.echo(f"error: this command is not built yet (see {issue})", err=True)
    sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tsm")
def cli() -> None:
    """Temporal Shift Module: videos to a trained, evaluated, deployable model."""


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--short-side", default=256, show_default=True, help="Resize so the short side is N (0 keeps the size).")
@click.option("--fps", type=float, default=None, help="Frames per second to keep (default: every frame).")
@click.option("--quality", default=90, show_default=True, help="JPEG quality (1-100).")
@click.option("--workers", type=int, default=None, help="Processes (default: the core count).")
@click.option("--overwrite", is_flag=True, help="Extract again even where a finished folder exists.")
@click.option("--strict", is_flag=True, help="Exit 1 if any video fails.")
def extract(src, dst, short_side, fps, quality, workers, overwrite, strict) -> None:
    """Decode every video under SRC into a folder of JPEG frames under DST."""
    _pending("issue 3")


@cli.command("build-list")
@click.option("--dataset", required=True, help="kinetics400, sthv1, sthv2, ucf101, hmdb51, jester or folder.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Folder of frame folders or videos.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for train.txt, val.txt, classes.txt.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None, help="Folder of the dataset's annotation files.")
@click.option("--source", type=click.Choice(["frames", "videos"]), default=None, help="What ROOT holds (default: detected).")
@click.option("--split", type=click.IntRange(1, 3), default=1, show_default=True, help="UCF101/HMDB51 split.")
@click.option("--val-fraction", type=float, default=0.25, show_default=True, help="folder: share of each class kept for val.")
@click.option("--seed", type=int, default=0, show_default=True, help="folder: seed of the train/val split.")
def build_list(dataset, root, out, annotations, source, split, val_fraction, seed) -> None:
    """Write TSN list files (train.txt, val.txt, classes.txt) for a dataset."""
    _pending("issue 3")


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-class", type=int, default=None, help="Videos per class.")
@click.option("--size", type=int, default=None, help="Frame side in pixels.")
def synth(out, seed, per_class, size) -> None:
    """Write the synthetic time-reversal dataset (real H.264 videos, folder layout)."""
    _pending("issue 3")


@cli.command()
@click.option("--recipe", required=True, help="A shipped recipe name (kinetics_r50) or a YAML path.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. --set optim.lr=0.01.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run dir (default: train.out_dir/<recipe name>).")
@click.option("--resume", is_flag=True, help="Continue from last.pt in the run dir.")
def train(recipe, overrides, out, resume) -> None:
    """Train a TSM (or TSN) model from a recipe."""
    _pending("issue 4")


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Checkpoint to evaluate.")
@click.option("--online", type=click.Path(path_type=Path), default=None, help="Evaluate an exported streaming model dir frame by frame.")
@click.option("--list", "list_file", required=True, type=click.Path(path_type=Path), help="TSN list file.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Folder the list's paths are relative to.")
def evaluate(checkpoint, online, list_file, root) -> None:
    """Top-1 / top-5 / mean class accuracy of a checkpoint on a list."""
    _pending("issue 5")


@cli.command("convert-online")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
def convert_online(checkpoint, out) -> None:
    """Build, export and verify a streaming model with cached shift buffers."""
    _pending("issue 6")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
def demo(out) -> None:
    """Run everything on the embedded synthetic dataset and write a report."""
    _pending("issue 7")


def main() -> None:
    cli(prog_name="tsm")


if __name__ == "__main__":
    main()
