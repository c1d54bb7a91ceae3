"""Metric alignment to sparse depth (label --align-to): RANSAC fit, sparse formats, metric label store."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pseudodepth.align import (
    AlignError,
    AlignSettings,
    align_prediction,
    find_sparse,
    mad,
    ransac_scale_shift,
    read_sparse,
    sparse_sample,
)
from pseudodepth.store import LabelStore, decode_metric_label, encode_metric_label


def slow_least_squares(p, y):
    """Normal equations of min sum (s p_i + t - y_i)^2, summed one term at a time."""
    n = sxx = sx = sxy = sy = 0.0
    for pi, yi in zip(p, y):
        n += 1
        sx += pi
        sy += yi
        sxx += pi * pi
        sxy += pi * yi
    scale = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return scale, (sy - scale * sx) / n


def slow_mad(values):
    values = sorted(values)
    med = values[len(values) // 2] if len(values) % 2 else 0.5 * (values[len(values) // 2 - 1] + values[len(values) // 2])
    dev = sorted(abs(v - med) for v in values)
    k = len(dev)
    return dev[k // 2] if k % 2 else 0.5 * (dev[k // 2 - 1] + dev[k // 2])


def corrupted_line(seed, n=400, scale=2.5, shift=0.3, noise=1e-3, outliers=0.3):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 2.0, n)
    y = scale * p + shift + noise * rng.standard_normal(n)
    bad = rng.choice(n, int(outliers * n), replace=False)
    y[bad] += rng.uniform(0.5, 3.0, bad.size) * rng.choice([-1.0, 1.0], bad.size)
    return p, y, bad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ransac_recovers_scale_and_shift_with_30_percent_outliers(seed):
    p, y, bad = corrupted_line(seed)
    fit = ransac_scale_shift(p, y, seed=seed)
    assert fit.scale == pytest.approx(2.5, rel=2e-3) and fit.shift == pytest.approx(0.3, abs=2e-3)
    assert not fit.inliers[bad].any()  # every outlier rejected
    assert fit.n_inliers >= 0.95 * (len(p) - len(bad))  # and nearly every inlier kept
    # Plain least squares on all points is far off: the outliers matter.
    ls_scale, _ = slow_least_squares(p, y)
    assert abs(ls_scale - 2.5) > 10 * abs(fit.scale - 2.5)


def test_ransac_result_is_the_least_squares_fit_of_its_mad_inliers():
    p, y, _ = corrupted_line(5, n=120, noise=1e-2)
    fit = ransac_scale_shift(p, y, mad_k=3.0)
    scale, shift = slow_least_squares(p[fit.inliers], y[fit.inliers])
    assert fit.scale == pytest.approx(scale, rel=1e-9) and fit.shift == pytest.approx(shift, rel=1e-9, abs=1e-12)
    residuals = y - (fit.scale * p + fit.shift)
    tau = 3.0 * 1.4826 * slow_mad(list(residuals))
    assert fit.threshold == pytest.approx(tau, rel=1e-9)
    assert [abs(r) <= tau for r in residuals] == list(fit.inliers)  # the refinement's fixed point
    assert mad(residuals) == pytest.approx(slow_mad(list(residuals)))


def test_exact_points_and_minimum_count():
    p = np.linspace(0.2, 1.0, 10)
    fit = ransac_scale_shift(p, 0.5 * p + 0.01, min_points=10)
    assert fit.scale == pytest.approx(0.5) and fit.shift == pytest.approx(0.01) and fit.n_inliers == 10
    with pytest.raises(AlignError, match="only 9 valid sparse depth point"):
        ransac_scale_shift(p[:9], p[:9], min_points=10)


def test_exact_points_keep_every_inlier_whatever_the_float32_rounding():
    """Exact sparse depth: the inliers must not depend on the prediction's last bits (the Ray defect: a
    1-thread actor's float32 prediction kept 63, a 2-thread process's 69 of the same points)."""
    rng = np.random.default_rng(7)
    p = rng.uniform(0.2, 3.0, 300).astype(np.float32)
    y = 0.5 * p.astype(np.float64) + 0.05
    bad = rng.choice(300, 60, replace=False)
    y[bad] *= np.exp(rng.uniform(np.log(1.02), np.log(3.0), 60)) ** rng.choice([-1.0, 1.0], 60)
    fits, noisy = [], []
    for trial in range(3):  # float32 rounding as another thread count or machine gives it (a few ulps)
        noisy.append(p * (1 + 4e-7 * rng.standard_normal(p.size)).astype(np.float32) if trial else p)
        fits.append(ransac_scale_shift(noisy[-1], y))
    good = np.ones(300, bool)
    good[bad] = False
    for fit in fits:
        assert np.array_equal(fit.inliers, good)  # all 240, not those the rounding happened to favour
        assert fit.scale == pytest.approx(0.5, rel=1e-5) and fit.shift == pytest.approx(0.05, rel=1e-4)
    # Without the floor the threshold sits at the rounding noise and drops true inliers.
    assert ransac_scale_shift(noisy[1], y, rel_floor=0.0).n_inliers < 240


def test_negative_scale_and_majority_outliers_fail_with_reasons():
    p = np.linspace(0.2, 1.0, 30)
    with pytest.raises(AlignError, match="positive scale"):
        ransac_scale_shift(p, 2.0 - p)
    rng = np.random.default_rng(0)
    with pytest.raises(AlignError, match="fewer than half|not positive"):  # pure noise: no fit
        ransac_scale_shift(rng.uniform(0, 1, 200), rng.uniform(0, 1, 200))



def test_align_prediction_in_disparity_space_gives_metres():
    rng = np.random.default_rng(3)
    depth = rng.uniform(1.0, 30.0, (40, 50))
    scale, shift = 0.2, 0.05
    prediction = (1.0 / depth - shift) / scale  # a relative disparity the affine map turns into 1/depth
    points = sparse_sample(depth, np.ones_like(depth, bool), 0.05, rng, outlier_fraction=0.3,
                           outlier_range=(0.2, 0.5))
    settings = AlignSettings(".", min_points=10)
    metric, fit = align_prediction(prediction, points, "disparity", settings)
    assert fit.scale == pytest.approx(scale, rel=1e-6) and fit.shift == pytest.approx(shift, rel=1e-5)
    np.testing.assert_allclose(metric, depth, rtol=1e-4)
    # A depth teacher is fitted in depth space.
    metric, fit = align_prediction(depth / 3.0 - 1.0, points, "depth", settings)
    assert fit.scale == pytest.approx(3.0, rel=1e-6) and fit.shift == pytest.approx(3.0, rel=1e-5)
    np.testing.assert_allclose(metric, depth, rtol=1e-4)


def test_align_prediction_marks_beyond_range_invalid():
    prediction = np.array([[1.0, 0.5, -0.5, 2.0]] * 3)
    points = np.array([[0, 0, 1.0], [1, 0, 2.0], [3, 0, 0.5], [0, 1, 1.0], [1, 1, 2.0], [3, 1, 0.5]])
    metric, fit = align_prediction(prediction, points, "disparity", AlignSettings(".", min_points=2, max_depth=1.5))
    assert fit.scale == pytest.approx(1.0) and fit.shift == pytest.approx(0.0, abs=1e-12)
    assert metric[0].tolist() == [1.0, 0.0, 0.0, 0.5]  # 2 m > max_depth, negative disparity: invalid


def test_sparse_formats(tmp_path):
    h, w = 6, 8
    dense = np.zeros((h, w))
    dense[1, 2], dense[4, 7] = 3.5, 12.25
    np.save(tmp_path / "map.npy", dense)
    expect = [[2, 1, 3.5], [7, 4, 12.25]]
    assert read_sparse(tmp_path / "map.npy", h, w).tolist() == expect
    np.save(tmp_path / "pts.npy", np.array([[2.2, 0.8, 3.5], [7, 4, 12.25], [1, 1, 0.0], [1, 1, np.nan]]))
    assert read_sparse(tmp_path / "pts.npy", h, w).tolist() == expect
    (tmp_path / "pts.csv").write_text("u,v,z\n2,1,3.5\n7,4,12.25\n")
    assert read_sparse(tmp_path / "pts.csv", h, w).tolist() == expect
    cv2.imwrite(str(tmp_path / "map.png"), np.rint(dense * 256).astype(np.uint16))
    assert read_sparse(tmp_path / "map.png", h, w, png_scale=256).tolist() == expect
    (tmp_path / "bad.csv").write_text("u,v,z\n2,1\n")
    with pytest.raises(AlignError, match=r"bad.csv:2: expected 3 values"):
        read_sparse(tmp_path / "bad.csv", h, w)
    (tmp_path / "out.csv").write_text("8,1,2.0\n")
    with pytest.raises(AlignError, match="outside the 8 x 6 image"):
        read_sparse(tmp_path / "out.csv", h, w)
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
    with pytest.raises(AlignError, match="neither the image's 6 x 8 depth map nor N x 3"):
        read_sparse(tmp_path / "wrong.npy", h, w)
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "a.npy", dense)
    assert find_sparse(tmp_path, "sub/a.jpg") == tmp_path / "sub" / "a.npy"
    assert find_sparse(tmp_path, "sub/b.jpg") is None
    with pytest.raises(ValueError, match="escapes"):
        find_sparse(tmp_path, "../x.jpg")


def test_metric_label_encoding_round_trip():
    z = np.array([[0.5, 1.0, 80.0], [0.0, np.nan, 7.3]])
    q, lo, hi = encode_metric_label(z)
    assert (lo, hi) == (0.5, 80.0) and q[0, 0] == 1 and q[0, 2] == 65535 and q[1, 0] == q[1, 1] == 0
    back = decode_metric_label(q, lo, hi)
    step = math.log(hi / lo) / 65534
    np.testing.assert_allclose(back[0], z[0], rtol=step)
    assert back[1, 2] == pytest.approx(7.3, rel=step) and back[1, 0] == back[1, 1] == 0.0
    q, lo, hi = encode_metric_label(np.full((2, 2), 4.0))
    assert (q == 1).all() and decode_metric_label(q, lo, hi).tolist() == [[4.0, 4.0], [4.0, 4.0]]


def test_align_settings_refuse_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--align-to must be a folder"):
        AlignSettings(str(tmp_path / "nope")).check()


def test_label_align_to_writes_a_metric_store(tmp_path, tiny_model):
    from pseudodepth.data import DepthDataset, make_source
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.predict import infer

    rng = np.random.default_rng(0)
    images, sparse = tmp_path / "images", tmp_path / "sparse"
    (images / "sub").mkdir(parents=True)
    sparse.mkdir()
    settings = LabelSettings(input_size=56)
    predictions = {}
    for rel in ("a.png", "sub/b.png", "few.png", "none.png"):
        rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        cv2.imwrite(str(images / rel), rgb[..., ::-1])
        predictions[rel] = infer.predict(tiny_model, rgb, 56).astype(np.float64)
    for rel, scale, shift in (("a.png", 0.5, 0.02), ("sub/b.png", 2.0, 0.1)):
        depth = 1.0 / (scale * predictions[rel] + shift)  # what a disparity teacher's exact alignment gives
        points = sparse_sample(depth, np.ones(depth.shape, bool), 0.05, rng, outlier_fraction=0.3,
                               outlier_range=(2.0, 4.0))
        (sparse / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(sparse / rel.replace(".png", ".npy"), points)
    (sparse / "few.csv").write_text("u,v,z\n1,1,2.0\n2,2,3.0\n")
    settings.align = AlignSettings(str(sparse), min_points=10)
    report = label_folder("da-v2-tiny", images, tmp_path / "store", settings=settings, workers=0,
                          model=tiny_model, progress=False)
    assert (report.ok, report.failed) == (2, 2)
    store = LabelStore(tmp_path / "store")
    assert store.label_space == "metric_depth"
    rows = {r["source"]: r for r in store.rows()}
    assert "only 2 valid sparse depth point(s), need at least 10" in rows["few.png"]["error"]
    assert "no sparse depth for this image" in rows["none.png"]["error"]
    for rel, scale, shift in (("a.png", 0.5, 0.02), ("sub/b.png", 2.0, 0.1)):
        row = rows[rel]
        assert row["status"] == "ok" and row["scale"] == pytest.approx(scale, rel=1e-3)
        assert row["shift"] == pytest.approx(shift, rel=1e-2, abs=1e-4) and row["inliers"] >= 80
        depth = 1.0 / (scale * predictions[rel] + shift)
        np.testing.assert_allclose(store.read_label(row), depth, rtol=2e-3)
    # Consolidated to parquet and read back: the alignment columns survive.
    assert {r["source"]: r["inliers"] for r in LabelStore(tmp_path / "store").rows()}["a.png"] == rows["a.png"]["inliers"]
    with pytest.raises(Exception, match="metric depth labels"):
        store.read_disparity(rows["a.png"])
    # A metric store trains metric models and refuses relative targets' disparity conversion nowhere.
    source = make_source({"type": "label_store", "root": str(tmp_path / "store")})
    assert source.values == "depth" and len(source) == 2
    item = DepthDataset(source, crop_size=28, target="metric", seed=0)[0]
    assert item["target"][item["valid"]].min() > 0
    # Re-running resumes; a different sparse folder is another teacher.
    again = label_folder("da-v2-tiny", images, tmp_path / "store", settings=settings, workers=0, model=tiny_model,
                         progress=False)
    assert again.skipped == 4 and again.ok == 0
