"""Plots: training curves (``curves.png``) and the timelines of ``tsm predict --plot``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tsmcli.fileio import atomic_write_with


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


def plot_timelines(
    panels: Sequence[tuple[str, Sequence[float], Mapping[str, Sequence[float]]]],
    path: str | Path,
) -> Path:
    """``tsm predict --plot``: one panel per video, each class's probability (0-1) against
    time in seconds at the centres of the windows; written atomically, off-screen (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 0.6 + 2.6 * max(1, len(panels))), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(1, len(panels)), 1, squeeze=False)[:, 0]
    for ax, (title, times, lines) in zip(axes, panels, strict=False):
        for name, values in lines.items():
            ax.plot(times, values, marker="o", markersize=3, label=name)
        ax.set_title(title if len(title) <= 90 else "…" + title[-89:], fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s), window centres")
    figure.tight_layout()
    return atomic_write_with(Path(path), lambda handle: figure.savefig(handle, format="png"))
