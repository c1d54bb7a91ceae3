"""Per-pixel confidence of a pseudo-label: agreement of two predictions of the same image.

Two ways to get the second prediction ``b`` of an image whose prediction is ``a`` (the teacher's
disparity at the network input size, with ``--tta flip`` if asked):

- ``flip`` (``pseudodepth label --confidence flip``): ``b`` = the disparity of the horizontally
  flipped image, flipped back (``a`` without TTA; the label is the flip average with ``--tta flip``);
- ``scales`` (``--confidence scales``): ``b`` = the disparity of the same image prepared at the
  second input size :func:`second_input_size` (1.5 x the input size, to the nearest multiple of 14,
  ties up: 518 -> 784, DA3's 504 -> 756) by the same preprocessing from the source pixels, resized to
  ``a``'s network resolution with the project's bilinear resize of predictions
  (:func:`pseudodepth.preprocess.upsample`, the model's ``align_corners``); the same ``--tta`` is
  applied to both. The label is ``a``.

Then per image, over the pixels where both are finite:

1. least-squares alignment of ``b`` to ``a``: ``(s, t) = argmin sum (s * b + t - a)^2``
   (:func:`pseudodepth.metrics.fit_scale_shift`), so only the *relative* depth has to agree;
2. residual ``r = |a - (s * b + t)|``;
3. scale ``m = mean |a - median(a)|`` (the MiDaS scale of the affine-invariant loss), so the
   confidence does not depend on the disparity's units;
4. ``confidence = exp(-r / m)`` in (0, 1]: 1 where the two predictions agree exactly, 1/e where
   they differ by the image's mean absolute deviation. Pixels where either prediction is not finite
   get confidence 0.

Stored by ``label`` as a 16-bit PNG per image (``STORE/confidence/<source path>.png``,
``q = round(confidence * 65535)``, at the source's size), named in the manifest's ``confidence``
column. Training drops pseudo-labeled pixels below ``loss.confidence.min`` before the top-n% filter.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .preprocess import PATCH

METHODS = ("flip", "scales")
SCALE_FACTOR = 1.5
_AGREEMENT = ("confidence = exp(-|a - (s * b + t)| / mean|a - median(a)|); (s, t) = least squares of s * b + t "
              "onto a; 0 where either is not finite; a = prediction")
FORMULAS = {
    "flip": _AGREEMENT + ", b = prediction of the flipped image flipped back",
    "scales": _AGREEMENT + f" at the input size, b = prediction at {SCALE_FACTOR:g} x the input size (nearest "
              "multiple of 14, ties up) resized bilinearly to a's resolution",
}
FORMULA = FORMULAS["flip"]
PNG_MAX = 65535


def second_input_size(input_size: int) -> int:
    """The ``scales`` method's second input size: ``SCALE_FACTOR * input_size`` to the nearest multiple of 14
    (ties up), at least 14."""
    return max(PATCH, int(math.floor(SCALE_FACTOR * input_size / PATCH + 0.5)) * PATCH)


def agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Confidence maps (B, H, W) in [0, 1] from two prediction batches (B, H, W); see the module docstring."""
    from .metrics import fit_scale_shift

    out = torch.zeros(a.shape, dtype=torch.float32)
    for i in range(a.shape[0]):
        ai, bi = a[i].double().cpu().numpy(), b[i].double().cpu().numpy()
        ok = np.isfinite(ai) & np.isfinite(bi)
        if ok.sum() < 2:
            continue
        s, t = fit_scale_shift(bi[ok], ai[ok])
        m = float(np.mean(np.abs(ai[ok] - np.median(ai[ok]))))
        with np.errstate(invalid="ignore", over="ignore"):
            r = np.abs(ai - (s * bi + t))
            conf = np.exp(-r / m) if m > 0 else (r == 0).astype(np.float64)
        out[i] = torch.from_numpy(np.where(ok, conf, 0.0).astype(np.float32))
    return out


def encode(confidence: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> uint16 PNG values ``round(c * 65535)`` (non-finite -> 0)."""
    c = np.nan_to_num(np.asarray(confidence, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.rint(np.clip(c, 0.0, 1.0) * PNG_MAX).astype(np.uint16)


def decode(q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float64) / PNG_MAX).astype(np.float32)
