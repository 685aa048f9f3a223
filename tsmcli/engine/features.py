"""``tsm features``: what a model computes before its classifier, kept for other work
(retrieval, clustering, a linear probe, a temporal model on top).

The features of a clip are the backbone's pooled outputs of its T frames (``TSN.features``,
the classifier's input). ``level="clip"`` averages them over the frames and over the test
views (``tsm eval``'s sampling and crops, the same loader): since the head is linear, the
head of a clip's features is exactly the view-averaged scores ``tsm eval`` reports.
``level="frame"`` keeps one row per segment, averaged over the views only.

The rows go to one ``features.npy`` (``(N, D)`` or ``(N, T, D)``, float32 or float16) and an
``index.jsonl`` beside it: one line per input with its row, path, views and, from a list,
its label.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tsmcli.choices import FEATURE_DTYPES, FEATURE_LEVELS
from tsmcli.data.inputs import VIDEOS, find_inputs
from tsmcli.engine.distributed import resolve_device
from tsmcli.engine.evaluate import checkpoint_file, load_for_eval, views_loader
from tsmcli.engine.views import Protocol, Views, resolve_views, view_request
from tsmcli.errors import UsageError
from tsmcli.fileio import (
    Output,
    atomic_write,
    atomic_write_with,
    check_outputs,
    check_writable_dir,
)
from tsmcli.model.checkpoint import CheckpointInfo
from tsmcli.model.spec import ArchOverrides

log = logging.getLogger(__name__)

DTYPES = dict(zip(FEATURE_DTYPES, (np.float32, np.float16), strict=True))
FEATURES_FILE, INDEX_FILE = "features.npy", "index.jsonl"


@dataclass(frozen=True)
class FeaturesResult:
    """The rows written (or, without an output folder, kept) and how they were made."""

    features: np.ndarray = field(repr=False)  # (N, D) or (N, T, D); rows of failed inputs: 0
    index: list[dict]  # per row: input, row, views, label (from a list), error
    level: str
    views: int | None
    checkpoint: str
    written: list[Path] = field(default_factory=list)
    videos_per_s: float = 0.0


def features(
    inputs: Sequence[str | Path] = (),
    checkpoint: str | Path | CheckpointInfo | None = None,
    *,
    list_file: str | Path | None = None,
    root: str | Path | None = None,
    out_dir: str | Path | None = None,
    level: str = "clip",
    dtype: str = "float32",
    views: Views = None,
    arch: ArchOverrides | None = None,
    backend: str | None = None,
    batch_size: int = 4,
    workers: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> FeaturesResult:
    """The features of ``inputs`` (videos, frame folders, or folders of them) or of the
    videos of ``list_file`` under ``root``, at ``level`` (``clip`` or ``frame``), with eval's
    ``views`` (a preset or ``ViewRequest``); written to ``out_dir`` when given (checked before
    any work: never onto an input, an earlier run's files only with ``overwrite``)."""
    if level not in FEATURE_LEVELS or dtype not in DTYPES:
        raise UsageError(
            f"--level must be clip or frame and --dtype float32 or float16, got {level}, {dtype}"
        )
    if bool(inputs) == (list_file is not None) or (list_file is None) != (root is None):
        raise UsageError("give INPUTs, or --list and --root, not both")
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
        files = [Output("--out", Path(out_dir) / name) for name in (FEATURES_FILE, INDEX_FILE)]
        given = [checkpoint_file(checkpoint), list_file, *inputs]
        check_outputs(files, given, overwrite=overwrite)
    torch_device = resolve_device(device)
    request = view_request(views)
    model, data, _, path = load_for_eval(checkpoint, arch or ArchOverrides(), None, backend)
    protocol = (
        request if isinstance(request, Protocol) else resolve_views(request, data.dense_training)
    )
    dataset, rows = _dataset(inputs, list_file, root, data, protocol, int(model.num_segments))
    begin = time.perf_counter()
    values, errors, count = _run(
        model, dataset, level, batch_size, workers, torch_device, len(rows)
    )
    elapsed = time.perf_counter() - begin
    for row, error in errors.items():
        rows[row]["error"] = error
    result = FeaturesResult(
        values.astype(DTYPES[dtype]),
        rows,
        level,
        count,
        str(path),
        videos_per_s=(len(rows) - len(errors)) / elapsed if elapsed > 0 else float("inf"),
    )
    if out_dir is not None:
        result.written.extend(_write(result, Path(out_dir)))
    return result


def _dataset(inputs, list_file, root, data, protocol: Protocol, num_segments: int):
    """The test-view dataset of the inputs or the list, and one index row per item."""
    if list_file is not None:
        from tsmcli.data.dataset import VideoClipDataset
        from tsmcli.data.lists import read_list_file

        listed = read_list_file(list_file, classes=False)
        source = data.source or (
            "frames" if (Path(root) / listed.entries[0].path).is_dir() else VIDEOS
        )
        dataset = VideoClipDataset(
            listed, root, clip=data.clip(num_segments), reading=data.reading(source), views=protocol
        )
        rows = [
            {"input": e.path, "row": i, "label": e.label, "error": None}
            for i, e in enumerate(listed.entries)
        ]
        return dataset, rows
    from tsmcli.data.windows import WHOLE, InputClip, InputClipDataset

    found = find_inputs(inputs, data.frame_template)
    items = [InputClip(str(f.path), WHOLE, 0, f.source) for f in found]
    dataset = InputClipDataset(
        items, clip=data.clip(num_segments), views=protocol, reading=data.reading(VIDEOS)
    )
    rows = [{"input": str(f.path), "row": i, "error": f.error} for i, f in enumerate(found)]
    return dataset, rows


def _run(model, dataset, level, batch_size, workers, device, total):
    """Every item's features, by eval's loader: ``(values, errors by row, views)``."""
    from tqdm import tqdm

    from tsmcli.data.dataset import loader_errors
    from tsmcli.data.windows import collate_with_errors

    loader = views_loader(dataset, batch_size, workers, device, collate_fn=collate_with_errors)
    model = model.to(device).eval()
    width = int(model.feature_dim)
    shape = (total, width) if level == "clip" else (total, int(model.num_segments), width)
    values, errors, views = np.zeros(shape, dtype=np.float32), {}, None
    bar = tqdm(total=total, desc="features", unit="video", disable=None)
    with torch.inference_mode(), bar, loader_errors("--workers"):
        for batch, failed in loader:
            errors.update(failed)
            bar.update(len(batch.indices) + len(failed))
            if not len(batch.indices):
                continue
            clips = batch.model_input(device)  # (B, V, T, 3, S, S)
            b, v = clips.shape[:2]
            frames = model.features(clips.flatten(0, 1)).float().cpu().view(b, v, -1, width)
            pooled = frames.mean(dim=1)  # (B, T, D): over the views
            if level == "clip":
                pooled = pooled.mean(dim=1)  # (B, D)
            values[np.asarray(batch.indices)] = pooled.numpy()
            views = v
    return values, errors, views


def _write(result: FeaturesResult, out_dir: Path) -> list[Path]:
    lines = [json.dumps({**row, "views": result.views}) + "\n" for row in result.index]
    return [
        atomic_write_with(out_dir / FEATURES_FILE, lambda handle: np.save(handle, result.features)),
        atomic_write(out_dir / INDEX_FILE, "".join(lines)),
    ]
