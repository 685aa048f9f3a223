"""The clip Dataset: a list file + a root -> sampled, cropped uint8 clips.

The trainer finishes them on its device after the transfer (``ClipBatch.model_input`` in
``data.batch``: train crops resized and mirrored, then normalised; see ``transforms`` for why
the work is split).

Its settings are typed objects (``data.settings``): ``ClipSize``, ``Reading``, and
``Augmentation`` for training or a test ``Protocol``. Item ``i`` of epoch ``e`` draws all its
randomness (frame sampling, crop, flip) from ``np.random.default_rng([seed, e, i])``
(``Augmentation.seed``) and nothing else, so a clip is the same whatever the
number of DataLoader workers, and a resumed run sees exactly the clips it would have seen.

A missing frame or a corrupt video is a ``DataError`` naming the file, and so is a frame past
the end of a video whose list count is too large (frame folders and PyAV take the list's count;
decord samples from the smaller of the list's and the container's). With ``Reading.skip_bad``
the item comes back with ``clip=None`` and the error text instead, and ``collate_clips`` drops it
and reports it in ``ClipBatch.skipped``. No other frame or video is ever substituted.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tsmcli.data import transforms
from tsmcli.data.batch import ClipBatch, Sample, collate_clips
from tsmcli.data.decode import FrameFolder, FrameSource, open_video
from tsmcli.data.flow import FlowFolder, as_segments, stack_span, stacked_indices
from tsmcli.data.frame_cache import CachedVideo, frame_cache_for
from tsmcli.data.lists import ListEntry, ListFile, read_list_file
from tsmcli.data.sampling import sample_indices
from tsmcli.data.settings import Augmentation, ClipSize, Protocol, Reading
from tsmcli.errors import DataError, TSMError, UsageError

log = logging.getLogger(__name__)

# the batch lives in data.batch; its names stay importable from here
__all__ = ["ClipBatch", "Sample", "VideoClipDataset", "collate_clips", "loader_errors"]


class VideoClipDataset(Dataset):
    """Clips of the videos of a TSN list file, as in the official TSM training and testing.

    ``list_file``: the list's path, or the ``ListFile`` a command has read and checked (each
    label must name a class of its ``classes.txt``, when it has one). ``clip``: the frames
    and pixels of a clip; ``reading``: how the files are read (None: ``Reading()``, frame
    folders). Then one of:
    ``augment`` (training): its random frames, multi-scale crop, flip and colour jitter;
    clip (T, 3, h, w), the crop still to be resized (``Sample``).
    ``views`` (validation, testing): ``views.clips`` temporal views (twice as many with
    ``twice_sample``; dense starts with ``dense``) x ``views.crops`` spatial views; clip
    (V, T, 3, S, S), temporal-major. Validation is the single centre view.
    """

    def __init__(
        self,
        list_file: str | Path | ListFile,
        root: str | Path,
        *,
        clip: ClipSize,
        reading: Reading | None = None,
        augment: Augmentation | None = None,
        views: Protocol | None = None,
    ):
        if (augment is None) == (views is None):
            raise UsageError(
                "give the dataset augment (training clips) or views (test views), one of them"
            )
        if views is not None and views.full_res and clip.scale_size < clip.input_size:
            raise UsageError(
                f"full-res views need scale_size >= input_size, got scale_size "
                f"{clip.scale_size} and input_size {clip.input_size}"
            )
        reading = reading or Reading()
        listed = list_file if isinstance(list_file, ListFile) else read_list_file(list_file)
        listed.check_classes()
        self.root = Path(root)
        self.entries, self.classes = listed.entries, listed.classes
        self.clip_size, self.reading, self.augment, self.views = clip, reading, augment, views
        self.mode = "train" if augment is not None else "test"
        self.num_views = 1 if views is None else views.num_views
        self._seed = 0 if augment is None else augment.seed
        # sample_indices' and draw_train_crop's keywords, made once rather than per item
        if reading.flow and augment is not None and augment.colour_jitter > 0:
            raise UsageError(
                "colour jitter changes RGB colours, and flow images have none; set it to 0 "
                "for a flow model"
            )
        if augment is not None:
            self._sampling = {
                "dense": augment.sampling == "dense",
                "even": augment.sampling == "even",
            }
            self._crop = {
                "input_size": clip.input_size,
                "scale_size": clip.scale_size,
                "scales": augment.scales,
                "flip": augment.flip,
                "flip_pairs": augment.flip_pairs,
            }
        else:
            self._sampling = {
                "clips": views.clips,
                "twice_sample": views.twice_sample,
                "dense": views.dense,
            }
        self._video_frames: dict[Path, int] = {}  # a cached video's frame count, once read
        self.frame_cache = frame_cache_for(reading.frame_cache_mb)
        # Shared memory, so set_epoch reaches persistent DataLoader workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

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
        rng = np.random.default_rng([self._seed, self.epoch, index])
        try:
            return self._load(entry, index, rng)
        except DataError as exc:
            if not self.reading.skip_bad:
                raise
            log.debug("skipping %s: %s", entry.path, exc)
            return Sample(None, entry.label, index, str(exc))

    def _open(self, entry: ListEntry) -> tuple[FrameSource, int]:
        """The frame source of an entry and the frame count to sample from."""
        path, reading = self.root / entry.path, self.reading
        if reading.flow:
            folder = FlowFolder(path, entry.num_frames, reading.frame_template, self.frame_cache)
            return folder, entry.num_frames
        if reading.source == "frames":
            folder = FrameFolder(
                path,
                num_frames=entry.num_frames,
                template=reading.frame_template,
                cache=self.frame_cache,
            )
            return folder, entry.num_frames

        # PyAV would decode the whole video to count its frames: it takes the list's count, as
        # a frame folder does. decord's count comes from the container, for nothing.
        def opened() -> FrameSource:
            return open_video(path, reading.backend, num_frames=entry.num_frames)

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
        segments = self.clip_size.num_segments
        stack = self.reading.new_length  # flow: each segment's first image and the next ones
        span = stack_span(num_frames, stack)
        indices = sample_indices(span, segments, self.mode, rng, **self._sampling)  # (V_t, T)
        if self.reading.flow:
            indices = stacked_indices(indices, stack, num_frames)  # (V_t, T * L)
        # Decode each distinct frame once, in order (short videos and views repeat frames).
        order = indices.reshape(-1)
        if np.all(order[1:] > order[:-1]):  # the usual case: already distinct and in order
            unique, inverse = order, None
        else:
            unique, inverse = np.unique(order, return_inverse=True)
        if self.mode == "train":
            return self._train_sample(source, unique, inverse, entry, index, rng)
        frames = source.get(unique.tolist())  # (U, K, H, W), K = 3 or a flow item's 2
        if inverse is not None:
            frames = frames[torch.from_numpy(inverse)]  # (V_t*T*L, K, H, W)
        if self.reading.flow:
            frames = as_segments(frames, stack)  # (V_t*T, 2L, H, W)
        views = transforms.eval_views(
            frames,
            input_size=self.clip_size.input_size,
            scale_size=self.clip_size.scale_size,
            crops=self.views.crops,
            full_res=self.views.full_res,
            flow=self.reading.flow,
        )  # (C, V_t*T, K, S, S)
        crops, _, channels, height, width = views.shape
        views = views.view(crops, indices.shape[0], segments, channels, height, width)
        views = views.transpose(0, 1).reshape(-1, segments, channels, height, width)
        return Sample(views, entry.label, index, flow=self.reading.flow)  # (V_t*C, T, K, S, S)

    def _train_sample(
        self,
        source: FrameSource,
        unique: np.ndarray,
        inverse: np.ndarray | None,
        entry: ListEntry,
        index: int,
        rng: np.random.Generator,
    ) -> Sample:
        """The clip's crop box and flip drawn (``transforms.draw_train_crop``), its crop cut."""
        options = self._crop
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
            if self.reading.flow:
                clip = as_segments(clip, self.reading.new_length)  # (T, 2L, h, w)
        # drawn after everything else, so clips without jitter are what they always were
        jitter = self.augment.colour_jitter
        colour = transforms.draw_colour_jitter(jitter, rng) if jitter > 0 else None
        return Sample(
            clip,
            draw.label,
            index,
            flip=draw.flip,
            resize_to=options["input_size"],
            colour=colour,
            flow=self.reading.flow,
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
