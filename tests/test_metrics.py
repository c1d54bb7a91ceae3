"""pseudodepth.metrics against slow references written from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pseudodepth.metrics import (
    DATASET_CROPS,
    DATASET_RANGES,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    abs_rel_map,
    aggregate,
    align_least_squares,
    crop_mask,
    depth_metrics,
    eigen_crop_mask,
    eigen_crop_nyu,
    evaluate_image,
    fit_scale_shift,
    garg_crop_mask,
    kb_crop,
)

# ----------------------------------------------------------------------------- slow references


def reference_fit(pred: list[float], target: list[float]) -> tuple[float, float]:
    """Normal equations [[Spp, Sp], [Sp, n]] [s, t] = [Spy, Sy] solved by Cramer's rule."""
    n = len(pred)
    s_p = sum(pred)
    s_y = sum(target)
    s_pp = sum(p * p for p in pred)
    s_py = sum(p * y for p, y in zip(pred, target))
    det = s_pp * n - s_p * s_p
    if abs(det) <= 1e-12 * max(s_pp * n, 1e-300):
        return 0.0, s_y / n
    return (s_py * n - s_p * s_y) / det, (s_pp * s_y - s_p * s_py) / det


def reference_align(pred, gt, valid, space, min_depth, max_depth):
    height, width = gt.shape
    xs, ys = [], []
    for i in range(height):
        for j in range(width):
            if valid[i, j] and math.isfinite(gt[i, j]) and gt[i, j] > 0 and math.isfinite(pred[i, j]):
                xs.append(float(pred[i, j]))
                ys.append(1.0 / gt[i, j] if space == "disparity" else float(gt[i, j]))
    s, t = reference_fit(xs, ys)
    far = max_depth if math.isfinite(max_depth) else max(1.0 / y for y in ys)
    out = np.empty((height, width))
    for i in range(height):
        for j in range(width):
            value = s * pred[i, j] + t
            if space == "disparity":
                value = 1.0 / max(value, 1.0 / far)
            out[i, j] = min(max(value, min_depth), max_depth)
    return out


def reference_metrics(pred, gt, valid) -> dict[str, float]:
    pairs = [(float(pred[i, j]), float(gt[i, j])) for i in range(gt.shape[0]) for j in range(gt.shape[1])
             if valid[i, j] and math.isfinite(gt[i, j]) and gt[i, j] > 0]
    n = len(pairs)
    d = [math.log(p) - math.log(g) for p, g in pairs]
    ratio = [max(p / g, g / p) for p, g in pairs]
    return {
        "abs_rel": sum(abs(p - g) / g for p, g in pairs) / n,
        "sq_rel": sum((p - g) ** 2 / g for p, g in pairs) / n,
        "rmse": math.sqrt(sum((p - g) ** 2 for p, g in pairs) / n),
        "rmse_log": math.sqrt(sum(x * x for x in d) / n),
        "log10": sum(abs(math.log10(p) - math.log10(g)) for p, g in pairs) / n,
        "delta1": sum(r < 1.25 for r in ratio) / n,
        "delta2": sum(r < 1.25 ** 2 for r in ratio) / n,
        "delta3": sum(r < 1.25 ** 3 for r in ratio) / n,
        "silog": 100 * math.sqrt(max(sum(x * x for x in d) / n - (sum(d) / n) ** 2, 0.0)),
        "n_valid": n,
    }


def random_case(rng: np.random.Generator, shape=(17, 23), max_depth=10.0):
    gt = rng.uniform(0.5, max_depth * 0.95, shape)
    pred = 1.0 / gt * rng.uniform(0.7, 1.3, shape) * 3.0 + 0.2  # noisy affine disparity
    valid = rng.random(shape) > 0.3
    return pred, gt, valid


def assert_metrics_close(actual: dict, expected: dict, rtol=1e-9, atol=1e-12):
    assert actual["n_valid"] == expected["n_valid"]
    for name in METRIC_NAMES:
        assert actual[name] == pytest.approx(expected[name], rel=rtol, abs=atol), name


# ----------------------------------------------------------------------------- alignment


def test_fit_scale_shift_matches_normal_equations_and_lstsq():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=200), rng.normal(size=200)
    s, t = fit_scale_shift(pred, target)
    assert (s, t) == pytest.approx(reference_fit(list(pred), list(target)), rel=1e-10)
    lstsq = np.linalg.lstsq(np.stack([pred, np.ones_like(pred)], 1), target, rcond=None)[0]
    assert (s, t) == pytest.approx(tuple(lstsq), rel=1e-10)


def test_fit_scale_shift_constant_prediction_gives_best_constant():
    s, t = fit_scale_shift(np.full(5, 2.5), np.array([1.0, 2.0, 3.0, 4.0, 10.0]))
    assert (s, t) == (0.0, 4.0)
    with pytest.raises(ValueError, match="zero valid pixels"):
        fit_scale_shift(np.array([]), np.array([]))


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_align_matches_reference(space):
    rng = np.random.default_rng(1)
    pred, gt, valid = random_case(rng)
    if space == "depth":
        pred = 1.0 / pred
    actual = align_least_squares(pred, gt, valid, space, min_depth=1e-3, max_depth=10.0)
    expected = reference_align(pred, gt, valid, space, 1e-3, 10.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-10)


def test_align_guards_non_positive_disparity_and_clips():
    gt = np.array([[1.0, 2.0, 4.0, 1.0]])
    pred = np.array([[1.0, 0.5, 0.25, -5.0]])  # last pixel: aligned disparity < 0
    valid = np.array([[True, True, True, False]])
    depth = align_least_squares(pred, gt, valid, min_depth=1e-3, max_depth=8.0)
    np.testing.assert_allclose(depth[0, :3], [1.0, 2.0, 4.0], rtol=1e-12)
    assert depth[0, 3] == 8.0
    capped = align_least_squares(pred, gt, valid, min_depth=1.5, max_depth=3.0)
    np.testing.assert_allclose(capped[0], [1.5, 2.0, 3.0, 3.0], rtol=1e-12)


def test_align_infinite_max_depth_floors_at_farthest_ground_truth():
    gt = np.array([[1.0, 2.0, 4.0, 1.0]])
    pred = np.array([[1.0, 0.5, 0.25, -5.0]])
    valid = np.array([[True, True, True, False]])
    depth = align_least_squares(pred, gt, valid, min_depth=1e-5, max_depth=float("inf"))
    np.testing.assert_allclose(depth[0], [1.0, 2.0, 4.0, 4.0], rtol=1e-12)
    expected = reference_align(pred, gt, valid, "disparity", 1e-5, float("inf"))
    np.testing.assert_allclose(depth, expected, rtol=1e-12)


def test_align_rejects_bad_arguments():
    ones = np.ones((3, 3))
    with pytest.raises(ValueError, match="space"):
        align_least_squares(ones, ones, ones > 0, "log", min_depth=0.1, max_depth=10)
    with pytest.raises(ValueError, match="ground-truth resolution"):
        align_least_squares(np.ones((3, 4)), ones, ones > 0, min_depth=0.1, max_depth=10)


# ----------------------------------------------------------------------------- metrics


def test_depth_metrics_match_reference():
    rng = np.random.default_rng(2)
    gt = rng.uniform(0.5, 20, (19, 13))
    pred = gt * rng.uniform(0.6, 1.6, gt.shape)
    valid = rng.random(gt.shape) > 0.4
    assert_metrics_close(depth_metrics(pred, gt, valid), reference_metrics(pred, gt, valid))


def test_depth_metrics_identical_maps():
    gt = np.random.default_rng(3).uniform(1, 5, (8, 8))
    result = depth_metrics(gt, gt, np.ones_like(gt, dtype=bool))
    for name in METRIC_NAMES:  # a perfect prediction is the best value of every metric
        assert result[name] == (1.0 if name in HIGHER_IS_BETTER else 0.0), name


def test_silog_of_pure_scale_error_is_zero():
    gt = np.random.default_rng(4).uniform(1, 5, (8, 8))
    result = depth_metrics(1.5 * gt, gt, np.ones_like(gt, dtype=bool))
    assert result["silog"] == pytest.approx(0.0, abs=1e-5)
    assert result["rmse_log"] == pytest.approx(math.log(1.5), rel=1e-12)
    assert result["delta1"] == 0.0 and result["delta2"] == 1.0  # 1.25 < 1.5 < 1.25^2


def test_depth_metrics_empty_mask_is_nan_with_zero_count():
    gt = np.ones((4, 4))
    result = depth_metrics(gt, gt, np.zeros((4, 4), dtype=bool))
    assert result["n_valid"] == 0
    assert all(math.isnan(result[name]) for name in METRIC_NAMES)


def test_depth_metrics_rejects_non_positive_prediction():
    gt = np.ones((2, 2))
    with pytest.raises(ValueError, match="finite and > 0"):
        depth_metrics(np.zeros((2, 2)), gt, np.ones((2, 2), dtype=bool))


# ----------------------------------------------------------------------------- evaluate_image


def reference_evaluate(pred, gt, valid, min_depth, max_depth, region, space):
    mask = np.zeros(gt.shape, dtype=bool)
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            g = gt[i, j]
            mask[i, j] = bool(valid[i, j] and region[i, j] and math.isfinite(g) and min_depth < g < max_depth
                              and math.isfinite(pred[i, j]))
    aligned = reference_align(pred, gt, mask, space, min_depth, max_depth)
    return reference_metrics(aligned, gt, mask)


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_evaluate_image_matches_reference(space):
    rng = np.random.default_rng(5)
    pred, gt, valid = random_case(rng, shape=(24, 30), max_depth=12.0)  # some gt beyond max_depth=10
    region = crop_mask("garg", 24, 30)
    actual = evaluate_image(pred, gt, valid, 1e-3, 10.0, crop="garg", space=space)
    assert_metrics_close(actual, reference_evaluate(pred, gt, valid, 1e-3, 10.0, region, space), rtol=1e-8)


def test_perfect_prediction_up_to_affine_disparity_map():
    rng = np.random.default_rng(6)
    gt = rng.uniform(0.5, 9.5, (32, 32))
    pred = (1.0 / gt - 0.05) / 4.0  # gt_disp = 4 * pred + 0.05
    result = evaluate_image(pred, gt, np.ones_like(gt, dtype=bool), 1e-3, 10.0)
    assert result["abs_rel"] == pytest.approx(0.0, abs=1e-10)
    assert result["delta1"] == 1.0
    assert result["n_valid"] == 32 * 32


def test_nan_and_inf_ground_truth_are_ignored():
    rng = np.random.default_rng(7)
    pred, gt, valid = random_case(rng)
    corrupted = gt.copy()
    corrupted[0, :5] = np.nan
    corrupted[1, :5] = np.inf
    corrupted[2, :5] = -np.inf
    clean_valid = valid.copy()
    clean_valid[:3, :5] = False
    with np.errstate(all="raise"):  # no hidden NaN arithmetic warnings either
        dirty = evaluate_image(pred, corrupted, valid, 1e-3, 10.0)
    clean = evaluate_image(pred, gt, clean_valid, 1e-3, 10.0)
    assert_metrics_close(dirty, clean, rtol=1e-12)
    assert all(math.isfinite(dirty[name]) for name in METRIC_NAMES)


def test_nan_prediction_pixels_are_excluded():
    rng = np.random.default_rng(8)
    pred, gt, valid = random_case(rng)
    pred_nan = pred.copy()
    pred_nan[4, 4] = np.nan
    valid_without = valid.copy()
    valid_without[4, 4] = False
    assert_metrics_close(evaluate_image(pred_nan, gt, valid, 1e-3, 10.0),
                         evaluate_image(pred, gt, valid_without, 1e-3, 10.0), rtol=1e-12)


def test_one_valid_pixel_is_matched_exactly():
    gt = np.full((5, 5), 3.0)
    pred = np.random.default_rng(9).uniform(0, 1, (5, 5))
    valid = np.zeros((5, 5), dtype=bool)
    valid[2, 3] = True
    result = evaluate_image(pred, gt, valid, 1e-3, 10.0)
    assert result["n_valid"] == 1
    assert result["abs_rel"] == pytest.approx(0.0, abs=1e-12) and result["delta1"] == 1.0


def test_constant_prediction_gives_harmonic_mean_depth():
    rng = np.random.default_rng(10)
    gt = rng.uniform(1.0, 5.0, (6, 7))
    valid = np.ones(gt.shape, dtype=bool)
    aligned = align_least_squares(np.full(gt.shape, 0.3), gt, valid, min_depth=1e-3, max_depth=10.0)
    np.testing.assert_allclose(aligned, 1.0 / np.mean(1.0 / gt), rtol=1e-12)
    result = evaluate_image(np.full(gt.shape, 0.3), gt, valid, 1e-3, 10.0)
    assert_metrics_close(result, reference_metrics(aligned, gt, valid))


def test_evaluate_image_accepts_torch_and_array_crops():
    rng = np.random.default_rng(11)
    pred, gt, valid = random_case(rng)
    region = rng.random(gt.shape) > 0.5
    from_numpy = evaluate_image(pred, gt, valid, 1e-3, 10.0, crop=region)
    from_torch = evaluate_image(torch.from_numpy(pred).float(), torch.from_numpy(gt), torch.from_numpy(valid),
                                1e-3, 10.0, crop=region)
    assert_metrics_close(from_torch, from_numpy, rtol=1e-5)
    assert from_numpy["n_valid"] == int((valid & region).sum())


def test_evaluate_image_rejects_wrong_resolution():
    with pytest.raises(ValueError, match="ground-truth resolution"):
        evaluate_image(np.ones((4, 4)), np.ones((8, 8)), np.ones((8, 8), dtype=bool), 1e-3, 10.0)


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_skips_empty_images_without_nan():
    rng = np.random.default_rng(12)
    results = []
    for _ in range(3):
        pred, gt, valid = random_case(rng)
        results.append(evaluate_image(pred, gt, valid, 1e-3, 10.0))
    empty = evaluate_image(np.ones((4, 4)), np.ones((4, 4)), np.zeros((4, 4), dtype=bool), 1e-3, 10.0)
    out_of_range = evaluate_image(np.ones((4, 4)), np.full((4, 4), 50.0), np.ones((4, 4), dtype=bool), 1e-3, 10.0)
    assert empty["n_valid"] == 0 and out_of_range["n_valid"] == 0
    summary = aggregate([results[0], empty, results[1], out_of_range, results[2]])
    assert summary["n_images"] == 3 and summary["n_skipped"] == 2
    for name in METRIC_NAMES:
        assert math.isfinite(summary[name])
        assert summary[name] == pytest.approx(sum(r[name] for r in results) / 3, rel=1e-12)


def test_aggregate_without_any_valid_image_raises():
    empty = {**{name: float("nan") for name in METRIC_NAMES}, "n_valid": 0}
    with pytest.raises(ValueError, match="no|none"):
        aggregate([empty, empty])


# ----------------------------------------------------------------------------- crops and presets


def test_eigen_crop_nyu_exact_indices():
    mask = eigen_crop_nyu(np.ones((480, 640), dtype=bool))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (45, 470, 41, 600)
    assert mask.sum() == (471 - 45) * (601 - 41)
    partial = np.zeros((480, 640), dtype=bool)
    partial[0:50, 0:50] = True
    assert eigen_crop_nyu(partial).sum() == 5 * 9  # rows 45..49, cols 41..49
    with pytest.raises(ValueError, match="480 x 640"):
        eigen_crop_nyu(np.ones((240, 320), dtype=bool))


def test_kb_crop_exact_window():
    height, width = 375, 1242
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([rows, cols], axis=-1)
    cropped = kb_crop(image)
    assert cropped.shape == (352, 1216, 2)
    assert cropped[0, 0].tolist() == [23, 13]  # top = 375 - 352, left = (1242 - 1216) // 2
    assert cropped[-1, -1].tolist() == [374, 1228]
    assert kb_crop(rows).shape == (352, 1216)
    with pytest.raises(ValueError, match="352 x 1216"):
        kb_crop(np.zeros((300, 1300)))


def test_garg_and_eigen_crop_exact_indices_on_kb_size():
    def bounds(mask):
        rows, cols = np.nonzero(mask)
        return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1

    # int(0.40810811*352)=143, int(0.99189189*352)=349, int(0.03594771*1216)=43, int(0.96405229*1216)=1172
    assert bounds(garg_crop_mask(352, 1216)) == (143, 349, 43, 1172)
    # int(0.3324324*352)=117, int(0.91351351*352)=321, int(0.0359477*1216)=43
    assert bounds(eigen_crop_mask(352, 1216)) == (117, 321, 43, 1172)
    # raw KITTI size 375 x 1242: int(153.04)=153, int(371.96)=371, int(44.65)=44, int(1197.35)=1197
    assert bounds(garg_crop_mask(375, 1242)) == (153, 371, 44, 1197)
    assert garg_crop_mask(352, 1216).sum() == (349 - 143) * (1172 - 43)


def test_crop_mask_names_and_presets():
    assert crop_mask(None, 3, 4).all()
    assert crop_mask("eigen_nyu", 480, 640).sum() == 426 * 560
    with pytest.raises(ValueError, match="unknown evaluation crop"):
        crop_mask("middle", 10, 10)
    assert DATASET_RANGES["nyu"] == (1e-3, 10.0) and DATASET_RANGES["kitti"] == (1e-3, 80.0)
    assert set(DATASET_RANGES) == set(DATASET_CROPS) == {"nyu", "kitti", "eth3d", "diode", "sintel"}
    for name, crop in DATASET_CROPS.items():
        assert crop is None or crop in {"eigen_nyu", "garg", "eigen"}, name
        low, high = DATASET_RANGES[name]
        assert 0 < low < high


# ----------------------------------------------------------------------------- per-pixel AbsRel (report error maps)


def abs_rel_reference(pred, gt, valid, min_depth, max_depth):
    mask = valid & np.isfinite(gt) & (gt > 0)
    out = np.full(gt.shape, np.nan)
    if not mask.any():
        return out
    p, g = pred[mask], gt[mask]
    a = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, 1 / g, rcond=None)  # min-norm: same s*p+t as the closed form
    floor = 1 / max_depth if math.isfinite(max_depth) else 1 / g.max()
    for y, x in zip(*np.nonzero(mask)):
        disparity = max(s * pred[y, x] + t, floor)
        depth = min(max(1 / disparity, min_depth), max_depth)
        out[y, x] = abs(depth - gt[y, x]) / gt[y, x]
    return out


@pytest.mark.parametrize("case", ["random", "one_valid", "nan_inf_gt", "no_valid", "constant_pred", "range"])
def test_abs_rel_map_matches_reference(case):
    rng = np.random.default_rng(3)
    gt = rng.uniform(1, 20, (8, 7))
    pred = 1 / gt * 2.5 + 0.01 + rng.normal(0, 0.02, gt.shape)
    valid = rng.random(gt.shape) < 0.8
    min_depth, max_depth = 1e-3, math.inf
    if case == "one_valid":
        valid = np.zeros(gt.shape, bool)
        valid[3, 4] = True
    elif case == "nan_inf_gt":
        gt[0, :3] = [np.nan, np.inf, -1.0]
        valid[0, :3] = True
    elif case == "no_valid":
        valid[:] = False
    elif case == "constant_pred":
        pred[:] = 0.7
    elif case == "range":
        min_depth, max_depth = 2.0, 10.0
    got = abs_rel_map(pred, gt, valid, min_depth, max_depth)
    expected = abs_rel_reference(pred, gt, valid, min_depth, max_depth)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-7, atol=1e-9)
    if case == "one_valid":
        assert got[3, 4] == pytest.approx(0, abs=1e-12)
