"""Optical flow as the two-stream TSN and TSM models take it: computed between consecutive
frames, stored as two grayscale JPEGs a frame, read back as stacks of ``new_length`` x/y pairs.

**On disk** (``tsm extract --flow``): a flow folder holds ``flow_x_00001.jpg``,
``flow_y_00001.jpg``, ... (1-based, as the RGB frames), the names dense_flow writes and the
official TSM ``ops/dataset.py`` reads (its ``flow_{}_{:05d}.jpg`` layout). Flow image ``k`` is the
motion from frame ``k`` to frame ``k + 1``, so a video of ``n`` frames has ``n - 1``. Each
component is quantised as dense_flow does: clipped to ``[-bound, bound]`` pixels a frame and
mapped linearly onto 0-255, rounded (128 is no motion for bound 20: 127.5 rounds up).

**Computed** with OpenCV (``opencv-contrib-python-headless``) on grayscale frames: DIS (the
default: fast), TV-L1 (``cv2.optflow``: the method of the TSN tool chain, dense_flow, and so
the closest to the flow official models were trained on, but tens of times slower:
``bench/flow.py``) or Farneback.

**Read** (``FlowFolder``): the x and y images of a frame as one ``(2, H, W)`` uint8 item; a
segment of a clip stacks ``new_length`` consecutive ones, ``x1, y1, x2, y2, ...`` along the
channels, as the official loader does (``stacked_indices``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsmcli.choices import FLOW_METHODS
from tsmcli.data.decode import read_jpeg
from tsmcli.data.frame_cache import FrameCache
from tsmcli.data.layout import FLOW_X_TEMPLATE, flow_y_template
from tsmcli.errors import DataError, UsageError

DEFAULT_BOUND = 20.0  # pixels a frame: dense_flow's and the official scripts' bound


@dataclass(frozen=True)
class FlowOptions:
    """How flow is computed and stored: the OpenCV method and the bound of the quantisation."""

    method: str = "dis"
    bound: float = DEFAULT_BOUND

    def __post_init__(self) -> None:
        if self.method not in FLOW_METHODS:
            raise UsageError(
                f"--method must be one of {', '.join(FLOW_METHODS)}, got {self.method!r}"
            )
        if not (self.bound > 0 and np.isfinite(self.bound)):
            raise UsageError(f"--bound must be a positive number of pixels, got {self.bound}")


# ---------------------------------------------------------------------------------------------
# computing


FlowFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # gray, gray -> (H, W, 2) float32


def _cv2():
    """OpenCV, its thread pool kept at one thread. Extraction runs in worker processes forked
    from the run, and OpenCV's pool does not survive a fork: a process that had started it
    (a run in one process, then one with workers, as a script or the tests do) forks
    workers that wait forever on its threads. The parallelism is the processes'."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return cv2


def flow_function(method: str) -> FlowFunction:
    """The optical flow from one uint8 grayscale frame to the next, ``(H, W, 2)`` float32 in
    pixels (x to the right, y down), by ``method``; its OpenCV object is made once."""
    cv2 = _cv2()

    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda prev, nxt: dis.calc(prev, nxt, None)
    if method == "farneback":
        # OpenCV's sample parameters (pyramid 0.5 x 3 levels, window 15, 3 iterations)
        return lambda prev, nxt: cv2.calcOpticalFlowFarneback(
            prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0
        )
    if method == "tvl1":
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return lambda prev, nxt: tvl1.calc(prev, nxt, None)
    raise UsageError(f"--method must be one of {', '.join(FLOW_METHODS)}, got {method!r}")


def to_gray(frames: torch.Tensor) -> list[np.ndarray]:
    """uint8 ``(N, 3, H, W)`` RGB frames as grayscale ``(H, W)`` uint8 arrays (ITU-R 601
    luma, as OpenCV's ``COLOR_RGB2GRAY``)."""
    cv2 = _cv2()

    pixels = frames.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
    return [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in pixels]


def quantise(flow: np.ndarray, bound: float) -> np.ndarray:
    """``(H, W, 2)`` flow in pixels as ``(2, H, W)`` uint8 x and y images: each component
    clipped to ``[-bound, bound]`` and mapped onto 0-255, rounded to the nearest level."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(scaled).astype(np.uint8).transpose(2, 0, 1)


def dequantise(images: np.ndarray, bound: float) -> np.ndarray:
    """The flow in pixels that ``quantise`` levels stand for (to within half a level)."""
    return images.astype(np.float32) * (2.0 * bound / 255.0) - bound


# ---------------------------------------------------------------------------------------------
# reading


def stack_span(num_frames: int, new_length: int) -> int:
    """Frames a segment's first flow image may be drawn from, so that its ``new_length``
    stack fits: ``n - new_length + 1`` (the official loader's), at least 1."""
    return max(1, num_frames - new_length + 1)


def stacked_indices(starts: np.ndarray, new_length: int, num_frames: int) -> np.ndarray:
    """Each start index followed by the ``new_length - 1`` next ones, capped at the last
    frame (the official loader repeats the last one): ``(V, T)`` -> ``(V, T * new_length)``."""
    steps = np.arange(new_length)
    stacks = np.minimum(starts[..., None] + steps, num_frames - 1)  # (V, T, L)
    return stacks.reshape(starts.shape[0], -1)


def as_segments(frames: torch.Tensor, new_length: int) -> torch.Tensor:
    """``(S * L, 2, H, W)`` flow items as ``(S, 2 * L, H, W)`` segments, channels x1, y1, x2,
    y2, ... (a copy when the items are a view that does not fold)."""
    count, channels, height, width = frames.shape
    return frames.reshape(count // new_length, channels * new_length, height, width)


class FlowFolder:
    """A flow folder's x and y images, read as ``(N, 2, H, W)`` uint8 items (0-based here,
    1-based on disk). ``template`` names the x images; the y images are named alike
    (``layout.flow_y_template``)."""

    def __init__(
        self,
        path: str | Path,
        num_frames: int,
        template: str = FLOW_X_TEMPLATE,
        cache: FrameCache | None = None,
    ):
        self.path = Path(path)
        self.templates = (template, flow_y_template(template))
        self.cache = cache
        if num_frames <= 0:
            raise DataError(f"{self.path}: no flow images listed; run tsm extract --flow again")
        self._num_frames = num_frames

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """The x and y images of each index, ``(N, 2, H, W)`` uint8."""
        items = [self._item(int(i)) for i in indices]
        return torch.stack(items)

    def _item(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._num_frames:
            raise DataError(
                f"{self.path}: flow index {index} is outside 0..{self._num_frames - 1}; the "
                "list's frame count may be wrong, rebuild it with tsm build-list"
            )
        images = [self._image(template.format(index + 1)) for template in self.templates]
        if images[0].shape != images[1].shape:
            raise DataError(
                f"{self.path / self.templates[1].format(index + 1)}: its size differs from "
                f"{self.templates[0].format(index + 1)}; extract the flow again "
                "(tsm extract --flow --overwrite)"
            )
        return torch.cat(images)  # (2, H, W)

    def _image(self, name: str) -> torch.Tensor:
        """One grayscale image ``(1, H, W)``, through the cache."""
        remedy = "tsm extract --flow --overwrite"
        return read_jpeg(self.path / name, self.cache, "flow image", remedy, gray=True)
