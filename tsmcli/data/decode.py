"""Frame sources: a video file (decord or PyAV) or a folder of JPEG frames, one interface.

Every source answers ``num_frames`` and ``get(indices)``; indices are 0-based and the frames
come back as a uint8 tensor ``(N, 3, H, W)``. A frame that cannot be read is a ``DataError``
naming the file: no source ever substitutes another frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from tsmcli.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
FRAME_TEMPLATE = "img_{:05d}.jpg"
BACKENDS = ("decord", "pyav")


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
        raise DataError(f"{path}: frame index {bad[0]} is outside 0..{num_frames - 1}; "
                        "the list's frame count may be wrong, rebuild it with tsm build-list")
    return indices


class DecordVideo:
    """A video decoded with decord (the default backend)."""

    def __init__(self, path: str | Path, num_threads: int = 1):
        import decord

        self.path = Path(path)
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as exc:  # decord raises its own DECORDError and RuntimeError
            raise DataError(f"{self.path}: cannot open video ({_first_line(exc)}); "
                            "the file is missing or corrupt") from exc
        if len(self._reader) == 0:
            raise DataError(f"{self.path}: video has no frames")

    @property
    def num_frames(self) -> int:
        return len(self._reader)

    @property
    def fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = _check_indices(self.path, indices, self.num_frames)
        try:
            frames = self._reader.get_batch(indices).asnumpy()  # (N, H, W, 3)
        except Exception as exc:
            raise DataError(f"{self.path}: cannot decode frames {indices[:4]} "
                            f"({_first_line(exc)}); the video is truncated or corrupt") from exc
        return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


class PyAVVideo:
    """A video decoded with PyAV: the fallback backend, decoding forward from the start."""

    def __init__(self, path: str | Path):
        import av

        self.path = Path(path)
        self._av = av
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                self._fps = float(stream.average_rate or 0.0)
                self._num_frames = sum(1 for _ in container.decode(stream))
        except (av.FFmpegError, IndexError, OSError) as exc:
            raise DataError(f"{self.path}: cannot open video ({_first_line(exc)}); "
                            "the file is missing or corrupt") from exc
        if self._num_frames == 0:
            raise DataError(f"{self.path}: video has no frames")

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return self._fps

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        indices = _check_indices(self.path, indices, self.num_frames)
        wanted = set(indices)
        last = max(indices)
        decoded: dict[int, torch.Tensor] = {}
        try:
            with self._av.open(str(self.path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        decoded[i] = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                    if i >= last:
                        break
        except self._av.FFmpegError as exc:
            raise DataError(f"{self.path}: cannot decode ({_first_line(exc)}); "
                            "the video is truncated or corrupt") from exc
        missing = wanted - decoded.keys()
        if missing:
            raise DataError(f"{self.path}: frame {min(missing)} could not be decoded; "
                            "the video is truncated")
        return torch.stack([decoded[i] for i in indices]).permute(0, 3, 1, 2).contiguous()


class FrameFolder:
    """A folder of JPEG frames ``img_00001.jpg, ...`` (1-based on disk, 0-based here)."""

    def __init__(self, path: str | Path, num_frames: int | None = None,
                 template: str = FRAME_TEMPLATE, start_index: int = 1):
        self.path = Path(path)
        self.template = template
        self.start_index = start_index
        if num_frames is None:
            if not self.path.is_dir():
                raise DataError(f"{self.path}: frame folder does not exist; run tsm extract")
            num_frames = count_frames(self.path)
        if num_frames <= 0:
            raise DataError(f"{self.path}: frame folder is empty; run tsm extract again")
        self._num_frames = num_frames

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def frame_path(self, index: int) -> Path:
        return self.path / self.template.format(index + self.start_index)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        indices = _check_indices(self.path, indices, self.num_frames)
        frames = []
        for i in indices:
            file = self.frame_path(i)
            try:
                frames.append(decode_jpeg(read_file(str(file)), mode=ImageReadMode.RGB))
            except RuntimeError as exc:
                if not file.exists():
                    raise DataError(f"{file}: frame is missing; extract the video again "
                                    "(tsm extract --overwrite)") from exc
                raise DataError(f"{file}: cannot decode JPEG ({_first_line(exc)})") from exc
        return torch.stack(frames)  # (N, 3, H, W)


def count_frames(folder: Path, template: str = FRAME_TEMPLATE, start_index: int = 1) -> int:
    """Number of consecutive frames ``template.format(start_index + k)`` present in ``folder``."""
    prefix, _, _ = template.partition("{")
    suffix = template.rpartition("}")[2]
    names = {p.name for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)}
    count = 0
    while template.format(start_index + count) in names:
        count += 1
    return count


def open_video(path: str | Path, backend: str = "decord") -> FrameSource:
    """Open a video file with the named backend (``decord`` or ``pyav``)."""
    if backend == "decord":
        return DecordVideo(path)
    if backend == "pyav":
        return PyAVVideo(path)
    raise DataError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
