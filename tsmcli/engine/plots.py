"""Plots: training curves (``curves.png``), the timelines of ``tsm predict --plot``, and the
frames of ``tsm explain`` with where the model looks laid over them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tsmcli.fileio import atomic_write_with

if TYPE_CHECKING:
    from tsmcli.engine.predictions import TimelinePanel


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw loss (left) and top-1/top-5 (right) against epoch; written atomically.

    Uses matplotlib's Agg backend directly, so it needs no display and never changes the
    backend a caller (a notebook) has chosen.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, acc_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["loss"] for row in history], marker="o", label="train loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("cross-entropy")
    loss_axes.set_title("training loss")
    loss_axes.grid(alpha=0.3)
    evaluated = [row for row in history if row.get("top1") is not None]
    for key, label in (("top1", "val top-1"), ("top5", "val top-5")):
        acc_axes.plot(
            [row["epoch"] for row in evaluated],
            [row[key] for row in evaluated],
            marker="o",
            label=label,
        )
    acc_axes.set_xlabel("epoch")
    acc_axes.set_ylabel("accuracy (%)")
    acc_axes.set_ylim(0, 100)
    acc_axes.set_title("validation accuracy")
    acc_axes.grid(alpha=0.3)
    if evaluated:
        acc_axes.legend(loc="lower right")
    figure.tight_layout()
    return atomic_write_with(path, lambda handle: figure.savefig(handle, format="png"))


def plot_timelines(panels: Sequence[TimelinePanel], path: str | Path) -> Path:
    """``tsm predict --plot``: one panel per video, each class's probability (0-1) against
    time in seconds at the centres of the windows, and each action interval found shaded in
    its class's colour and named; written atomically, off-screen (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 0.6 + 2.6 * max(1, len(panels))), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(1, len(panels)), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=False):
        colours = {}
        for name, values in panel.curves.items():
            (line,) = ax.plot(panel.times, values, marker="o", markersize=3, label=name)
            colours[name] = line.get_color()
        for start, end, name in panel.intervals:
            ax.axvspan(start, end, ymin=0.0, ymax=0.06, color=colours.get(name, "grey"), alpha=0.8)
            ax.text((start + end) / 2, 0.08, name, ha="center", va="bottom", fontsize=7)
        title = panel.title
        ax.set_title(title if len(title) <= 90 else "…" + title[-89:], fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s), window centres")
    figure.tight_layout()
    return atomic_write_with(Path(path), lambda handle: figure.savefig(handle, format="png"))


def heat_frames(frames: np.ndarray, maps: np.ndarray, scale: int = 1) -> np.ndarray:
    """Each frame ``(T, S, S, 3)`` uint8 with its map ``(T, S, S)`` in [0, 1] laid over it in
    the jet colours (70% colour where the map is 1, the frame alone where it is 0; the square
    root keeps the weaker maps of a clip visible beside its peak), enlarged ``scale`` times
    (nearest neighbour): uint8 ``(T, S*scale, S*scale, 3)``."""
    from matplotlib import colormaps

    heat = colormaps["jet"](maps)[..., :3] * 255.0  # (T, S, S, 3)
    weight = 0.7 * np.sqrt(maps)[..., None]
    mixed = np.rint(frames * (1 - weight) + heat * weight).astype(np.uint8)
    return mixed.repeat(scale, axis=1).repeat(scale, axis=2)


def heat_strip(
    frames: np.ndarray,
    maps: np.ndarray,
    title: str,
    path: str | Path,
    labels: Sequence[str] | None = None,
) -> Path:
    """``tsm explain``'s picture: the T frames side by side, each with its map and ``labels``
    (default: frame 1, 2, ...), titled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(frames)
    figure = Figure(figsize=(1.6 * count, 2.1), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, count, squeeze=False)[0]
    for t, (ax, image) in enumerate(zip(axes, heat_frames(frames, maps), strict=True)):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(labels[t] if labels else f"frame {t + 1}", fontsize=8)
        ax.axis("off")
    figure.suptitle(title if len(title) <= 100 else "…" + title[-99:], fontsize=9)
    figure.tight_layout()
    return atomic_write_with(Path(path), lambda handle: figure.savefig(handle, format="png"))


def heat_animation(frames: np.ndarray, maps: np.ndarray, path: str | Path) -> Path:
    """The frames with their maps as an animated GIF, two frames a second, looping; small
    frames enlarged to at least 128 px a side."""
    from PIL import Image

    scale = max(1, -(-128 // frames.shape[1]))
    images = [Image.fromarray(image) for image in heat_frames(frames, maps, scale)]
    return atomic_write_with(
        Path(path),
        lambda handle: images[0].save(
            handle, format="GIF", save_all=True, append_images=images[1:], duration=500, loop=0
        ),
    )
