"""Per-pixel confidence of a pseudo-label: agreement of two predictions of the same image.

``flip`` (``pseudodepth label --confidence flip``): ``a`` = the teacher's disparity of the image,
``b`` = its disparity of the horizontally flipped image, flipped back. Per image, over the pixels
where both are finite:

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

import numpy as np
import torch

METHODS = ("flip",)
FORMULA = ("confidence = exp(-|a - (s * b + t)| / mean|a - median(a)|); a = prediction, b = prediction of the "
           "flipped image flipped back, (s, t) = least squares of s * b + t onto a; 0 where either is not finite")
PNG_MAX = 65535


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
