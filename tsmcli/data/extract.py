"""``tsm extract``: every video under a folder becomes a folder of JPEG frames, or with
``flow`` of optical flow images (``data.flow``: ``flow_x_00001.jpg``, ``flow_y_00001.jpg``, ...).

A frame folder is written under a hidden temporary name beside its final place
(``.clip.partial-<pid>``) and renamed when the last frame is on disk, so a folder under its
final name is always complete: a killed run leaves nothing that looks finished, and the next
run skips finished folders, removes the temporary folders of dead runs and does the rest.
A video that cannot be read completely (empty, truncated, not a video) is recorded in
``DST/failures.csv`` and the run goes on; so is a video whose worker process dies twice (a
decoder crash, the out-of-memory killer): the worker is replaced and the other videos are
done, and a folder the dead worker had already published counts as done.
A run holds ``DST/.tsm-extract.lock`` while it writes, so two runs never share a DST.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from tsmcli.data import extract_job
from tsmcli.data.extract_job import FrameOptions, Job, Outcome, remove_stale_partials
from tsmcli.data.flow import DEFAULT_BOUND, FlowOptions
from tsmcli.data.layout import VIDEO_EXTENSIONS, is_video
from tsmcli.data.process_pool import run_in_processes
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import atomic_write, check_writable_dir, exclusive_lock

log = logging.getLogger(__name__)

FAILURES_CSV = "failures.csv"
LOCK_FILE = ".tsm-extract.lock"  # hidden: never the frame folder of a video (those are skipped)


@dataclass(frozen=True)
class ExtractResult:
    """Counts of one run; ``failures`` holds (video, reason) as in ``failures.csv``."""

    src: Path
    dst: Path
    done: int  # videos extracted by this run
    skipped: int  # videos whose finished folder existed already
    failed: int
    frames: int  # frames written by this run
    seconds: float
    failures_csv: Path  # rewritten every run: this run's failures only
    failures: tuple[tuple[Path, str], ...]


def extract(
    src: str | Path,
    dst: str | Path,
    short_side: int = 256,
    fps: float | None = None,
    quality: int = 90,
    workers: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
    flow: bool = False,
    method: str = "dis",
    bound: float = DEFAULT_BOUND,
) -> ExtractResult:
    """Decode every video under ``src`` into ``dst/<relative path without extension>/img_00001.jpg``...

    ``short_side`` resizes so the shorter side has that many pixels (0 keeps the size);
    ``fps`` keeps that many frames per second (default: every frame). With ``flow``, each
    folder holds the optical flow between consecutive frames kept instead
    (``flow_x_00001.jpg``, ``flow_y_00001.jpg``, ...: ``n - 1`` of each for ``n`` frames),
    computed by ``method`` (tvl1, dis, farneback) and quantised over ``[-bound, bound]``
    pixels (``data.flow``). Failed videos are listed in ``dst/failures.csv``; with ``strict``
    they also raise a ``DataError`` once everything else is done. On Linux workers are forked
    from this process, so a calling script needs no ``if __name__ == "__main__":`` guard
    (elsewhere it does).
    """
    src, dst = Path(src), Path(dst)
    _check_options(short_side, fps, quality, workers)
    flow_options = FlowOptions(method, bound) if flow else None
    check_writable_dir(dst, "DST")
    failures_csv = dst / FAILURES_CSV
    if failures_csv.is_dir():
        raise DataError(
            f"{failures_csv}: a folder where this run writes its report (the frames of a video "
            "named failures.csv.*?); move it away"
        )
    options = FrameOptions(short_side, fps, quality, flow_options)
    started = time.perf_counter()
    videos = find_videos(src)
    dst.mkdir(parents=True, exist_ok=True)
    with _lock(dst) as lock_fd:
        jobs, skipped, failures, folders = _plan(src, dst, videos, overwrite, flow)
        remove_stale_partials({folder.parent for folder in folders})

        done = frames = 0
        workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
        with contextlib.closing(_run(jobs, options, workers, lock_fd)) as outcomes:
            for job, count, reason in outcomes:
                if reason is None:
                    done += 1
                    frames += count
                else:
                    log.warning("%s: %s", job.video, reason)
                    failures.append((job.video, reason))
        _write_failures(failures_csv, failures)
    seconds = time.perf_counter() - started
    log.debug(  # the command prints the summary; this is for a caller's own logging
        "extracted %d videos (%d frames) in %.1f s, %d skipped, %d failed",
        done,
        frames,
        seconds,
        skipped,
        len(failures),
    )
    if strict and failures:
        raise DataError(
            f"{failures_csv}: {len(failures)} video(s) failed ({done} extracted, "
            f"{skipped} skipped); fix or remove them, or run without --strict"
        )
    return ExtractResult(
        src, dst, done, skipped, len(failures), frames, seconds, failures_csv, tuple(failures)
    )


def _check_options(short_side: int, fps: float | None, quality: int, workers: int | None) -> None:
    if short_side < 0 or short_side == 1:  # a 1-pixel side trips an assert inside PyTorch
        raise UsageError(
            f"--short-side must be 0 (keep the size) or at least 2 pixels, got {short_side}"
        )
    if fps is not None and not fps > 0:
        raise UsageError(f"--fps must be positive, got {fps}")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality must be between 1 and 100, got {quality}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")


def find_videos(src: Path) -> list[Path]:
    """Every file under ``src`` (recursively, hidden temporary files aside) with a video
    extension, sorted; ``src`` may also be one video file."""
    if src.is_file():
        if not is_video(src):
            raise DataError(
                f"{src}: not a video file ({', '.join(VIDEO_EXTENSIONS)}); "
                "pass a video or a folder of videos"
            )
        return [src]
    if not src.is_dir():
        raise DataError(f"{src}: no such file or folder; check the path")
    videos = sorted(
        p for p in src.rglob("*") if is_video(p) and p.is_file() and not p.name.startswith(".")
    )
    if not videos:
        raise DataError(f"{src}: no videos ({', '.join(VIDEO_EXTENSIONS)}) found under this folder")
    return videos


def _plan(
    src: Path, dst: Path, videos: list[Path], overwrite: bool, flow: bool = False
) -> tuple[list[Job], int, list[tuple[Path, str]], list[Path]]:
    """The videos to extract, how many are finished already, the videos refused up front
    (two videos that would share one frame folder) and every frame folder planned."""
    jobs: list[Job] = []
    failures: list[tuple[Path, str]] = []
    skipped = 0
    owner: dict[Path, Path] = {}
    for video in videos:
        relative = video.relative_to(src) if video != src else Path(video.name)
        folder = dst / relative.with_suffix("")
        if folder in owner:
            failures.append((video, f"same frame folder as {owner[folder]}; rename one of them"))
            continue
        if folder == dst / FAILURES_CSV:
            failures.append(
                (video, f"its frame folder would be {folder}, this run's report; rename it")
            )
            continue
        owner[folder] = video
        if folder.exists() and not folder.is_dir():
            failures.append((video, f"{folder} exists and is not a folder; move it away"))
        elif folder.is_dir() and not overwrite:
            skipped += 1
        else:
            replaces = os.lstat(folder).st_ino if folder.exists() else None
            jobs.append(Job(video, folder, replaces, flow))
    return jobs, skipped, failures, list(owner)


# The modules a worker needs, imported once before the workers start (see process_pool).
_PRELOAD = ("tsmcli.data.extract_job", "torchvision.io", "decord", "av")
_PRELOAD_FLOW = ("cv2",)


def _run(
    jobs: list[Job], options: FrameOptions, workers: int, lock_fd: int
) -> Generator[Outcome, None, None]:
    """Extract ``jobs`` in ``workers`` processes (in this one when 1), yielding each
    outcome as its video finishes. A worker that dies (a decoder segfault, the out-of-memory
    killer) is replaced and its video tried once more, unless it had published the folder;
    dying twice makes it a failure. Workers do not hold the DST lock (``lock_fd``): one that
    outlives a killed run must not keep the next run out."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="extract", unit="video", disable=not sys.stderr.isatty())
    started = time.perf_counter()
    work = extract_job.run_job  # looked up here so that a test can substitute it
    if workers <= 1:
        outcomes: Generator[Outcome, None, None] = (work(job, options) for job in jobs)
    else:
        outcomes = run_in_processes(
            jobs,
            work,
            options,
            workers,
            died=_died,
            salvage=extract_job.salvage,
            initializer=functools.partial(extract_job.init_worker, os.getpid()),
            preload=_PRELOAD + (_PRELOAD_FLOW if options.flow is not None else ()),
            private_fds=(lock_fd,),
        )
    try:
        yield from _with_progress(outcomes, bar, started)
    finally:
        bar.close()
        outcomes.close()  # stops the workers now, also when the caller stopped early


def _died(job: Job, exitcode: int | None) -> Outcome:
    """The failure of a video whose worker died on it twice, as failures.csv words it."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    reason = (
        f"worker died ({how}) twice on this video: the decoder crashes on it or the machine "
        "runs out of memory; re-encode it, or extract with fewer --workers"
    )
    return job, 0, reason


def _with_progress(outcomes: Iterator[Outcome], bar, started: float) -> Iterator[Outcome]:
    frames = 0
    for outcome in outcomes:
        frames += outcome[1]
        bar.update(1)
        bar.set_postfix_str(
            f"{frames / max(time.perf_counter() - started, 1e-9):.0f} frames/s", refresh=False
        )
        yield outcome


def _lock(dst: Path) -> contextlib.AbstractContextManager[int]:
    """Hold ``dst/.tsm-extract.lock`` for a run (``fileio.exclusive_lock``, yielding its
    descriptor), so that a second run into the same DST is refused instead of rewriting
    failures.csv; the lock of a killed run is taken over."""

    def busy(holder: str) -> DataError:
        return DataError(
            f"{dst / LOCK_FILE}: another tsm extract (PID {holder}) is writing to {dst}; wait "
            "for it to finish or choose another DST"
        )

    return exclusive_lock(dst / LOCK_FILE, busy)


def _write_failures(path: Path, failures: list[tuple[Path, str]]) -> None:
    """Write ``path,reason`` rows (header only when nothing failed), atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows((str(video), reason) for video, reason in sorted(failures))
    atomic_write(path, text.getvalue())
