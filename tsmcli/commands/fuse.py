"""``tsm fuse``: late fusion of evaluations (two-stream RGB + flow)."""

from __future__ import annotations

from pathlib import Path

import click

from tsmcli.commands import overwrite_option, print_rows


def _weights(ctx, param, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not numbers separated by commas, e.g. 1,1.5"
        ) from None


@click.command()
@click.argument("evaluations", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--weights",
    callback=_weights,
    default=None,
    help="One weight a model, e.g. 1,1.5 (default: all 1, the plain average of the outputs).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the fused evaluation's reports here (those of tsm eval --out).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the fused top-1 / top-5 / mean class accuracy as JSON.",
)
@overwrite_option
def fuse(evaluations, weights, out_dir, json_path, overwrite) -> None:
    """Fuse the scores of models evaluated on the same videos (each EVALUATION a tsm eval
    --out folder, or its scores.csv): every video's scores are the weighted average of the
    models', as a two-stream network (RGB + flow) is tested.

        tsm fuse eval_rgb eval_flow --weights 1,1.5
    """
    from tsmcli.engine.fuse import fuse as run_fuse

    result = run_fuse(
        evaluations, weights, out_dir=out_dir, json_path=json_path, overwrite=overwrite
    )
    r = result.result
    rows = [
        *(
            (f"model {i}", f"{path}  x {weight:g}")
            for i, (path, weight) in enumerate(zip(result.inputs, result.weights, strict=True), 1)
        ),
        ("top-1", f"{r.top1:.2f} %"),
        ("top-5", f"{r.top5:.2f} %"),
        ("mean class", f"{r.mean_class_accuracy:.2f} %"),
        ("videos", str(r.num_videos)),
    ]
    rows += [
        (name, str(path)) for name, path in (("json", json_path), ("reports", out_dir)) if path
    ]
    print_rows(rows)
