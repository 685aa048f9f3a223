"""The ``tsm`` command line: parse options, call one public API function, print a summary.

No logic lives here that a Python user could not reach through ``import tsmcli``. torch is
imported only inside the commands, so ``tsm --help`` is instant.
"""

from __future__ import annotations

import os
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


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--short-side", default=256, show_default=True, help="Resize so the short side is N >= 2 (0 keeps the size).")
@click.option("--fps", type=float, default=None, help="Frames per second to keep (default: every frame).")
@click.option("--quality", default=90, show_default=True, help="JPEG quality (1-100).")
@click.option("--workers", type=int, default=None, help="Processes (default: the core count).")
@click.option("--overwrite", is_flag=True, help="Extract again even where a finished folder exists.")
@click.option("--strict", is_flag=True, help="Exit 1 if any video fails.")
def extract(src, dst, short_side, fps, quality, workers, overwrite, strict) -> None:
    """Decode every video under SRC into a folder of JPEG frames under DST.

    Videos that cannot be decoded (or whose worker process dies) are listed in
    DST/failures.csv and the run goes on. One run at a time per DST (DST/.tsm-extract.lock).
    """
    from tsmcli.data.extract import extract as run_extract

    result = run_extract(src, dst, short_side=short_side, fps=fps, quality=quality,
                         workers=workers, overwrite=overwrite, strict=strict)
    failures = f" (see {result.failures_csv})" if result.failed else ""
    click.echo(f"extracted {result.done:,} videos ({result.frames:,} frames) in {result.seconds:.1f} s, "
               f"{result.skipped:,} skipped, {result.failed:,} failed{failures}")


@cli.command("build-list")
@click.option("--dataset", required=True, help="kinetics400, sthv1, sthv2, ucf101, hmdb51, jester or folder.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Folder of frame folders or videos.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for train.txt, val.txt, classes.txt.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None, help="Folder of the dataset's annotation files.")
@click.option("--source", type=click.Choice(["frames", "videos"]), default=None, help="What ROOT holds (default: detected).")
@click.option("--split", type=click.IntRange(1, 3), default=1, show_default=True, help="UCF101/HMDB51 split.")
@click.option("--val-fraction", type=float, default=0.25, show_default=True, help="folder: share of each class kept for val.")
@click.option("--seed", type=int, default=0, show_default=True, help="folder: seed of the train/val split.")
@click.option("--template", default=None, help="Frame file name template, e.g. 'img_{:05d}.jpg' (default: detected).")
@click.option("--label-order", type=click.Choice(["official", "sorted"]), default="official", show_default=True,
              help="sthv1/jester: labels CSV order (mmaction2) or sorted (official TSM checkpoints).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads counting frames / opening videos (default: up to 8).")
@click.option("--conflicting-labels", type=click.Choice(["error", "first", "drop"]), default="error", show_default=True,
              help="A clip annotated with two different labels: stop and name it (error), keep the label read "
                   "first, train before val before test (first), or leave the clip out (drop).")
def build_list(dataset, root, out, annotations, source, split, val_fraction, seed, template, label_order, workers,
               conflicting_labels) -> None:
    """Write TSN list files (train.txt, val.txt, classes.txt) for a dataset.

    A clip listed twice in a split, or also in an earlier split (train, val, test), is written
    once; the rows left out are counted and listed in OUT/duplicates.txt.
    """
    from tsmcli.data.adapters import build_list as build

    result = build(dataset, root, out, annotations=annotations, source=source, split=split,
                   val_fraction=val_fraction, seed=seed, template=template, label_order=label_order,
                   workers=workers, conflicting_labels=conflicting_labels)
    for name, path in result.lists.items():
        click.echo(f"{path.name}: {result.counts[name]} {result.source}")
    click.echo(f"{result.classes_file.name}: {result.num_classes} classes (written to {out})")
    if result.template is not None:
        click.echo(f"frame template: {result.template} (set data.frame_template to it in a recipe if it is not the default)")
    for name, count in result.unlabeled.items():
        click.echo(f"{name}: {count} entries without labels, not written")
    if result.num_missing:
        click.echo(f"{result.num_missing} annotated clips missing or empty: see {result.missing_file}")
    if result.num_duplicates or result.num_overlaps or result.num_conflicts:
        counts = [f"{result.num_duplicates} listed twice in a split",
                  f"{result.num_overlaps} also in an earlier split (left out of the later one)"]
        if result.num_conflicts:
            resolved = "kept the first label" if conflicting_labels == "first" else "left out"
            counts.append(f"{result.num_conflicts} with two labels ({resolved})")
        click.echo(f"repeated clips: {', '.join(counts)}: see {result.duplicates_file}")


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-class", type=int, default=None, help="Videos per class (default: 150).")
@click.option("--size", type=int, default=None, help="Frame side in pixels, even (default: 32).")
@click.option("--frames", "num_frames", type=int, default=None, help="Frames per video (default: 24).")
@click.option("--fps", type=float, default=None, help="Frame rate written in the videos (default: 8).")
@click.option("--classes", default=None, metavar="A,B,...",
              help="Classes to write (default: the moving and growing pairs; the rotating pair is extra).")
@click.option("--overwrite", is_flag=True, help="Replace class folders that exist in OUT.")
def synth(out, seed, per_class, size, num_frames, fps, classes, overwrite) -> None:
    """Write the synthetic time-reversal dataset (real H.264 videos, folder layout)."""
    from tsmcli.data.synth import synth as run_synth

    given = {"per_class": per_class, "size": size, "num_frames": num_frames, "fps": fps,
             "classes": None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]}
    result = run_synth(out, seed=seed, overwrite=overwrite,
                       **{key: value for key, value in given.items() if value is not None})
    click.echo(f"wrote {len(result.paths):,} videos ({len(result.classes)} classes x "
               f"{result.num_frames} frames, {result.size}x{result.size}) to {result.out} "
               f"in {result.seconds:.1f} s")


@cli.command()
@click.option("--recipe", required=True, help="A shipped recipe name (kinetics_r50) or a YAML path.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. --set optim.lr=0.01.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run dir (default: train.out_dir/<recipe name>).")
@click.option("--resume", is_flag=True, help="Continue from last.pt in the run dir.")
def train(recipe, overrides, out, resume) -> None:
    """Train a TSM (or TSN) model from a recipe."""
    from tsmcli.engine.distributed import env_rank
    from tsmcli.engine.train import train as train_recipe
    from tsmcli.recipe import load_recipe

    main_rank = env_rank() == 0  # under torchrun only rank 0 logs and prints
    result = train_recipe(load_recipe(recipe, overrides), out_dir=out, resume=resume)
    if main_rank:
        best = f"{result.best_top1:.2f}%" if result.best_top1 is not None else "n/a (no data.val_list)"
        epochs = f"{result.epochs} epoch" + ("s" if result.epochs != 1 else "")
        click.echo(f"trained {epochs}: best top-1 {best}, run dir {result.run_dir}")


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Checkpoint to evaluate.")
@click.option("--online", type=click.Path(path_type=Path), default=None, help="Evaluate an exported streaming model dir frame by frame.")
@click.option("--list", "list_file", required=True, type=click.Path(path_type=Path), help="TSN list file.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Folder the list's paths are relative to.")
@click.option("--protocol", type=click.Choice(["single", "kinetics", "sthv2"]), default=None, help="Test preset: single (1 view), kinetics (10 dense clips x 3 full-res crops), sthv2 (2 twice-sampled clips x 3 full-res crops). Default: single.")
@click.option("--clips", type=click.IntRange(min=1), default=None, help="Temporal clips per video (overrides the protocol).")
@click.option("--crops", type=click.Choice(["1", "3", "10"]), default=None, help="Spatial crops per clip (overrides the protocol).")
@click.option("--full-res/--no-full-res", default=None, help="Crops of the scaled short side (256) instead of the input size (224).")
@click.option("--twice-sample/--no-twice-sample", default=None, help="Add the segment starts to the segment centres (2x clips).")
@click.option("--dense/--no-dense", default=None, help="Dense sampling: T frames with stride 64/T from evenly spaced starts.")
@click.option("--average", type=click.Choice(["score", "prob"]), default="score", show_default=True, help="Average raw scores, or softmax probabilities, over the views of a video.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Videos per batch (each with all its views).")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader processes (default: up to 4).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write top1, top5, mean_class_accuracy, ... to this JSON file.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Write per-class accuracy, confusion matrix and per-video predictions here.")
@click.option("--source", type=click.Choice(["frames", "videos"]), default=None, help="What ROOT holds (default: from the checkpoint's recipe).")
@click.option("--backend", type=click.Choice(["decord", "pyav"]), default=None, help="Video decoder (default: from the recipe, else decord).")
@click.option("--arch", default=None, help="Official/mmaction2 checkpoints: backbone, e.g. resnet50.")
@click.option("--segments", "num_segments", type=click.IntRange(min=1), default=None, help="Frames per clip: required for official/mmaction2 checkpoints; overrides the recipe's for ours.")
@click.option("--shift", type=click.Choice(["none", "bidirectional", "unidirectional"]), default=None, help="Official/mmaction2 checkpoints: temporal shift.")
@click.option("--shift-div", type=int, default=None, help="Official/mmaction2 checkpoints: 1/N of the channels shift each way.")
@click.option("--shift-place", type=click.Choice(["blockres", "block"]), default=None, help="Official/mmaction2 checkpoints: where the shift sits.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where the model runs (auto: CUDA when available).")
@click.option("--trust-torchscript", is_flag=True, help="--online: run the dir's online.pt (TorchScript, which can run code) instead of the model rebuilt from online_weights.pt.")
def evaluate(checkpoint, online, list_file, root, protocol, clips, crops, full_res, twice_sample,
             dense, average, batch_size, workers, json_path, out_dir, source, backend, arch,
             num_segments, shift, shift_div, shift_place, device, trust_torchscript) -> None:
    """Top-1 / top-5 / mean class accuracy of a checkpoint on a list.

    Under torchrun (python -m torch.distributed.run ... -m tsmcli eval ...) each process scores
    a share of the list and the numbers equal a single process's.
    """
    from tsmcli.engine.distributed import env_rank
    from tsmcli.engine.evaluate import run_eval
    from tsmcli.engine.views import ViewRequest
    from tsmcli.model.checkpoint import ArchOverrides

    views = ViewRequest(protocol, clips, None if crops is None else int(crops), full_res,
                        twice_sample, dense, average)
    arch = ArchOverrides(arch, num_segments, shift, shift_div, shift_place)
    result = run_eval(list_file, root, checkpoint=checkpoint, online_dir=online, views=views,
                      arch=arch, source=source, backend=backend, batch_size=batch_size,
                      workers=workers, device=device, out_dir=out_dir, json_path=json_path,
                      trust_torchscript=trust_torchscript)
    if online is not None:
        rows = [("model", str(online)), ("top-1", f"{result.top1:.2f} %"),
                ("top-5", f"{result.top5:.2f} %"),
                ("mean class", f"{result.mean_class_accuracy:.2f} %"),
                *((f"top-1 at {p}%", f"{acc:.2f} %") for p, acc in sorted(result.top1_at.items())),
                ("videos", str(result.num_videos)), ("frames", str(result.num_frames)),
                ("latency", f"{result.latency_ms:.2f} ms/frame")]
    else:
        if env_rank() != 0:
            return
        rows = [("checkpoint", str(checkpoint)), ("protocol", result.protocol.name),
                ("top-1", f"{result.top1:.2f} %"), ("top-5", f"{result.top5:.2f} %"),
                ("mean class", f"{result.mean_class_accuracy:.2f} %"),
                ("videos", str(result.num_videos)), ("views", str(result.views)),
                ("videos/s", f"{result.videos_per_s:.1f}")]
        rows += [(name, str(path)) for name, path in (("json", json_path), ("reports", out_dir)) if path]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


@cli.command("convert-online")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint to convert (ours, official TSM or mmaction2).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model dir for online_weights.pt, online.pt, online.onnx, report.json.")
@click.option("--height", type=click.IntRange(min=16), default=None, help="Frame height (default: the recipe's input size, else 224).")
@click.option("--width", type=click.IntRange(min=16), default=None, help="Frame width (default: the recipe's input size, else 224).")
@click.option("--val-list", type=click.Path(path_type=Path), default=None, help="Report top-1 before and after conversion on this list.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Folder the val list's paths are relative to.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True, help="Fine-tune one-way on the recipe's training data first.")
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Fine-tuning: share of the loss from the checkpoint's own (two-way) outputs; 0 for labels only.")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True, help="Fine-tuning: softmax temperature of the distillation.")
@click.option("--overwrite", is_flag=True, help="Replace the files a conversion writes in an existing model dir (never a dir that holds an input).")
@click.option("--arch", default=None, help="Official/mmaction2 checkpoints: backbone, e.g. resnet50.")
@click.option("--segments", "num_segments", type=click.IntRange(min=1), default=None, help="Official/mmaction2 checkpoints: frames per clip in training.")
@click.option("--shift", type=click.Choice(["none", "bidirectional", "unidirectional"]), default=None, help="Official/mmaction2 checkpoints: temporal shift in training.")
def convert_online(checkpoint, out, height, width, val_list, root, finetune_epochs,
                   distill_weight, distill_temperature, overwrite, arch, num_segments,
                   shift) -> None:
    """Build, export and verify a streaming model with cached shift buffers."""
    from tsmcli.engine.convert import convert_online as run_convert

    given = {"arch": arch, "num_segments": num_segments, "shift": shift}
    r = run_convert(checkpoint, out, height=height, width=width, val_list=val_list, root=root,
                    finetune_epochs=finetune_epochs, distill_weight=distill_weight,
                    distill_temperature=distill_temperature, overwrite=overwrite,
                    **{key: value for key, value in given.items() if value is not None})
    rows = [("model dir", str(r.out_dir)), ("input", f"{r.height}x{r.width}"),
            ("buffers", f"{r.num_buffers} ({r.cache_bytes / 1024:.1f} KiB cached between frames)"),
            *((f"max diff {name}", f"{diff:.2g}") for name, diff in r.max_abs_diff.items()),
            ("latency", f"{r.latency_ms['streaming']:.2f} ms/frame streaming, "
                        f"{r.latency_ms['backbone_2d']:.2f} ms 2D backbone "
                        f"(x{r.latency_ms['ratio']:.3f})")]
    if r.converted_from_bidirectional:
        rows.append(("note", "converted from a bidirectional model (it saw the future in training)"))
    if r.finetuned_checkpoint is not None:
        taught = (f", distilled (weight {distill_weight:g}, T {distill_temperature:g})"
                  if distill_weight > 0 else "")
        rows.append(("fine-tuned",
                     f"{r.finetune_epochs} epochs one-way{taught}: {r.finetuned_checkpoint}"))
    for name, value in (r.accuracy or {}).items():
        rows.append((f"top-1 {name.replace('_', ' ')}", f"{value['top1']:.2f} %"))
    pad = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{pad}}  {value}")


@cli.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Online model dir from tsm convert-online.")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per frame.")
@click.option("--trust-torchscript", is_flag=True, help="Run the dir's online.pt (TorchScript, which can run code) instead of the model rebuilt from online_weights.pt.")
def stream(video, model_dir, topk, trust_torchscript) -> None:
    """Run a video through an online model frame by frame, printing the running top-k."""
    from tsmcli.engine.online import stream as run_stream

    for step in run_stream(video, model_dir, topk=topk, trust_torchscript=trust_torchscript):
        best = "  ".join(f"{label} {score:.3f}" for label, score in zip(step.labels, step.scores, strict=True))
        click.echo(f"frame {step.index:5d}  {step.latency_ms:7.2f} ms  {best}")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True,
              help="Folder for the data, runs and report.md; a re-run reuses finished steps.")
@click.option("--per-class", type=click.IntRange(min=2), default=None, help="Synthetic videos per class.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default: the demo recipe's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the demo recipe.")
def demo(out, per_class, epochs, overrides) -> None:
    """Run everything on the embedded synthetic dataset and write a report."""
    from tsmcli.demo import demo as run_demo

    result = run_demo(out, per_class=per_class, epochs=epochs, overrides=overrides)
    click.echo(result.table())
    click.echo(f"report: {result.report} ({result.seconds / 60:.1f} min)")


@cli.group()
def zoo() -> None:
    """Published TSM checkpoints by name: list them, download one (into $TSM_HOME)."""


@zoo.command("list")
def zoo_list() -> None:
    """Print every published checkpoint with its protocol and published top-1."""
    from tsmcli.zoo import list_entries
    from tsmcli.zoo_cache import is_cached

    rows = [("name", "dataset", "frames", "protocol", "top-1", "downloaded")]
    for entry in list_entries():
        result = entry.published
        rows.append((entry.name, entry.dataset, "-" if entry.segments is None else str(entry.segments),
                     "-" if result is None else str(result.protocol),
                     "-" if result is None else f"{result.top1:g}",
                     "yes" if is_cached(entry) else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@zoo.command("download")
@click.argument("name")
def zoo_download(name) -> None:
    """Download NAME (verified against its hash) and print the path of the file."""
    from tsmcli.zoo_cache import download_checkpoint

    click.echo(str(download_checkpoint(name)))


def main() -> None:
    cli(prog_name="tsm")


if __name__ == "__main__":
    main()
