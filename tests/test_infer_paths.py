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


def ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling) v from its definition, one image, head and query at a time, in float64;
    (B, H, N, D) in, (B, N, H, D) out."""
    q, k, v = q.double(), k.double(), v.double()
    b_, h_, n, d = q.shape
    out = torch.zeros(b_, n, h_, d, dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            for i in range(n):
                s = torch.tensor([float(q[b, h, i] @ k[b, h, j]) * scaling for j in range(k.shape[2])],
                                 dtype=torch.float64)
                p = torch.exp(s - s.max())
                out[b, i, h] = (p / p.sum()) @ v[b, h]
    return out


@pytest.mark.parametrize("n", [1, 7, 530])  # one token; a single block; two blocks, the last one partial
def test_blocked_attention_matches_the_definition_and_transformers_eager_in_bf16(n):
    from transformers.models.dinov2.modeling_dinov2 import eager_attention_forward

    from pseudodepth.infer import QUERY_BLOCK, blocked_attention

    assert n <= QUERY_BLOCK or n % QUERY_BLOCK
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, n, 3, 2, 8, generator=g) * 2  # (B, N, q/k/v, H, D): strided q, k, v as transformers makes them
    q, k, v = (x[:, :, i].transpose(1, 2).bfloat16() for i in range(3))
    module = torch.nn.Module().eval()
    out, weights = blocked_attention(module, q, k, v, None, scaling=8 ** -0.5)
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == (2, n, 2, 8)
    ref = ref_attention(q, k, v, 8 ** -0.5)
    assert float((out.double() - ref).norm() / ref.norm()) < 3e-2  # bf16 rounding of scores and weights
    eager, _ = eager_attention_forward(module, q, k, v, None, scaling=8 ** -0.5)  # the same numerics
    assert float((out.double() - eager.double()).norm() / eager.double().norm()) < 1e-3
    big = torch.full_like(q, 30.0)  # huge scores: the softmax must not overflow
    assert torch.isfinite(blocked_attention(module, big, big, v, None, scaling=1.0)[0]).all()


def test_blocked_attention_hands_fp32_and_masks_to_pytorch_fused_attention():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pseudodepth.infer import blocked_attention

    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    module = torch.nn.Module().eval()
    assert torch.equal(blocked_attention(module, q, k, v, None, scaling=0.3)[0],
                       sdpa_attention_forward(module, q, k, v, None, scaling=0.3)[0])
    mask = torch.ones(1, 2, 5, 5, dtype=torch.bool).bfloat16()
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    assert torch.equal(blocked_attention(module, qb, kb, vb, mask, scaling=0.3)[0],
                       sdpa_attention_forward(module, qb, kb, vb, mask, scaling=0.3)[0])


def test_fast_layout_uses_blocked_attention_in_bf16_only():
    from pseudodepth.infer import BLOCKED_ATTENTION, fast_layout

    assert fast_layout(load_model("da-v2-tiny"), "fp32").backbone.config._attn_implementation == "sdpa"
    fast = fast_layout(load_model("da-v2-tiny"), "bf16")
    layers = [m for m in fast.modules() if type(m).__name__ == "Dinov2SelfAttention"]
    assert layers and all(m.config._attn_implementation == BLOCKED_ATTENTION for m in layers)
    x = torch.randn(2, 3, 28 * 3, 14 * 5, generator=torch.Generator().manual_seed(0))
    ref = forward(load_model("da-v2-tiny"), x, "fp32")
    assert float((forward(fast, x, "bf16") - ref).norm() / ref.norm()) < 1e-2
