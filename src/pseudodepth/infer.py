"""Running a depth model: precision, flip test-time augmentation, one image or a batch.

Output is the model's raw relative disparity (non-negative, larger = nearer), float32. Depth
Anything 3 models predict depth: their output becomes disparity = 1 / depth, NaN (invalid) on sky
pixels (:func:`pseudodepth.da3.to_disparity`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

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


def blocked_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention, softmax(q k^T * scaling) v, for one image, one head and at most
    ``QUERY_BLOCK`` queries at a time (a ``transformers`` attention function: (B, H, N, D) in, (B, N, H, D) out).

    On a CPU in bf16 the two products then run as bf16 matrix products with the scores in the cache;
    PyTorch's fused CPU attention computes bf16 in float32 and is no faster than in fp32. Measured on
    the 2-core AMD EPYC (avx512_bf16, no AMX), V2-Small's attention at 4 x 6 heads x 2073 tokens: 158
    instead of 214 ms. The numerics are those of transformers' eager attention in bf16 (bf16 scores,
    float32 softmax rounded to bf16). Anything else (fp32 or fp16, a GPU, a mask, dropout in training)
    goes to PyTorch's fused attention.
    """
    if (attention_mask is not None or (dropout and module.training) or query.device.type != "cpu"
            or query.dtype != torch.bfloat16):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                               dropout=dropout, **kwargs)
    b_, h_, n, d = query.shape
    out = query.new_empty(b_, n, h_, d)
    with torch.autocast("cpu", enabled=False):
        for b in range(b_):
            for h in range(h_):
                keys_t = key[b, h].transpose(0, 1)
                for s in range(0, n, QUERY_BLOCK):
                    scores = torch.matmul(query[b, h, s:s + QUERY_BLOCK], keys_t) * scaling
                    out[b, s:s + QUERY_BLOCK, h] = torch.matmul(torch.softmax(scores, -1), value[b, h])
    return out, None


QUERY_BLOCK = 512
BLOCKED_ATTENTION = "pseudodepth_blocked"
AttentionInterface.register(BLOCKED_ATTENTION, blocked_attention)


def fast_layout(model, precision: str):
    """``model`` set up for fast reduced-precision inference (fp32: unchanged): channels-last convolution
    weights, and for a transformers DINOv2 encoder :func:`blocked_attention` (on a CPU in bf16; elsewhere it
    hands over to PyTorch's fused attention).

    oneDNN (and cuDNN) run reduced-precision convolutions faster in that layout: on the 2-core AMD EPYC
    (avx512_bf16, no AMX) the bf16 forward of V2-Small at 518 x 784 took 2.0 instead of 2.3 CPU-seconds;
    in fp32 it made no difference. The values are those of the default layout up to the order of the
    convolutions' sums. Converts the module in place and returns it.
    """
    if PRECISIONS[precision] is not None:
        model.to(memory_format=torch.channels_last)
        config = getattr(getattr(getattr(model, "module", model), "backbone", None), "config", None)
        if getattr(config, "model_type", None) == "dinov2" and config._attn_implementation == "sdpa":
            config._attn_implementation = BLOCKED_ATTENTION
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
