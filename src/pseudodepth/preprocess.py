"""Official Depth Anything preprocessing (``infer_image``), reproduced step by step.

``infer_image`` does: BGR -> RGB, ``/ 255``, OpenCV ``INTER_CUBIC`` resize so that both sides are at
least ``input_size`` with the aspect ratio kept ("lower_bound"), each side rounded to a multiple of
14, ImageNet mean/std, HWC -> CHW float32. The network output is upsampled back to the input's size
bilinearly (``align_corners=True`` in V2, ``False`` in V1's ``run.py``).

Every step runs in float64 as in the official code, so the network input is bit-identical to
``infer_image``'s (a float32 resize would be ~30% faster but differs by up to 2e-4).

Depth Anything 3 (``resize="da3"``) has its own preprocessing, the official ``InputProcessor`` with
``upper_bound_resize``: the longest side to ``input_size`` (504), OpenCV ``INTER_CUBIC`` when enlarging
and ``INTER_AREA`` when shrinking, on the uint8 image; then each side to its nearest multiple of 14
(ties up) by a second resize (cubic if either side grows, else area); ImageNet mean/std.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
PATCH = 14
RESIZE_METHODS = ("lower_bound", "da3")
DEFAULT_INPUT_SIZE = {"lower_bound": 518, "da3": 504}


def _multiple_of(x: float, multiple: int, min_val: int) -> int:
    """Official ``constrain_to_multiple_of``: round (half to even, as ``np.round``), else ceil if below ``min_val``."""
    y = int(np.round(x / multiple) * multiple)
    if y < min_val:
        y = int(math.ceil(x / multiple) * multiple)
    return y


def network_size(height: int, width: int, input_size: int = 518, keep_aspect: bool = True) -> tuple[int, int]:
    """(height, width) the network sees for an image of ``height`` x ``width``.

    ``keep_aspect=True`` is the official lower-bound resize; ``False`` resizes to a fixed
    ``input_size`` square (rounded to a multiple of 14), which lets images of any shape share a batch.
    """
    if not keep_aspect:
        side = _multiple_of(input_size, PATCH, input_size)
        return side, side
    scale = max(input_size / height, input_size / width)
    return (
        _multiple_of(scale * height, PATCH, input_size),
        _multiple_of(scale * width, PATCH, input_size),
    )


def _nearest_multiple(x: int, p: int = PATCH) -> int:
    """Official DA3 ``nearest_multiple``: the closer of floor/ceil multiple of ``p``; ties go up."""
    down = (x // p) * p
    up = down + p
    return max(1, up if abs(up - x) <= abs(x - down) else down)


def _resize_u8(rgb: np.ndarray, width: int, height: int, enlarge: bool) -> np.ndarray:
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA)


def prepare_da3(rgb: np.ndarray, input_size: int = 504, keep_aspect: bool = True) -> np.ndarray:
    """uint8 RGB -> the DA3 network input (official ``InputProcessor``, ``upper_bound_resize``), float32 CHW.

    ``keep_aspect=False`` resizes to a fixed square (``input_size`` rounded to a multiple of 14) instead.
    """
    img = np.ascontiguousarray(rgb)
    h, w = img.shape[:2]
    if not keep_aspect:
        side = _nearest_multiple(input_size)
        img = _resize_u8(img, side, side, side > h or side > w) if (h, w) != (side, side) else img
    else:
        longest = max(w, h)
        if longest != input_size:
            scale = input_size / float(longest)
            nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
            img = _resize_u8(img, nw, nh, scale > 1.0)
            h, w = img.shape[:2]
        nw, nh = _nearest_multiple(w), _nearest_multiple(h)
        if (nw, nh) != (w, h):
            img = _resize_u8(img, nw, nh, nw > w or nh > h)
    x = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN.astype(np.float32)) / IMAGENET_STD.astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


def prepare(rgb: np.ndarray, input_size: int | None = None, keep_aspect: bool = True,
            resize: str = "lower_bound", size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB (H x W x 3) -> normalised float32 CHW array at the network size.

    ``resize``: ``lower_bound`` (Depth Anything V1/V2) or ``da3`` (:func:`prepare_da3`);
    ``input_size`` None = the method's default (518 / 504). ``size`` = (height, width) overrides the
    ``lower_bound`` network size computed from ``rgb`` (for an image decoded at reduced size, whose
    network size is that of its full-size original).
    """
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
    input_size = input_size or DEFAULT_INPUT_SIZE[resize]
    if resize == "da3":
        return prepare_da3(rgb, input_size, keep_aspect)
    nh, nw = size or network_size(rgb.shape[0], rgb.shape[1], input_size, keep_aspect)
    img = rgb / 255.0
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
    img = (img - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)


def prepare_tensor(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`prepare` in float32 on ``rgb``'s device (the GPU path): uint8 H x W x 3 -> (3, h, w) at ``size``.

    ``torch``'s bicubic (Keys, a = -0.75, half-pixel centres, edge clamping, no antialiasing) is OpenCV's
    ``INTER_CUBIC``; on the demo photos the result differs from :func:`prepare`'s float64 by < 1e-3
    (normalised units; tested).
    """
    x = rgb.permute(2, 0, 1)[None].float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def upsample(disparity: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of a (B, h, w) disparity batch to ``size`` = (H, W), as the official code does."""
    if tuple(disparity.shape[-2:]) == tuple(size):
        return disparity
    return F.interpolate(disparity[:, None], size=size, mode="bilinear", align_corners=align_corners)[:, 0]
