"""``tsm eval``: a checkpoint, or an online model dir frame by frame; the view and model
options ``tsm predict`` shares, and the architecture options ``tsm convert-online`` takes too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tsmcli import choices
from tsmcli.commands import overwrite_option, print_rows


def apply_options(options):
    """Several click options as one decorator, shown in ``--help`` in the order listed."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


# the test views and their loading: tsm eval and tsm predict read videos alike
view_options = apply_options(
    [
        click.option(
            "--protocol",
            type=click.Choice(choices.PROTOCOLS),
            default=None,
            help="Test preset: single (1 view), kinetics (10 dense clips x 3 full-res crops), sthv2 (2 twice-sampled clips x 3 full-res crops). Default: single.",
        ),
        click.option(
            "--clips",
            type=click.IntRange(min=1),
            default=None,
            help="Temporal clips per video (overrides the protocol).",
        ),
        click.option(
            "--crops",
            type=click.Choice([str(crops) for crops in choices.TEST_CROPS]),
            default=None,
            help="Spatial crops per clip (overrides the protocol).",
        ),
        click.option(
            "--full-res/--no-full-res",
            default=None,
            help="Crops of the scaled short side (256) instead of the input size (224).",
        ),
        click.option(
            "--twice-sample/--no-twice-sample",
            default=None,
            help="Add the segment starts to the segment centres (2x clips).",
        ),
        click.option(
            "--dense/--no-dense",
            default=None,
            help="Dense sampling: T frames with stride 64/T from evenly spaced starts.",
        ),
        click.option(
            "--average",
            type=click.Choice(choices.AVERAGE_MODES),
            default="score",
            show_default=True,
            help="Average raw scores, or softmax probabilities, over the views of a video.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="Videos per batch (each with all its views).",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="DataLoader processes (default: up to 4, one fewer than the batches).",
        ),
    ]
)
# the architecture: for official / mmaction2 checkpoints; over what ours record
arch_options = apply_options(
    [
        click.option(
            "--arch",
            default=None,
            help="Official/mmaction2 files: backbone, e.g. resnet50 (a zoo name gives it).",
        ),
        click.option(
            "--segments",
            "num_segments",
            type=click.IntRange(min=1),
            default=None,
            help="Frames per clip: required for official/mmaction2 checkpoints; overrides the recipe's for ours.",
        ),
        click.option(
            "--shift",
            type=click.Choice(choices.SHIFT_MODES),
            default=None,
            help="Official/mmaction2 files: temporal shift (a zoo name gives it; given, it wins with a warning).",
        ),
        click.option(
            "--shift-div",
            type=int,
            default=None,
            help="Official/mmaction2 checkpoints: 1/N of the channels shift each way.",
        ),
        click.option(
            "--shift-place",
            type=click.Choice(choices.SHIFT_PLACES),
            default=None,
            help="Official/mmaction2 checkpoints: where the shift sits.",
        ),
    ]
)
backend_option = click.option(
    "--backend",
    type=click.Choice(choices.BACKENDS),
    default=None,
    help="Video decoder (default: from the recipe, else decord).",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(choices.PRECISIONS),
    default="fp32",
    show_default=True,
    help="bf16: the checkpoint under autocast, only where bf16 is native (AVX512_BF16/AMX "
    "CPUs, GPUs); int8: the int8 ONNX model of a model dir (--model, --online).",
)
# the model: its decoder, its architecture, its device, its precision
model_options = apply_options(
    [
        backend_option,
        arch_options,
        click.option(
            "--device",
            type=click.Choice(choices.DEVICES),
            default="auto",
            show_default=True,
            help="Where the model runs (auto: CUDA when available).",
        ),
        precision_option,
    ]
)


@click.command("eval")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint to evaluate: a file, or a model zoo name (tsm zoo list), which also gives the architecture and class names.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Evaluate the ONNX model of a model dir from tsm export (ONNX Runtime, CPU), with eval's views.",
)
@click.option(
    "--online",
    "online_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Evaluate an exported streaming model dir frame by frame.",
)
@click.option(
    "--list", "list_file", required=True, type=click.Path(path_type=Path), help="TSN list file."
)
@click.option(
    "--root",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder the list's paths are relative to.",
)
@view_options
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write top1, top5, mean_class_accuracy, ... to this JSON file.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write per-class accuracy, confusion matrix and per-video predictions here.",
)
@overwrite_option
@click.option(
    "--source",
    type=click.Choice(choices.SOURCES),
    default=None,
    help="What ROOT holds (default: from the checkpoint's recipe).",
)
@model_options
@click.option(
    "--trust-torchscript",
    is_flag=True,
    help="--online: run the dir's online.pt (TorchScript, which can run code) instead of the model rebuilt from online_weights.pt.",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="--online: feed one frame in N (default: the model dir's stride, the spacing of the frames it was trained on).",
)
def evaluate(**options: Any) -> None:
    """Top-1 / top-5 / mean class accuracy of a checkpoint (or an exported model) on a list.

    Under torchrun (python -m torch.distributed.run ... -m tsmcli eval ...) each process scores
    a share of the list and the numbers equal a single process's.
    """
    from tsmcli.engine.distributed import env_rank
    from tsmcli.engine.evaluate import run_eval

    views, arch = view_and_arch(options)
    result = run_eval(views=views, arch=arch, **options)
    if options["online_dir"] is not None:
        print_rows(_online_rows(options["online_dir"], result, options))
    elif env_rank() == 0:  # under torchrun every rank has the numbers; one prints them
        print_rows(_checkpoint_rows(result, options))


def view_and_arch(options: dict[str, Any]) -> tuple[Any, Any]:
    """The view options as one ``ViewRequest`` and the architecture options as one
    ``ArchOverrides``, taken out of ``options`` (the rest are the API function's keywords)."""
    from tsmcli.view_request import ViewRequest

    crops = options.pop("crops")
    views = ViewRequest(
        options.pop("protocol"),
        options.pop("clips"),
        None if crops is None else int(crops),
        options.pop("full_res"),
        options.pop("twice_sample"),
        options.pop("dense"),
        options.pop("average"),
    )
    return views, arch_overrides(options)


def arch_overrides(options: dict[str, Any]) -> Any:
    """The ``arch_options`` as one ``ArchOverrides`` (a partial model spec), taken out of
    ``options``: each option's name is the spec key it gives."""
    from tsmcli.model.spec import SPEC_KEYS, ArchOverrides

    return ArchOverrides(**{key: options.pop(key) for key in SPEC_KEYS if key in options})


def _online_rows(online: Path, result, options: dict[str, Any]) -> list[tuple[str, str]]:
    which = "every frame" if result.stride == 1 else f"one frame in {result.stride}"
    why = "given" if options["stride"] is not None else result.stride_from
    precision = [] if options["precision"] == "fp32" else [("precision", options["precision"])]
    return [
        ("model", str(online)),
        *precision,
        ("frames fed", f"{which} ({why})"),
        ("top-1", f"{result.top1:.2f} %"),
        ("top-5", f"{result.top5:.2f} %"),
        ("mean class", f"{result.mean_class_accuracy:.2f} %"),
        *((f"top-1 at {p}%", f"{acc:.2f} %") for p, acc in sorted(result.top1_at.items())),
        ("videos", str(result.num_videos)),
        ("frames", str(result.num_frames)),
        ("latency", f"{result.latency_ms:.2f} ms/frame"),
    ] + _written(options["json_path"], options["out_dir"])


def _checkpoint_rows(result, options: dict[str, Any]) -> list[tuple[str, str]]:
    given = options["checkpoint"] or options["model_dir"]
    precision = [] if options["precision"] == "fp32" else [("precision", options["precision"])]
    rows = [
        ("checkpoint" if options["checkpoint"] else "model", str(given)),
        *precision,
        ("protocol", result.protocol.name),
        ("top-1", f"{result.top1:.2f} %"),
        ("top-5", f"{result.top5:.2f} %"),
        ("mean class", f"{result.mean_class_accuracy:.2f} %"),
        ("videos", str(result.num_videos)),
        ("views", str(result.views)),
        ("videos/s", f"{result.videos_per_s:.1f}"),
    ]
    return rows + _written(options["json_path"], options["out_dir"])


def _written(json_path: Path | None, out_dir: Path | None) -> list[tuple[str, str]]:
    return [(name, str(path)) for name, path in (("json", json_path), ("reports", out_dir)) if path]
