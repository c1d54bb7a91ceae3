"""Running a depth model: precision, flip test-time augmentation, one image or a batch.

Output is the model's raw relative disparity (non-negative, larger = nearer), float32. Depth
Anything 3 models predict depth: their output becomes disparity = 1 / depth, NaN (invalid) on sky
pixels (:func:`pseudodepth.da3.to_disparity`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .da3 import metres_from_disparity, network_focal, to_disparity
from .models import model_info
from .preprocess import prepare, upsample

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TTA_MODES = (None, "none", "flip")


def check_settings(precision: str, tta: str | None) -> None:
    """Fail early on a bad ``--precision`` / ``--tta`` value."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be 'flip' or none, got {tta!r}")


def autocast(device: torch.device | str, precision: str):
    """``torch.autocast`` for bf16/fp16, a no-op context for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.inference_mode()
def forward(model, pixel_values: torch.Tensor, precision: str = "fp32", tta: str | None = None) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, H, W) float32 disparity at the network resolution.

    ``tta="flip"`` averages the prediction with the un-flipped prediction of the flipped image
    (both halves run in one batch).
    """
    check_settings(precision, tta)
    x = pixel_values.to(next(model.parameters()).device)
    if tta == "flip":
        x = torch.cat([x, x.flip(-1)])
    with autocast(x.device, precision):
        out = model(pixel_values=x).predicted_depth.float()
    if is_da3(model):
        out = to_disparity(out, getattr(model, "module", model).head.sky)
    if tta == "flip":
        a, b = out.chunk(2)
        out = 0.5 * (a + b.flip(-1))
    return out


def fast_layout(model, precision: str):
    """``model`` with channels-last convolution weights when it runs in bf16 / fp16 (fp32: unchanged).

    oneDNN (and cuDNN) run reduced-precision convolutions faster in that layout: on the 2-core AMD EPYC
    (avx512_bf16, no AMX) the bf16 forward of V2-Small at 518 x 784 took 2.0 instead of 2.3 CPU-seconds;
    in fp32 it made no difference. The values are those of the default layout up to the order of the
    convolutions' sums. Converts the module in place and returns it.
    """
    if PRECISIONS[precision] is not None:
        model.to(memory_format=torch.channels_last)
    return model


def is_da3(model) -> bool:
    return model_info(model).version.startswith("da3")


def resize_method(model) -> str:
    """The preprocessing a model was trained with: ``da3`` for Depth Anything 3, else ``lower_bound``."""
    return "da3" if is_da3(model) else "lower_bound"


def align_corners(model) -> bool:
    """Bilinear upsampling of the output back to the image: ``align_corners=True`` except for V1."""
    return model_info(model).version != "v1"


def predict(model, rgb: np.ndarray, input_size: int | None = None, precision: str = "fp32", tta: str | None = None,
            keep_aspect: bool = True, focal: tuple[float, float] | None = None) -> np.ndarray:
    """Disparity (H x W float32) for one uint8 RGB image at the image's own resolution
    (``input_size`` None: the model's own, 518 or DA3's 504).

    ``focal`` (fx, fy in pixels of ``rgb``) turns a DA3METRIC prediction into metres (NaN on sky) before
    the upsampling: ``focal_net * output / 300`` (:func:`pseudodepth.da3.network_focal`)."""
    x = torch.from_numpy(prepare(rgb, input_size, keep_aspect, resize_method(model)))[None]
    out = forward(model, x, precision, tta)
    if focal is not None:
        out = metres_from_disparity(out, network_focal(*focal, rgb.shape[:2], tuple(x.shape[-2:])))
    return upsample(out, rgb.shape[:2], align_corners=align_corners(model))[0].cpu().numpy()
