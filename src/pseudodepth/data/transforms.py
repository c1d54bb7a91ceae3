"""Per-sample geometric transforms and depth -> training-target conversion (NumPy, OpenCV).

Training (Depth Anything recipe): resize so the shorter side equals the crop size (images with
OpenCV ``INTER_CUBIC``, depth and masks with nearest neighbour so no value is invented across a
depth edge: ``INTER_NEAREST_EXACT``, which samples the same pixel-centre grid as ``INTER_CUBIC``;
plain ``INTER_NEAREST`` rounds down and shifts depth against the image by up to one source pixel),
a random ``crop x crop`` window, horizontal flip with p = 0.5, and the target "normalised
disparity": ``1 / depth`` on valid pixels, min-max normalised to [0, 1] per image.

Evaluation images go through the inference preprocessing, :func:`pseudodepth.preprocess.prepare`.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_shorter_side(
    rgb: np.ndarray, values: np.ndarray, valid: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize so that ``min(H, W) == size`` (aspect kept, longer side rounded, never below ``size``).

    The image uses ``INTER_CUBIC``; ``values`` and ``valid`` use ``INTER_NEAREST_EXACT`` (same grid).
    """
    height, width = valid.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) == (height, width):
        return rgb, values, valid
    rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    values = cv2.resize(values, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
    valid = cv2.resize(valid.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT) > 0
    return rgb, values, valid


def random_crop_box(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner ``(top, left)`` of a uniformly random ``size x size`` window."""
    if height < size or width < size:
        raise ValueError(f"cannot crop {size} x {size} from {height} x {width}; resize first")
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def depth_to_disparity(depth: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``disparity = 1 / depth`` on valid pixels; depth <= 0, NaN, inf (and an infinite ``1/d``) invalid."""
    depth = np.asarray(depth, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        valid = valid & np.isfinite(depth) & (depth > 0)
        disparity = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0).astype(np.float32)
    valid = valid & np.isfinite(disparity)
    return np.where(valid, disparity, 0).astype(np.float32), valid


def minmax_normalize(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image min-max normalisation over valid pixels: ``(x - min) / (max - min)`` in [0, 1].

    Non-finite values become invalid. Invalid pixels are 0. A constant map (``max == min``,
    including a single valid pixel) maps to 0; no valid pixel gives all zeros.
    """
    values = np.asarray(values, dtype=np.float32)
    valid = valid & np.isfinite(values)
    out = np.zeros(values.shape, np.float32)
    if not valid.any():
        return out, valid
    selected = values[valid].astype(np.float64)
    low, high = selected.min(), selected.max()
    if high > low:
        out[valid] = ((selected - low) / (high - low)).astype(np.float32)
    return out, valid
