"""Frame sources: a video file (decord or PyAV) or a folder of JPEG frames, one interface.

Every source answers ``num_frames`` and ``get(indices)``; indices are 0-based and the frames
come back as a uint8 tensor ``(N, 3, H, W)``. A frame that cannot be read is a ``DataError``
naming the file: no source ever substitutes another frame.

Every decoder hands out interleaved ``(H, W, 3)`` pixels, so ``get`` returns a channels-last view
of an ``(N, H, W, 3)`` buffer rather than paying for a transposing copy: the uint8 resize of the
transforms is also about twice as fast on that layout. Call ``.contiguous()`` where plain
``(N, 3, H, W)`` strides are needed.

A video recorded on its side with a rotation (a phone's display matrix, an older ``rotate``
tag) comes out upright from both backends: decord turns it in its own filter graph, and PyAV's
frames are turned by the same rule (``video_meta.quarter_turns``). An image or an audio file
given as a video is a one-line ``DataError`` saying what it is, from either backend.

decord (the ``decord2`` build) returns frames whose rows are padded to an aligned line size as
if they had more than 3 channels for some widths (16, 32, 48, 96, ...; dmlc/decord#336), and
``get_batch`` then fails outright. ``DecordVideo`` repairs such frames and falls back to reading
them one at a time, so every width decodes to the same pixels as PyAV.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tsmcli.choices import BACKENDS
from tsmcli.data.frame_cache import FrameCache, stack_frames
from tsmcli.data.layout import FRAME_TEMPLATE, check_frame_template
from tsmcli.data.video_meta import (
    first_line,
    frame_times,
    not_a_video,
    quarter_turns,
    upright,
    video_stream,
)
from tsmcli.data.video_meta import probe_video as probe_video  # where extraction imports it
from tsmcli.errors import DataError


class FrameSource(Protocol):
    path: Path

    @property
    def num_frames(self) -> int: ...

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at 0-based ``indices`` as uint8 ``(N, 3, H, W)``."""
        ...


def _check_indices(path: Path, indices: Sequence[int], num_frames: int) -> list[int]:
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise DataError(
            f"{path}: frame index {bad[0]} is outside 0..{num_frames - 1}; "
            "the list's frame count may be wrong, rebuild it with tsm build-list"
        )
    return indices


def preload_decoder(dataset: object) -> None:
    """Import the video decoder in this process before DataLoader workers are forked from it:
    each worker then starts with it loaded, where otherwise every worker imports it anew on
    its first video (decord: 0.13 s, plus 0.2 s when the import sets off a full garbage
    collection of torch's 340,000 objects, on the 2-core AVX-512 EPYC). ``dataset``: one with
    ``reading`` settings (``VideoClipDataset``); any other dataset is left to itself."""
    reading = getattr(dataset, "reading", None)
    if getattr(reading, "source", None) != "videos":  # frames, or a dataset of other things
        return
    if reading.backend == "decord":
        import decord  # noqa: F401
    else:
        import av  # noqa: F401


class DecordVideo:
    """A video decoded with decord (the default backend). decord turns a rotated video's frames
    upright itself; PyAV's are turned to match (``video_meta``)."""

    def __init__(self, path: str | Path, num_threads: int = 1):
        import decord

        self.path = Path(path)
        try:
            self._reader = decord.VideoReader(
                str(self.path), ctx=decord.cpu(0), num_threads=num_threads
            )
        except Exception as exc:  # decord raises its own DECORDError and RuntimeError
            raise not_a_video(self.path) or DataError(
                f"{self.path}: cannot open video ({first_line(exc)}); "
                "the file is missing or corrupt"
            ) from exc
        if len(self._reader) <= 1 and (error := not_a_video(self.path)):
            raise error  # a JPEG opens as a one-frame video, then fails to decode
        if len(self._reader) == 0:
            raise DataError(f"{self.path}: video has no frames")
        self._one_by_one = False  # set once get_batch has failed where frame-by-frame worked

    @property
    def num_frames(self) -> int:
        return len(self._reader)

    @property
    def fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def timestamps(self) -> np.ndarray | None:
        """Each frame's presentation time in seconds from the first, read from decord's index
        (nothing is decoded); None when they do not increase."""
        stamps = self._reader.get_frame_timestamp(list(range(self.num_frames)))  # (N, 2)
        return frame_times(stamps[:, 0].tolist())

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = _check_indices(self.path, indices, self.num_frames)
        if self._one_by_one:
            frames = self._get_one_by_one(indices)  # (N, H, W, 3)
        else:
            try:
                frames = self._reader.get_batch(indices).asnumpy()  # (N, H, W, 3)
            except Exception:  # noqa: BLE001 - padded rows (decord#336) or a real decode error
                frames = self._get_one_by_one(indices)  # raises DataError if really corrupt
                self._one_by_one = True
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W), channels-last view

    def iter_frames(
        self, indices: Sequence[int] | None = None, batch_size: int = 16
    ) -> Iterator[torch.Tensor]:
        """Decode forward from the first frame (no seeking), yielding uint8 ``(n, 3, H, W)``
        batches of the frames at sorted 0-based ``indices`` (every frame when None).

        Every frame before the last one wanted is decoded once, which is what extraction
        needs: random access re-decodes from the previous key frame for each index. With
        ``indices=None`` the stream simply ends where the decoder stops, so the caller
        compares the count with the container's; a wanted index past that end, or a decoder
        error mid-way, is a ``DataError``.
        """
        wanted = (
            None
            if indices is None
            else sorted(set(_check_indices(self.path, indices, self.num_frames)))
        )
        reader = self._reader
        batch: list[np.ndarray] = []
        position = 0  # index of the frame the next call to reader.next() returns
        try:
            reader.seek(0)
            targets = wanted if wanted is not None else itertools.count()
            for index in targets:
                if index > position:
                    reader.skip_frames(index - position)  # decoded, but not converted to RGB
                try:
                    frame = _rgb(reader.next().asnumpy())  # (H, W, 3)
                except StopIteration:
                    if wanted is None:
                        break
                    raise DataError(
                        f"{self.path}: frame {index} could not be decoded; the video is truncated"
                    ) from None
                position = index + 1
                batch.append(frame)
                if len(batch) == batch_size:
                    yield _to_tensor(batch)
                    batch = []
        except DataError:
            raise
        except Exception as exc:  # decord's DECORDError mid-stream
            raise DataError(
                f"{self.path}: decoding stopped at frame {position} "
                f"({first_line(exc)}); the video is truncated or corrupt"
            ) from exc
        if batch:
            yield _to_tensor(batch)

    def _get_one_by_one(self, indices: list[int]) -> np.ndarray:
        """Frames read with ``next()`` (repairing padded rows), seeking only when going back
        or jumping; ``(N, H, W, 3)``."""
        reader = self._reader
        frames = []
        position = -1  # index the next call to reader.next() returns; -1: unknown
        try:
            for index in indices:
                if position < 0 or index < position:
                    reader.seek_accurate(index)
                elif index > position:
                    reader.skip_frames(index - position)
                frames.append(_rgb(reader.next().asnumpy()))
                position = index + 1
        except Exception as exc:  # DECORDError, StopIteration at a truncated end
            raise DataError(
                f"{self.path}: cannot decode frame {indices[len(frames)]} "
                f"({first_line(exc)}); the video is truncated or corrupt"
            ) from exc
        return np.stack(frames)


def _rgb(frame: np.ndarray) -> np.ndarray:
    """A decord frame as ``(H, W, 3)``: undo the padded-rows layout of decord#336, where a
    frame comes back as ``(H, W, linesize // W)`` with 3 * W real bytes at the start of a row."""
    height, width, channels = frame.shape
    if channels == 3:
        return frame
    rows = np.ascontiguousarray(frame).reshape(height, width * channels)
    return np.ascontiguousarray(rows[:, : width * 3]).reshape(height, width, 3)


def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


class PyAVVideo:
    """A video decoded with PyAV: the fallback backend, decoding forward from the start.

    A container's frame count cannot be trusted without decoding every frame, so without
    ``num_frames`` the constructor decodes the whole video once to count them. Pass the count
    when it is known (a list's, as for ``FrameFolder``): nothing is then read before ``get``,
    which opens the file once and decodes up to the last frame asked for. A count larger than
    the video's is a ``DataError`` naming the file when a frame past the real end is asked for.
    """

    def __init__(self, path: str | Path, num_frames: int | None = None):
        import av

        self.path = Path(path)
        self._av = av
        self._fps: float | None = None
        self._times: np.ndarray | None = None
        self._scanned = False  # every frame decoded once: count, rate and times known
        self._count_given = num_frames is not None
        if num_frames is None:
            num_frames = self._scan()
        if num_frames <= 0:
            raise DataError(f"{self.path}: video has no frames")
        self._num_frames = num_frames

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        if self._fps is None:
            with self._open() as container:
                self._fps = float(video_stream(self.path, container).average_rate or 0.0)
        return self._fps

    def timestamps(self) -> np.ndarray | None:
        """Each frame's presentation time in seconds from the first; None when the frames carry
        none or they do not increase. Decodes the video once unless the constructor counted."""
        if not self._scanned:
            self._scan()
        return self._times

    def _open(self):
        try:
            return self._av.open(str(self.path))
        except (self._av.FFmpegError, OSError) as exc:
            raise _open_error(self.path, exc) from exc

    def _scan(self) -> int:
        """Decode every frame once: the count, and the frame rate and frame times with it."""
        with self._open() as container:
            stream = video_stream(self.path, container)
            self._fps = float(stream.average_rate or 0.0)
            try:
                pts = [frame.pts for frame in container.decode(stream)]
            except self._av.FFmpegError as exc:
                raise _open_error(self.path, exc) from exc
            self._times = frame_times(pts, float(stream.time_base or 0.0))
        self._scanned = True
        return len(pts)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = _check_indices(self.path, indices, self.num_frames)
        wanted = set(indices)
        last = max(indices)
        decoded: dict[int, np.ndarray] = {}
        count = 0  # frames decoded so far
        turns = None  # quarter turns upright, read from the first frame kept
        try:
            with self._open() as container:
                stream = video_stream(self.path, container)
                for frame in container.decode(stream):
                    if count in wanted:
                        turns = quarter_turns(stream, frame) if turns is None else turns
                        decoded[count] = upright(frame.to_ndarray(format="rgb24"), turns)
                    count += 1
                    if count > last:
                        break
        except self._av.FFmpegError as exc:
            raise DataError(
                f"{self.path}: cannot decode ({first_line(exc)}); the video is truncated or corrupt"
            ) from exc
        if count <= last:
            end = f"the video ends after {count} frames"
            if self._count_given:
                end += f", not the {self._num_frames} given; rebuild the list with tsm build-list"
            raise DataError(
                f"{self.path}: frame {min(wanted - decoded.keys())} could not be decoded; {end}"
            )
        frames = np.stack([decoded[i] for i in indices])  # (N, H, W, 3), upright
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W), channels-last view


def _open_error(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"{path}: cannot open video ({first_line(exc)}); the file is missing or corrupt"
    )


class FrameFolder:
    """A folder of JPEG frames ``img_00001.jpg, ...`` (1-based on disk, 0-based here)."""

    def __init__(
        self,
        path: str | Path,
        num_frames: int | None = None,
        template: str = FRAME_TEMPLATE,
        start_index: int = 1,
        cache: FrameCache | None = None,
    ):
        self.path = Path(path)
        self.template = check_frame_template(template)
        self.start_index = start_index
        self.cache = cache  # decoded frames kept across reads (data.frame_cache_mb)
        if num_frames is None:
            if not self.path.is_dir():
                raise DataError(f"{self.path}: frame folder does not exist; run tsm extract")
            num_frames = count_frames(self.path, self.template, self.start_index)
        if num_frames <= 0:
            raise DataError(f"{self.path}: frame folder is empty; run tsm extract again")
        self._num_frames = num_frames

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def frame_path(self, index: int) -> Path:
        return self.path / self.template.format(index + self.start_index)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        return stack_frames(self.frames(indices))

    def frames(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The frames one by one, each ``(3, H, W)``: a channels-last view of its decoder's
        buffer, not a copy (so a caller that wants only a crop copies only the crop)."""
        indices = _check_indices(self.path, indices, self.num_frames)
        frames = []
        for i in indices:
            file = self.frame_path(i)
            frame = read_jpeg(file, self.cache, "frame", "tsm extract --overwrite")  # (3, H, W)
            if frames and frame.shape != frames[0].shape:
                (_, height, width), (_, first_h, first_w) = frame.shape, frames[0].shape
                raise DataError(
                    f"{file}: frame is {width}x{height} but {self.frame_path(indices[0]).name} "
                    f"is {first_w}x{first_h}; extract the video again (tsm extract --overwrite)"
                )
            frames.append(frame)
        return frames


def read_jpeg(
    file: Path, cache: FrameCache | None, what: str, remedy: str, gray: bool = False
) -> torch.Tensor:
    """One JPEG as uint8 ``(3, H, W)`` (``(1, H, W)`` with ``gray``), through ``cache`` when
    there is one. A missing or undecodable file is one ``DataError`` naming it as ``what`` (a
    frame, a flow image) and, when missing, the command that writes it again (``remedy``)."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    image = cache.get(file) if cache is not None else None
    if image is not None:
        return image
    try:
        mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
        image = decode_jpeg(read_file(str(file)), mode=mode)
    except RuntimeError as exc:
        if not file.exists():
            raise DataError(f"{file}: {what} is missing; extract it again ({remedy})") from exc
        raise DataError(f"{file}: cannot decode JPEG ({first_line(exc)})") from exc
    if cache is not None:
        cache.put(file, image)
    return image


def count_frames(folder: Path, template: str = FRAME_TEMPLATE, start_index: int = 1) -> int:
    """Number of consecutive frames ``template.format(start_index + k)`` present in ``folder``.
    The count stops at the number of files, so even an unchecked template cannot loop."""
    prefix, _, _ = template.partition("{")
    suffix = template.rpartition("}")[2]
    names = {
        p.name for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)
    }
    count = 0
    while count < len(names) and template.format(start_index + count) in names:
        count += 1
    return count


def open_video(
    path: str | Path, backend: str = "decord", num_frames: int | None = None
) -> DecordVideo | PyAVVideo:
    """Open a video file with the named backend (``decord`` or ``pyav``).

    ``num_frames``: the frame count when the caller knows it (a list's). PyAV uses it instead of
    decoding the whole video to count; decord reads the count from the container for nothing.
    """
    if backend == "decord":
        return DecordVideo(path)
    if backend == "pyav":
        return PyAVVideo(path, num_frames)
    raise DataError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
