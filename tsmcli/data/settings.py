"""The settings of a clip dataset, typed: how ``VideoClipDataset`` reads, samples, crops and
views its videos, as torchvision's video ``presets.py`` are for its reference scripts.

Each is a frozen dataclass checked once, when it is made, and the dataset keeps them whole.
A command builds them in one place: training in ``engine.train_setup`` (from the recipe), eval
and predict through ``engine.views.EvalData`` (from the checkpoint's recipe) and the
``Protocol`` they resolve. This module imports neither torch nor a decoder.

- ``Reading``: how the files are read: what the list's paths point at, the decoder, the
  frame file names, the decoded frames kept in memory, whether an unreadable item is skipped,
  and what a segment is made of (one RGB frame, or ``new_length`` stacked flow images).
- ``ClipSize``: what a clip is: T frames, cropped to ``input_size`` from frames whose short
  side is ``scale_size``.
- ``Augmentation``: the random draws of a training clip (its frames, crop box, flip, colours)
  and their seed.
- ``Protocol``: the test views of a video (temporal clips x spatial crops) and how their
  scores are combined; the presets are ``engine.views.PROTOCOLS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tsmcli.choices import (
    AVERAGE_MODES,
    BACKENDS,
    FLIP_MODES,
    MODALITIES,
    SAMPLINGS,
    SOURCES,
    TEST_CROPS,
)
from tsmcli.data.layout import FRAME_TEMPLATE, check_frame_template, flow_y_template
from tsmcli.errors import UsageError

TRAIN_SCALES = (1.0, 0.875, 0.75, 0.66)  # the official multi-scale crop's sides


def _choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


@dataclass(frozen=True)
class Reading:
    """How a list's videos are read. ``frame_cache_mb``: MiB of decoded frames (from JPEGs or
    videos) each loading process keeps in memory (0: none; see ``frame_cache``).
    ``skip_bad``: an item that cannot be loaded comes back with its error instead of raising
    it (``collate_clips`` drops it into ``ClipBatch.skipped``). ``modality`` flow reads flow
    folders (``data.flow``: ``frame_template`` names their x images) and stacks
    ``new_length`` consecutive x/y pairs a segment, as the official flow loader does."""

    source: Literal[SOURCES] = "frames"
    backend: Literal[BACKENDS] = "decord"
    frame_template: str = FRAME_TEMPLATE  # frame folders' file names (source "frames")
    frame_cache_mb: int = 0
    skip_bad: bool = False
    modality: Literal[MODALITIES] = "rgb"
    new_length: int = 1  # frames a segment stacks (flow); 1 for rgb

    def __post_init__(self) -> None:
        _choice("source", self.source, SOURCES)
        _choice("backend", self.backend, BACKENDS)
        _choice("modality", self.modality, MODALITIES)
        if self.frame_cache_mb < 0:
            raise UsageError(f"frame_cache_mb must be >= 0 (0: off), got {self.frame_cache_mb}")
        if self.new_length < 1 or (self.modality == "rgb" and self.new_length != 1):
            raise UsageError(
                f"new_length must be 1 for rgb and at least 1 for flow, got {self.new_length} "
                f"({self.modality})"
            )
        if self.modality == "flow" and self.source != "frames":
            raise UsageError(
                "a flow model reads flow frame folders (tsm extract --flow), not videos; give "
                "it a list of flow folders"
            )
        if self.modality == "flow":
            flow_y_template(self.frame_template)
        elif self.source == "frames":
            check_frame_template(self.frame_template)

    @property
    def flow(self) -> bool:
        return self.modality == "flow"


@dataclass(frozen=True)
class ClipSize:
    """A clip: ``num_segments`` frames (T), each ``input_size`` pixels square (S), cut from the
    frame as if its short side were ``scale_size`` (full-res test views are that size)."""

    num_segments: int
    input_size: int = 224
    scale_size: int = 256

    def __post_init__(self) -> None:
        if self.num_segments < 1:
            raise UsageError(f"num_segments must be >= 1, got {self.num_segments}")
        if min(self.input_size, self.scale_size) < 1:
            raise UsageError(
                f"input_size {self.input_size} and scale_size {self.scale_size} must be positive"
            )


@dataclass(frozen=True)
class Augmentation:
    """The random draws of a training clip, as in the official TSM training.

    ``sampling``: ``segments``, one random frame inside each of T segments; ``even``, frames one
    segment apart from one random offset; ``dense``, T frames with stride 64 / T. Then the
    multi-scale crop (sides from ``scales`` of the short side), the flip (``off``, ``on``,
    ``swap``: flip and swap the label through ``flip_pairs``, the dataset's left/right label
    pairs) and, above 0, colour jitter of that strength. Item ``i`` of epoch ``e`` draws from
    ``(seed, e, i)`` only.
    """

    sampling: Literal[SAMPLINGS] = "segments"
    scales: tuple[float, ...] = TRAIN_SCALES
    flip: Literal[FLIP_MODES] = "on"
    flip_pairs: tuple[tuple[int, int], ...] = ()
    colour_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        # sequences given as lists (a recipe's, a manifest's) are kept as tuples
        object.__setattr__(self, "scales", tuple(self.scales))
        object.__setattr__(self, "flip_pairs", tuple((a, b) for a, b in self.flip_pairs))
        _choice("sampling", self.sampling, SAMPLINGS)
        _choice("flip", self.flip, FLIP_MODES)
        if self.flip == "swap" and not self.flip_pairs:
            raise UsageError(
                "flip 'swap' needs the dataset's left/right label pairs and none were "
                "given; use flip 'on' or 'off'"
            )
        if not 0 <= self.colour_jitter < 1:
            raise UsageError(f"colour_jitter must be in [0, 1) (0: off), got {self.colour_jitter}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Protocol:
    """How each video is viewed at test time and how its view scores are combined.

    ``clips`` counts temporal clips before twice-sampling, which doubles them (the official
    Something-Something test: centres and starts of the segments); ``dense`` takes each clip's
    T frames with stride 64 / T from evenly spaced starts instead. ``crops`` spatial views of
    each (1: centre; 3: along the long side, ``scale_size`` square with ``full_res``; 10: five
    and their mirror images).
    """

    name: str
    clips: int = 1
    crops: int = 1
    full_res: bool = False
    twice_sample: bool = False
    dense: bool = False
    average: Literal[AVERAGE_MODES] = "score"

    def __post_init__(self) -> None:
        if self.clips < 1:
            raise UsageError(f"clips must be at least 1, got {self.clips}")
        _choice("crops", self.crops, TEST_CROPS)
        _choice("average", self.average, AVERAGE_MODES)

    @property
    def num_views(self) -> int:
        """Views of a video: temporal clips (twice as many when twice-sampled, unless dense)
        x spatial crops."""
        twice = 2 if self.twice_sample and not self.dense else 1
        return self.clips * twice * self.crops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
