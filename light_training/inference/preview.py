"""One picture of one predicted case, ``<case>_preview.png``: what a researcher looks at first.

Rows of the picture (slices in the voxel order of the file, numpy ``(z, y, x)``: axial slices with y
downwards, coronal slices with z upwards, so the head is up for the usual LPS direction):

1. three axial and two coronal slices through the foreground (predicted or true), the scan in grey,
   the ground truth and the prediction outlined per label (cool colours: truth, warm: prediction);
2. the same slices with the uncertainty as a heat map over the scan (when an uncertainty is given);
3. with ``airway_mip``: projections of the predicted tree along y (coronal) and along z (axial), true
   positives, false positives and misses in three colours, shaded by depth.

Panels keep the voxel spacing's aspect (a 2.5 mm-slice CT does not look squashed in a coronal view)
and are cropped to the body, so the anatomy fills them. The PNG has a fixed size per row
(:func:`preview_size_px`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.gridspec import SubplotSpec
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image  # a dependency of matplotlib

from light_training.evaluation.primitives import dice
from light_training.io import atomic_path

__all__ = ["PREVIEW_WIDTH_PX", "PREVIEW_DPI", "ROW_HEIGHT_PX", "HEADER_PX", "AXIAL_QUANTILES",
           "CORONAL_QUANTILES", "TRUTH_COLOURS", "PREDICTION_COLOURS", "MIP_COLOURS", "MIP_PREDICTION_COLOUR",
           "preview_path", "preview_size_px", "pixel_aspect", "foreground_slices", "body_box", "airway_mip_rgb",
           "write_preview"]

PREVIEW_WIDTH_PX = 1200
PREVIEW_DPI = 100
ROW_HEIGHT_PX = {"slices": 215, "uncertainty": 215, "mip": 320}
HEADER_PX = 52  # the title line and the panels' titles
AXIAL_QUANTILES = (0.15, 0.5, 0.85)  # of the foreground voxels' z: where the axial slices lie
CORONAL_QUANTILES = (0.5, 0.9)  # of the foreground voxels' y: the median cuts through trachea and carina
TRUTH_COLOURS = ("#39ff14", "#00e5ff", "#3d7bff", "#b2ff66")  # label 1, 2, ... (cycled)
PREDICTION_COLOURS = ("#ff1fd2", "#ff9500", "#ff2a2a", "#ffe600")
MIP_COLOURS = {"true positive": "#e9e9e9", "false positive": "#ff3b3b", "missed": "#2fb4ff"}
MIP_PREDICTION_COLOUR = "#ffb000"  # the predicted tree when there is no ground truth
MIP_BACKGROUND = "#101010"
UNCERTAINTY_CMAP = "plasma"
UNCERTAINTY_LEVELS = 10  # steps of the heat map's colours: a colorbar that reads off tenths
UNCERTAINTY_OPAQUE = 0.3  # the heat map is transparent at 0 and fades in up to this uncertainty
_SIDE_RATIO = 0.9  # width of the legend / colorbar column, in panel widths
_PERCENTILE_VOXELS = 2_000_000  # the window's percentiles are taken on about this many voxels at most


def preview_path(save_dir: str | Path, case: str) -> Path:
    """``<save_dir>/<case>_preview.png``."""
    return Path(save_dir) / f"{case}_preview.png"


def preview_size_px(uncertainty: bool, airway_mip: bool) -> tuple[int, int]:
    """(width, height) in pixels of a preview with or without the uncertainty row and the projection row."""
    rows = ["slices"] + (["uncertainty"] if uncertainty else []) + (["mip"] if airway_mip else [])
    return PREVIEW_WIDTH_PX, HEADER_PX + sum(ROW_HEIGHT_PX[r] for r in rows)


def pixel_aspect(spacing: Sequence[float], view: str) -> float:
    """Height / width of one displayed voxel in ``view`` "axial" (rows y, columns x) or "coronal" (rows z,
    columns x), from ``spacing`` (z, y, x) in mm: 2.5 / 0.7 in the coronal view of a 2.5 mm-slice CT."""
    sz, sy, sx = _check_spacing(spacing)
    if view == "axial":
        return sy / sx
    if view == "coronal":
        return sz / sx
    raise ValueError(f"view={view!r}: expected 'axial' or 'coronal'")


def foreground_slices(foreground: np.ndarray, axis: int, quantiles: Sequence[float]) -> list[int]:
    """Slice indices along ``axis`` at ``quantiles`` of the coordinates of the voxels of the bool
    ``(Z, Y, X)`` ``foreground``; the middle slice, once per quantile, when it is empty."""
    counts = foreground.sum(axis=tuple(a for a in range(foreground.ndim) if a != axis))  # voxels per slice
    if counts.sum() == 0:
        return [foreground.shape[axis] // 2] * len(quantiles)
    cumulative = np.cumsum(counts) / counts.sum()
    return [int(np.searchsorted(cumulative, q)) for q in quantiles]


def body_box(volume: np.ndarray, threshold: float, foreground: np.ndarray, margin: int = 2
             ) -> tuple[slice, slice, slice]:
    """The (z, y, x) box around the body, voxels of the ``(Z, Y, X)`` ``volume`` above ``threshold``, and
    around all of the bool ``foreground``, grown by ``margin`` voxels.

    A plane counts as body when at least 1 % of it is above ``threshold``, so that noise in the air
    around the body does not stretch the box; the whole volume when nothing is.
    """
    inside = volume > threshold
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        kept = np.flatnonzero((inside.mean(axis=others) >= 0.01) | foreground.any(axis=others))
        if kept.size == 0:
            box.append(slice(0, volume.shape[axis]))
        else:
            box.append(slice(max(int(kept[0]) - margin, 0), min(int(kept[-1]) + margin + 1, volume.shape[axis])))
    return tuple(box)


def airway_mip_rgb(prediction: np.ndarray, ground_truth: np.ndarray | None, axis: int) -> np.ndarray:
    """``(H, W, 3)`` float RGB projection along ``axis`` of the bool ``(Z, Y, X)`` masks.

    With ``ground_truth`` each pixel takes the :data:`MIP_COLOURS` colour of the class (true positive,
    false positive, missed) with most voxels along its ray, errors first on a tie: a missed branch or a
    leak shows, a one-voxel disagreement along the wall of a correct branch does not speckle it.
    Without: the prediction in :data:`MIP_PREDICTION_COLOUR`. Shaded by the depth of the first voxel
    along the ray (nearest at full brightness, farthest at 45 %), which shows how branches overlap.
    """
    if ground_truth is None:
        classes, colours = [prediction], [MIP_PREDICTION_COLOUR]
    else:
        classes = [ground_truth & ~prediction, prediction & ~ground_truth, prediction & ground_truth]
        colours = [MIP_COLOURS["missed"], MIP_COLOURS["false positive"], MIP_COLOURS["true positive"]]
    counts = np.stack([c.sum(axis=axis) for c in classes])  # (classes, H, W): voxels along each ray
    hit = counts.max(axis=0) > 0
    union = np.logical_or.reduce(classes)
    shade = 1.0 - 0.55 * union.argmax(axis=axis) / max(union.shape[axis] - 1, 1)  # argmax: the first voxel
    rgb = np.broadcast_to(np.asarray(to_rgb(MIP_BACKGROUND)), hit.shape + (3,)).copy()
    palette = np.asarray([to_rgb(c) for c in colours])
    rgb[hit] = (shade[..., None] * palette[counts.argmax(axis=0)])[hit]
    return rgb


def write_preview(path: str | Path, image: np.ndarray, prediction: np.ndarray,
                  uncertainty: np.ndarray | None = None, ground_truth: np.ndarray | None = None,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0), label_names: Mapping[int, str] | None = None,
                  airway_mip: bool = False, title: str | None = None) -> Path:
    """Write the preview PNG of one case to ``path`` (atomically) and return ``path``.

    Args:
        image: ``(C, Z, Y, X)`` or ``(Z, Y, X)`` float, the scan as read (channel 0 is shown), windowed
            to its 0.5 / 99.5 percentiles.
        prediction: ``(Z, Y, X)`` integer label map (label values, 0 background).
        uncertainty: ``(Z, Y, X)`` float in [0, 1], or None (no uncertainty row).
        ground_truth: ``(Z, Y, X)`` integer label map, or None (the prediction alone).
        spacing: (z, y, x) in mm, for the aspect of the panels.
        label_names: ``{label value: name}`` for the legend, e.g.
            ``dict(zip(plans["labels"], plans["label_names"]))``; default "label <value>".
        airway_mip: add the row of projections of the predicted tree.
        title: the title line (followed by the Dice per label when the ground truth is given); default
            the file name without ``_preview.png``.

    The size is :func:`preview_size_px`. Raises ValueError naming the argument when a shape, dtype,
    value range or the spacing does not fit.
    """
    path = Path(path)
    volume, prediction, ground_truth, uncertainty = _check_inputs(image, prediction, ground_truth, uncertainty)
    spacing = _check_spacing(spacing)
    labels = sorted(set(np.unique(prediction).tolist()) - {0}
                    | (set() if ground_truth is None else set(np.unique(ground_truth).tolist()) - {0}))
    names = {k: (label_names or {}).get(k, f"label {k}") for k in labels}
    title_line = _title_line(path, title, prediction, ground_truth, names)

    lo, hi = _window(volume)
    foreground = prediction > 0 if ground_truth is None else (prediction > 0) | (ground_truth > 0)
    box = body_box(volume, lo + 0.1 * (hi - lo), foreground)
    volume, prediction, foreground = volume[box], prediction[box], foreground[box]
    ground_truth = None if ground_truth is None else ground_truth[box]
    uncertainty = None if uncertainty is None else uncertainty[box]
    # (view, index in the cropped arrays, index in the file)
    views = ([("axial", z, z + box[0].start) for z in foreground_slices(foreground, 0, AXIAL_QUANTILES)]
             + [("coronal", y, y + box[1].start) for y in foreground_slices(foreground, 1, CORONAL_QUANTILES)])

    rows = ["slices"] + (["uncertainty"] if uncertainty is not None else []) + (["mip"] if airway_mip else [])
    width, height = preview_size_px(uncertainty is not None, airway_mip)
    fig = Figure(figsize=(width / PREVIEW_DPI, height / PREVIEW_DPI), dpi=PREVIEW_DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), len(views) + 1, width_ratios=[1.0] * len(views) + [_SIDE_RATIO],
                            height_ratios=[ROW_HEIGHT_PX[r] for r in rows], left=0.01, right=0.99, bottom=0.01,
                            top=1 - HEADER_PX / height, wspace=0.06, hspace=0.17)
    fig.suptitle(title_line, y=1 - 6 / height, va="top", fontsize=12)
    for r, row in enumerate(rows):
        side = fig.add_subplot(grid[r, -1])  # the legend or the colorbar
        side.axis("off")
        if row == "mip":
            _draw_mip_row(fig, grid[r, :-1], side, prediction > 0,
                          None if ground_truth is None else ground_truth > 0, spacing, len(views))
        else:
            overlays = (ground_truth, prediction) if row == "slices" else uncertainty
            axes = [fig.add_subplot(grid[r, c]) for c in range(len(views))]
            _draw_slice_row(axes, side, views, volume, (lo, hi), spacing, overlays, labels, names)
    canvas.draw()
    # true colour without the alpha channel: a 256-colour palette merges grey levels of the scan or
    # steps of the colorbar
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    with atomic_path(path) as tmp:
        rgb.save(tmp, format="PNG", optimize=True)
    return path


def _draw_slice_row(axes: Sequence[Axes], side: Axes, views: Sequence[tuple[str, int, int]], volume: np.ndarray,
                    window: tuple[float, float], spacing: tuple[float, float, float],
                    overlays: tuple[np.ndarray | None, np.ndarray] | np.ndarray, labels: Sequence[int],
                    names: Mapping[int, str]) -> None:
    """The scan's slices ``views`` (view, index in ``volume``, index in the file) in ``axes``, overlaid with
    the outlines of ``overlays`` = (ground truth or None, prediction) or with the heat map of the
    uncertainty ``overlays``; their legend or colorbar in ``side``."""
    outlines = isinstance(overlays, tuple)
    for ax, (view, index, file_index) in zip(axes, views):
        origin, aspect = ("upper" if view == "axial" else "lower"), pixel_aspect(spacing, view)
        ax.imshow(_slice(volume, view, index), cmap="gray", vmin=window[0], vmax=window[1], origin=origin,
                  aspect=aspect, interpolation="nearest")  # nearest: blocks of voxels make the smallest PNG
        ax.set_xticks([])
        ax.set_yticks([])
        name = f"{view} {'z' if view == 'axial' else 'y'}={file_index}"
        ax.set_title(name if outlines else f"uncertainty, {name}", fontsize=10)
        if outlines:
            # the truth's wider line shows as a rim around the prediction's where the two agree
            for source, colours, line_width in zip(overlays, (TRUTH_COLOURS, PREDICTION_COLOURS), (2.4, 1.2)):
                if source is not None:
                    _outline(ax, _slice(source, view, index), labels, colours, line_width, origin)
        else:
            heat = _slice(overlays, view, index)
            # opacity grows with the uncertainty, so that the anatomy shows where the model is sure
            mappable = ax.imshow(heat, cmap=colormaps[UNCERTAINTY_CMAP].resampled(UNCERTAINTY_LEVELS), vmin=0.0,
                                 vmax=1.0, alpha=0.9 * np.clip(heat / UNCERTAINTY_OPAQUE, 0.0, 1.0), origin=origin,
                                 aspect=aspect, interpolation="nearest")
    if outlines:
        side.legend(handles=_outline_handles(labels, names, overlays[0] is not None), loc="center left",
                    borderaxespad=0.0, fontsize=9, frameon=False, title="outlines", title_fontsize=9)
    else:
        side.figure.colorbar(mappable, cax=side.inset_axes((0.05, 0.08, 0.1, 0.84)), label="uncertainty")


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = np.asarray(spacing, dtype=float) if np.ndim(spacing) == 1 else np.zeros(0)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(f"spacing={spacing!r}: expected (z, y, x), three positive numbers in mm")
    return tuple(float(s) for s in values)


def _check_inputs(image: np.ndarray, prediction: np.ndarray, ground_truth: np.ndarray | None,
                  uncertainty: np.ndarray | None) -> tuple[np.ndarray | None, ...]:
    """The shown channel ``(Z, Y, X)`` float32 and the other arrays, checked as :func:`write_preview` says."""
    image = np.asarray(image)
    if image.ndim not in (3, 4) or image.size == 0:
        raise ValueError(f"image of shape {image.shape}: expected a non-empty (C, Z, Y, X) or (Z, Y, X)")
    volume = (image[0] if image.ndim == 4 else image).astype(np.float32)
    if not np.all(np.isfinite(volume)):
        raise ValueError("image holds NaN or infinite values")
    checked = []
    for name, array in (("prediction", prediction), ("ground_truth", ground_truth), ("uncertainty", uncertainty)):
        if array is None:
            checked.append(None)
            continue
        array = np.asarray(array)
        if array.shape != volume.shape:
            raise ValueError(f"{name} of shape {array.shape} does not match the image's (Z, Y, X) = {volume.shape}")
        if name == "uncertainty":
            array = array.astype(np.float32)
            if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
                raise ValueError(f"uncertainty spans [{np.nanmin(array)}, {np.nanmax(array)}]: "
                                 "expected finite values in [0, 1]")
        elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"{name} of dtype {array.dtype}: expected an integer label map")
        elif array.min() < 0:
            raise ValueError(f"{name} holds the label {array.min()}: expected label values >= 0")
        checked.append(array)
    return (volume, *checked)


def _window(volume: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of ``volume`` (on a regular subsample of a large one)."""
    step = max(1, int(np.ceil((volume.size / _PERCENTILE_VOXELS) ** (1 / 3))))
    lo, hi = np.percentile(volume[::step, ::step, ::step], [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """Axial ``(Y, X)`` slice ``z = index`` or coronal ``(Z, X)`` slice ``y = index`` of ``(Z, Y, X)``."""
    return volume[index] if view == "axial" else volume[:, index]


def _outline(ax: Axes, label_slice: np.ndarray, labels: Sequence[int], colours: Sequence[str], line_width: float,
             origin: str) -> None:
    """The contour of each label's region, half-way between voxel centres."""
    for i, k in enumerate(labels):
        mask = label_slice == k
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colours[i % len(colours)]], linewidths=line_width,
                       origin=origin)


def _outline_handles(labels: Sequence[int], names: Mapping[int, str], with_truth: bool) -> list[Line2D]:
    """Legend entries "truth (<name>)", "prediction (<name>)" per label; without labels, the colours of label 1."""
    handles = []
    sources = ([("truth", TRUTH_COLOURS)] if with_truth else []) + [("prediction", PREDICTION_COLOURS)]
    for source, colours in sources:
        for i, k in enumerate(labels or [None]):
            text = source if k is None else f"{source} ({names[k]})"
            handles.append(Line2D([], [], color=colours[i % len(colours)], lw=2.5, label=text))
    return handles


def _draw_mip_row(fig: Figure, cells: SubplotSpec, side: Axes, prediction: np.ndarray,
                  ground_truth: np.ndarray | None, spacing: tuple[float, float, float], columns: int) -> None:
    """Projections along y (coronal) and along z (axial) side by side in ``cells``, the legend in ``side``."""
    inner = cells.subgridspec(1, 2, width_ratios=[columns - columns // 2, columns // 2], wspace=0.04)
    for c, (view, axis) in enumerate((("coronal", 1), ("axial", 0))):
        ax = fig.add_subplot(inner[0, c])
        ax.imshow(airway_mip_rgb(prediction, ground_truth, axis), origin="lower" if view == "coronal" else "upper",
                  aspect=pixel_aspect(spacing, view), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"projection along {'y (coronal)' if axis == 1 else 'z (axial)'}, nearer is brighter",
                     fontsize=10)
    if ground_truth is None:
        entries = [("prediction", MIP_PREDICTION_COLOUR, int(prediction.sum()))]
    else:
        entries = [(name, MIP_COLOURS[name], int(mask.sum())) for name, mask in (
            ("true positive", prediction & ground_truth), ("false positive", prediction & ~ground_truth),
            ("missed", ground_truth & ~prediction))]
    side.legend(handles=[Patch(color=colour, label=f"{name}\n{count:,} voxels") for name, colour, count in entries],
                loc="center left", borderaxespad=0.0, fontsize=9, frameon=False, labelspacing=1.0)


def _title_line(path: Path, title: str | None, prediction: np.ndarray, ground_truth: np.ndarray | None,
                names: Mapping[int, str]) -> str:
    """The title, and the Dice per label when the ground truth is known."""
    title = title if title is not None else path.name.removesuffix(".png").removesuffix("_preview")
    if ground_truth is None or not names:
        return title
    scores = ", ".join(f"{names[k]} {dice(prediction == k, ground_truth == k):.3f}" for k in names)
    return f"{title}   |   Dice: {scores}"
