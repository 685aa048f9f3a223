"""Opening a live source for ``data.live``: the container, or one line naming the camera, URL
or file and what to check, with a URL's password hidden in every message.

FFmpeg blocks the thread that opens a URL until the server answers or the timeout passes, and a
Ctrl-C meanwhile is lost (Python runs signal handlers in the main thread, between its own
steps). So the open runs in a helper thread while the caller's waits in short, interruptible
steps (``interruptibly``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tsmcli.data.decode import _open_error
from tsmcli.data.video_meta import first_line, video_stream
from tsmcli.errors import DataError

POLL = 0.25  # seconds between checks while waiting, so Ctrl-C is seen on every platform


def open_container(opener, name, file, fmt, options, timeout, is_camera):
    """The opened container, or the one-line DataError naming the source and what to check."""
    import av

    try:
        container = interruptibly(
            lambda: opener(file, format=fmt, options=options, timeout=timeout), name
        )
    except (av.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and fmt and f"'{fmt}'" in str(exc):
            reason = f"this PyAV build has no {fmt} input: use a PyAV built with its devices"
        elif isinstance(exc, av.ExitError) and timeout:
            reason = f"no answer within the --timeout of {timeout:g} s"
        else:
            reason = why(exc)
        if is_camera:
            raise DataError(
                f"{name}: cannot be opened ({reason}); check that the camera is connected, "
                "not used by another program, and readable by you"
            ) from exc
        if timeout is None:
            raise _open_error(Path(file), exc) from exc
        raise DataError(
            f"{name}: cannot open the stream ({reason}); check the URL and that the server is "
            "up and reachable from here"
        ) from exc
    try:
        video_stream(name, container)  # an image or an audio-only source: one line saying so
    except DataError:
        container.close()
        raise
    return container


def interruptibly(call: Callable[[], Any], name: str) -> Any:
    """``call()`` (an ``av.open``) run in a helper thread while this one waits in short steps.
    FFmpeg keeps the thread that opens blocked until it gives up (the whole timeout), and a
    Ctrl-C meanwhile is lost, so the caller's thread never blocks in it: KeyboardInterrupt (or
    any other exception) while it waits is raised at once, and the helper, left to finish on
    its own, closes what it opened."""
    lock, done = threading.Lock(), threading.Event()
    outcome: dict[str, Any] = {"abandoned": False}

    def run() -> None:
        try:
            result, error = call(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            result, error = None, exc
        with lock:
            outcome.update(result=result, error=error)
            done.set()
            abandoned = outcome["abandoned"]
        if abandoned and result is not None:
            result.close()

    threading.Thread(target=run, name=f"tsm-open {name}", daemon=True).start()
    try:
        while not done.wait(POLL):
            pass
    except BaseException:
        with lock:
            outcome["abandoned"] = not done.is_set()
        if not outcome["abandoned"] and outcome["result"] is not None:
            outcome["result"].close()
        raise
    if outcome["error"] is not None:
        raise outcome["error"]
    return outcome["result"]


def why(exc: BaseException) -> str:
    """What went wrong, without the file name PyAV appends: the message names the source
    already, and a URL's password must not be repeated."""
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else first_line(exc)


def hide_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
