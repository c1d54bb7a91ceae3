"""What a report of a teacher -> pseudo-labels -> student run shows, for ``pseudodepth adapt`` and ``pseudodepth demo``.

- :func:`scene_views` predicts labeled images with both models: per-pixel AbsRel after the evaluation's
  alignment (:func:`pseudodepth.metrics.abs_rel_map`) and the pixels the V2 filter drops
  (:func:`pseudodepth.losses.filter_dropped`); :func:`scene_figure` lays them out (input, ground
  truth, teacher, student, and the error / dropped columns a report asks for);
- :func:`pseudo_label_rows` reads images of a label store with the teacher's stored pseudo-label and
  the student's prediction (the gallery of your images, the demo's real photos);
- :func:`metrics_table`: teacher and student per set (AbsRel, δ1), optionally next to a baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..colorize import colorize
from ..imageio import read_rgb
from ..infer import predict
from ..losses import filter_dropped
from ..metrics import abs_rel_map
from ..store import LabelStore
from . import Table, heatmap, image_grid, overlay_mask

ERROR_SCALE = 1.0  # per-pixel AbsRel at the top of the error colour scale
INVALID_GREY = (190, 190, 190)
ERROR_COLUMNS = {"teacher_error", "student_error", "dropped"}


@dataclass
class SceneViews:
    """Predictions on one labeled image and what the figures and filter statistics need."""

    rgb: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    teacher: np.ndarray
    student: np.ndarray
    teacher_error: np.ndarray  # per-pixel AbsRel, NaN where the ground truth is invalid
    dropped: np.ndarray | None  # pixels the filter drops (student on the teacher's prediction as pseudo-label)
    student_error: np.ndarray | None = None


def scene_views(models: dict[str, torch.nn.Module], source, indices: Sequence[int], input_size: int,
                ratio: float | None = None) -> list[SceneViews]:
    """Teacher and student on the images ``indices`` of a depth ``source`` (``load(i)`` -> rgb, depth, valid);
    ``ratio``: also the pixels the filter at that ratio drops (None: not computed)."""
    views = []
    for i in indices:
        rgb, depth, valid = source.load(i)
        teacher = predict(models["teacher"], rgb, input_size)
        student = predict(models["student"], rgb, input_size)
        errors = [abs_rel_map(p, depth, valid, source.min_depth, source.max_depth) for p in (teacher, student)]
        dropped = None if ratio is None else filter_dropped(student, teacher, ratio)
        views.append(SceneViews(rgb, depth, valid, teacher, student, errors[0], dropped, errors[1]))
    return views


def gt_panel(view: SceneViews) -> np.ndarray:
    """The ground truth as disparity in Spectral_r, black where invalid."""
    disparity = np.where(view.valid, 1.0 / np.maximum(view.depth, 1e-6), np.nan)
    return colorize(disparity, view.valid)


def error_panel(error: np.ndarray) -> np.ndarray:
    """Per-pixel AbsRel from 0 (black) to :data:`ERROR_SCALE` or more (yellow), grey where invalid."""
    return heatmap(error, ERROR_SCALE, np.isfinite(error), invalid_color=INVALID_GREY)


def scene_figure(views: list[SceneViews], titles: list[str], extra: Sequence[tuple[str, str]]) -> np.ndarray:
    """Rows of input, ground truth, teacher, student, then the ``extra`` columns: (title, what) with what
    ``"teacher_error"``, ``"student_error"`` (:func:`error_panel`) or ``"dropped"`` (red over the image)."""
    unknown = {what for _, what in extra} - ERROR_COLUMNS
    if unknown:
        raise ValueError(f"scene_figure: unknown column(s) {sorted(unknown)}; choose from {sorted(ERROR_COLUMNS)}")

    def panel(view: SceneViews, what: str) -> np.ndarray:
        return overlay_mask(view.rgb, view.dropped) if what == "dropped" else error_panel(getattr(view, what))

    columns = ["input", "ground truth", "teacher", "student", *[title for title, _ in extra]]
    rows = [[v.rgb, gt_panel(v), colorize(v.teacher), colorize(v.student), *[panel(v, what) for _, what in extra]]
            for v in views]
    return image_grid(rows, columns, titles, panel_height=150)


def shrink(array: np.ndarray, height: int | None) -> np.ndarray:
    """``array`` resized to ``height`` rows (aspect kept; area averaging) when it is taller; as it is otherwise."""
    if height is None or array.shape[0] <= height:
        return array
    width = max(1, round(array.shape[1] * height / array.shape[0]))
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA)


def pseudo_label_rows(store: str | Path | LabelStore, student: torch.nn.Module, count: int, input_size: int,
                      height: int | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The first ``count`` labelled images of a label store: (source path, image, the teacher's stored
    pseudo-label, the student's prediction), each :func:`shrink` -ed to ``height`` (None: full size)."""
    store = store if isinstance(store, LabelStore) else LabelStore(store)
    for row in store.rows(status="ok")[:count]:
        rgb = read_rgb(store.source_path(row))
        pseudo = shrink(store.read_disparity(row), height)
        pred = shrink(predict(student, rgb, input_size), height)
        yield row["source"], shrink(rgb, height), pseudo, pred


def _fmt(value: float, metric: str) -> str:
    return format(value, ".4f" if metric == "abs_rel" else ".3f")


def metrics_table(metrics: dict, set_title: str, caption: str,
                  baseline: tuple[str, str, str] | None = None) -> Table:
    """AbsRel and δ1 of teacher and student on every set of ``metrics`` (``{model: {set: metrics}}``), the
    better student value in bold, and the student's change against the teacher. ``baseline`` = (key in
    ``metrics``, column title, comparison title) adds the baseline's values and the teacher's change
    against it (a model that does not beat an image-blind baseline learned no image cue)."""
    rows = []
    for name in metrics["teacher"]:
        for metric, arrow in (("abs_rel", "AbsRel ↓"), ("delta1", "δ1 ↑")):
            t, s = metrics["teacher"][name][metric], metrics["student"][name][metric]
            better = s < t if metric == "abs_rel" else s > t
            row = [f"`{name}`", arrow]
            if baseline is not None:
                b = metrics[baseline[0]][name][metric] if baseline[0] in metrics else math.nan
                row.append(_fmt(b, metric))
            row += [_fmt(t, metric), f"**{_fmt(s, metric)}**" if better else _fmt(s, metric),
                    f"{100 * (s / t - 1):+.1f}%" if t else "n/a"]
            if baseline is not None:
                row.append(f"{100 * (t / b - 1):+.1f}%" if b == b and b else "n/a")
            rows.append(row)
    header = [set_title, "metric", *([baseline[1]] if baseline else []), "teacher", "student", "student vs teacher",
              *([baseline[2]] if baseline else [])]
    return Table(header, rows, caption)
