"""One video -> one folder of JPEG frames, atomically: the job each ``tsm extract`` worker runs.

The frames are RGB (``img_00001.jpg``, ...) or, with ``--flow``, the optical flow between
consecutive frames (``flow_x_00001.jpg``, ``flow_y_00001.jpg``, ...; ``data.flow``): the same job
with another writer, so flow folders are written, published and salvaged as frame folders are.

A frame folder is written under a hidden temporary name beside its final place
(``.clip.partial-<pid>``) and renamed when every frame decoded is on disk, checked by listing
the folder; a finished folder that ``--overwrite`` replaces is first moved aside as
``.clip.old-<pid>``. So a folder under its final name is always complete, and what a killed
process left is known by its PID: the functions at the end of this module remove it (or put
the old folder back), and tell a folder it had published before it died from one it had not.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsmcli.data.decode import DecordVideo, probe_video
from tsmcli.data.flow import FlowOptions, flow_function, quantise, to_gray
from tsmcli.data.layout import FLOW_X_TEMPLATE, FRAME_TEMPLATE, flow_y_template
from tsmcli.errors import DataError

log = logging.getLogger(__name__)

_BATCH = 16  # frames resized and encoded together


@dataclass(frozen=True)
class FrameOptions:
    """How frames are written: short side in pixels (0 keeps the size), frames kept per
    second (None keeps every frame), JPEG quality; with ``flow``, the optical flow between
    the frames kept instead of the frames."""

    short_side: int
    fps: float | None
    quality: int
    flow: FlowOptions | None = None


@dataclass(frozen=True)
class Job:
    """One video to extract."""

    video: Path
    folder: Path  # the finished frame folder
    replaces: int | None = None  # inode of the finished folder there that --overwrite replaces
    flow: bool = False  # a flow folder: two images (x, y) a frame


Outcome = tuple[Job, int, str | None]  # (job, frames written, failure reason or None)

# The tsm extract process this worker works for (None: this is that process). A worker whose
# run has died stops and publishes nothing: a new run may be doing the same video by then.
_run_pid: int | None = None


def init_worker(run_pid: int) -> None:
    """Run once in each worker process of the run ``run_pid``."""
    global _run_pid
    _run_pid = run_pid
    torch.set_num_threads(1)  # parallelism comes from the processes


def run_job(job: Job, options: FrameOptions) -> Outcome:
    """Extract one video; every error becomes a failure reason, so one bad file (or one
    decoder crash) never stops the run."""
    try:
        return (
            job,
            extract_video(
                job.video,
                job.folder,
                options.short_side,
                options.fps,
                options.quality,
                replace=job.replaces is not None,
                flow=options.flow,
            ),
            None,
        )
    except DataError as exc:
        return job, 0, _reason(str(exc), job.video)
    except Exception as exc:  # noqa: BLE001 - a decoder crash on one file must not stop the run
        log.debug("extracting %s failed", job.video, exc_info=True)
        return job, 0, f"{type(exc).__name__}: {_reason(str(exc), job.video)}"


def _reason(message: str, video: Path) -> str:
    """A DataError's message without the leading path (the CSV has it in its own column)."""
    prefix = f"{video}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def extract_video(
    video: Path,
    folder: Path,
    short_side: int = 256,
    fps: float | None = None,
    quality: int = 90,
    replace: bool = False,
    flow: FlowOptions | None = None,
) -> int:
    """Write ``video``'s frames (with ``flow``, the flow between them) to ``folder`` (which
    must not exist unless ``replace``) and return how many; raises ``DataError`` when the
    video cannot be decoded completely."""
    if video.stat().st_size == 0:
        raise DataError(f"{video}: empty file (0 bytes); download it again or remove it")
    probe = probe_video(video)  # a clean DataError for non-videos, and the reference count
    source = DecordVideo(video, num_threads=1)
    keep_ratio = None  # output frames per decoded frame; None keeps every frame
    if fps is not None:
        if not source.fps > 0:
            raise DataError(f"{video}: the frame rate is unknown; extract it without --fps")
        keep_ratio = fps / source.fps

    temp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    writer = FlowWriter(temp, quality, flow) if flow is not None else FrameWriter(temp, quality)
    try:
        decoded = kept = 0
        for batch in source.iter_frames(batch_size=_BATCH):  # (n, 3, H, W) uint8
            keep = [i for i in range(len(batch)) if _kept(decoded + i, keep_ratio)]
            decoded += len(batch)
            kept += len(keep)
            if keep:
                writer.write(_resize(batch[keep], short_side))  # (k, 3, h, w) uint8
            _check_run(video)
        _check_complete(
            video,
            decoded,
            max(source.num_frames, probe.num_frames or 0),
            exact=probe.exact or probe.num_frames is None,
        )
        if kept == 0:
            raise DataError(f"{video}: no frame could be decoded; the file is corrupt")
        if writer.written == 0:  # flow of a single frame
            raise DataError(f"{video}: has one frame, and optical flow needs two")
        _check_written(video, temp, writer)
        _check_run(video)
        _publish(temp, folder, replace)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return writer.written


def _kept(index: int, ratio: float | None) -> bool:
    """Whether frame ``index`` starts a new output frame at ``ratio`` output frames per input
    frame: a streaming rule, so the kept count is ceil(N * ratio) with no look-ahead."""
    if ratio is None or ratio >= 1:
        return True
    return index == 0 or math.floor(index * ratio + 1e-9) != math.floor((index - 1) * ratio + 1e-9)


def _resize(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize uint8 ``(n, 3, H, W)`` so the short side is ``short_side`` (antialiased)."""
    height, width = frames.shape[-2:]
    if short_side <= 0 or min(height, width) == short_side:
        return frames
    scale = short_side / min(height, width)
    size = (
        (short_side, round(width * scale))
        if height <= width
        else (round(height * scale), short_side)
    )
    return torch.nn.functional.interpolate(
        frames, size=size, mode="bilinear", antialias=True, align_corners=False
    )  # (n, 3, h, w) uint8


class FrameWriter:
    """RGB frames as ``img_00001.jpg``, ...: what a frame folder holds."""

    def __init__(self, folder: Path, quality: int):
        self.folder, self.quality = folder, quality
        self.written = 0  # frames written

    def write(self, images: torch.Tensor) -> None:
        """Encode the next frames, uint8 ``(k, 3, h, w)``."""
        self.written = _write_jpegs(images, self.folder, self.written, self.quality)

    def names(self) -> set[str]:
        """The files the folder must hold."""
        return {FRAME_TEMPLATE.format(k) for k in range(1, self.written + 1)}


class FlowWriter:
    """The optical flow from each frame to the next as ``flow_x_00001.jpg`` and
    ``flow_y_00001.jpg``, ... (``data.flow``): ``n - 1`` of each for ``n`` frames, the last
    frame carried over from one batch to the next."""

    TEMPLATES = (FLOW_X_TEMPLATE, flow_y_template(FLOW_X_TEMPLATE))

    def __init__(self, folder: Path, quality: int, options: FlowOptions):
        self.folder, self.quality, self.bound = folder, quality, options.bound
        self.flow = flow_function(options.method)
        self.previous: np.ndarray | None = None
        self.written = 0  # flow frames (x/y pairs) written

    def write(self, images: torch.Tensor) -> None:
        """Compute and encode the flow into each of the next frames, uint8 ``(k, 3, h, w)``."""
        pairs = []
        for gray in to_gray(images):
            if self.previous is not None:
                pairs.append(torch.from_numpy(quantise(self.flow(self.previous, gray), self.bound)))
            self.previous = gray
        images_xy = [image[None] for pair in pairs for image in pair]  # x, y, x, y, ... (1, h, w)
        self.written = _write_jpegs(
            images_xy, self.folder, self.written, self.quality, self.TEMPLATES
        )

    def names(self) -> set[str]:
        return {t.format(k) for t in self.TEMPLATES for k in range(1, self.written + 1)}


def _write_jpegs(
    images: torch.Tensor | list[torch.Tensor],
    folder: Path,
    start: int,
    quality: int,
    templates: Sequence[str] = (FRAME_TEMPLATE,),
) -> int:
    """Encode ``images`` (each ``(c, h, w)``), ``len(templates)`` a frame in template order, as
    frames ``start + 1``, ``start + 2``, ...: ``img_<k>.jpg``, or ``flow_x_<k>.jpg`` then
    ``flow_y_<k>.jpg``; returns the new frame count."""
    from torchvision.io import encode_jpeg

    images = list(images)
    if not images:
        return start
    for position, data in enumerate(encode_jpeg(images, quality=quality)):
        frame, part = divmod(position, len(templates))
        name = templates[part].format(start + frame + 1)
        (folder / name).write_bytes(data.numpy().tobytes())
    return start + len(images) // len(templates)


def _check_complete(video: Path, decoded: int, expected: int, exact: bool) -> None:
    """Refuse a video that decoded to fewer frames than its container reports. Exact counts
    allow 2 missing frames (decoders may drop one or two at an edit list); counts estimated
    from a duration allow 5% (the duration can include a longer audio track)."""
    allowed = 2 if exact else max(2, round(0.05 * expected))
    if decoded < expected - allowed:
        raise DataError(
            f"{video}: decoded {decoded} of the {expected} frames the container "
            "reports; the video is truncated, download it again"
        )
    if decoded < expected:
        log.debug("%s: decoded %d of %d reported frames", video, decoded, expected)


def _check_written(video: Path, temp: Path, writer: FrameWriter | FlowWriter) -> None:
    """Refuse to publish a folder that does not hold exactly the files written: another
    process removed or added files while it was written."""
    expected = writer.names()
    found = set(os.listdir(temp))
    if found != expected:
        what = "flow images" if isinstance(writer, FlowWriter) else "frames"
        raise DataError(
            f"{video}: {temp} holds {len(found & expected)} of the {len(expected)} {what} "
            "written (another process removed or added files); nothing was published, extract "
            "it again"
        )


def _check_run(video: Path) -> None:
    """Stop a worker whose run has died (it was reparented): publishing now could collide with
    a new run, and nobody is left to count the frames."""
    if _run_pid is not None and os.getppid() != _run_pid:
        raise DataError(
            f"{video}: the tsm extract run of this worker (PID {_run_pid}) has ended; "
            "nothing was published"
        )


def _publish(temp: Path, folder: Path, replace: bool) -> None:
    """Move a complete temporary folder to its final name. A folder being replaced is first
    moved aside, so at no moment does an incomplete folder carry the final name."""
    if replace and folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(temp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, folder)


# ---------------------------------------------------------------------------- what a killed job left


def salvage(job: Job, pid: int) -> Outcome | None:
    """Remove what the worker ``pid``, now reaped, left of ``job``; the job's outcome when that
    worker had published the folder before it died (a folder under its final name is complete
    and verified), so that it is counted done rather than extracted again."""
    try:
        published = os.lstat(job.folder).st_ino != job.replaces
    except FileNotFoundError:
        published = False
    _remove_temps(job.folder, pid)
    if not published:
        return None
    return job, len(os.listdir(job.folder)) // (2 if job.flow else 1), None


def remove_stale_partials(parents: set[Path]) -> None:
    """Remove the temporary folders (``.name.partial-<pid>``, ``.name.old-<pid>``) that a
    killed run left; those of a process still running (another extract) are kept."""
    for parent in parents:
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            owner = _temp_owner(entry.name)
            if owner is not None and not pid_alive(owner[1]):
                log.info("removing %s left by an interrupted run", entry)
                _remove_temps(parent / owner[0], owner[1])


def _remove_temps(folder: Path, pid: int) -> None:
    """Remove what process ``pid``, now dead, left of ``folder``: its half-written
    ``.name.partial-<pid>``, and its ``.name.old-<pid>`` (the finished folder that
    --overwrite moved aside), which goes back in place if the new one never arrived."""
    _remove(folder.with_name(f".{folder.name}.partial-{pid}"))
    old = folder.with_name(f".{folder.name}.old-{pid}")
    if old.is_dir() and not folder.exists():
        os.replace(old, folder)
    else:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temp_owner(name: str) -> tuple[str, int] | None:
    """(final name, pid) of a temporary entry ``.<final name>.partial-<pid>`` or ``.old-``."""
    if not name.startswith("."):
        return None
    for marker in (".partial-", ".old-"):
        head, found, pid = name.rpartition(marker)
        if found and len(head) > 1 and pid.isdigit():
            return head[1:], int(pid)
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
