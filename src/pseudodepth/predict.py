"""``pseudodepth predict``: depth for a few images, as coloured PNGs and optional raw ``.npy``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import infer
from .colorize import colorize
from .da3 import FocalError, FocalSettings, check_focal
from .imageio import ImageError, read_rgb, write_png
from .models import is_metric, load_model, model_info


def predict_files(model_spec: str, images: list[str | Path], out: str | Path, *, raw: bool = False,
                  input_size: int | None = None, precision: str = "fp32", tta: str | None = None, device: str = "cpu",
                  model=None, progress: bool = True, version: str | None = None,
                  max_depth: float | None = None, focal: FocalSettings | None = None) -> tuple[list[Path], list[str]]:
    """Write ``out/<stem>.png`` (Spectral_r, near = warm) and with ``raw`` ``out/<stem>.npy`` per image.

    The ``.npy`` is the model's output at the image's size: relative disparity, or metres for a metric
    model (``max_depth`` loads the SPEC as one; official metric checkpoints are recognised by name) and
    for DA3METRIC with ``focal`` (required for it: its metres need the focal length; NaN on sky).

    Returns (written files, one-line errors for images that could not be read). Bad images are
    reported and skipped; the others are still predicted.
    """
    infer.check_settings(precision, tta)
    if model is None:  # a model of our own: set up for fast reduced precision (a caller's model stays as it is)
        model = infer.fast_layout(load_model(model_spec, version=version, device=device, max_depth=max_depth),
                                  precision)
    check_focal(model_info(model).version, model_spec, focal)
    metric = is_metric(model) or focal is not None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    stems = [Path(p).stem for p in images]
    for path in tqdm(images, desc="predict", unit="img", disable=not progress):
        stem = Path(path).stem if stems.count(Path(path).stem) == 1 else Path(path).name
        try:
            rgb = read_rgb(path)
            fxy = focal.for_image(str(path), Path(path).name) if focal is not None else None
        except ImageError as err:
            errors.append(str(err))
            continue
        except FocalError as err:
            errors.append(f"{path}: {err}")
            continue
        disparity = infer.predict(model, rgb, input_size, precision, tta, focal=fxy)
        if metric:  # colour by inverse depth: near = warm, like the relative models
            with np.errstate(divide="ignore", invalid="ignore"):
                write_png(out / f"{stem}.png", colorize(1.0 / disparity, valid=np.isfinite(disparity) & (disparity > 0)))
        else:
            write_png(out / f"{stem}.png", colorize(disparity))
        written.append(out / f"{stem}.png")
        if raw:
            np.save(out / f"{stem}.npy", disparity.astype(np.float32))
            written.append(out / f"{stem}.npy")
    return written, errors
