"""The clip Dataset: a list file + a root -> sampled, cropped uint8 clips.

The trainer finishes them on its device after the transfer (``ClipBatch.model_input`` in
``data.batch``: train crops resized and mirrored, then normalised; see ``transforms`` for why
the work is split).

Item ``i`` of epoch ``e`` draws all its randomness (frame sampling, crop, flip) from
``np.random.default_rng([seed, e, i])`` and nothing else, so a clip is the same whatever the
number of DataLoader workers, and a resumed run sees exactly the clips it would have seen.

A missing frame or a corrupt video is a ``DataError`` naming the file, and so is a frame past
the end of a video whose list count is too large (frame folders and PyAV take the list's count;
decord samples from the smaller of the list's and the container's). With ``skip_bad`` the
item comes back with ``clip=None`` and the error text instead, and ``collate_clips`` drops it
and reports it in ``ClipBatch.skipped``. No other frame or video is ever substituted.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tsmcli.data import transforms
from tsmcli.data.batch import ClipBatch, Sample, collate_clips
from tsmcli.data.decode import (
    BACKENDS,
    FRAME_TEMPLATE,
    FrameFolder,
    FrameSource,
    check_frame_template,
    open_video,
)
from tsmcli.data.frame_cache import CachedVideo, frame_cache_for
from tsmcli.data.layout import SOURCES
from tsmcli.data.lists import ListEntry, read_labelled_list
from tsmcli.data.sampling import MODES, sample_indices
from tsmcli.errors import DataError, TSMError, UsageError

log = logging.getLogger(__name__)

# the batch lives in data.batch; its names stay importable from here
__all__ = ["ClipBatch", "Sample", "VideoClipDataset", "collate_clips", "loader_errors"]


def _check_options(
    *,
    mode: str,
    source: str,
    backend: str,
    flip: str,
    flip_pairs: Sequence[tuple[int, int]] | None,
    crops: int,
    num_segments: int,
    clips: int,
    seed: int,
    sizes: tuple[int, int, bool],
    colour_jitter: float = 0.0,
    frame_cache_mb: int = 0,
) -> None:
    """Raise ``UsageError`` naming the first of ``VideoClipDataset``'s options that is out of
    range; ``sizes`` is (input_size, scale_size, full_res)."""
    for name, value, allowed in (
        ("mode", mode, MODES),
        ("source", source, SOURCES),
        ("backend", backend, BACKENDS),
        ("flip", flip, transforms.FLIP_MODES),
    ):
        if value not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if flip == "swap" and mode == "train" and not flip_pairs:
        raise UsageError(
            "flip 'swap' needs the dataset's left/right label pairs and none were "
            "given; use flip 'on' or 'off'"
        )
    if crops not in transforms.TEST_CROPS:
        raise UsageError(f"crops must be one of {transforms.TEST_CROPS}, got {crops}")
    if num_segments < 1 or clips < 1 or seed < 0:
        raise UsageError(
            f"num_segments and clips must be >= 1 and seed >= 0, got "
            f"{num_segments}, {clips}, {seed}"
        )
    input_size, scale_size, full_res = sizes
    if (full_res and scale_size < input_size) or min(input_size, scale_size) < 1:
        raise UsageError(
            f"input_size {input_size} and scale_size {scale_size} must be "
            "positive, and scale_size >= input_size"
        )
    if not 0 <= colour_jitter < 1:
        raise UsageError(f"colour_jitter must be in [0, 1) (0: off), got {colour_jitter}")
    if frame_cache_mb < 0:
        raise UsageError(f"frame_cache_mb must be >= 0 (0: off), got {frame_cache_mb}")


class VideoClipDataset(Dataset):
    """Clips of the videos of a TSN list file, as in the official TSM training and testing.

    ``mode="train"``: segment sampling (dense, or ``even``: evenly spaced), multi-scale crop,
    flip, colour jitter (off at 0); clip (T, 3, S, S).
    ``mode="val"``: segment centres, ``crops`` views; clip (V, T, 3, S, S).
    ``mode="test"``: ``clips`` temporal views (twice as many with ``twice_sample``; dense
    starts with ``dense``) x ``crops`` spatial views; clip (V, T, 3, S, S), temporal-major.
    ``frame_cache_mb``: MiB of decoded frames (from JPEGs or videos) kept in memory by each
    process that loads (0: none; see ``frame_cache``).
    """

    def __init__(
        self,
        list_file: str | Path,
        root: str | Path,
        *,
        num_segments: int,
        mode: str = "train",
        source: str = "frames",
        backend: str = "decord",
        template: str = FRAME_TEMPLATE,
        input_size: int = 224,
        scale_size: int = 256,
        scales: Sequence[float] = transforms.TRAIN_SCALES,
        flip: str = "on",
        flip_pairs: Sequence[tuple[int, int]] | None = None,
        colour_jitter: float = 0.0,
        clips: int = 1,
        crops: int = 1,
        full_res: bool = False,
        twice_sample: bool = False,
        dense: bool = False,
        even: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
        frame_cache_mb: int = 0,
    ):
        _check_options(
            mode=mode,
            source=source,
            backend=backend,
            flip=flip,
            flip_pairs=flip_pairs,
            crops=crops,
            num_segments=num_segments,
            clips=clips,
            seed=seed,
            sizes=(input_size, scale_size, full_res),
            colour_jitter=colour_jitter,
            frame_cache_mb=frame_cache_mb,
        )
        self.list_file = Path(list_file)
        self.root = Path(root)
        self.entries, self.classes = self._read_entries()
        self.num_segments = num_segments
        self.mode = mode
        self.source = source
        self.backend = backend
        self.template = check_frame_template(template) if source == "frames" else template
        self.input_size, self.scale_size = input_size, scale_size
        self.scales = tuple(scales)
        self.flip = flip
        self.flip_pairs, self.colour_jitter = tuple(flip_pairs or ()), colour_jitter
        self.clips, self.crops = clips, crops
        self.full_res, self.twice_sample = full_res, twice_sample
        self.dense, self.even = dense, even
        self.skip_bad, self.seed = skip_bad, seed
        self._video_frames: dict[Path, int] = {}  # a cached video's frame count, once read
        self.frame_cache = frame_cache_for(frame_cache_mb)
        # Shared memory, so set_epoch reaches persistent DataLoader workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def _read_entries(self) -> tuple[list[ListEntry], list[str] | None]:
        """The items and their class names (None: no classes.txt): the list file's. A subclass
        over items that are not a list file (``tsm predict``'s inputs) gives its own."""
        return read_labelled_list(self.list_file)

    @property
    def num_views(self) -> int:
        """V of a val/test clip: temporal views x spatial crops (1 in train mode)."""
        if self.mode == "train":
            return 1
        if self.mode == "val":
            return self.crops
        twice = 2 if self.twice_sample and not self.dense else 1
        return self.clips * twice * self.crops

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next items use (call before iterating)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            return self._load(entry, index, rng)
        except DataError as exc:
            if not self.skip_bad:
                raise
            log.debug("skipping %s: %s", entry.path, exc)
            return Sample(None, entry.label, index, str(exc))

    def _open(self, entry: ListEntry) -> tuple[FrameSource, int]:
        """The frame source of an entry and the frame count to sample from."""
        path = self.root / entry.path
        if self.source == "frames":
            folder = FrameFolder(
                path, num_frames=entry.num_frames, template=self.template, cache=self.frame_cache
            )
            return folder, entry.num_frames

        # PyAV would decode the whole video to count its frames: it takes the list's count, as
        # a frame folder does. decord's count comes from the container, for nothing.
        def opened() -> FrameSource:
            return open_video(path, self.backend, num_frames=entry.num_frames)

        if self.frame_cache is not None and path in self._video_frames:
            count = self._video_frames[path]  # the video is opened only for frames not kept
            return CachedVideo(path, count, self.frame_cache, opened), count
        video = opened()
        if video.num_frames != entry.num_frames:
            log.debug(
                "%s: %d frames decoded, the list says %d; sampling from the smaller",
                path,
                video.num_frames,
                entry.num_frames,
            )
        count = min(video.num_frames, entry.num_frames)
        if self.frame_cache is None:
            return video, count
        self._video_frames[path] = count
        return CachedVideo(path, count, self.frame_cache, lambda: video), count

    def _load(self, entry: ListEntry, index: int, rng: np.random.Generator) -> Sample:
        source, num_frames = self._open(entry)
        indices = sample_indices(
            num_frames,
            self.num_segments,
            self.mode,
            rng,
            clips=self.clips,
            twice_sample=self.twice_sample,
            dense=self.dense,
            even=self.even,
        )  # (V_t, T)
        # Decode each distinct frame once, in order (short videos and views repeat frames).
        order = indices.reshape(-1)
        if np.all(order[1:] > order[:-1]):  # the usual case: already distinct and in order
            unique, inverse = order, None
        else:
            unique, inverse = np.unique(order, return_inverse=True)
        if self.mode == "train":
            return self._train_sample(source, unique, inverse, entry, index, rng)
        frames = source.get(unique.tolist())  # (U, 3, H, W)
        if inverse is not None:
            frames = frames[torch.from_numpy(inverse)]  # (V_t*T, 3, H, W)
        views = transforms.eval_views(
            frames,
            input_size=self.input_size,
            scale_size=self.scale_size,
            crops=self.crops,
            full_res=self.full_res,
        )  # (C, V_t*T, 3, S, S)
        crops, _, channels, height, width = views.shape
        views = views.view(crops, indices.shape[0], self.num_segments, channels, height, width)
        views = views.transpose(0, 1).reshape(-1, self.num_segments, channels, height, width)
        return Sample(views, entry.label, index)  # clip (V_t*C, T, 3, S, S)

    def _train_sample(
        self,
        source: FrameSource,
        unique: np.ndarray,
        inverse: np.ndarray | None,
        entry: ListEntry,
        index: int,
        rng: np.random.Generator,
    ) -> Sample:
        """The clip's crop box and flip drawn, its crop cut (see ``transforms.train_crop``)."""
        options = {
            "input_size": self.input_size,
            "scale_size": self.scale_size,
            "scales": self.scales,
            "flip": self.flip,
            "flip_pairs": self.flip_pairs,
        }
        slots = range(len(unique)) if inverse is None else inverse.tolist()
        if isinstance(source, FrameFolder):
            # One buffer per decoded JPEG: gather only the crop of each (no full-frame stack).
            frames = source.frames(unique.tolist())  # (3, H, W) channels-last views
            height, width = frames[0].shape[-2:]
            draw = transforms.draw_train_crop(width, height, entry.label, rng, **options)
            crops = [transforms.crop_view(frames[k], draw.box).permute(1, 2, 0) for k in slots]
            clip = torch.stack(crops).permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last
        else:
            frames = source.get(unique.tolist())  # (U, 3, H, W), one decoded buffer
            height, width = frames.shape[-2:]
            draw = transforms.draw_train_crop(width, height, entry.label, rng, **options)
            clip = transforms.crop_view(frames, draw.box)  # a view: collate copies the crop
            if inverse is not None:
                clip = clip[torch.from_numpy(inverse)]
        # drawn after everything else, so clips without jitter are what they always were
        jitter = self.colour_jitter
        colour = transforms.draw_colour_jitter(jitter, rng) if jitter > 0 else None
        return Sample(
            clip, draw.label, index, flip=draw.flip, resize_to=self.input_size, colour=colour
        )


@contextlib.contextmanager
def loader_errors(workers_key: str) -> Iterator[None]:
    """Wrap every use of a DataLoader: errors of its worker processes become one line.

    A ``TSMError`` raised in a worker (a corrupt video) reaches this process rebuilt by torch
    around the worker's whole traceback ("Caught DataError in DataLoader worker process 0.
    Original Traceback ..."); it is raised again as the original one-line error (the long
    form stays chained, for ``TSM_DEBUG=1``). A worker that died (killed by the out-of-memory
    killer, a crashing decoder) is one ``DataError`` naming ``workers_key``, the setting to
    lower. Torch reports a dead worker from its SIGCHLD handler, wherever this process is at
    the time, so the block should hold the whole loop, not only the ``next(batch)``.
    """
    try:
        yield
    except TSMError as exc:
        original = _worker_error_line(exc)
        if original is None:
            raise
        raise type(exc)(original) from exc
    except RuntimeError as exc:
        text = str(exc)
        if not text.startswith("DataLoader worker (pid"):
            raise
        killed = re.search(r"killed by signal: ([^.]+)", text)
        code = re.search(r"exit code (-?\d+)", text)
        how = (
            f" (signal: {killed[1].strip()})"
            if killed
            else f" (exit code {code[1]})"
            if code
            else ""
        )
        raise DataError(
            f"a data loading worker process died{how}, most likely out of "
            f"memory; lower {workers_key} (or the batch size) and run again"
        ) from exc


def _worker_error_line(exc: TSMError) -> str | None:
    """The message a worker raised ``exc`` with, when ``exc`` is torch's rebuilt copy of it;
    None for an error raised in this process."""
    text = str(exc)
    if not text.startswith(f"Caught {type(exc).__name__} in DataLoader worker process"):
        return None
    cls = type(exc)
    last = text.rstrip().splitlines()[-1]  # "tsmcli.errors.DataError: <the message>"
    prefix = f"{cls.__module__}.{cls.__qualname__}: "
    return last[len(prefix) :] if last.startswith(prefix) else None
