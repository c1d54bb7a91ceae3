"""Coloured depth maps like Depth Anything's: ``Spectral_r`` on min-max normalised disparity (near = warm)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def _lut(cmap: str) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colorize(disparity: np.ndarray, valid: np.ndarray | None = None, cmap: str = "Spectral_r") -> np.ndarray:
    """H x W disparity -> H x W x 3 uint8 RGB. Larger disparity (nearer) maps to the warm end.

    Normalisation is min-max over finite (and ``valid``) pixels; invalid pixels are black.
    """
    d = np.asarray(disparity, dtype=np.float64)
    ok = np.isfinite(d) if valid is None else (np.isfinite(d) & valid)
    out = np.zeros(d.shape + (3,), np.uint8)
    if not ok.any():
        return out
    lo, hi = d[ok].min(), d[ok].max()
    scaled = np.zeros_like(d) if hi <= lo else (d - lo) / (hi - lo)
    idx = np.clip(np.nan_to_num(scaled) * 255, 0, 255).astype(np.uint8)
    out[ok] = _lut(cmap)[idx[ok]]
    return out
