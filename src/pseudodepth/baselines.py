"""Baselines that ignore the input image: what a depth model's score must be compared with.

:class:`BlindMap` predicts the same disparity map for every image: the per-pixel mean of the
labeled training depth maps after the training targets' normalisation (disparity ``1/d``, min-max
scaled to [0, 1] per image over its valid pixels), averaged over the images valid at each pixel.
It is a callable ``rgb -> disparity`` at the image's size, so :func:`pseudodepth.evaluate.evaluate`
scores it exactly like a model (least-squares scale and shift in disparity, metrics in depth). A
model that does not beat it has learned nothing about the image beyond the data set's average layout.
"""

from __future__ import annotations

import cv2
import numpy as np

from .data.sources import DepthSource


def normalized_disparity(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``1/d`` min-max scaled to [0, 1] over ``valid`` (0 elsewhere; a constant map is 0)."""
    valid = valid & np.isfinite(depth) & (depth > 0)
    disparity = np.zeros(depth.shape, np.float64)
    if not valid.any():
        return disparity
    disparity[valid] = 1.0 / depth[valid]
    low, high = disparity[valid].min(), disparity[valid].max()
    if high > low:
        disparity[valid] = (disparity[valid] - low) / (high - low)
    else:
        disparity[valid] = 0.0
    return disparity


class BlindMap:
    """The image-blind baseline: one fixed disparity map, resized (bilinear) to each image's size."""

    def __init__(self, disparity: np.ndarray) -> None:
        self.disparity = np.asarray(disparity, np.float32)
        self.__name__ = "image-blind mean map"

    @classmethod
    def from_source(cls, source: DepthSource, size: tuple[int, int] | None = None) -> "BlindMap":
        """The mean normalised disparity of every sample of ``source`` (each resized to ``size`` (H, W),
        default the first sample's), per pixel over the samples valid there."""
        total = count = None
        for index in range(len(source)):
            _, depth, valid = source.load(index)
            if size is None:
                size = depth.shape[:2]
            disparity, valid = normalized_disparity(depth, valid), valid & np.isfinite(depth) & (depth > 0)
            if disparity.shape != tuple(size):
                disparity = cv2.resize(disparity, size[::-1], interpolation=cv2.INTER_LINEAR)
                valid = cv2.resize(valid.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST) > 0
            if total is None:
                total, count = np.zeros(size, np.float64), np.zeros(size, np.float64)
            total += np.where(valid, disparity, 0.0)
            count += valid
        if total is None:
            raise ValueError("the blind baseline needs at least one labeled depth map")
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return cls(mean)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        if (height, width) == self.disparity.shape:
            return self.disparity.copy()
        return cv2.resize(self.disparity, (width, height), interpolation=cv2.INTER_LINEAR)
