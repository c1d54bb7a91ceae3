"""pseudodepth.losses against slow references written from the definitions (numpy / loops)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from pseudodepth.losses import (
    affine_invariant_loss,
    apply_cutmix,
    cutmix_box,
    cutmix_loss,
    cutmix_masks,
    depth_edge_mask,
    drop_top_losses,
    feature_alignment_loss,
    filter_dropped,
    filtered_mean,
    gradient_matching_loss,
    labeled_loss,
    ls_affine_loss,
    normalize_ssi,
    pseudo_label_loss,
    pseudo_label_terms,
    scale_shift_ls,
)

EPS = 1e-6

# --------------------------------------------------------------------------- references


def ref_normalize(d: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """Per image: lower median, mean absolute deviation (>= EPS); invalid pixels 0."""
    out, ts, ss = np.zeros_like(d), [], []
    for b in range(d.shape[0]):
        values = sorted(d[b][valid[b]].tolist())
        if not values:
            ts.append(0.0), ss.append(EPS)
            continue
        t = values[(len(values) - 1) // 2]
        s = max(sum(abs(x - t) for x in values) / len(values), EPS)
        for i in range(d.shape[1]):
            for j in range(d.shape[2]):
                if valid[b, i, j]:
                    out[b, i, j] = (d[b, i, j] - t) / s
        ts.append(t), ss.append(s)
    return out, ts, ss


def ref_masked_mean(loss_map: np.ndarray, mask: np.ndarray) -> tuple[list[float], list[bool]]:
    means, has = [], []
    for b in range(loss_map.shape[0]):
        values = loss_map[b][mask[b]]
        means.append(float(values.mean()) if values.size else 0.0)
        has.append(bool(values.size))
    return means, has


def ref_mean_over_images(per_image: list[float], has: list[bool]) -> float:
    chosen = [x for x, h in zip(per_image, has) if h]
    return sum(chosen) / len(chosen) if chosen else 0.0


def ref_ssi_map(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    valid = valid & np.isfinite(target)
    pred_hat = ref_normalize(pred, valid)[0]
    target_hat = ref_normalize(np.where(valid, target, 0), valid)[0]
    return np.abs(pred_hat - target_hat) * valid, pred_hat, target_hat, valid


def ref_gradient_loss(pred_hat: np.ndarray, target_hat: np.ndarray, mask: np.ndarray, scales: int) -> list[float]:
    """MiDaS GradientLoss, image-based, with explicit loops over pixels."""
    per_image = []
    for b in range(pred_hat.shape[0]):
        total = 0.0
        for k in range(scales):
            step = 2**k
            r = (pred_hat[b] - target_hat[b])[::step, ::step]
            m = mask[b][::step, ::step]
            grad_sum = 0.0
            for i in range(r.shape[0]):
                for j in range(r.shape[1]):
                    if j + 1 < r.shape[1] and m[i, j] and m[i, j + 1]:
                        grad_sum += abs(r[i, j + 1] - r[i, j])
                    if i + 1 < r.shape[0] and m[i, j] and m[i + 1, j]:
                        grad_sum += abs(r[i + 1, j] - r[i, j])
            count = int(m.sum())
            total += grad_sum / count if count else 0.0
        per_image.append(total)
    return per_image


def ref_drop_top(loss_map: np.ndarray, valid: np.ndarray, ratio: float) -> np.ndarray:
    """v = k-th smallest valid loss, k = ceil((1 - ratio) * (n - 1)) + 1; keep L < v (L <= v if empty)."""
    keep = np.zeros_like(valid)
    for b in range(loss_map.shape[0]):
        values = np.sort(loss_map[b][valid[b]])
        n = values.size
        if n == 0:
            continue
        if ratio == 0:
            keep[b] = valid[b]
            continue
        v = values[math.ceil((1 - ratio) * (n - 1)) + 1 - 1]
        keep[b] = valid[b] & (loss_map[b] < v)
        if not keep[b].any():
            keep[b] = valid[b] & (loss_map[b] <= v)
    return keep


def ref_pseudo_label_loss(pred, target, valid, ratio, gm_weight=2.0, scales=4) -> tuple[float, float, float, float]:
    loss_map, pred_hat, target_hat, valid = ref_ssi_map(pred, target, valid)
    keep = ref_drop_top(loss_map, valid, ratio)
    ssi, has = ref_masked_mean(loss_map, keep)
    gm = ref_gradient_loss(pred_hat, target_hat, keep, scales)
    per_image = [s + gm_weight * g for s, g in zip(ssi, gm)]
    dropped = 1 - keep.sum() / valid.sum() if valid.sum() else 0.0
    return (
        ref_mean_over_images(per_image, has),
        ref_mean_over_images(ssi, has),
        ref_mean_over_images(gm, has),
        dropped,
    )


# --------------------------------------------------------------------------- fixtures


def random_batch(shape=(3, 9, 11), seed=0, valid_share=0.8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g, dtype=dtype)
    target = torch.rand(shape, generator=g, dtype=dtype)
    valid = torch.rand(shape, generator=g) < valid_share
    return pred, target, valid


def edge_case_batch(dtype=torch.float64):
    """Images: random; all invalid; constant target; one valid pixel; NaN/inf targets; two pixels."""
    pred, target, valid = random_batch((6, 7, 13), seed=1, dtype=dtype)
    valid[1] = False
    target[2] = 0.25
    valid[3] = False
    valid[3, 2, 5] = True
    target[4, 0, :4] = float("nan")
    target[4, 3, 3] = float("inf")
    target[4, 5, 5] = -float("inf")
    valid[5] = False
    valid[5, 1, 1] = valid[5, 1, 2] = True
    return pred, target, valid


def np_(*tensors):
    return [t.detach().numpy() for t in tensors]


# --------------------------------------------------------------------------- normalisation and ssi


@pytest.mark.parametrize("make", [random_batch, edge_case_batch])
def test_normalize_ssi_matches_reference(make):
    pred, target, valid = make()
    for d in (pred, target):
        d_hat, t, s = normalize_ssi(d, valid)
        finite_valid = (valid & torch.isfinite(d)).numpy()
        ref_hat, ref_t, ref_s = ref_normalize(np.where(finite_valid, d.numpy(), 0), finite_valid)
        np.testing.assert_allclose(d_hat.numpy(), ref_hat, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(t.numpy(), ref_t, rtol=1e-12)
        np.testing.assert_allclose(s.numpy(), ref_s, rtol=1e-10)


def test_normalize_ssi_uses_lower_median_like_torch_median():
    d = torch.tensor([[[4.0, 1.0, 3.0, 2.0]]])
    _, t, s = normalize_ssi(d, torch.ones_like(d, dtype=torch.bool))
    assert t.item() == torch.median(d).item() == 2.0
    assert s.item() == pytest.approx((2 + 1 + 1 + 0) / 4)


def test_normalize_ssi_constant_map_is_zero_not_nan():
    d = torch.full((2, 5, 5), 3.0, requires_grad=True)
    d_hat, t, s = normalize_ssi(d, torch.ones(2, 5, 5, dtype=torch.bool))
    assert torch.equal(d_hat, torch.zeros_like(d_hat)) and torch.equal(t, torch.full((2,), 3.0))
    d_hat.sum().backward()
    assert torch.isfinite(d.grad).all()


@pytest.mark.parametrize("make", [random_batch, edge_case_batch])
def test_affine_invariant_loss_matches_reference(make):
    pred, target, valid = make()
    ref_map, _, _, ref_valid = ref_ssi_map(*np_(pred, target, valid))
    loss_map = affine_invariant_loss(pred, target, valid, reduction="none")
    np.testing.assert_allclose(loss_map.numpy(), ref_map, atol=1e-10)
    expected = ref_mean_over_images(*ref_masked_mean(ref_map, ref_valid))
    assert affine_invariant_loss(pred, target, valid).item() == pytest.approx(expected, rel=1e-10)


def test_affine_invariant_loss_is_invariant_to_scale_and_shift():
    pred, target, valid = random_batch()
    base = affine_invariant_loss(pred, target, valid)
    moved = affine_invariant_loss(3.5 * pred - 2.0, 0.1 * target + 7.0, valid)
    assert moved.item() == pytest.approx(base.item(), rel=1e-9)
    assert affine_invariant_loss(2 * target + 1, target, valid).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("make", [random_batch, edge_case_batch])
def test_scale_shift_ls_matches_lstsq(make):
    pred, target, valid = make()
    s, t = scale_shift_ls(pred, target, valid)
    p, y, v = np_(pred, target, valid & torch.isfinite(target))
    for b in range(p.shape[0]):
        x, z = p[b][v[b]], y[b][v[b]]
        if x.size >= 2 and np.ptp(x) > 0:
            ref_s, ref_t = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), z, rcond=None)[0]
        else:  # scale undetermined: documented fallback
            ref_s, ref_t = 0.0, (z.mean() if z.size else 0.0)
        assert s[b].item() == pytest.approx(ref_s, abs=1e-10)
        assert t[b].item() == pytest.approx(ref_t, abs=1e-10)


def test_scale_shift_ls_constant_prediction_in_float32():
    pred = torch.full((1, 37, 41), 0.1)  # mean of many 0.1 in float32 is not exactly 0.1
    target = torch.rand(1, 37, 41)
    s, t = scale_shift_ls(pred, target, torch.ones_like(pred, dtype=torch.bool))
    assert s.item() == 0 and t.item() == pytest.approx(target.mean().item(), rel=1e-5)


@pytest.mark.parametrize("make", [random_batch, edge_case_batch])
def test_ls_affine_loss_matches_reference(make):
    pred, target, valid = make()
    p, y, v = np_(pred, target, valid & torch.isfinite(target))
    per_image, has = [], []
    for b in range(p.shape[0]):
        x, z = p[b][v[b]], y[b][v[b]]
        has.append(bool(x.size))
        if x.size >= 2 and np.ptp(x) > 0:
            solution, residual, *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), z, rcond=None)
            per_image.append(float(np.mean((solution[0] * x + solution[1] - z) ** 2)))
        else:
            per_image.append(float(np.mean((z - z.mean()) ** 2)) if z.size else 0.0)
    expected = ref_mean_over_images(per_image, has)
    assert ls_affine_loss(pred, target, valid).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- gradient matching


@pytest.mark.parametrize("make", [random_batch, edge_case_batch])
@pytest.mark.parametrize("scales", [1, 4])
def test_gradient_matching_loss_matches_loops(make, scales):
    pred, target, valid = make()
    keep = torch.rand(valid.shape, generator=torch.Generator().manual_seed(5)) < 0.85
    _, pred_hat, target_hat, ref_valid = ref_ssi_map(*np_(pred, target, valid))
    for keep_mask in (None, keep):
        mask = ref_valid if keep_mask is None else ref_valid & keep_mask.numpy()
        ref = ref_gradient_loss(pred_hat, target_hat, mask, scales)
        got = gradient_matching_loss(
            torch.from_numpy(pred_hat), torch.from_numpy(target_hat), torch.from_numpy(ref_valid), scales, keep_mask,
            reduction="none",
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
        mean = gradient_matching_loss(
            torch.from_numpy(pred_hat), torch.from_numpy(target_hat), torch.from_numpy(ref_valid), scales, keep_mask
        )
        assert mean.item() == pytest.approx(ref_mean_over_images(ref, mask.any((1, 2)).tolist()), rel=1e-10)


def test_gradient_matching_loss_ignores_nan_target_and_values_at_invalid_pixels():
    pred, target, valid = random_batch((2, 8, 8))
    reference = gradient_matching_loss(pred, target, valid)
    noisy_pred, noisy_target = pred.clone(), target.clone()
    noisy_pred[~valid] = 1e6
    noisy_target[~valid] = float("nan")
    assert gradient_matching_loss(noisy_pred, noisy_target, valid).item() == pytest.approx(reference.item())


# --------------------------------------------------------------------------- top-loss filter


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.2, 0.5])
@pytest.mark.parametrize("shape", [(4, 9, 11), (1, 1, 1), (2, 1, 7), (3, 31, 17)])
def test_drop_top_losses_matches_reference(ratio, shape):
    g = torch.Generator().manual_seed(3)
    loss_map = torch.rand(shape, generator=g)
    valid = torch.rand(shape, generator=g) < torch.linspace(0, 1, shape[0])[:, None, None]  # mixed counts
    keep = drop_top_losses(loss_map, valid, ratio)
    np.testing.assert_array_equal(keep.numpy(), ref_drop_top(loss_map.numpy(), valid.numpy(), ratio))


def test_drop_top_losses_edge_cases():
    loss_map = torch.rand(5, 6, 7, generator=torch.Generator().manual_seed(4))
    valid = torch.ones(5, 6, 7, dtype=torch.bool)
    valid[0] = False  # nothing valid: nothing kept
    valid[1] = False
    valid[1, 2, 3] = True  # one valid pixel: kept
    loss_map[2] = 0.7  # constant losses: all kept
    loss_map[3, 0, :3] = 0.0  # ties at the smallest values
    keep = drop_top_losses(loss_map, valid, 0.1)
    assert not keep[0].any()
    assert keep[1].sum() == 1 and keep[1, 2, 3]
    assert keep[2].all()
    assert keep[3].sum() == math.ceil(0.9 * 41)
    assert not (keep & ~valid).any()
    np.testing.assert_array_equal(keep.numpy(), ref_drop_top(loss_map.numpy(), valid.numpy(), 0.1))
    assert torch.equal(drop_top_losses(loss_map, valid, 0.0), valid)
    with pytest.raises(ValueError, match="ratio"):
        drop_top_losses(loss_map, valid, 1.0)


def test_drop_top_losses_keeps_nan_losses_visible():
    loss_map = torch.rand(1, 10, 10)
    loss_map[0, 0, 0] = float("nan")
    keep = drop_top_losses(loss_map, torch.ones(1, 10, 10, dtype=torch.bool), 0.1)
    assert keep[0, 0, 0] and torch.isnan(filtered_mean(loss_map, keep))


@pytest.mark.parametrize("ratio", [0.1, 0.2])
def test_drop_top_losses_agrees_with_torch_quantile(ratio):
    g = torch.Generator().manual_seed(6)
    for size in [(3, 10, 10), (2, 13, 29), (4, 33, 31)]:
        loss_map = torch.rand(size, generator=g, dtype=torch.float64)
        valid = torch.rand(size, generator=g) < 0.9
        keep = drop_top_losses(loss_map, valid, ratio)
        for b in range(size[0]):
            values = loss_map[b][valid[b]]
            v = torch.quantile(values, 1 - ratio)
            differ = keep[b] ^ (valid[b] & (loss_map[b] < v))
            # only allowed at ties with v (float rounding of the interpolation)
            assert torch.allclose(loss_map[b][differ], v.expand(int(differ.sum())), rtol=1e-12, atol=0)


def test_drop_top_losses_on_an_image_larger_than_torch_quantile_allows():
    loss_map = torch.rand(1, 4100, 4100, generator=torch.Generator().manual_seed(7))  # 16.8M > 2**24
    valid = torch.ones_like(loss_map, dtype=torch.bool)
    valid[0, :10] = False
    keep = drop_top_losses(loss_map, valid, 0.1)
    values = loss_map[valid].numpy()
    k = math.ceil(0.9 * (values.size - 1)) + 1
    v = np.partition(values, k - 1)[k - 1]
    assert torch.equal(keep, valid & (loss_map < float(v)))


def large_batch_with_hard_rows():
    """Images above the size where selection switches from kthvalue to sample bracketing."""
    g = torch.Generator().manual_seed(17)
    shape = (6, 190, 191)  # 36290 pixels > 4 * 8192
    values = torch.rand(shape, generator=g)
    valid = torch.rand(shape, generator=g) < torch.tensor([0.9, 0.3, 1.0, 0.9, 0.0, 0.9])[:, None, None]
    values[1] = (values[1] * 8).floor()  # heavy ties
    values[2] = 0.5  # constant: the bracket cannot separate, exact fallback
    values[3, :, :20] = -1.0  # a block of ties at the small end
    valid[5] = False
    valid[5, 7, :3] = True  # three valid pixels
    return values, valid


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.6])
def test_drop_top_losses_large_images_match_reference(ratio):
    values, valid = large_batch_with_hard_rows()
    keep = drop_top_losses(values, valid, ratio)
    np.testing.assert_array_equal(keep.numpy(), ref_drop_top(values.numpy(), valid.numpy(), ratio))


def test_normalize_ssi_large_images_median_and_gradient_match_torch_median():
    values, valid = large_batch_with_hard_rows()
    values.requires_grad_(True)
    d_hat, t, s = normalize_ssi(values, valid)
    for b in range(values.shape[0]):
        selected = values[b][valid[b]]
        expected = torch.median(selected) if selected.numel() else torch.tensor(0.0)
        assert t[b].item() == expected.item()
    # the gradient reaches the median pixel, like torch.median's
    (grad,) = torch.autograd.grad(t[0], values)
    (ref_grad,) = torch.autograd.grad(torch.median(values[0][valid[0]]), values)
    assert torch.equal(grad, ref_grad)


def test_drop_top_losses_confidence_and_edges():
    g = torch.Generator().manual_seed(8)
    loss_map = torch.rand(2, 12, 12, generator=g)
    valid = torch.rand(2, 12, 12, generator=g) < 0.9
    confidence = torch.rand(2, 12, 12, generator=g)
    keep = drop_top_losses(loss_map, valid, 0.2, confidence=confidence, min_confidence=0.3)
    expected = ref_drop_top(loss_map.numpy(), (valid & (confidence >= 0.3)).numpy(), 0.2)
    np.testing.assert_array_equal(keep.numpy(), expected)
    bool_confidence = confidence >= 0.3
    assert torch.equal(drop_top_losses(loss_map, valid, 0.2, confidence=bool_confidence), keep)

    edges = torch.zeros_like(valid)
    edges[:, :, 5:7] = True
    loss_map[edges] += 10  # edges have larger losses; a single ranking would drop most of them
    keep = drop_top_losses(loss_map, valid, 0.2, edges=edges)
    on_edges = ref_drop_top(loss_map.numpy(), (valid & edges).numpy(), 0.2)
    off_edges = ref_drop_top(loss_map.numpy(), (valid & ~edges).numpy(), 0.2)
    np.testing.assert_array_equal(keep.numpy(), on_edges | off_edges)
    assert keep[edges].any()


def test_depth_edge_mask_marks_both_sides_of_a_jump():
    depth = torch.zeros(1, 4, 6)
    depth[0, :, 3:] = 1.0
    valid = torch.ones_like(depth, dtype=torch.bool)
    valid[0, 0, 2] = False  # an invalid neighbour does not make an edge
    edges = depth_edge_mask(depth, valid, threshold=0.5)
    expected = torch.zeros_like(valid)
    expected[0, :, 2:4] = True
    expected[0, 0, 2:4] = False
    assert torch.equal(edges, expected)


def test_filtered_mean_matches_reference():
    pred, target, valid = edge_case_batch()
    loss_map = affine_invariant_loss(pred, target, valid, reduction="none")
    keep = drop_top_losses(loss_map, valid & torch.isfinite(target), 0.2)
    expected = ref_mean_over_images(*ref_masked_mean(loss_map.numpy(), keep.numpy()))
    assert filtered_mean(loss_map, keep).item() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- combined losses


@pytest.mark.parametrize("ratio", [0.0, 0.2])
@pytest.mark.parametrize("make", [random_batch, edge_case_batch])
def test_pseudo_label_loss_matches_reference(ratio, make):
    pred, target, valid = make()
    loss, stats = pseudo_label_loss(pred, target, valid, drop_ratio=ratio, gm_weight=2.0)
    ref_loss, ref_ssi, ref_gm, ref_dropped = ref_pseudo_label_loss(*np_(pred, target, valid), ratio)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-9)
    assert stats["ssi"] == pytest.approx(ref_ssi, rel=1e-9)
    assert stats["gm"] == pytest.approx(ref_gm, rel=1e-9)
    assert stats["dropped_share"] == pytest.approx(ref_dropped)
    assert set(stats) == {"loss", "ssi", "gm", "dropped_share"}
    assert all(isinstance(x, float) for x in stats.values())


def test_labeled_loss_is_the_unfiltered_pseudo_label_loss():
    pred, target, valid = random_batch()
    loss, stats = labeled_loss(pred, target, valid, gm_weight=0.5)
    assert loss.item() == pytest.approx(ref_pseudo_label_loss(*np_(pred, target, valid), 0.0, 0.5)[0], rel=1e-9)
    assert stats["dropped_share"] == 0.0


def test_pseudo_label_loss_extras_run_and_drop_more():
    pred, target, valid = random_batch((2, 16, 16))
    base = pseudo_label_loss(pred, target, valid)[1]["dropped_share"]
    confidence = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(9))
    with_confidence = pseudo_label_loss(pred, target, valid, confidence=confidence, min_confidence=0.5)[1]
    assert with_confidence["dropped_share"] > base + 0.3  # edge_aware: test_edge_aware_pseudo_label_terms_match_reference


@pytest.mark.parametrize(
    "loss_fn",
    [
        affine_invariant_loss,
        ls_affine_loss,
        lambda p, t, v: pseudo_label_loss(p, t, v, drop_ratio=0.2)[0],
        lambda p, t, v: labeled_loss(p, t, v)[0],
        lambda p, t, v: gradient_matching_loss(p, t, v),
    ],
)
def test_gradients_are_finite_and_correct(loss_fn):
    pred, target, valid = edge_case_batch()
    pred.requires_grad_(True)
    loss_fn(pred, target, valid).backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~(valid & torch.isfinite(target))] == 0).all()

    pred, target, valid = random_batch((2, 6, 7), seed=11)
    target_hat = normalize_ssi(target, valid)[0]
    assert torch.autograd.gradcheck(lambda p: loss_fn(p, target_hat, valid), pred.clone().requires_grad_(True))


def test_losses_without_any_valid_pixel_are_zero_with_gradient():
    pred = torch.randn(2, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), float("nan"))
    valid = torch.ones(2, 5, 5, dtype=torch.bool)  # all targets NaN -> nothing valid
    for loss in (
        affine_invariant_loss(pred, target, valid),
        ls_affine_loss(pred, target, valid),
        gradient_matching_loss(pred, target, valid),
        pseudo_label_loss(pred, target, valid)[0],
        labeled_loss(pred, target, valid)[0],
    ):
        assert loss.item() == 0
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.equal(grad, torch.zeros_like(pred))


def test_nan_prediction_is_not_hidden():
    pred, target, valid = random_batch((2, 8, 8))
    pred[0, 3, 3] = float("nan")
    assert torch.isnan(pseudo_label_loss(pred, target, valid)[0])
    assert torch.isnan(labeled_loss(pred, target, valid)[0])


def test_bad_inputs_raise_clear_errors():
    pred, target, valid = random_batch()
    with pytest.raises(ValueError, match="squeeze"):
        affine_invariant_loss(pred[:, None], target[:, None], valid[:, None])
    with pytest.raises(ValueError, match="target has shape"):
        pseudo_label_loss(pred, target[:, :-1], valid)
    with pytest.raises(TypeError, match="bool mask"):
        labeled_loss(pred, target, valid.float())
    with pytest.raises(ValueError, match="reduction"):
        affine_invariant_loss(pred, target, valid, reduction="sum")


# --------------------------------------------------------------------------- feature alignment


def test_feature_alignment_loss_matches_loops():
    g = torch.Generator().manual_seed(12)
    student = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    frozen = student + 0.8 * torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    terms = []
    for b in range(2):
        for i in range(7):
            x, y = student[b, i].numpy(), frozen[b, i].numpy()
            cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
            if cos <= 0.85:
                terms.append(1 - cos)
    assert 0 < len(terms) < 14  # some patches ignored, some not
    student.requires_grad_(True)
    loss = feature_alignment_loss(student, frozen, margin=0.85)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    as_maps = feature_alignment_loss(student.transpose(1, 2).reshape(2, 5, 7, 1), frozen.transpose(1, 2).reshape(2, 5, 7, 1))
    assert as_maps.item() == pytest.approx(loss.item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_feature_alignment_loss_all_within_margin_and_detaches_frozen():
    student = torch.randn(1, 4, 3, requires_grad=True)
    frozen = (2 * student).detach().requires_grad_(True)
    loss = feature_alignment_loss(student, frozen)
    assert loss.item() == 0
    loss.backward()
    assert frozen.grad is None and torch.equal(student.grad, torch.zeros_like(student))
    with pytest.raises(ValueError, match="equal shape"):
        feature_alignment_loss(student, frozen[:, :2])


# --------------------------------------------------------------------------- CutMix


def test_cutmix_box_distribution_and_determinism():
    g = torch.Generator().manual_seed(13)
    boxes = [cutmix_box(60, 80, g) for _ in range(400)]
    drawn = [b for b in boxes if b is not None]
    assert 0.4 < len(drawn) / len(boxes) < 0.6
    for y0, y1, x0, x1 in drawn:
        assert 0 <= y0 <= y1 <= 60 and 0 <= x0 <= x1 <= 80
        box_area = (y1 - y0) * (x1 - x0) / (60 * 80)
        assert 0.015 < box_area <= 0.4
        assert 0.25 < (y1 - y0) / (x1 - x0) < 1 / 0.25
    assert cutmix_box(60, 80, torch.Generator().manual_seed(13)) == boxes[0]  # seeded: reproducible
    assert cutmix_box(60, 80, g, p=0.0) is None
    y0, y1, x0, x1 = cutmix_box(4, 500, g, p=1.0, area=(0.4, 0.4), aspect=(3.0, 3.0))  # never fits: clipped
    assert 0 <= y0 < y1 <= 4 and 0 <= x0 < x1 <= 500


def test_cutmix_masks_and_apply():
    g = torch.Generator().manual_seed(14)
    masks = cutmix_masks(6, 20, 24, g, p=1.0)
    assert masks.shape == (6, 20, 24) and masks.dtype == torch.bool and masks.flatten(1).any(1).all()
    a, b = torch.zeros(6, 3, 20, 24), torch.ones(6, 3, 20, 24)
    mixed = apply_cutmix(a, b, masks)
    assert torch.equal(mixed, masks[:, None].expand_as(a).float())
    assert torch.equal(apply_cutmix(a[:, 0], b[:, 0], masks), masks.float())
    with pytest.raises(ValueError, match="B x H x W"):
        apply_cutmix(a, b, masks[:, :-1])


def test_cutmix_loss_matches_region_wise_reference():
    pred, label_a, valid_a = random_batch((3, 12, 14), seed=15)
    _, label_b, valid_b = random_batch((3, 12, 14), seed=16)
    label_b[0, 0, 0] = float("nan")
    mask = torch.zeros(3, 12, 14, dtype=torch.bool)
    mask[0, 2:8, 3:10] = True  # a box
    mask[2] = True  # all inside: only b's label counts
    loss, stats = cutmix_loss(pred, label_a, label_b, valid_a, valid_b, mask, drop_ratio=0.2)

    p, ya, yb, va, vb, m = np_(pred, label_a, label_b, valid_a, valid_b, mask)
    per_image = []
    for b in range(3):
        one = slice(b, b + 1)
        inside = ref_pseudo_label_loss(p[one], yb[one], vb[one] & m[one], 0.2)[0]
        outside = ref_pseudo_label_loss(p[one], ya[one], va[one] & ~m[one], 0.2)[0]
        area = m[b].mean()
        per_image.append(area * inside + (1 - area) * outside)
    assert loss.item() == pytest.approx(sum(per_image) / 3, rel=1e-9)
    assert stats["cutmix_area"] == pytest.approx(m.mean((1, 2)).mean())
    assert 0.15 < stats["dropped_share"] < 0.3

    unfiltered = cutmix_loss(pred, label_a, label_b, valid_a, valid_b, mask, drop_ratio=0.0)
    assert unfiltered[1]["dropped_share"] == 0.0
    no_gm = cutmix_loss(
        pred, label_a, label_b, valid_a, valid_b, mask, loss_fn=partial(pseudo_label_terms, gm_weight=0.0)
    )
    assert no_gm[0].item() == pytest.approx(no_gm[1]["ssi"], rel=1e-12)


def ref_depth_edges(target_hat: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels with a valid 4-neighbour whose normalised depth differs by more than ``threshold`` (loops)."""
    edges = np.zeros_like(valid)
    B, H, W = valid.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                    y, x = i + di, j + dj
                    if (0 <= y < H and 0 <= x < W and valid[b, i, j] and valid[b, y, x]
                            and abs(target_hat[b, i, j] - target_hat[b, y, x]) > threshold):
                        edges[b, i, j] = True
    return edges


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_edge_aware_pseudo_label_terms_match_reference(ratio):
    """Edge-aware filtering: edge and non-edge pixels ranked separately (each drops its own top ratio),
    then the filtered ssi + gm_weight * gm on what is kept."""
    pred, target, valid = random_batch((2, 14, 16), seed=21)
    target[:, :, 8:] += 3.0  # a depth step: a vertical edge in both images
    terms = pseudo_label_terms(pred, target, valid, drop_ratio=ratio, gm_weight=0.5, edge_aware=True,
                               edge_threshold=0.5)
    p, t, v = np_(pred, target, valid)
    loss_map, pred_hat, target_hat, v = ref_ssi_map(p, t, v)
    edges = ref_depth_edges(target_hat, v, 0.5)
    assert edges.any() and (v & ~edges).any()
    keep = ref_drop_top(loss_map, v & edges, ratio) | ref_drop_top(loss_map, v & ~edges, ratio)
    np.testing.assert_array_equal(terms.keep.numpy(), keep)
    assert not np.array_equal(keep, ref_drop_top(loss_map, v, ratio))  # differs from one global ranking
    ssi, _ = ref_masked_mean(loss_map, keep)
    gm = ref_gradient_loss(pred_hat, target_hat, keep, 4)
    np.testing.assert_allclose(terms.ssi.numpy(), ssi, rtol=1e-9)
    np.testing.assert_allclose(terms.gm.numpy(), gm, rtol=1e-9)
    np.testing.assert_allclose(terms.loss.numpy(), [s + 0.5 * g for s, g in zip(ssi, gm)], rtol=1e-9)
    np.testing.assert_array_equal(terms.kept_count.numpy(), keep.sum((1, 2)))


# --------------------------------------------------------------------------- the filter's dropped pixels (report panels)


def ssi_reference(d):
    values = np.sort(d.ravel())
    median = values[(values.size + 1) // 2 - 1]  # lower median
    scale = max(np.mean(np.abs(d - median)), 1e-6)
    return (d - median) / scale


def dropped_reference(pred, pseudo, ratio):
    loss = np.abs(ssi_reference(pred.astype(np.float64)) - ssi_reference(pseudo.astype(np.float64)))
    n = loss.size
    if ratio == 0:
        return np.zeros(loss.shape, bool)
    k = math.ceil((1 - ratio) * (n - 1)) + 1
    v = np.sort(loss.ravel())[k - 1]
    keep = loss < v
    if not keep.any():
        keep = loss <= v
    return ~keep


@pytest.mark.parametrize("case", ["random", "ratio0", "ratio02", "constant", "one_pixel", "outlier_block"])
def test_filter_dropped_matches_reference(case):
    rng = np.random.default_rng(4)
    pred, pseudo, ratio = rng.random((9, 11)), rng.random((9, 11)), 0.1
    if case == "ratio0":
        ratio = 0.0
    elif case == "ratio02":
        ratio = 0.2
    elif case == "constant":
        pred, pseudo = np.full((5, 5), 2.0), np.full((5, 5), 3.0)
    elif case == "one_pixel":
        pred, pseudo = np.array([[1.0]]), np.array([[2.0]])
    elif case == "outlier_block":
        pseudo = pred.copy()
        pseudo[:3, :3] += 5.0  # a wrong pseudo-label patch: exactly what the filter should drop
    got = filter_dropped(pred.astype(np.float32), pseudo.astype(np.float32), ratio)
    expected = dropped_reference(pred.astype(np.float32), pseudo.astype(np.float32), ratio)
    assert got.dtype == bool and got.shape == pred.shape
    assert got.sum() == expected.sum()
    assert (got != expected).sum() <= 1  # float32 vs float64 at the threshold
    if case in ("constant", "one_pixel", "ratio0"):
        assert not got.any()
    if case == "outlier_block":
        assert got[:3, :3].all()
