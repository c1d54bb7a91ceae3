"""Preprocessing against a slow reference written from the official ``Resize`` / ``infer_image`` definition."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from pseudodepth.preprocess import network_size, prepare, upsample


def official_size_reference(h: int, w: int, size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """depth_anything_v2.util.transform.Resize.get_size with keep_aspect_ratio, lower_bound."""
    scale_h, scale_w = size / h, size / w
    if scale_w > scale_h:
        scale_h = scale_w
    else:
        scale_w = scale_h

    def constrain(x, min_val):
        y = int(np.round(x / multiple) * multiple)
        if y < min_val:
            y = int(math.ceil(x / multiple) * multiple)
        return y

    return constrain(scale_h * h, size), constrain(scale_w * w, size)


def official_prepare_reference(rgb: np.ndarray, size: int = 518) -> np.ndarray:
    """infer_image's preprocessing in float64, exactly as the official code runs it."""
    img = rgb.astype(np.float64) / 255.0
    h, w = official_size_reference(*rgb.shape[:2], size)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    img = (img - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1))).astype(np.float32)


def test_network_size_matches_reference_on_many_shapes():
    rng = np.random.default_rng(0)
    shapes = [(480, 640), (1362, 2048), (425, 640), (518, 518), (1, 1), (7, 3000), (4032, 6048), (375, 1242)]
    shapes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    for h, w in shapes:
        got = network_size(h, w)
        assert got == official_size_reference(h, w), (h, w)
        assert got[0] % 14 == 0 and got[1] % 14 == 0 and min(got) >= 518


def test_square_mode_and_other_input_sizes():
    assert network_size(480, 640, keep_aspect=False) == (518, 518)
    assert network_size(480, 640, input_size=256, keep_aspect=False) == (266, 266)
    assert network_size(480, 640, input_size=364) == official_size_reference(480, 640, 364)


@pytest.mark.parametrize("shape", [(37, 53), (480, 640), (700, 300), (5, 5)])
def test_prepare_matches_official_float64_pipeline(shape):
    rgb = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
    got, ref = prepare(rgb), official_prepare_reference(rgb)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.array_equal(got, ref)


def test_prepare_huge_image_is_handled():
    rgb = np.full((4032, 6048, 3), 128, np.uint8)
    out = prepare(rgb)
    assert out.shape == (3,) + official_size_reference(4032, 6048) == (3, 518, 770)
    assert np.allclose(out[:, 10, 10], (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-5)


def test_upsample_align_corners_reference():
    d = torch.rand(2, 5, 7)
    out = upsample(d, (9, 13), align_corners=True)
    # align_corners=True: output corners equal input corners, and each output pixel is the
    # bilinear blend at source coordinate y * (h_in - 1) / (h_out - 1)
    ref = torch.empty(2, 9, 13)
    for y in range(9):
        for x in range(13):
            sy, sx = y * 4 / 8, x * 6 / 12
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            fy, fx = sy - y0, sx - x0
            ref[:, y, x] = ((1 - fy) * (1 - fx) * d[:, y0, x0] + (1 - fy) * fx * d[:, y0, x1]
                            + fy * (1 - fx) * d[:, y1, x0] + fy * fx * d[:, y1, x1])
    assert torch.allclose(out, ref, atol=1e-6)
    assert upsample(d, (5, 7)) is d


@pytest.mark.parametrize("shape", [(425, 640), (1362, 2048), (300, 200), (518, 700)])
def test_prepare_tensor_matches_the_official_float64_pipeline(shape):
    from pseudodepth.preprocess import prepare_tensor

    rng = np.random.default_rng(shape[0])
    smooth = cv2.resize(rng.integers(0, 256, (shape[0] // 8 + 2, shape[1] // 8 + 2, 3), dtype=np.uint8),
                        (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    noisy = np.clip(smooth.astype(int) + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    ref = official_prepare_reference(noisy)
    got = prepare_tensor(torch.from_numpy(noisy), ref.shape[1:]).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 2e-3 and np.abs(got - ref).mean() < 1e-4
