"""PNG plots for the workdir: reliability diagrams and training curves (matplotlib, Agg).

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas directly, never
through ``pyplot``: no global figure state, no GUI backend, safe in threads and on headless hosts.
Parent directories of ``path`` are created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fdiv.metrics import CalibrationBins

__all__ = ["line_plot", "reliability_diagram"]


def _save(fig: Figure, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=fig.dpi)


def reliability_diagram(
    bins: CalibrationBins,
    path: str | os.PathLike,
    *,
    title: str = "",
    ece: float | None = None,
) -> None:
    """Reliability diagram: per-bin accuracy against confidence, with the gap to the diagonal.

    Top panel: a bar per non-empty bin of height ``acc_b`` spanning the bin, the diagonal
    ``accuracy = confidence`` (perfect calibration), a red hatched "gap" bar from ``acc_b`` to
    ``conf_b`` (above the accuracy bar when over-confident, inside it when under-confident) and a
    marker at the mean confidence ``(conf_b, acc_b)``. Bottom panel: the bin counts (log scale
    when they span more than two decades). The ECE, when given, is printed in the top panel.

    Args:
      bins: the :class:`fdiv.metrics.CalibrationBins` of :func:`fdiv.metrics.expected_calibration_error`
        (``counts, confidence, accuracy [num_bins]``, ``edges [num_bins + 1]``).
      path: where to write the PNG.
      title: figure title.
      ece: the expected calibration error to annotate, or None.

    Returns:
      None; writes ``path``.

    References:
      DeGroot and Fienberg, "The Comparison and Evaluation of Forecasters" (1983); Guo et al.,
      "On Calibration of Modern Neural Networks" (ICML 2017), figure 1.
    """
    counts = np.asarray(bins.counts, np.float64)
    conf = np.asarray(bins.confidence, np.float64)
    acc = np.asarray(bins.accuracy, np.float64)
    edges = np.asarray(bins.edges, np.float64)
    num_bins = counts.shape[0]
    if not (conf.shape == acc.shape == (num_bins,) and edges.shape == (num_bins + 1,)):
        raise ValueError(
            "bins: counts, confidence and accuracy must have shape [num_bins] and edges "
            f"[num_bins + 1], got {counts.shape}, {conf.shape}, {acc.shape}, {edges.shape}"
        )
    left = edges[:-1]
    width = np.diff(edges)
    full = counts > 0

    fig = Figure(figsize=(5.0, 6.0), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        left[full],
        acc[full],
        width=width[full],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    top.bar(
        left[full],
        conf[full] - acc[full],
        bottom=acc[full],
        width=width[full],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.6,
        label="gap",
    )
    top.plot(
        conf[full], acc[full], "o", color="black", markersize=3, label="bin (confidence, accuracy)"
    )
    top.plot([0.0, 1.0], [0.0, 1.0], "--", color="gray", linewidth=1.0, label="perfect")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize="small")
    if ece is not None:
        top.text(
            0.97,
            0.05,
            f"ECE = {float(ece):.4f}",
            transform=top.transAxes,
            ha="right",
            va="bottom",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
    if title:
        top.set_title(title)

    bottom.bar(
        left, counts, width=width, align="edge", color="gray", edgecolor="black", linewidth=0.4
    )
    positive = counts[full]
    if positive.size and positive.max() > 100 * positive.min():
        bottom.set_yscale("log")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    _save(fig, path)


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str = "step",
    ylabel: str = "",
    title: str = "",
) -> None:
    """Several curves ``y(x)`` on one axes, with a legend, saved as a PNG.

    Args:
      series: ``{name: (xs, ys)}``, each a pair of equal-length sequences of numbers.
      path: where to write the PNG.
      xlabel: x-axis label.
      ylabel: y-axis label.
      title: figure title.

    Returns:
      None; writes ``path``.

    References:
      Hunter, "Matplotlib: A 2D Graphics Environment" (2007).
    """
    if not series:
        raise ValueError("series must hold at least one curve {name: (xs, ys)}, got none")
    fig = Figure(figsize=(6.0, 4.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, pair in series.items():
        if len(pair) != 2:
            raise ValueError(f"series[{name!r}] must be a pair (xs, ys), got {len(pair)} items")
        xs = np.asarray(pair[0], np.float64)
        ys = np.asarray(pair[1], np.float64)
        if xs.ndim != 1 or xs.shape != ys.shape:
            raise ValueError(
                f"series[{name!r}]: xs and ys must be 1-D of the same length, got shapes "
                f"{xs.shape} and {ys.shape}"
            )
        ax.plot(xs, ys, marker="o" if xs.size == 1 else None, label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
