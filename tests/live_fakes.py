"""A fake camera at the container interface ``data.live`` reads from PyAV, and a stand-in for
``av.open`` that returns it: how the camera path is tested without a camera."""

from __future__ import annotations

import errno
import itertools
import time
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np


def fake_pixels(k: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), (7 * k) % 256, dtype=np.uint8)  # (H, W, 3)


class FakeDevice:
    """A capture device at the container interface the reader uses from PyAV:
    ``streams.video[0]`` (``average_rate``, ``decode(None)`` to drain), ``decode(stream)``
    yielding ``av.VideoFrame``s at ``rate`` per second (frame k is the grey 7k, pts k), and
    ``close()``. It fails like an unplugged camera after ``fail_after`` frames."""

    def __init__(
        self, rate: int = 200, fail_after: int | None = None, tick: Fraction | None = None
    ):
        self.rate, self.fail_after = rate, fail_after
        self.tick = tick or Fraction(1, rate)  # stream seconds between frames
        self.stream = SimpleNamespace(average_rate=Fraction(rate), decode=lambda packet: [])
        self.streams = SimpleNamespace(video=[self.stream])
        self.closed = self.reading = False

    def decode(self, stream):
        assert stream is self.stream
        self.reading = True
        try:
            for k in itertools.count():
                if k == self.fail_after:
                    raise av.error.OSError(errno.EIO, "Input/output error")
                time.sleep(1 / self.rate)
                frame = av.VideoFrame.from_ndarray(fake_pixels(k), format="rgb24")
                frame.pts, frame.time_base = k, self.tick
                yield frame
        finally:
            self.reading = False

    def close(self):
        assert not self.reading, "the container was closed while its frames were being read"
        self.closed = True


class Opener:
    """Stands in for ``av.open``: records each call and returns the fake device."""

    def __init__(self, device=None, error: BaseException | None = None):
        self.device, self.error, self.calls = device, error, []

    def __call__(self, file, **kwargs):
        self.calls.append((file, kwargs))
        if self.error is not None:
            raise self.error
        return self.device
