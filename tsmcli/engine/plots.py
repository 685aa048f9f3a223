"""``curves.png``: training loss and validation accuracy per epoch, from metrics.jsonl rows."""

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
