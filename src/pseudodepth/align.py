"""Metric pseudo-labels: align a relative prediction to sparse metric depth (``label --align-to SPARSE``).

Depth Anything 3 (paper §4.2) turns relative teacher depth into metric pseudo-labels by fitting, per
image, a scale and shift to sparse or noisy metric depth (LiDAR, SfM) with a RANSAC least-squares fit
whose inlier threshold comes from the residuals' median absolute deviation. The released DA3 code
does not contain that step (only a plain least-squares scale, ``utils/alignment.py``, and sklearn's
``RANSACRegressor`` with a fixed threshold in ``da3_streaming``), so it is written here from the
paper's description:

Per image, with ``p_i`` the teacher's prediction at point ``i`` and ``y_i`` the point's metric depth in
the space the teacher predicts (``y = 1 / z`` for a disparity teacher such as DA V1/V2, ``y = z`` for
a depth teacher), fit ``y ~ s p + t`` with ``s > 0``:

1. hypotheses: ``n_trials`` random pairs of points, each giving the line through them; pairs with
   ``s <= 0`` (or equal ``p``) are discarded;
2. robust residual scale: the hypothesis with the least median absolute residual (LMedS) gives the
   residuals ``r``; ``sigma = 1.4826 * MAD(r)`` (``MAD(r) = median |r - median r|``, the 1.4826
   makes it the standard deviation for Gaussian noise); threshold ``tau = k * sigma`` (``k = 3``);
3. RANSAC: the hypothesis with the most points ``|r| <= tau`` wins (ties: least sum of inlier
   ``|r|``); its inliers are refitted by least squares
   (:func:`pseudodepth.metrics.fit_scale_shift`);
4. refinement: ``tau`` is recomputed from the refitted residuals' MAD, inliers reselected and
   refitted, until the inlier set stops changing (at most ``refine_steps`` times).

The threshold never falls below ``rel_floor * median |y|`` (default 1e-4: 0.1 mm at 1 m, far below any
LiDAR's or SfM's precision). Without that floor, exact sparse depth (synthetic points, depth rendered
from the same model) puts ``tau`` at the float32 rounding noise of the prediction, and which true inliers
survive then depends on that noise: a prediction computed with another thread count (a 1-CPU Ray actor
vs a 2-thread local process) kept 63 instead of 69 of the same points.

The fit fails (a ``failed`` row in the store, with this reason) when fewer than ``min_points`` valid
points exist, when no pair gives a positive scale, when fewer than half of the points are inliers,
or when the inliers' least-squares scale is not positive. Like every median-based estimator it
assumes that most points are inliers: with more than half of the points gross outliers the
threshold grows with them and the fit can be wrong without failing (tested: 30% outliers).

SPARSE formats, looked up by the image's relative path with its extension replaced
(``SPARSE/<rel without ext>.<ext>``, the first that exists in the order below):

- ``.npy`` of shape H x W (the image's size after EXIF orientation): a depth map in metres, 0 (or
  NaN / inf / negative) where there is no measurement;
- ``.npy`` of shape N x 3: points ``(u, v, z)``: column and row in pixels of the upright image (0-based,
  rounded to the nearest pixel) and depth in metres;
- ``.csv``: the same points, one ``u,v,z`` line each (a first line that is not numbers is a header);
- ``.png``: a 16-bit depth map, ``z = value / png_scale`` (``png_scale`` 256: KITTI's LiDAR maps), 0
  missing.

Depth ``z`` is the planar (z-buffer) depth of the camera, as every reader of :mod:`pseudodepth.data`
returns.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .imageio import safe_join
from .metrics import fit_scale_shift

SPARSE_EXTENSIONS = (".npy", ".csv", ".png")
SCORE_POINTS = 5000
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD -> standard deviation for Gaussian residuals


class AlignError(ValueError):
    """An image whose sparse depth cannot give a metric alignment; the message is the row's reason."""


@dataclass(frozen=True)
class AlignSettings:
    """How labels are aligned to sparse metric depth (part of the teacher fingerprint)."""

    sparse_root: str
    png_scale: float = 256.0
    min_points: int = 10
    n_trials: int = 200
    mad_k: float = 3.0
    refine_steps: int = 10
    max_depth: float | None = None  # aligned depth beyond this is invalid (0 in the label)
    seed: int = 0
    rel_floor: float = 1e-4  # residuals below rel_floor * median |y| count as exact (module docstring)

    def as_dict(self) -> dict:
        return {"sparse_root": str(Path(self.sparse_root).resolve()), "png_scale": self.png_scale,
                "min_points": self.min_points, "n_trials": self.n_trials, "mad_k": self.mad_k,
                "refine_steps": self.refine_steps, "max_depth": self.max_depth, "seed": self.seed,
                "rel_floor": self.rel_floor}

    def check(self) -> None:
        if not Path(self.sparse_root).is_dir():
            raise FileNotFoundError(f"{self.sparse_root}: --align-to must be a folder of sparse depth files "
                                    f"({', '.join(SPARSE_EXTENSIONS)}) named like the images")
        if self.png_scale <= 0 or self.min_points < 2 or self.n_trials < 1 or self.mad_k <= 0 or self.rel_floor < 0:
            raise ValueError("alignment settings need png_scale > 0, min_points >= 2, n_trials >= 1, mad_k > 0, "
                             "rel_floor >= 0")
        if self.max_depth is not None and self.max_depth <= 0:
            raise ValueError(f"--align-max-depth must be > 0, got {self.max_depth}")


@dataclass(frozen=True)
class Fit:
    """Result of :func:`ransac_scale_shift`: ``y ~ scale * p + shift`` and the inlier mask."""

    scale: float
    shift: float
    inliers: np.ndarray  # bool, one per point
    threshold: float

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())


# ----------------------------------------------------------------------------- reading sparse depth


def find_sparse(root: str | os.PathLike, source: str) -> Path | None:
    """The sparse-depth file of image ``source`` (relative path) under ``root``, or None."""
    stem = os.path.splitext(source)[0]
    for ext in SPARSE_EXTENSIONS:
        for name in (stem + ext, source + ext):  # a.jpg -> a.npy, or a.jpg.npy when stems collide
            path = safe_join(root, name)
            if path.is_file():
                return path
    return None


def _points_from_map(depth: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    v, u = np.nonzero(valid)
    return np.stack([u, v, depth[valid]], axis=1).astype(np.float64)


def _read_csv(path: Path) -> np.ndarray:
    rows = []
    with path.open(newline="") as f:
        for number, line in enumerate(csv.reader(f), start=1):
            if not line or not "".join(line).strip():
                continue
            try:
                values = [float(x) for x in line]
            except ValueError:
                if number == 1:
                    continue  # header
                raise AlignError(f"{path}:{number}: expected 'u,v,z' numbers, got {','.join(line)!r}") from None
            if len(values) != 3:
                raise AlignError(f"{path}:{number}: expected 3 values u,v,z, got {len(values)}")
            rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def read_sparse(path: str | os.PathLike, height: int, width: int, png_scale: float = 256.0) -> np.ndarray:
    """Sparse metric depth of one image as N x 3 ``(u, v, z)`` points with finite ``z > 0`` inside the image."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise AlignError(f"{path}: cannot read as a numeric .npy ({err})") from None
        array = np.asarray(array, dtype=np.float64)
        if array.ndim == 2 and array.shape == (height, width):
            return _points_from_map(array)
        if array.ndim == 2 and array.shape[1] == 3:
            points = array
        else:
            raise AlignError(f"{path}: shape {array.shape} is neither the image's {height} x {width} depth map "
                             "nor N x 3 (u, v, z) points")
    elif suffix == ".csv":
        points = _read_csv(path)
    elif suffix == ".png":
        import cv2

        q = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if q is None or q.dtype != np.uint16 or q.ndim != 2:
            raise AlignError(f"{path}: expected a 16-bit single-channel PNG depth map")
        if q.shape != (height, width):
            raise AlignError(f"{path}: depth map is {q.shape[0]} x {q.shape[1]} but the image is {height} x {width}")
        return _points_from_map(q.astype(np.float64) / png_scale)
    else:
        raise AlignError(f"{path}: unsupported sparse depth file; use {', '.join(SPARSE_EXTENSIONS)}")
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(points).all(axis=1) & (points[:, 2] > 0)
    points = points[keep]
    u, v = np.rint(points[:, 0]), np.rint(points[:, 1])
    outside = (u < 0) | (u >= width) | (v < 0) | (v >= height)
    if outside.any():
        i = int(np.argmax(outside))
        raise AlignError(f"{path}: point (u={points[i, 0]:g}, v={points[i, 1]:g}) lies outside the {width} x "
                         f"{height} image (u is the column, v the row, in pixels of the upright image)")
    return np.stack([u, v, points[:, 2]], axis=1)


# ----------------------------------------------------------------------------- the fit


def mad(values: np.ndarray) -> float:
    """Median absolute deviation ``median |x - median x|``."""
    return float(np.median(np.abs(values - np.median(values))))


def _threshold(residuals: np.ndarray, k: float, floor: float) -> float:
    return max(k * MAD_TO_SIGMA * mad(residuals), floor)


def ransac_scale_shift(pred: np.ndarray, target: np.ndarray, *, n_trials: int = 200, mad_k: float = 3.0,
                       refine_steps: int = 10, min_points: int = 10, seed: int = 0, rel_floor: float = 1e-4) -> Fit:
    """Robust ``target ~ scale * pred + shift`` with ``scale > 0`` (module docstring, steps 1-4).

    Raises :class:`AlignError` with a one-line reason when no such fit is supported by the points.
    """
    p, y = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    finite = np.isfinite(p) & np.isfinite(y)
    p, y = p[finite], y[finite]
    n = p.size
    if n < min_points:
        raise AlignError(f"only {n} valid sparse depth point(s), need at least {min_points}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, n_trials)
    second = (first + rng.integers(1, n, n_trials)) % n  # a different point
    dp = p[second] - p[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = (y[second] - y[first]) / dp
    ok = np.isfinite(scales) & (scales > 0)
    if not ok.any():
        raise AlignError(f"no pair of the {n} points gives a positive scale (depth does not fall as the teacher's "
                         "prediction says it should); check that the sparse depth belongs to this image")
    scales = scales[ok]
    shifts = y[first[ok]] - scales * p[first[ok]]
    # Hypotheses are scored on at most SCORE_POINTS points (dense maps hold 10^5+); refinement uses all.
    subset = rng.choice(n, SCORE_POINTS, replace=False) if n > SCORE_POINTS else slice(None)
    ps, ys = p[subset], y[subset]
    residuals = np.abs(ys[None, :] - (scales[:, None] * ps[None, :] + shifts[:, None]))  # trials x points
    floor = max(rel_floor, 1e-9) * max(float(np.median(np.abs(y))), 1e-12)  # below it: float32 rounding
    lmeds = int(np.argmin(np.median(residuals, axis=1)))
    tau = _threshold(ys - (scales[lmeds] * ps + shifts[lmeds]), mad_k, floor)
    counts = (residuals <= tau).sum(axis=1)
    cost = np.where(residuals <= tau, residuals, 0).sum(axis=1)
    best = int(np.lexsort((cost, -counts))[0])
    scale, shift = scales[best], shifts[best]
    inliers = np.abs(y - (scale * p + shift)) <= tau
    for _ in range(max(1, refine_steps)):
        if inliers.sum() < 2:
            break
        scale, shift = fit_scale_shift(p[inliers], y[inliers])
        r = y - (scale * p + shift)
        tau = _threshold(r, mad_k, floor)
        new = np.abs(r) <= tau
        if np.array_equal(new, inliers):
            break
        inliers = new
    if inliers.sum() * 2 < n:
        raise AlignError(f"only {int(inliers.sum())} of {n} sparse points agree with one scale and shift (fewer "
                         "than half): too many outliers, or the sparse depth does not belong to this image")
    if not scale > 0:
        raise AlignError(f"the least-squares scale of the {int(inliers.sum())} inliers is {scale:.3g}, not positive")
    full = np.zeros(finite.shape, dtype=bool)
    full[np.flatnonzero(finite)[inliers]] = True
    return Fit(float(scale), float(shift), full, float(tau))


def align_prediction(prediction: np.ndarray, points: np.ndarray, space: str, settings: AlignSettings) -> tuple[np.ndarray, Fit]:
    """Metric depth (H x W float32, 0 = invalid) of a teacher prediction aligned to sparse ``(u, v, z)`` points.

    ``space`` is what the prediction is: ``"disparity"`` (fit ``1/z ~ s p + t``, depth ``1 / (s p + t)``,
    invalid where ``s p + t <= 0``) or ``"depth"`` (fit ``z ~ s p + t``, invalid where ``<= 0``). Depth
    beyond ``settings.max_depth`` is invalid too.
    """
    pred = np.asarray(prediction, np.float64)
    u, v, z = points[:, 0].astype(int), points[:, 1].astype(int), points[:, 2]
    if space == "disparity":
        target = 1.0 / z
    elif space == "depth":
        target = z
    else:
        raise ValueError(f"unknown prediction space {space!r}; use 'disparity' or 'depth'")
    fit = ransac_scale_shift(pred[v, u], target, n_trials=settings.n_trials, mad_k=settings.mad_k,
                             refine_steps=settings.refine_steps, min_points=settings.min_points, seed=settings.seed,
                             rel_floor=settings.rel_floor)
    aligned = fit.scale * pred + fit.shift
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(aligned > 0, 1.0 / aligned, 0.0) if space == "disparity" else np.maximum(aligned, 0.0)
    depth[~np.isfinite(depth)] = 0.0
    if settings.max_depth is not None:
        depth[depth > settings.max_depth] = 0.0
    return depth.astype(np.float32), fit


def align_to_sparse(prediction: np.ndarray, source: str, space: str, settings: AlignSettings) -> tuple[np.ndarray, Fit]:
    """Find, read and fit the sparse depth of image ``source``; raises :class:`AlignError` with the reason."""
    path = find_sparse(settings.sparse_root, source)
    if path is None:
        stem = os.path.splitext(source)[0]
        raise AlignError(f"no sparse depth for this image: expected {stem}{{{','.join(SPARSE_EXTENSIONS)}}} "
                         f"under {settings.sparse_root}")
    points = read_sparse(path, *prediction.shape, png_scale=settings.png_scale)
    return align_prediction(prediction, points, space, settings)


def sparse_sample(depth: np.ndarray, valid: np.ndarray, fraction: float, rng: np.random.Generator, *,
                  noise: float = 0.0, outlier_fraction: float = 0.0, outlier_range: tuple[float, float] = (0.3, 3.0)
                  ) -> np.ndarray:
    """Simulated LiDAR: N x 3 ``(u, v, z)`` from a dense depth map (for tests, demos and benchmarks).

    ``fraction`` of the valid pixels are drawn without replacement; ``z`` gets multiplicative Gaussian
    noise ``z (1 + noise * e)``; ``outlier_fraction`` of the points are replaced by ``z * f`` with ``f``
    log-uniform in ``outlier_range`` (multipath returns, reflections, moving objects).
    """
    v, u = np.nonzero(valid & np.isfinite(depth) & (depth > 0))
    count = max(1, int(math.ceil(fraction * v.size)))
    pick = rng.choice(v.size, size=min(count, v.size), replace=False)
    u, v = u[pick], v[pick]
    z = depth[v, u].astype(np.float64) * (1.0 + noise * rng.standard_normal(pick.size))
    n_out = int(round(outlier_fraction * pick.size))
    if n_out:
        which = rng.choice(pick.size, size=n_out, replace=False)
        z[which] *= np.exp(rng.uniform(np.log(outlier_range[0]), np.log(outlier_range[1]), n_out))
    keep = z > 0
    return np.stack([u[keep], v[keep], z[keep]], axis=1).astype(np.float64)
