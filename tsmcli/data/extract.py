"""``tsm extract``: every video under a folder becomes a folder of JPEG frames.

A frame folder is written under a hidden temporary name beside its final place
(``.clip.partial-<pid>``) and renamed when the last frame is on disk, so a folder under its
final name is always complete: a killed run leaves nothing that looks finished, and the next
run skips finished folders, removes the temporary folders of dead runs and does the rest.
A video that cannot be read completely (empty, truncated, not a video) is recorded in
``DST/failures.csv`` and the run goes on; so is a video whose worker process dies (a decoder
crash, the out-of-memory killer): the worker is replaced and the other videos are done.
A run holds ``DST/.tsm-extract.lock`` while it writes, so two runs never share a DST.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from multiprocessing import connection
from pathlib import Path

import torch

from tsmcli.data.decode import FRAME_TEMPLATE, VIDEO_EXTENSIONS, DecordVideo, is_video, probe_video
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import check_writable_dir

log = logging.getLogger(__name__)

FAILURES_CSV = "failures.csv"
LOCK_FILE = ".tsm-extract.lock"  # hidden: never the frame folder of a video (those are skipped)
_BATCH = 16  # frames resized and encoded together


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


@dataclass(frozen=True)
class _Options:
    short_side: int
    fps: float | None
    quality: int


@dataclass(frozen=True)
class _Job:
    video: Path
    folder: Path  # the finished frame folder
    replace: bool  # a finished folder exists and is to be replaced (--overwrite)


def extract(
    src: str | Path,
    dst: str | Path,
    short_side: int = 256,
    fps: float | None = None,
    quality: int = 90,
    workers: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
) -> ExtractResult:
    """Decode every video under ``src`` into ``dst/<relative path without extension>/img_00001.jpg``...

    ``short_side`` resizes so the shorter side has that many pixels (0 keeps the size);
    ``fps`` keeps that many frames per second (default: every frame). Failed videos are
    listed in ``dst/failures.csv``; with ``strict`` they also raise a ``DataError`` once
    everything else is done. With ``workers`` > 1, a calling script needs the usual
    ``if __name__ == "__main__":`` guard (workers start from a fork server).
    """
    src, dst = Path(src), Path(dst)
    _check_options(short_side, fps, quality, workers)
    check_writable_dir(dst, "DST")
    failures_csv = dst / FAILURES_CSV
    if failures_csv.is_dir():
        raise DataError(
            f"{failures_csv}: a folder where this run writes its report (the frames of a video "
            "named failures.csv.*?); move it away"
        )
    options = _Options(short_side, fps, quality)
    started = time.perf_counter()
    videos = find_videos(src)
    dst.mkdir(parents=True, exist_ok=True)
    with _lock(dst):
        jobs, skipped, failures, folders = _plan(src, dst, videos, overwrite)
        _remove_stale_partials({folder.parent for folder in folders})

        done = frames = 0
        workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
        with contextlib.closing(_run(jobs, options, workers)) as outcomes:
            for job, count, reason in outcomes:
                if reason is None:
                    done += 1
                    frames += count
                else:
                    log.warning("%s: %s", job.video, reason)
                    failures.append((job.video, reason))
        _write_failures(failures_csv, failures)
    seconds = time.perf_counter() - started
    log.info(
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
    src: Path, dst: Path, videos: list[Path], overwrite: bool
) -> tuple[list[_Job], int, list[tuple[Path, str]], list[Path]]:
    """The videos to extract, how many are finished already, the videos refused up front
    (two videos that would share one frame folder) and every frame folder planned."""
    jobs: list[_Job] = []
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
            jobs.append(_Job(video, folder, replace=folder.exists()))
    return jobs, skipped, failures, list(owner)


_Outcome = tuple[_Job, int, str | None]  # (job, frames written, failure reason or None)


def _run(jobs: list[_Job], options: _Options, workers: int) -> Generator[_Outcome, None, None]:
    """Extract ``jobs`` in ``workers`` processes (in this one when 1), yielding each
    outcome as its video finishes."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="extract", unit="video", disable=not sys.stderr.isatty())
    started = time.perf_counter()
    if workers <= 1:
        outcomes: Generator[_Outcome, None, None] = (_extract_job(job, options) for job in jobs)
    else:
        outcomes = _in_processes(jobs, options, workers)
    try:
        yield from _with_progress(outcomes, bar, started)
    finally:
        bar.close()
        outcomes.close()  # stops the workers now, also when the caller stopped early


class _Worker:
    """One process that extracts the jobs it is sent one at a time over its own pipe, so
    the video a dead worker held is known exactly."""

    def __init__(self, context, work: Callable[[_Job, _Options], _Outcome], options: _Options):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, work, options), daemon=True)
        self.process.start()
        child.close()
        self.job: _Job | None = None

    def send(self, job: _Job) -> None:
        self.job = job
        with contextlib.suppress(OSError):  # a dead worker is found by its sentinel
            self.conn.send(job)

    def receive(self) -> _Outcome | None:
        """The outcome of the job sent, or None when the process ended without one."""
        try:
            return self.conn.recv() if self.conn.poll() else None
        except (EOFError, OSError):
            return None

    def stop(self) -> None:
        """End the process (killing it mid-video if it is busy), reap it and remove what
        its job left half-written."""
        if self.job is None and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.conn.close()
        if self.job is not None and self.process.pid is not None:
            _remove_temps(self.job.folder, self.process.pid)


def _serve(conn, work: Callable[[_Job, _Options], _Outcome], options: _Options) -> None:
    """A worker's loop: a job in, its outcome out, until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops workers
    _init_worker()
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the main process is gone
            return
        if job is None:
            return
        conn.send(work(job, options))


def _in_processes(
    jobs: list[_Job], options: _Options, workers: int
) -> Generator[_Outcome, None, None]:
    """Extract ``jobs`` in ``workers`` processes. A worker that dies (a decoder segfault,
    the out-of-memory killer) is replaced and its video tried once more in a fresh
    process; dying twice makes it a failure. Whatever ends this generator (the last video,
    an error, Ctrl-C, close()), every worker is stopped and nothing half-written is left."""
    context = _process_context()
    work = _extract_job  # looked up here so that a test can substitute it
    todo = deque(jobs)
    deaths: dict[Path, int] = {}
    pool: list[_Worker] = []
    try:
        for _ in range(min(workers, len(todo))):
            pool.append(_Worker(context, work, options))
            pool[-1].send(todo.popleft())
        while any(worker.job is not None for worker in pool):
            busy = [worker for worker in pool if worker.job is not None]
            connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                outcome = worker.receive()
                if outcome is None and worker.process.is_alive():
                    continue  # still working
                job, code = worker.job, worker.process.exitcode
                assert job is not None
                if outcome is None:  # the process died holding its job
                    worker.stop()  # reaps it and removes the job's half-written folder
                    deaths[job.video] = deaths.get(job.video, 0) + 1
                    if deaths[job.video] < 2:
                        todo.appendleft(job)
                    else:
                        outcome = (job, 0, _death_reason(code))
                worker.job = None
                if todo:
                    if not worker.process.is_alive():
                        place = pool.index(worker)
                        worker = pool[place] = _Worker(context, work, options)
                    worker.send(todo.popleft())
                if outcome is not None:
                    yield outcome
    finally:
        for worker in pool:
            worker.stop()


def _death_reason(exitcode: int | None) -> str:
    """The failures.csv reason of a video whose worker died on it twice."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    return (
        f"worker died ({how}) twice on this video: the decoder crashes on it or the machine "
        "runs out of memory; re-encode it, or extract with fewer --workers"
    )


def _with_progress(
    outcomes: Iterator[tuple[_Job, int, str | None]], bar, started: float
) -> Iterator[tuple[_Job, int, str | None]]:
    frames = 0
    for outcome in outcomes:
        frames += outcome[1]
        bar.update(1)
        bar.set_postfix_str(
            f"{frames / max(time.perf_counter() - started, 1e-9):.0f} frames/s", refresh=False
        )
        yield outcome


def _process_context() -> multiprocessing.context.BaseContext:
    """Workers fork from a server that has imported torch, torchvision and the decoders once
    (importing torchvision alone takes about a second per process), and no process with
    running thread pools is forked; spawn where there is no fork server."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, "torchvision.io", "decord", "av"])
        return context
    return multiprocessing.get_context("spawn")


def _init_worker() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes


def _extract_job(job: _Job, options: _Options) -> tuple[_Job, int, str | None]:
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
                replace=job.replace,
            ),
            None,
        )
    except DataError as exc:
        return job, 0, _reason(str(exc), job.video)
    except Exception as exc:  # noqa: BLE001 - a decoder crash on one file must not stop the run
        log.debug("extracting %s failed", job.video, exc_info=True)
        return job, 0, f"{type(exc).__name__}: {_reason(str(exc), job.video)}"


def extract_video(
    video: Path,
    folder: Path,
    short_side: int = 256,
    fps: float | None = None,
    quality: int = 90,
    replace: bool = False,
) -> int:
    """Write ``video``'s frames to ``folder`` (which must not exist unless ``replace``) and
    return how many; raises ``DataError`` when the video cannot be decoded completely."""
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
    try:
        decoded = written = 0
        for batch in source.iter_frames(batch_size=_BATCH):  # (n, 3, H, W) uint8
            keep = [i for i in range(len(batch)) if _kept(decoded + i, keep_ratio)]
            decoded += len(batch)
            if keep:
                images = _resize(batch[keep], short_side)  # (k, 3, h, w) uint8
                written = _write_jpegs(images, temp, written, quality)
        _check_complete(
            video,
            decoded,
            max(source.num_frames, probe.num_frames or 0),
            exact=probe.exact or probe.num_frames is None,
        )
        if written == 0:
            raise DataError(f"{video}: no frame could be decoded; the file is corrupt")
        _publish(temp, folder, replace)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return written


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


def _write_jpegs(images: torch.Tensor, folder: Path, start: int, quality: int) -> int:
    """Encode ``(k, 3, h, w)`` as ``img_<start+1>.jpg``...; returns the new frame count."""
    from torchvision.io import encode_jpeg

    for offset, data in enumerate(encode_jpeg(list(images), quality=quality)):
        (folder / FRAME_TEMPLATE.format(start + offset + 1)).write_bytes(data.numpy().tobytes())
    return start + len(images)


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


@contextlib.contextmanager
def _lock(dst: Path) -> Iterator[None]:
    """Hold ``dst/.tsm-extract.lock`` for a run, so that a second run into the same DST is
    refused instead of rewriting failures.csv. The kernel releases the lock when its process
    dies, so the lock file of a killed run is simply taken over; the file holds the PID of
    the holder, for the message."""
    import fcntl

    path = dst / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataError(
                f"{path}: another tsm extract (PID {holder}) is writing to {dst}; wait for it "
                "to finish or choose another DST"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # the holder removed it as we opened it
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiting run then locks a new file
        os.close(fd)


def _remove_stale_partials(parents: set[Path]) -> None:
    """Remove the temporary folders (``.name.partial-<pid>``, ``.name.old-<pid>``) that a
    killed run left; those of a process still running (another extract) are kept."""
    for parent in parents:
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            owner = _temp_owner(entry.name)
            if owner is not None and not _alive(owner[1]):
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_failures(path: Path, failures: list[tuple[Path, str]]) -> None:
    """Write ``path,reason`` rows (header only when nothing failed), atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows((str(video), reason) for video, reason in sorted(failures))
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    temp.write_text(text.getvalue(), encoding="utf-8")
    os.replace(temp, path)


def _reason(message: str, video: Path) -> str:
    """A DataError's message without the leading path (the CSV has it in its own column)."""
    prefix = f"{video}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


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
