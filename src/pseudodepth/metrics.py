"""Zero-shot relative-depth evaluation: least-squares alignment, crops, ranges and metrics.

Everything here is a pure function on **numpy float64** arrays (inputs are converted with
`np.asarray(..., dtype=np.float64)`; CPU torch tensors are accepted and detached first).

The protocol (Depth Anything / MiDaS / Marigold, see DESIGN.md section 2):

1. The evaluation mask is `valid & isfinite(gt) & min_depth < gt < max_depth & crop` (and a finite
   prediction). Strict inequalities follow ZoeDepth's `compute_metrics`.
2. The prediction (affine-invariant disparity for Depth Anything models) is aligned to the ground
   truth by least squares over that mask: `gt_disp ~ s * pred + t` with `gt_disp = 1 / gt`, then
   `depth = 1 / aligned_disp` (`space="disparity"`), or `gt ~ s * pred + t` directly
   (`space="depth"`).
3. The aligned depth is clipped to `[min_depth, max_depth]` and the metrics are computed per image
   over the mask; the dataset score is the mean of the per-image scores (`aggregate`).

Sources of the crops and ranges:
- NYUv2: Eigen crop rows 45:471, cols 41:601 of the 480 x 640 image, depth 1e-3..10 m
  (ZoeDepth `compute_metrics`, Depth Anything metric-depth evaluation).
- KITTI: KB crop to 352 x 1216 (image and ground truth, before inference), then the Garg crop
  (Depth Anything / ZoeDepth) or the Eigen crop (Marigold), depth 1e-3..80 m; crop fractions from
  ZoeDepth / Marigold (`int(fraction * size)` bounds).
- ETH3D: no crop, depth 1e-5..inf (Marigold `ETH3DDataset`; `inf` pixels are invalid).
- DIODE: no crop, depth 0.6..350 m plus the dataset's own validity mask (Marigold `DIODEDataset`).
- Sintel: no crop, depth 1e-3..72 m (the 72 m cap of MiDaS-style zero-shot Sintel evaluation).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "DATASET_CROPS",
    "DATASET_RANGES",
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "abs_rel_map",
    "aggregate",
    "align_least_squares",
    "crop_mask",
    "depth_metrics",
    "eigen_crop_mask",
    "eigen_crop_nyu",
    "evaluate_image",
    "fit_scale_shift",
    "garg_crop_mask",
    "kb_crop",
]

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")
HIGHER_IS_BETTER = frozenset({"delta1", "delta2", "delta3"})  # lower is better for the others

# (min_depth, max_depth) in metres of the evaluation range of each benchmark (sources above).
DATASET_RANGES: dict[str, tuple[float, float]] = {
    "nyu": (1e-3, 10.0),
    "kitti": (1e-3, 80.0),
    "eth3d": (1e-5, float("inf")),
    "diode": (0.6, 350.0),
    "sintel": (1e-3, 72.0),
}

# Evaluation crop of each benchmark, a name understood by `crop_mask` (None = whole image).
# KITTI's ground truth and image are KB-cropped (`kb_crop`) before inference; "garg" then applies
# to the 352 x 1216 result.
DATASET_CROPS: dict[str, str | None] = {
    "nyu": "eigen_nyu",
    "kitti": "garg",
    "eth3d": None,
    "diode": None,
    "sintel": None,
}

NYU_SHAPE = (480, 640)
KB_CROP_HEIGHT, KB_CROP_WIDTH = 352, 1216


def _as_float64(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def _as_mask(mask: Any, shape: tuple[int, ...], name: str = "valid") -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"{name} mask has shape {mask.shape} but the depth map has shape {shape}; "
                         "resize the prediction to the ground-truth resolution first")
    return mask


# --------------------------------------------------------------------------- crops


def eigen_crop_nyu(mask: Any) -> np.ndarray:
    """`mask` restricted to the NYUv2 Eigen crop: rows 45:471, cols 41:601 of a 480 x 640 map."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape[-2:] != NYU_SHAPE:
        raise ValueError(f"the NYUv2 Eigen crop needs a 480 x 640 map, got {mask.shape}; "
                         "evaluate NYUv2 at its native resolution")
    cropped = np.zeros_like(mask)
    cropped[..., 45:471, 41:601] = mask[..., 45:471, 41:601]
    return cropped


def kb_crop(image: Any) -> np.ndarray:
    """KITTI benchmark crop to 352 x 1216: `image[H - 352:, (W - 1216) // 2 :][:352, :1216]`.

    Works on H x W and H x W x C arrays; returns a view.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    if height < KB_CROP_HEIGHT or width < KB_CROP_WIDTH:
        raise ValueError(f"the KITTI benchmark crop needs at least 352 x 1216 pixels, got {height} x {width}")
    top, left = height - KB_CROP_HEIGHT, (width - KB_CROP_WIDTH) // 2
    return image[top:top + KB_CROP_HEIGHT, left:left + KB_CROP_WIDTH]


def _fraction_crop_mask(height: int, width: int, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[int(rows[0] * height):int(rows[1] * height), int(cols[0] * width):int(cols[1] * width)] = True
    return mask


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """Garg crop (KITTI): rows int(0.40810811 h):int(0.99189189 h), cols int(0.03594771 w):int(0.96405229 w)."""
    return _fraction_crop_mask(height, width, (0.40810811, 0.99189189), (0.03594771, 0.96405229))


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """Eigen crop (KITTI): rows int(0.3324324 h):int(0.91351351 h), cols int(0.0359477 w):int(0.96405229 w)."""
    return _fraction_crop_mask(height, width, (0.3324324, 0.91351351), (0.0359477, 0.96405229))


def crop_mask(crop: str | None, height: int, width: int) -> np.ndarray:
    """Boolean H x W mask of a named evaluation crop: None, "eigen_nyu", "garg" or "eigen"."""
    if crop is None:
        return np.ones((height, width), dtype=bool)
    if crop == "eigen_nyu":
        return eigen_crop_nyu(np.ones((height, width), dtype=bool))
    if crop == "garg":
        return garg_crop_mask(height, width)
    if crop == "eigen":
        return eigen_crop_mask(height, width)
    raise ValueError(f"unknown evaluation crop {crop!r}; use None, 'eigen_nyu', 'garg' or 'eigen'")


# --------------------------------------------------------------------------- alignment


def fit_scale_shift(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least-squares `(s, t)` minimising `sum_i (s * pred_i + t - target_i)^2` over 1-D arrays.

    Closed form: `s = sum((p - mean p)(y - mean y)) / sum((p - mean p)^2)`, `t = mean y - s mean p`.
    When `pred` is constant (including a single pixel) the problem has no unique solution; then
    `s = 0, t = mean(target)`, i.e. the best constant.
    """
    if pred.size == 0:
        raise ValueError("cannot fit scale and shift on zero valid pixels")
    pred_mean, target_mean = pred.mean(), target.mean()
    centred = pred - pred_mean
    denominator = float(np.dot(centred, centred))
    if denominator <= np.finfo(np.float64).eps * float(np.dot(pred, pred)):
        return 0.0, float(target_mean)
    scale = float(np.dot(centred, target - target_mean)) / denominator
    return scale, float(target_mean - scale * pred_mean)


def align_least_squares(pred: Any, gt: Any, valid: Any, space: str = "disparity", *,
                        min_depth: float, max_depth: float) -> np.ndarray:
    """Depth map from an affine-invariant prediction, aligned to `gt` over `valid` pixels.

    - `space="disparity"`: fit `1/gt ~ s * pred + t` (`fit_scale_shift`), `disp = s * pred + t`,
      raise `disp` to at least `1/max_depth` (this also guards `disp <= 0`), `depth = 1/disp`.
      For an infinite `max_depth` the floor is `1/max(gt[valid])`.
    - `space="depth"`: fit `gt ~ s * pred + t`; `pred` is treated as depth.

    The result is clipped to `[min_depth, max_depth]` everywhere (also outside `valid`).
    `valid` is additionally restricted to finite, positive `gt` and finite `pred`.
    """
    pred, gt = _as_float64(pred), _as_float64(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}; "
                         "resize the prediction to the ground-truth resolution first")
    with np.errstate(invalid="ignore"):
        fit_mask = _as_mask(valid, gt.shape) & np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    if space == "disparity":
        scale, shift = fit_scale_shift(pred[fit_mask], 1.0 / gt[fit_mask])
        far = max_depth if np.isfinite(max_depth) else float(gt[fit_mask].max())
        disparity = np.maximum(scale * pred + shift, 1.0 / far)
        depth = 1.0 / disparity
    elif space == "depth":
        scale, shift = fit_scale_shift(pred[fit_mask], gt[fit_mask])
        depth = scale * pred + shift
    else:
        raise ValueError(f"unknown alignment space {space!r}; use 'disparity' or 'depth'")
    return np.clip(depth, min_depth, max_depth)


# --------------------------------------------------------------------------- metrics


def depth_metrics(pred_depth: Any, gt_depth: Any, valid: Any) -> dict[str, float]:
    """Standard depth metrics over the pixels where `valid` (and gt finite and > 0) holds.

    With `p` = prediction, `g` = ground truth, means over the N valid pixels:
    - abs_rel = mean(|p - g| / g)          - sq_rel = mean((p - g)^2 / g)
    - rmse = sqrt(mean((p - g)^2))         - rmse_log = sqrt(mean((log p - log g)^2))
    - log10 = mean(|log10 p - log10 g|)
    - delta_k = mean(max(p/g, g/p) < 1.25^k) for k = 1, 2, 3
    - silog = 100 * sqrt(mean(d^2) - mean(d)^2) with d = log p - log g (ZoeDepth / Depth Anything
      metric code; the variance is floored at 0 against rounding).
    Also returns `n_valid` (N). With N = 0 every metric is NaN (`aggregate` skips such images).
    The prediction must be finite and positive on the valid pixels (align and clip first).
    """
    pred, gt = _as_float64(pred_depth), _as_float64(gt_depth)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    with np.errstate(invalid="ignore"):
        mask = _as_mask(valid, gt.shape) & np.isfinite(gt) & (gt > 0)
    p, g = pred[mask], gt[mask]
    if p.size == 0:
        return {**{name: float("nan") for name in METRIC_NAMES}, "n_valid": 0}
    if not np.all(np.isfinite(p) & (p > 0)):
        raise ValueError("the predicted depth must be finite and > 0 on valid pixels; "
                         "align it with align_least_squares and clip to the dataset range first")
    ratio = np.maximum(p / g, g / p)
    log_diff = np.log(p) - np.log(g)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "sq_rel": float(np.mean((p - g) ** 2 / g)),
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        "rmse_log": float(np.sqrt(np.mean(log_diff ** 2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25 ** 2)),
        "delta3": float(np.mean(ratio < 1.25 ** 3)),
        "silog": float(100.0 * np.sqrt(max(np.mean(log_diff ** 2) - np.mean(log_diff) ** 2, 0.0))),
        "n_valid": int(p.size),
    }


def evaluate_image(pred_disp: Any, gt_depth: Any, valid: Any, min_depth: float, max_depth: float,
                   crop: str | np.ndarray | None = None, space: str = "disparity") -> dict[str, float]:
    """Metrics of one image: mask, least-squares alignment, clipping, `depth_metrics`.

    `pred_disp` is the raw prediction at ground-truth resolution (disparity for `space="disparity"`,
    depth for `space="depth"`, metres for `space="metric"`, which is not aligned, only clipped);
    `crop` is a name for `crop_mask` or a boolean H x W array.
    Evaluation pixels: `valid & isfinite(gt) & min_depth < gt < max_depth & crop & isfinite(pred)`.
    An image without such pixels returns NaN metrics with `n_valid = 0`.
    """
    pred, gt = _as_float64(pred_disp), _as_float64(gt_depth)
    if pred.shape != gt.shape or gt.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be equal H x W maps; "
                         "resize the prediction to the ground-truth resolution first")
    region = crop_mask(crop, *gt.shape) if crop is None or isinstance(crop, str) else _as_mask(crop, gt.shape, "crop")
    with np.errstate(invalid="ignore"):
        mask = (_as_mask(valid, gt.shape) & region & np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
                & np.isfinite(pred))
    if not mask.any():
        return {**{name: float("nan") for name in METRIC_NAMES}, "n_valid": 0}
    if space == "metric":
        aligned = np.clip(np.where(np.isfinite(pred), pred, max_depth), min_depth, max_depth)
    else:
        aligned = align_least_squares(pred, gt, mask, space, min_depth=min_depth, max_depth=max_depth)
    return depth_metrics(aligned, gt, mask)


def abs_rel_map(pred_disparity: Any, gt_depth: Any, valid: Any, min_depth: float, max_depth: float) -> np.ndarray:
    """Per-pixel AbsRel ``|d - g| / g`` of a prediction after the evaluation's alignment (`align_least_squares`
    in disparity space over the `valid` pixels with finite `g > 0`, clipped to the range); NaN elsewhere.

    What the report's error maps show: its mean over the valid pixels is the image's `abs_rel`."""
    gt_depth = _as_float64(gt_depth)
    with np.errstate(invalid="ignore"):
        valid = _as_mask(valid, gt_depth.shape) & np.isfinite(gt_depth) & (gt_depth > 0)
    if not valid.any():
        return np.full(gt_depth.shape, np.nan)
    depth = align_least_squares(pred_disparity, gt_depth, valid, "disparity", min_depth=min_depth,
                                max_depth=max_depth)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, np.abs(depth - gt_depth) / gt_depth, np.nan)


def aggregate(per_image: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Dataset score: the mean over images of each per-image metric.

    Images with `n_valid == 0` are skipped and counted in `n_skipped`; `n_images` counts the
    images that were averaged. Raises if no image has a valid pixel (check the depth scale/range).
    """
    kept = [row for row in per_image if row.get("n_valid", 1) > 0]
    if not kept:
        raise ValueError(f"none of the {len(per_image)} images has a valid ground-truth pixel; check the "
                         "depth scale, the min/max depth range and the crop")
    result = {name: float(np.mean([row[name] for row in kept])) for name in METRIC_NAMES if name in kept[0]}
    result["n_images"] = len(kept)
    result["n_skipped"] = len(per_image) - len(kept)
    return result
