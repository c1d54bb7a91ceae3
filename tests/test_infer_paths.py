"""``predict``'s last step and precisions: V1 and V2 upsample the network output differently (V2:
``align_corners=True`` as in ``infer_image``; V1: ``False`` as in V1's ``run.py``), checked against a
bilinear interpolation written out with loops; fp16 runs in half precision and stays close to fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pseudodepth.infer import forward, predict
from pseudodepth.models import load_model, model_info
from pseudodepth.preprocess import prepare


def ref_bilinear(src: np.ndarray, height: int, width: int, align_corners: bool) -> np.ndarray:
    """Bilinear resize of a 2-D map, source positions as PyTorch defines them for each mode."""
    h, w = src.shape

    def source(i: int, n_out: int, n_in: int) -> tuple[int, int, float]:
        if align_corners:
            x = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(x)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), x - i0

    out = np.zeros((height, width))
    for y in range(height):
        y0, y1, fy = source(y, height, h)
        for x in range(width):
            x0, x1, fx = source(x, width, w)
            top = (1 - fx) * src[y0, x0] + fx * src[y0, x1]
            bottom = (1 - fx) * src[y1, x0] + fx * src[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize(("preset", "align_corners"), [("da-v1-tiny", False), ("da-v2-tiny", True)])
def test_output_is_upsampled_as_the_official_code_of_its_version(preset, align_corners):
    model = load_model(preset)
    assert model_info(model).version == preset[3:5]
    rgb = np.random.default_rng(4).integers(0, 256, (40, 61, 3), dtype=np.uint8)
    net = forward(model, torch.from_numpy(prepare(rgb))[None])[0].double().numpy()
    assert net.shape != (40, 61)
    expected = ref_bilinear(net, 40, 61, align_corners)
    other = ref_bilinear(net, 40, 61, not align_corners)
    got = predict(model, rgb)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert np.abs(got - other).max() > 1e-3 * np.abs(expected).max()  # the two modes are told apart


def test_fp16_runs_in_half_precision_and_stays_close_to_fp32(tiny_model):
    rgb = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    x = torch.from_numpy(prepare(rgb))[None]
    seen = []
    hook = tiny_model.backbone.encoder.layer[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        d32 = predict(tiny_model, rgb)
        d16 = predict(tiny_model, rgb, precision="fp16")
        out16 = forward(tiny_model, x, precision="fp16")
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.float16, torch.float16]
    assert d16.dtype == np.float32 and out16.dtype == torch.float32  # returned as float32
    assert not np.array_equal(d16, d32)
    assert np.linalg.norm(d16 - d32) / np.linalg.norm(d32) < 0.01


def test_fast_layout_is_channels_last_in_reduced_precision_only_and_keeps_the_values():
    from pseudodepth.infer import fast_layout

    rgb = np.random.default_rng(6).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    x = torch.from_numpy(prepare(rgb))[None]
    ref = load_model("da-v2-tiny")
    assert fast_layout(load_model("da-v2-tiny"), "fp32").state_dict().keys() == ref.state_dict().keys()
    assert all(p.is_contiguous() for p in fast_layout(load_model("da-v2-tiny"), "fp32").parameters())
    fast = fast_layout(load_model("da-v2-tiny"), "bf16")
    convs = [p for p in fast.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    for precision, tol in (("fp32", 1e-5), ("bf16", 1e-2)):  # same values up to the order of the sums
        a, b = forward(ref, x, precision), forward(fast, x, precision)
        assert float((a - b).norm() / a.norm()) < tol, precision
