"""``tsm doctor``'s look at the data itself: every video or frame folder of the lists opened
and decoded (its first, middle and last frames; every frame with ``full``) in threads, a
bounded number in flight (the decoders release the GIL), with a progress bar.

For each clip: can it be opened and decoded, does it hold a video stream, are its frames on
disk the ones the list counts (a frame folder: no gaps, no frame 0 under a 1-based template,
no stray files), has it enough frames for a clip's segments, is it far smaller than the
recipe's sizes. Then one note on them all: durations, frame rates, resolutions.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tsmcli.data.video_meta import image_error, no_video_error
from tsmcli.engine.findings import Finding
from tsmcli.errors import DataError

CHUNK = 32  # frames decoded at once with ``full``: a video's or folder's memory stays bounded
FAR_ABOVE = 4  # a short side this many times data.scale_size decodes pixels scaled away
REBUILD = "rebuild the list with tsm build-list"


@dataclass(frozen=True)
class Look:
    """How the clips are read and what a clip needs (the recipe's data and model keys)."""

    source: str  # videos or frames
    backend: str  # decord or pyav
    template: str  # frame file names
    num_segments: int
    scale_size: int
    full: bool = False  # decode every frame, not the first, middle and last


@dataclass(frozen=True)
class Clip:
    """One video or frame folder to look at: its path under the root, its frame count in the
    list and where the list gives it (``list.txt:12``)."""

    path: str
    num_frames: int
    where: str


@dataclass(frozen=True)
class ClipFacts:
    """What decoding a clip told: frames on disk, frame rate (None for a folder), size."""

    frames: int
    fps: float | None
    width: int
    height: int
    path: str


def inspect_all(
    clips: Sequence[Clip], root: Path, look: Look, workers: int
) -> tuple[list[Finding], list[ClipFacts]]:
    """``inspect_clip`` on every clip, ``workers`` threads, at most twice that many clips in
    flight whatever the list's length; findings in list order."""
    from tqdm import tqdm

    results: list[tuple[list[Finding], ClipFacts | None] | None] = [None] * len(clips)
    pending: dict[Future, int] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tsm-doctor")
    bar = tqdm(total=len(clips), desc="doctor", unit="clip", disable=None, leave=False)

    def collect(block: bool) -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED) if block else (list(pending), None)
        for future in done:
            results[pending.pop(future)] = future.result()
            bar.update(1)

    try:
        for index, clip in enumerate(clips):
            while len(pending) >= 2 * workers:
                collect(block=True)
            pending[pool.submit(inspect_clip, root, clip, look)] = index
        while pending:
            collect(block=True)
    finally:
        # Ctrl-C or an error: the queued clips are cancelled, the running ones not waited for
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    found = [f for result in results if result for f in result[0]]
    facts = [result[1] for result in results if result and result[1] is not None]
    return found, facts


def inspect_clip(root: Path, clip: Clip, look: Look) -> tuple[list[Finding], ClipFacts | None]:
    """The findings of one clip and, where it decoded, its facts."""
    inspect = _inspect_video if look.source == "videos" else _inspect_folder
    path = root / clip.path
    try:
        found, facts = inspect(path, clip, look)
    except (DataError, OSError) as exc:
        if not isinstance(exc, DataError):
            exc = DataError(
                f"{path}: cannot be read ({exc.strerror or exc}); check its permissions"
            )
        kind = "data.unreadable"
        if str(exc) in (str(no_video_error(path)), str(image_error(path))):
            kind = "data.no_video_stream"
        return [Finding.from_error(kind, exc, path)], None
    if facts is None:
        return found, None
    found += _frame_count(path, clip, facts.frames)
    found += _too_short(path, facts.frames, look.num_segments)
    found += _too_small(path, facts, look.scale_size)
    return found, facts


def _inspect_video(path: Path, clip: Clip, look: Look) -> tuple[list[Finding], ClipFacts]:
    """Open with the recipe's decoder and decode the first, middle and last frames (all of
    them with ``full``); the frame count is the decoder's, as ``tsm build-list`` counts."""
    from tsmcli.data.decode import DecordVideo, open_video

    video = open_video(path, look.backend)  # PyAV decodes every frame once to count them
    count = video.num_frames
    if look.full and isinstance(video, DecordVideo):
        count = 0
        for batch in video.iter_frames(None, batch_size=CHUNK):  # (n, 3, H, W)
            count += len(batch)
            height, width = batch.shape[-2:]
        if not count:
            raise DataError(f"{path}: no frame decodes; the video is truncated or corrupt")
    else:
        frames = video.get(sorted({0, count // 2, count - 1}))  # (k, 3, H, W)
        height, width = frames.shape[-2:]
    return [], ClipFacts(count, video.fps, int(width), int(height), str(path))


def _inspect_folder(path: Path, clip: Clip, look: Look) -> tuple[list[Finding], ClipFacts | None]:
    """The frame files against the template and the list: the first one 1 (not 0), no gaps,
    nothing else in the folder; then the first, middle and last frames decoded (all of them
    with ``full``)."""
    from tsmcli.data.decode import FrameFolder

    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a frame folder; {REBUILD} with --source videos")
    template, numbers, others = look.template, [], []
    for name in sorted(p.name for p in path.iterdir()):
        number = _frame_number(name, template)
        (others if number is None else numbers).append(name if number is None else number)
    found = _stray_files(path, others, template)
    if not numbers:
        return found + [_folder_finding("data.empty", path, template)], None
    first, last = min(numbers), max(numbers)
    if first < 1:
        return found + [_folder_finding("data.start_index", path, template, first)], None
    gaps = sorted(set(range(1, last + 1)) - set(numbers))
    if gaps:
        return found + [_folder_finding("data.missing_frames", path, template, last, gaps)], None
    folder = FrameFolder(path, num_frames=min(last, clip.num_frames), template=template)
    count = folder.num_frames
    chunks = [range(k, min(k + CHUNK, count)) for k in range(0, count, CHUNK)] if look.full else []
    for chunk in chunks or [sorted({0, count // 2, count - 1})]:
        frames = folder.frames(sorted({0, *chunk}))  # frame 0 each time: one size throughout
    height, width = frames[0].shape[-2:]
    return found, ClipFacts(last, None, int(width), int(height), str(path))


def _frame_number(name: str, template: str) -> int | None:
    """The frame number of a file named by ``template``, else None (zero padding included:
    ``img_1.jpg`` is not a frame of ``img_{:05d}.jpg``)."""
    prefix, suffix = template.partition("{")[0], template.rpartition("}")[2]
    middle = name[len(prefix) : len(name) - len(suffix)] if suffix else name[len(prefix) :]
    if not (name.startswith(prefix) and name.endswith(suffix) and middle.isdigit()):
        return None
    return int(middle) if template.format(int(middle)) == name else None


def _stray_files(path: Path, others: list[str], template: str) -> list[Finding]:
    if not others:
        return []
    return [
        Finding(
            "warning",
            "data.extra_files",
            f"{path}: {len(others)} files that are not frames named like "
            f"{template.format(1)} (first: {others[0]})",
            "move them out of the frame folder (a frame template that matched them would "
            "take them for frames)",
            str(path),
        )
    ]


def _folder_finding(
    check: str, path: Path, template: str, number: int = 0, gaps: Sequence[int] = ()
) -> Finding:
    """A frame folder whose frames cannot be read as the template and the list say."""
    if check == "data.empty":
        message = f"{path}: holds no frame named like {template.format(1)}"
        fix = "extract the video again (tsm extract), or set data.frame_template to its names"
    elif check == "data.start_index":
        message = (
            f"{path}: its frames start at {template.format(number)}, but data.frame_template "
            f"{template!r} counts from {template.format(1)}"
        )
        fix = "extract the video again with tsm extract (1-based), or rename the frames from 1"
    else:
        message = (
            f"{path}: {len(gaps)} of its frames {template.format(1)} to "
            f"{template.format(number)} are missing (first: {template.format(gaps[0])})"
        )
        fix = "extract the video again (tsm extract --overwrite)"
    return Finding("error", check, message, fix, str(path))


def _frame_count(path: Path, clip: Clip, frames: int) -> list[Finding]:
    """The list's frame count against the disk's: more is an error (a clip would ask for
    frames past the end), fewer a warning (the last frames are never sampled)."""
    if frames == clip.num_frames:
        return []
    more = clip.num_frames > frames
    why = (
        "a clip would ask for frames past the end"
        if more
        else f"its last {frames - clip.num_frames} frames are never sampled"
    )
    return [
        Finding(
            "error" if more else "warning",
            "data.frame_count",
            f"{path}: {frames} frames on disk, but {clip.where} says {clip.num_frames}",
            f"{REBUILD} ({why})",
            str(path),
        )
    ]


def _too_short(path: Path, frames: int, num_segments: int) -> list[Finding]:
    if frames >= num_segments:
        return []
    return [
        Finding(
            "warning",
            "data.too_short",
            f"{path}: {frames} frames, fewer than the {num_segments} segments of a clip "
            "(model.num_segments)",
            "its clips repeat frames: lower model.num_segments, or leave it out",
            str(path),
        )
    ]


def _too_small(path: Path, facts: ClipFacts, scale_size: int) -> list[Finding]:
    """A short side under half of ``data.scale_size``: every frame enlarged over 2x."""
    short = min(facts.width, facts.height)
    if 2 * short >= scale_size:
        return []
    return [
        Finding(
            "warning",
            "data.small",
            f"{path}: {facts.width}x{facts.height}, its short side under half of "
            f"data.scale_size {scale_size}: frames are enlarged {scale_size / short:.1f}x",
            "train at a smaller data.scale_size and data.input_size, or use the video at a "
            "higher resolution",
            str(path),
        )
    ]


def summary(facts: Sequence[ClipFacts], look: Look) -> list[Finding]:
    """Notes on the decoded clips: how long, how fast, how large; and which are smaller than
    ``data.scale_size`` (enlarged) or over ``FAR_ABOVE`` times it (decoded and scaled away)."""
    if not facts:
        return []
    shorts = [min(f.width, f.height) for f in facts]
    sides = f"short side {_spread(shorts, '{:g} px')}"
    if look.source == "videos":
        seconds = [f.frames / f.fps for f in facts if f.fps]
        rates = sorted({round(f.fps, 2) for f in facts if f.fps})
        lasting = _spread(seconds, "{:.1f} s") if seconds else "of unknown length"
        what = f"{len(facts)} videos lasting {lasting}, {_range(rates)} fps, {sides}"
    else:
        frames = _spread([f.frames for f in facts], "{:g} frames")
        what = f"{len(facts)} frame folders of {frames}, {sides}"
    found = [Finding("note", "data.summary", what, "nothing to do")]
    small = [(s, f) for s, f in zip(shorts, facts, strict=True) if s < look.scale_size]
    large = [(s, f) for s, f in zip(shorts, facts, strict=True) if s > FAR_ABOVE * look.scale_size]
    if small:
        side, first = min(small, key=lambda pair: pair[0])
        found.append(
            _sizes_note(
                f"{len(small)} of {len(facts)} have a short side under data.scale_size "
                f"{look.scale_size} px (smallest: {first.path}, {side} px): their frames are "
                "enlarged",
                "nothing to do for a few; for many, train at a smaller data.scale_size",
            )
        )
    if large:
        side, first = max(large, key=lambda pair: pair[0])
        found.append(
            _sizes_note(
                f"{len(large)} of {len(facts)} have a short side over {FAR_ABOVE}x "
                f"data.scale_size ({side} px: {first.path}): their pixels are decoded and "
                "scaled away",
                f"extract frames with tsm extract --short-side {look.scale_size} (decoding "
                "gets faster)",
            )
        )
    return found


def _sizes_note(message: str, fix: str) -> Finding:
    return Finding("note", "data.sizes", message, fix)


def _spread(values: Sequence[float], form: str) -> str:
    """``lo to hi unit (median m unit)``, or the one value, each shown by ``form``."""
    lo, hi, mid = min(values), max(values), statistics.median(values)
    show: Callable[[float], str] = form.format
    if lo == hi:
        return show(lo)
    lower = form.split("}")[0] + "}"  # the number without its unit: "4.0 to 10.0 s"
    return f"{lower.format(lo)} to {show(hi)} (median {show(mid)})"


def _range(values: Sequence[float]) -> str:
    if not values:
        return "unknown"
    return f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g} to {values[-1]:g}"
