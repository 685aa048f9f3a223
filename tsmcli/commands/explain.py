"""``tsm explain`` (where a model looks, Grad-CAM over the whole clip) and ``tsm features``
(what it computes before its classifier, for other work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tsmcli import choices
from tsmcli.commands import overwrite_option, print_rows
from tsmcli.commands.evaluate import (
    arch_options,
    arch_overrides,
    backend_option,
    view_and_arch,
    view_options,
)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint to explain: a file or a model zoo name.",
)
@click.option(
    "--class",
    "target",
    default=None,
    help="Explain this class (a name or a number); default: each input's top-1.",
)
@click.option(
    "--layer",
    default=None,
    help="Module to explain at, e.g. base_model.layer3 (default: the deepest stage whose maps "
    "are at least 4 pixels a side).",
)
@click.option(
    "--method",
    type=click.Choice(choices.CAM_METHODS),
    default="gradcam",
    show_default=True,
    help="gradcam: a layer's channels weighed by their mean gradient; gradcam++: by their "
    "positive gradients, Grad-CAM++'s way; layercam: each position by its own positive "
    "gradient (sharper at shallow layers and small frames); inputxgrad: each pixel's value "
    "times its gradient (no --layer), lightly smoothed; intgrad: integrated gradients from "
    "the mean colour (no --layer; 17 passes a clip).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write <name>.png (frames and maps), <name>.gif and <name>.npy (the maps) per input.",
)
@overwrite_option
@backend_option
@arch_options
def explain(**options: Any) -> None:
    """Where the model looks in each frame for the class it predicts (Grad-CAM, the whole clip
    in one pass, so the temporal shift is respected), on tsm eval's single view of each INPUT
    (a video, a frame folder, or a folder of them)."""
    from tsmcli.engine.explain import explain as run_explain
    from tsmcli.errors import DataError

    arch = arch_overrides(options)
    result = run_explain(options.pop("inputs"), arch=arch, **options)
    width = max(len(str(e.path)) for e in result.explanations)
    for e in result.explanations:
        what = f"error: {e.error}" if e.error else f"{e.name} {e.probability:.3f}"
        click.echo(f"{str(e.path):<{width}}  {what}")
    click.echo()
    written = [str(p) for e in result.explanations for p in e.written]
    print_rows(
        [("checkpoint", result.checkpoint), ("layer", result.layer)]
        + [("wrote", path) for path in written]
    )
    failed = sum(e.error is not None for e in result.explanations)
    if failed == len(result.explanations):
        raise DataError(f"every input failed ({failed} of {failed}); see above")


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint whose features to compute: a file or a model zoo name.",
)
@click.option(
    "--list",
    "list_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A TSN list, instead of INPUTs (its labels go into the index).",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder the list's paths are relative to.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Write features.npy and index.jsonl here.",
)
@click.option(
    "--level",
    type=click.Choice(choices.FEATURE_LEVELS),
    default="clip",
    show_default=True,
    help="One row per clip (averaged over frames and views) or per segment (over views).",
)
@click.option(
    "--dtype",
    type=click.Choice(choices.FEATURE_DTYPES),
    default="float32",
    show_default=True,
    help="Type of the stored features.",
)
@overwrite_option
@view_options
@backend_option
@arch_options
@click.option(
    "--device",
    type=click.Choice(choices.DEVICES),
    default="auto",
    show_default=True,
    help="Where the model runs (auto: CUDA when available).",
)
def features(**options: Any) -> None:
    """The features each INPUT (or each video of --list) gets before the classifier, with
    tsm eval's sampling, crops and views, stored as features.npy with an index.jsonl."""
    from tsmcli.engine.features import features as run_features

    views, arch = view_and_arch(options)
    result = run_features(options.pop("inputs"), views=views, arch=arch, **options)
    failed = sum(row.get("error") is not None for row in result.index)
    print_rows(
        [
            ("checkpoint", result.checkpoint),
            ("rows", f"{len(result.index)}" + (f" ({failed} failed)" if failed else "")),
            ("shape", " x ".join(map(str, result.features.shape))),
            ("views", "-" if result.views is None else str(result.views)),
            ("videos/s", f"{result.videos_per_s:.1f}"),
        ]
        + [("wrote", str(path)) for path in result.written]
    )
