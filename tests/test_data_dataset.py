"""DepthDataset: disparity targets, crop / flip alignment, determinism, evaluation samples, pseudo-labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pseudodepth import preprocess
from pseudodepth.imageio import write_png
from pseudodepth.data import sources
from pseudodepth.data.augment import normalize_imagenet
from pseudodepth.data.dataset import DepthDataset
from pseudodepth.data.sources import DepthSource, Sample
from pseudodepth.data.transforms import depth_to_disparity, minmax_normalize, resize_shorter_side
from pseudodepth.store import LabelStore


def memory_source(images: list[np.ndarray], depths: list[np.ndarray], **kw) -> DepthSource:
    """A source over in-memory arrays (sample index = position), depth > 0 and finite = valid."""
    def read_depth(sample: Sample):
        depth = depths[sample.index]
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(depth) & (depth > 0)
        return np.where(valid, depth, 0).astype(np.float32), valid

    samples = [Sample(image_path=Path(f"mem/{i}.png"), index=i) for i in range(len(images))]
    return DepthSource("memory", samples, read_depth, read_image=lambda s: images[s.index], **kw)


def coordinate_scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image with R = 5 x, G = 7 y; depth = 100 / (1 + x + 100 y): disparity encodes the same pixel."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([5 * x, 7 * y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return rgb, (100.0 / (1.0 + x + 100.0 * y)).astype(np.float32)


# ----------------------------------------------------------------------------- target definitions
def reference_normalized_disparity(depth: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference: disparity = 1/d on valid finite d > 0, then (x - min) / (max - min) over valid."""
    out, keep, values = np.zeros(depth.shape, np.float64), np.zeros(depth.shape, bool), []
    for index in np.ndindex(depth.shape):
        d = float(depth[index])
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            representable = np.isfinite(np.float32(1.0) / np.float32(d))  # 1 / d fits in float32
        if valid[index] and np.isfinite(d) and d > 0 and representable:
            keep[index] = True
            values.append(1.0 / d)
    if values:
        low, high = min(values), max(values)
        for index in np.ndindex(depth.shape):
            if keep[index] and high > low:
                out[index] = (1.0 / float(depth[index]) - low) / (high - low)
    return out, keep


CASES = ["random", "nan_inf", "constant", "one_valid", "none_valid", "tiny_depth"]


@pytest.mark.parametrize("case", CASES)
def test_normalized_disparity_matches_slow_reference(case):
    rng = np.random.default_rng(CASES.index(case))  # a fixed seed per case: a failure replays
    depth = rng.uniform(0.5, 80, size=(7, 9)).astype(np.float32)
    valid = rng.random((7, 9)) > 0.2
    if case == "nan_inf":
        depth[0, :3] = [np.nan, np.inf, -np.inf]
        depth[1, :2] = [0.0, -3.0]
        valid[0, :3] = valid[1, :2] = True
    elif case == "constant":
        depth[:] = 4.0
    elif case == "one_valid":
        valid[:] = False
        valid[3, 4] = True
    elif case == "none_valid":
        valid[:] = False
    elif case == "tiny_depth":
        depth[2, 2], valid[2, 2] = 1e-45, True  # 1 / d overflows float32: invalid
    target, keep = minmax_normalize(*depth_to_disparity(depth, valid))
    expected, expected_keep = reference_normalized_disparity(depth, valid)
    np.testing.assert_array_equal(keep, expected_keep)
    np.testing.assert_allclose(target, expected, atol=1e-6)
    assert np.isfinite(target).all() and target.dtype == np.float32
    if case == "random":
        assert target[keep].min() == 0 and target[keep].max() == pytest.approx(1)


def test_minmax_normalize_on_disparity_drops_nonfinite():
    values = np.array([[2.0, np.nan, 4.0, np.inf]], np.float32)
    target, valid = minmax_normalize(values, np.ones_like(values, bool))
    np.testing.assert_array_equal(valid, [[True, False, True, False]])
    np.testing.assert_array_equal(target, [[0, 0, 1, 0]])


# ----------------------------------------------------------------------------- geometry
def test_crop_and_flip_keep_image_and_target_aligned():
    rgb, depth = coordinate_scene(32, 50)  # shorter side == crop size: crop + flip only
    dataset = DepthDataset(memory_source([rgb], [depth]), crop_size=32, normalize=False, seed=3)
    flips = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        item = dataset[0]
        image = item["image"].numpy() * 255
        x, y = np.rint(image[0] / 5), np.rint(image[1] / 7)
        code = 1 + x + 100 * y  # the disparity each returned pixel must carry
        expected = (code - code.min()) / (code.max() - code.min())
        np.testing.assert_allclose(item["target"].numpy(), expected, atol=1e-6)
        assert item["valid"].all()
        flips.add(bool(x[0, 0] > x[0, -1]))
    assert flips == {True, False}


def test_resize_keeps_depth_on_the_image_grid():
    height, width, size = 37, 53, 50
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([4 * x, 6 * y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    rgb_r, x_r, valid_r = resize_shorter_side(rgb, x, np.ones((height, width), bool), size)
    assert rgb_r.shape == (50, 72, 3) and x_r.shape == (50, 72) and valid_r.all()
    assert set(np.unique(x_r)) <= set(range(width))  # nearest: no invented values
    x_from_image = rgb_r[..., 0].astype(np.float32) / 4  # cubic of a linear ramp is the ramp
    interior = (slice(3, -3), slice(3, -3))
    assert np.abs(x_from_image - x_r)[interior].max() <= 0.5 + 0.25 + 1e-6  # half a pixel + uint8 rounding


def test_train_item_contract_and_imagenet_normalisation():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    depth = rng.uniform(1, 10, size=(40, 60)).astype(np.float32)
    depth[:5] = 0.0
    plain = DepthDataset(memory_source([rgb], [depth]), crop_size=24, normalize=False, seed=0)[0]
    normed = DepthDataset(memory_source([rgb], [depth]), crop_size=24, seed=0)[0]
    assert plain["image"].shape == (3, 24, 24) and plain["image"].dtype == torch.float32
    assert plain["target"].shape == (24, 24) and plain["valid"].dtype == torch.bool
    assert plain["kind"] == "labeled" and plain["path"] == "mem/0.png#0"
    assert 0 <= plain["image"].min() and plain["image"].max() <= 1
    torch.testing.assert_close(normed["image"], normalize_imagenet(plain["image"]))
    target, valid = plain["target"], plain["valid"]
    assert target[valid].min() == 0 and target[valid].max() == 1 and (target[~valid] == 0).all()
    assert not valid[:3].any()  # the invalid top rows (5 of 40 -> >= 3 of 24 after resize)


def test_seeded_dataset_is_deterministic_in_worker_processes():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8) for _ in range(4)]
    depths = [rng.uniform(1, 5, size=(30, 40)).astype(np.float32) for _ in range(4)]
    dataset = DepthDataset(memory_source(images, depths), crop_size=16, seed=7)
    direct = [dataset[i] for i in range(4)]
    loaded = list(DataLoader(dataset, batch_size=2, num_workers=2))
    for i in range(4):
        torch.testing.assert_close(loaded[i // 2]["image"][i % 2], direct[i]["image"])
        torch.testing.assert_close(loaded[i // 2]["target"][i % 2], direct[i]["target"])
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i]["image"], direct[i]["image"]) for i in range(4))

    unseeded = DepthDataset(memory_source(images, depths), crop_size=16)
    torch.manual_seed(0)
    first = [unseeded[i]["image"] for i in range(4)]
    torch.manual_seed(0)
    assert all(torch.equal(a, unseeded[i]["image"]) for i, a in enumerate(first))


# ----------------------------------------------------------------------------- evaluation
def test_eval_item_uses_inference_preprocessing_and_native_ground_truth():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    depth = rng.uniform(1, 8, size=(30, 45)).astype(np.float32)
    depth[0, 0] = 20.0  # beyond max_depth: invalid
    source = memory_source([rgb], [depth], max_depth=10.0, eval_crop="eigen_nyu")
    item = DepthDataset(source, train=False, input_size=28)[0]
    assert tuple(item["image"].shape[1:]) == preprocess.network_size(30, 45, 28)
    torch.testing.assert_close(item["image"], torch.from_numpy(preprocess.prepare(rgb, 28)))
    assert item["depth"].shape == (30, 45) and not item["valid"][0, 0] and item["depth"][0, 0] == 0
    expected, keep = reference_normalized_disparity(np.where(depth <= 10, depth, 0), depth <= 10)
    np.testing.assert_allclose(item["target"].numpy(), expected, atol=1e-6)
    assert item["eval_crop"] == "eigen_nyu" and item["max_depth"] == 10.0


def test_eval_applies_the_kitti_benchmark_crop():
    rgb = np.zeros((360, 1230, 3), np.uint8)
    depth = np.zeros((360, 1230), np.float32)
    depth[-352:, 7:7 + 1216] = 5.0  # exactly the KB window: H - 352 rows down, (W - 1216) // 2 across
    source = memory_source([rgb], [depth], kb_crop=True, eval_crop="garg")
    item = DepthDataset(source, train=False, input_size=28)[0]
    assert item["depth"].shape == (352, 1216) and item["valid"].all()


def test_pseudo_labels_stay_disparity_and_cannot_be_evaluated(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    write_png(images / "a.png", rgb)
    disparity = rng.uniform(0, 3, size=(20, 30)).astype(np.float32)
    store = LabelStore(tmp_path / "store")
    store.open_for("teacher", {"source_root": str(images)})
    low, high, _ = store.write_label("labels/a.png", disparity)
    store.append([{"source": "a.png", "hash": "h", "status": "ok", "error": "", "height": 20, "width": 30,
                   "label": "labels/a.png", "min": low, "max": high, "teacher": "teacher"}])
    source = sources.label_store(tmp_path / "store")
    assert source.kind == "pseudo" and len(source) == 1
    item = DepthDataset(source, crop_size=20, normalize=False, flip_p=0.0, seed=0)[0]
    assert item["kind"] == "pseudo"
    image = np.rint(item["image"].numpy().transpose(1, 2, 0) * 255)
    left = next(x0 for x0 in range(11) if np.array_equal(image, rgb[:, x0:x0 + 20]))  # the crop window
    restored = store.read_disparity(store.rows()[0])[:, left:left + 20]
    expected, _ = minmax_normalize(restored, np.ones((20, 20), bool))
    np.testing.assert_allclose(item["target"].numpy(), expected, atol=1e-6)  # not 1 / disparity
    with pytest.raises(ValueError, match="pseudo-labels are not ground truth"):
        DepthDataset(source, train=False)
