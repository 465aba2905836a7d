"""PNG plots for the workdir: reliability diagrams, training curves, 2-D samples, image grids.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas directly, never
through ``pyplot``: no global figure state, no GUI backend, safe in threads and on headless hosts.
Parent directories of ``path`` are created; ``path`` may be local or ``gs://...``
(:mod:`fdiv.train.paths`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fdiv.metrics import CalibrationBins
from fdiv.train import paths

__all__ = [
    "heatmap_grid",
    "image_grid",
    "line_plot",
    "reliability_diagram",
    "scatter_2d",
    "scatter_grid",
]


def _save(fig: Figure, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        paths.makedirs(parent)
    FigureCanvasAgg(fig)
    if paths.is_local(path):
        fig.savefig(path, format="png", dpi=fig.dpi)
    else:  # gs://...: through etils.epath
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=fig.dpi)
        paths.write_bytes(path, buffer.getvalue())


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


# --------------------------------------------------------------------------------------------
# 2-D samples and image grids.
# --------------------------------------------------------------------------------------------

_GRID = 200  # density evaluation grid: _GRID x _GRID points over the extent
_CONTOUR_STD = 5  # contour levels at peak - k^2 / 2, k = 0..5: 1..5 std rings of a Gaussian peak


def _points_2d(points, name: str) -> np.ndarray:
    array = np.asarray(points, np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 1:
        raise ValueError(f"{name} must have shape [n, 2] with n >= 1, got {array.shape}")
    return array


def _extent(
    point_sets: Sequence[np.ndarray], extent: Sequence[float] | None
) -> tuple[float, float, float, float]:
    """``extent`` checked, or the 0.5-99.5 percentile box of all finite points plus a 10% margin."""
    if extent is not None:
        values = tuple(float(v) for v in extent)
        if len(values) != 4 or not all(map(math.isfinite, values)):
            raise ValueError(f"extent must be 4 finite numbers (x0, x1, y0, y1), got {extent!r}")
        x0, x1, y0, y1 = values
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"extent must have x0 < x1 and y0 < y1, got {extent!r}")
        return values
    points = np.concatenate(point_sets, axis=0)
    points = points[np.all(np.isfinite(points), axis=1)]
    if points.shape[0] == 0:
        return (-1.0, 1.0, -1.0, 1.0)
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0)
    span = np.maximum(hi - lo, 1e-3)
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def _density_grid(
    density_fn: Callable[[np.ndarray], np.ndarray], extent: tuple[float, float, float, float]
):
    """``(X, Y, log_density)`` on a ``_GRID x _GRID`` grid over ``extent``; -inf/NaN -> NaN."""
    xs = np.linspace(extent[0], extent[1], _GRID)
    ys = np.linspace(extent[2], extent[3], _GRID)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=-1)
    log_density = np.asarray(density_fn(grid), np.float64)
    if log_density.shape != (grid.shape[0],):
        raise ValueError(
            f"density_fn must map points [m, 2] to log densities [m], got shape "
            f"{log_density.shape} for m = {grid.shape[0]}"
        )
    log_density = np.where(np.isfinite(log_density), log_density, np.nan)
    return gx, gy, log_density.reshape(gx.shape)


def _subsample(points: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` rows, a fixed-seed random subset (order-independent, reproducible)."""
    if points.shape[0] <= max_points:
        return points
    keep = np.random.default_rng(0).choice(points.shape[0], size=max_points, replace=False)
    return points[np.sort(keep)]


def _scatter_panel(ax, samples, *, density, extent, reference, max_points, title) -> None:
    """One 2-D panel: filled log-density contours, reference points, samples, outside count."""
    if density is not None:
        gx, gy, log_density = density
        if np.any(np.isfinite(log_density)):
            peak = float(np.nanmax(log_density))
            levels = peak - 0.5 * np.arange(_CONTOUR_STD, -1, -1, dtype=np.float64) ** 2
            clipped = np.clip(np.nan_to_num(log_density, nan=-np.inf), levels[0] - 1.0, None)
            ax.contourf(
                gx, gy, clipped, levels=levels, cmap="Greys", alpha=0.5, extend="max", zorder=0
            )
            ax.contour(
                gx,
                gy,
                clipped,
                levels=levels[:-1],
                colors="0.3",
                linewidths=0.6,
                linestyles="solid",
                zorder=1,
            )
    if reference is not None:
        ref = _subsample(reference, max_points)
        ax.scatter(
            ref[:, 0],
            ref[:, 1],
            s=3,
            c="tab:orange",
            alpha=0.35,
            linewidths=0,
            zorder=2,
            label="reference",
        )
    shown = _subsample(samples, max_points)
    ax.scatter(
        shown[:, 0],
        shown[:, 1],
        s=3,
        c="tab:blue",
        alpha=0.5,
        linewidths=0,
        zorder=3,
        label=f"samples (n={samples.shape[0]})",
    )
    x0, x1, y0, y1 = extent
    outside = int(
        np.sum(
            ~(
                (samples[:, 0] >= x0)
                & (samples[:, 0] <= x1)
                & (samples[:, 1] >= y0)
                & (samples[:, 1] <= y1)
            )
        )
    )
    if outside:
        ax.text(
            0.02,
            0.02,
            f"{outside} of {samples.shape[0]} outside",
            transform=ax.transAxes,
            fontsize="x-small",
            va="bottom",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize="x-small")
    if title:
        ax.set_title(title, fontsize="medium")


def scatter_2d(
    samples,
    path: str | os.PathLike,
    *,
    density_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    extent: Sequence[float] | None = None,
    title: str = "",
    reference=None,
    max_points: int = 5000,
) -> None:
    """Scatter plot of 2-D samples, optionally over the contours of a known log density.

    Samples are small translucent blue points. With ``density_fn``, the log density is evaluated
    on a 200 x 200 grid over the extent and drawn underneath as filled grey contours with thin
    solid contour lines at the log densities ``peak - k^2 / 2`` for ``k = 1, ..., 5`` (``peak``:
    the largest log density on the grid), i.e. the 1-5 std rings of an isotropic Gaussian mode
    at the peak; lighter modes of a mixture show fewer rings, so mode weights are visible.
    ``-inf`` / NaN log densities count as below the lowest level. ``reference`` points
    (e.g. samples of the target) are drawn in orange under the samples, with a legend. When more
    than ``max_points`` points are given, a fixed-seed random subset of that size is drawn.
    Samples outside the extent are counted in the lower-left corner.

    Args:
      samples: ``[n, 2]`` points (numpy or jax).
      path: where to write the PNG.
      density_fn: optional callable mapping numpy points ``[m, 2]`` (float64) to log densities
        ``[m]``.
      extent: ``(x0, x1, y0, y1)``; default: the 0.5-99.5 percentile box of the samples and
        reference together, widened by 10% of its size on each side (robust to a few outliers).
      title: figure title.
      reference: optional ``[r, 2]`` points drawn in another colour.
      max_points: the most points drawn per set, a positive int.

    Returns:
      None; writes ``path``.

    References:
      Hunter, "Matplotlib: A 2D Graphics Environment" (2007).
    """
    samples = _points_2d(samples, "samples")
    reference = None if reference is None else _points_2d(reference, "reference")
    max_points = _positive("max_points", max_points)
    sets = [samples] if reference is None else [samples, reference]
    box = _extent(sets, extent)
    density = None if density_fn is None else _density_grid(density_fn, box)
    fig = Figure(figsize=(5.0, 5.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    _scatter_panel(
        ax,
        samples,
        density=density,
        extent=box,
        reference=reference,
        max_points=max_points,
        title=title,
    )
    if reference is not None:
        ax.legend(loc="upper right", fontsize="x-small", markerscale=3)
    _save(fig, path)


def scatter_grid(
    panels: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    density_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    extent: Sequence[float] | None = None,
    ncols: int = 4,
    title: str = "",
    max_points: int = 5000,
) -> None:
    """Several 2-D scatters side by side (one per method), with a shared extent and contours.

    Each panel is drawn as in :func:`scatter_2d` (same contours of ``density_fn``, evaluated once)
    and titled with its key; panels fill rows of ``ncols`` in the mapping's order, and the
    unused cells of the last row are left blank.

    Args:
      panels: ``{name: samples [n, 2]}``, at least one.
      path: where to write the PNG.
      density_fn: optional callable mapping numpy points ``[m, 2]`` to log densities ``[m]``.
      extent: ``(x0, x1, y0, y1)`` shared by all panels; default: the 0.5-99.5 percentile box
        of all panels' samples together, widened by 10% on each side.
      ncols: the most panels per row, a positive int.
      title: figure title.
      max_points: the most points drawn per panel, a positive int.

    Returns:
      None; writes ``path``.
    """
    if not panels:
        raise ValueError("panels must hold at least one {name: samples [n, 2]}, got none")
    ncols = _positive("ncols", ncols)
    max_points = _positive("max_points", max_points)
    data = {str(name): _points_2d(points, f"panels[{name!r}]") for name, points in panels.items()}
    box = _extent(list(data.values()), extent)
    density = None if density_fn is None else _density_grid(density_fn, box)
    ncols = min(ncols, len(data))
    nrows = math.ceil(len(data) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.2 * nrows + (0.4 if title else 0.0)), dpi=100)
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (name, samples) in zip(axes, data.items(), strict=False):
        _scatter_panel(
            ax,
            samples,
            density=density,
            extent=box,
            reference=None,
            max_points=max_points,
            title=name,
        )
    for ax in axes[len(data) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def image_grid(
    images,
    path: str | os.PathLike,
    *,
    ncols: int = 8,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """Grayscale images tiled in a grid (e.g. generated 8x8 digits), saved as a PNG.

    The images are laid out row by row in one mosaic with a 1-pixel light-grey separator and
    drawn with one shared grey scale (black = ``vmin``, white = ``vmax``), so brightness is
    comparable across images; NaN pixels show in the separator colour.

    Args:
      images: ``[n, H, W]`` or ``[n, H, W, 1]``, ``n >= 1``.
      path: where to write the PNG.
      ncols: the most images per row, a positive int.
      title: figure title.
      vmin: the value drawn black; default the smallest finite pixel.
      vmax: the value drawn white; default the largest finite pixel.

    Returns:
      None; writes ``path``.
    """
    array = np.asarray(images, np.float64)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or array.shape[0] < 1:
        raise ValueError(
            f"images must have shape [n, H, W] or [n, H, W, 1] with n >= 1, got {np.shape(images)}"
        )
    ncols = _positive("ncols", ncols)
    n, height, width = array.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    mosaic = np.full((nrows * (height + 1) + 1, ncols * (width + 1) + 1), np.nan)
    for index in range(n):
        row, col = divmod(index, ncols)
        top, left = 1 + row * (height + 1), 1 + col * (width + 1)
        mosaic[top : top + height, left : left + width] = array[index]
    finite = array[np.isfinite(array)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#c8c8c8")
    scale = 0.6 / max(height, width)  # inches per pixel: each image is about 0.6 in wide
    fig_w = max(2.5, mosaic.shape[1] * scale)
    fig_h = mosaic.shape[0] * scale + (0.4 if title else 0.0)
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(mosaic, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    _save(fig, path)


def heatmap_grid(
    matrices: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    row_names: Sequence[str],
    col_names: Sequence[str],
    row_label: str = "",
    col_label: str = "",
    ncols: int = 3,
    vmin: float = 0.0,
    vmax: float = 1.0,
    title: str = "",
) -> None:
    """One annotated heatmap per named matrix (e.g. layer-by-layer CKA of each method), one colour
    scale for all panels so that cells compare across panels.

    Args:
      matrices: panel title -> ``[R, C]`` array, every array the same shape, at least one.
      path: where to write the PNG.
      row_names, col_names: tick labels, ``R`` and ``C`` of them.
      row_label, col_label: axis labels.
      ncols: the most panels per row, a positive int.
      vmin, vmax: the colour scale's ends (values outside are clipped in colour, printed as is).
      title: figure title.

    Returns:
      None; writes ``path``.
    """
    arrays = {name: np.asarray(m, np.float64) for name, m in matrices.items()}
    shape = (len(row_names), len(col_names))
    bad = {name: a.shape for name, a in arrays.items() if a.shape != shape}
    if not arrays or bad:
        raise ValueError(
            f"matrices must be a non-empty mapping of {shape} arrays (row_names x col_names); "
            f"got shapes {bad or 'none'}"
        )
    ncols = min(_positive("ncols", ncols), len(arrays))
    nrows = math.ceil(len(arrays) / ncols)
    cell = 0.45  # inches per heatmap cell
    fig = Figure(
        figsize=(ncols * (1.6 + cell * shape[1]), nrows * (1.1 + cell * shape[0]) + 0.4),
        dpi=100,
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    image = None
    for ax, (name, a) in zip(axes, arrays.items(), strict=False):
        image = ax.imshow(a, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        for (i, j), value in np.ndenumerate(a):
            shade = (value - vmin) / (vmax - vmin) if vmax > vmin else 0.0
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if shade > 0.6 else "white")  # fmt: skip
        ax.set_xticks(range(shape[1]), list(col_names), fontsize=7)
        ax.set_yticks(range(shape[0]), list(row_names), fontsize=7)
        ax.set_xlabel(col_label, fontsize=8)
        ax.set_ylabel(row_label, fontsize=8)
        ax.set_title(name, fontsize=9)
    for ax in axes[len(arrays) :]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes.tolist(), shrink=0.6)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _positive(name: str, value) -> int:
    """``value`` as a Python int ``>= 1``, else ``ValueError`` (bools and floats rejected)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)
