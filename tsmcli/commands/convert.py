"""``tsm convert-online``: a checkpoint to a verified streaming model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tsmcli import choices
from tsmcli.commands import print_rows
from tsmcli.commands.evaluate import apply_options, arch_options, arch_overrides, backend_option

# --precision int8 for convert-online and export: the calibration list and its split
int8_options = apply_options(
    [
        click.option(
            "--precision",
            type=click.Choice(choices.EXPORT_PRECISIONS),
            default="fp32",
            show_default=True,
            help="int8: also write an int8 ONNX model, calibrated on --calib-list and checked "
            "against fp32 on its held-back clips before anything is written.",
        ),
        click.option(
            "--calib-list",
            type=click.Path(path_type=Path),
            default=None,
            help="--precision int8: TSN list of clips (under --root) to calibrate and check on.",
        ),
        click.option(
            "--calib-clips",
            type=click.IntRange(min=1),
            default=32,
            show_default=True,
            help="Clips of --calib-list that calibrate, spread over the list.",
        ),
        click.option(
            "--check-clips",
            type=click.IntRange(min=1),
            default=256,
            show_default=True,
            help="Held-back clips of --calib-list the int8 model is checked on.",
        ),
    ]
)


@click.command("convert-online")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint to convert (ours, official TSM, mmaction2, the official online demo's), or a model zoo name (tsm zoo list).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Model dir for online_weights.pt, online.pt, online.onnx, report.json.",
)
@click.option(
    "--height",
    type=click.IntRange(min=16),
    default=None,
    help="Frame height (default: the recipe's input size, else 224).",
)
@click.option(
    "--width",
    type=click.IntRange(min=16),
    default=None,
    help="Frame width (default: the recipe's input size, else 224).",
)
@click.option(
    "--val-list",
    type=click.Path(path_type=Path),
    default=None,
    help="Report top-1 before and after conversion on this list.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder the paths of --val-list and --calib-list are relative to.",
)
@click.option(
    "--finetune-epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Fine-tune one-way on the recipe's training data first.",
)
@click.option(
    "--distill-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Fine-tuning: share of the loss from the checkpoint's own (two-way) outputs; 0 for labels only.",
)
@click.option(
    "--distill-temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="Fine-tuning: softmax temperature of the distillation.",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="Streaming feeds one frame in N (recorded in the model dir; default: the spacing of the frames the checkpoint was trained on, from its recipe's training list).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the files a conversion writes in an existing model dir (never a dir that holds an input).",
)
@int8_options
@arch_options
def convert_online(**options: Any) -> None:
    """Build, export and verify a streaming model with cached shift buffers."""
    from tsmcli.engine.convert import convert_online as run_convert

    arch = arch_overrides(options)
    result = run_convert(options.pop("checkpoint"), options.pop("out"), arch=arch, **options)
    print_rows(_rows(result, options["distill_weight"], options["distill_temperature"]))


def _rows(r, distill_weight: float, distill_temperature: float) -> list[tuple[str, str]]:
    rows = [
        ("model dir", str(r.out_dir)),
        ("input", f"{r.height}x{r.width}"),
        ("buffers", f"{r.num_buffers} ({r.cache_bytes / 1024:.1f} KiB cached between frames)"),
        ("frame stride", f"{r.frame_stride} ({r.frame_stride_from})"),
        *((f"max diff {name}", f"{diff:.2g}") for name, diff in r.max_abs_diff.items()),
        (
            "latency",
            f"{r.latency_ms['streaming']:.2f} ms/frame streaming, "
            f"{r.latency_ms['backbone_2d']:.2f} ms 2D backbone "
            f"(x{r.latency_ms['ratio']:.3f})",
        ),
    ]
    if r.converted_from_bidirectional:
        rows.append(
            ("note", "converted from a bidirectional model (it saw the future in training)")
        )
    if r.finetuned_checkpoint is not None:
        taught = (
            f", distilled (weight {distill_weight:g}, T {distill_temperature:g})"
            if distill_weight > 0
            else ""
        )
        rows.append(
            ("fine-tuned", f"{r.finetune_epochs} epochs one-way{taught}: {r.finetuned_checkpoint}")
        )
    for name, value in (r.accuracy or {}).items():
        rows.append((f"top-1 {name.replace('_', ' ')}", f"{value['top1']:.2f} %"))
    return rows + precision_rows(r.precisions, "frame")


def precision_rows(precisions: dict[str, dict[str, Any]], unit: str) -> list[tuple[str, str]]:
    """One row per ONNX file: its size and speed, and for int8 what it was checked on."""
    rows = []
    for name, found in precisions.items():
        speed = found.get(f"ms_per_{unit}")
        size = f"{found['bytes'] / 1024:,.0f} KiB"
        rows.append(
            (f"{name} onnx", f"{found['file']}, {size}, {speed:.2f} ms/{unit} (ONNX Runtime)")
        )
        checks = found["checks"]
        if name == "int8":
            held = "held-back " if checks["held_back"] else ""
            rows.append(
                (
                    "int8 checks",
                    f"top-1 agrees with fp32 on {checks['agreement']:.1f}% of {checks['clips']} "
                    f"{held}clips; top-1 {checks['int8_top1']:.2f} % (fp32 "
                    f"{checks['fp32_top1']:.2f} %)",
                )
            )
    return rows


@click.command("export")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint to export (ours, official TSM, mmaction2), or a model zoo name (tsm zoo list).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Model dir for model.onnx (model.int8.onnx), classes.txt, report.json.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder the paths of --calib-list are relative to.",
)
@click.option(
    "--source",
    type=click.Choice(choices.SOURCES),
    default=None,
    help="What ROOT holds (default: from the checkpoint's recipe).",
)
@backend_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the files an export writes in an existing model dir (never a dir that holds an input).",
)
@int8_options
@arch_options
def export(**options: Any) -> None:
    """Export the offline model as an ONNX clip model (one clip in, logits out), verified
    against PyTorch, for tsm eval --model and tsm predict --model."""
    from tsmcli.engine.deploy import export_model

    arch = arch_overrides(options)
    result = export_model(options.pop("checkpoint"), options.pop("out"), arch=arch, **options)
    rows = [
        ("model dir", str(result.out_dir)),
        ("model", f"{result.arch}, {result.num_segments} frames, {result.num_classes} classes"),
        ("input", f"{result.input_size}x{result.input_size} (scale {result.scale_size})"),
        ("pytorch", f"{result.eager_ms_per_clip:.2f} ms/clip (fp32, {result.threads} threads)"),
    ]
    print_rows(rows + precision_rows(result.precisions, "clip"))
