"""Official Depth Anything preprocessing (``infer_image``), reproduced step by step.

``infer_image`` does: BGR -> RGB, ``/ 255``, OpenCV ``INTER_CUBIC`` resize so that both sides are at
least ``input_size`` with the aspect ratio kept ("lower_bound"), each side rounded to a multiple of
14, ImageNet mean/std, HWC -> CHW float32. The network output is upsampled back to the input's size
bilinearly (``align_corners=True`` in V2, ``False`` in V1's ``run.py``).

Every step runs in float64 as in the official code, so the network input is bit-identical to
``infer_image``'s (a float32 resize would be ~30% faster but differs by up to 2e-4).
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


def prepare(rgb: np.ndarray, input_size: int = 518, keep_aspect: bool = True,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB (H x W x 3) -> normalised float32 CHW array at the network size.

    ``size`` = (height, width) overrides the network size computed from ``rgb`` (for an image decoded at
    reduced size, whose network size is that of its full-size original).
    """
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
