"""Videos as phones and screen recorders write them, made with PyAV: frames stored on their side
with a rotation to show them upright, and frames at a variable rate."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def upright_pattern(height: int = 48, width: int = 32) -> np.ndarray:
    """An ``(H, W, 3)`` picture that no turn or flip maps onto itself: a bright block at the top
    left and a grey strip along the bottom, on a dark ground."""
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    image[:16, :16] = 230
    image[-8:, :] = 130
    return image


def write_rotated(path, upright: np.ndarray, degrees: int, how: str = "matrix", frames: int = 4):
    """Write ``upright`` stored turned, with what turns it back for display: ``how="matrix"``, a
    display matrix rotating by ``degrees`` counter-clockwise (what phones write);
    ``how="tag"``, an older ``rotate`` tag of ``degrees`` clockwise."""
    turns = -degrees // 90 if how == "matrix" else degrees // 90
    stored = np.ascontiguousarray(np.rot90(upright, turns))  # as the sensor saw it
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width = stored.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        if how == "matrix":
            stream.set_display_rotation(degrees)
        else:
            stream.metadata["rotate"] = str(degrees)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_vfr(path, times_ms: list[int], size: int = 32, rate: int = 8):
    """Frame k, a flat grey of level 8k, shown at ``times_ms[k]`` milliseconds; the stream says
    ``rate`` frames per second (its nominal rate, which the frames do not keep)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "10", "bf": "0"}
        for k, ms in enumerate(times_ms):
            image = np.full((size, size, 3), (8 * k) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# 2 s at 4 fps, then 2 s at 16 fps: 40 frames whose nominal 8 fps says they last 5 s
SLOW_THEN_FAST_MS = [250 * k for k in range(8)] + [2000 + round(62.5 * k) for k in range(32)]
