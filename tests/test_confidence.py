"""Pseudo-label confidence: the flip-agreement formula, its maps in the label store, its use in training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pseudodepth.confidence import agreement, decode, encode
from pseudodepth.label import LabelSettings, label_folder
from pseudodepth.store import LabelStore


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The formula, pixel by pixel: exp(-|a - (s b + t)| / mean|a - median a|), (s, t) by normal equations."""
    ok = np.isfinite(a) & np.isfinite(b)
    pa, pb = a[ok].astype(np.float64), b[ok].astype(np.float64)
    n = pa.size
    sb, sa, sbb, sab = pb.sum(), pa.sum(), (pb * pb).sum(), (pa * pb).sum()
    det = n * sbb - sb * sb
    s, t = ((n * sab - sb * sa) / det, (sa * sbb - sb * sab) / det) if abs(det) > 1e-12 * n * sbb else (0.0, sa / n)
    m = np.mean(np.abs(pa - np.median(pa)))
    out = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
        if ok[idx]:
            r = abs(a[idx] - (s * b[idx] + t))
            out[idx] = np.exp(-r / m) if m > 0 else float(r == 0)
    return out


@pytest.mark.parametrize("case", ["random", "affine_copy", "with_nan", "constant"])
def test_flip_agreement_against_its_definition(case):
    rng = np.random.default_rng(0)
    a = rng.random((2, 7, 9)) * 3 + 0.5
    b = {"random": a + 0.3 * rng.standard_normal(a.shape), "affine_copy": 2 * a + 3,
         "with_nan": np.where(rng.random(a.shape) > 0.2, a * 1.1, np.nan), "constant": a}[case]
    if case == "constant":
        a = np.full(a.shape, 2.0)
        b = a.copy()
    got = agreement(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()
    for i in range(a.shape[0]):
        ref = _reference(a[i].astype(np.float32).astype(np.float64), b[i].astype(np.float32).astype(np.float64))
        assert np.allclose(got[i], ref, atol=1e-4), case
    assert ((got >= 0) & (got <= 1)).all()
    if case in ("affine_copy", "constant"):
        assert np.allclose(got, 1.0, atol=1e-4)  # agreement up to scale and shift is full confidence
    q = encode(got)
    assert np.abs(decode(q) - got).max() <= 0.5 / 65535 + 1e-7


def _folder(tmp_path):
    rng = np.random.default_rng(1)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    return imgs


def test_label_confidence_flip_stores_a_map_per_label_and_records_it(tmp_path, tiny_model):
    from pseudodepth.data.sources import label_store
    from pseudodepth.infer import forward
    from pseudodepth.preprocess import prepare, upsample

    imgs = _folder(tmp_path)
    label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                 settings=LabelSettings(input_size=42, confidence="flip"))
    store = LabelStore(tmp_path / "s")
    meta = json.loads((tmp_path / "s/store.json").read_text())
    assert meta["settings"]["confidence"] == "flip" and "exp(-|a - (s * b + t)|" in meta["confidence"]["formula"]
    for row in store.rows():
        assert row["confidence"] == "confidence/" + row["label"].split("/", 1)[1]
        conf = store.read_confidence(row)
        assert conf.shape == (30, 40) and conf.min() >= 0 and conf.max() <= 1
        # the map is the formula on the network-resolution predictions, upsampled like the label
        x = torch.from_numpy(prepare(np.asarray(Image.open(imgs / row["source"])), 42))[None]
        a = forward(tiny_model, x)
        b = forward(tiny_model, x.flip(-1)).flip(-1)
        ref = upsample(agreement(a, b), (30, 40))[0].numpy()
        assert np.abs(conf - ref).max() < 1e-4
        assert np.abs(store.read_disparity(row) - upsample(a, (30, 40))[0].numpy()).max() <= \
            (row["max"] - row["min"]) / 65535 + 1e-5  # without --tta the label is the plain prediction
    # training: pixels below loss.confidence.min are invalid in the source (dropped before the filter)
    threshold = float(np.median(store.read_confidence(store.rows()[0])))
    _, _, valid_all = label_store(store.root).load(0)
    _, _, valid = label_store(store.root, min_confidence=threshold).load(0)
    conf = store.read_confidence(store.rows()[0])
    assert valid_all.all() and np.array_equal(valid, conf >= threshold) and 0 < valid.mean() < 1
    # a store without maps is refused when a minimum is asked for
    label_folder("da-v2-tiny", imgs, tmp_path / "plain", workers=0, model=tiny_model, progress=False,
                 settings=LabelSettings(input_size=42))
    with pytest.raises(ValueError, match="no confidence map"):
        label_store(tmp_path / "plain", min_confidence=0.5)


def test_config_loss_confidence_is_validated():
    from pseudodepth.config import ConfigError, config_from_dict

    base = {"mode": "student", "model": {"init": "da-v2-tiny"},
            "data": {"labeled": [{"type": "folder", "root": "l"}], "unlabeled": [{"type": "label_store", "root": "s"}]}}
    config = config_from_dict({**base, "loss": {"confidence": {"min": 0.3}}}, check_paths=False)
    assert config.loss.confidence == {"min": 0.3}
    for bad in ({"min": 1.5}, {"max": 0.3}, 0.3):
        with pytest.raises(ConfigError, match="loss.confidence"):
            config_from_dict({**base, "loss": {"confidence": bad}}, check_paths=False)
    shards = {**base, "data": {**base["data"], "unlabeled": [{"type": "shards", "index": "x/index.json"}]}}
    # shard exports carry the maps (tests/test_shards.py: the round trip)
    assert config_from_dict({**shards, "loss": {"confidence": {"min": 0.3}}}, check_paths=False).loss.confidence


def test_second_input_size_is_one_and_a_half_times_to_the_nearest_multiple_of_14():
    from pseudodepth.confidence import second_input_size

    # 1.5 x: 777 -> 55.5 patches -> 56 (ties up); 756 = 54 x 14; 63 -> 4.5 -> 5; 21 -> 1.5 -> 2
    assert [second_input_size(n) for n in (518, 504, 42, 14, 28)] == [784, 756, 70, 28, 42]


def _slow_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with align_corners=True, pixel by pixel: output (i, j) samples the input at
    (i (h - 1) / (H - 1), j (w - 1) / (W - 1))."""
    h, w = x.shape
    out = np.zeros(size)
    for i in range(size[0]):
        for j in range(size[1]):
            y = i * (h - 1) / (size[0] - 1) if size[0] > 1 else 0.0
            xx = j * (w - 1) / (size[1] - 1) if size[1] > 1 else 0.0
            y0, x0 = min(int(y), h - 2), min(int(xx), w - 2)
            fy, fx = y - y0, xx - x0
            out[i, j] = ((1 - fy) * (1 - fx) * x[y0, x0] + (1 - fy) * fx * x[y0, x0 + 1]
                         + fy * (1 - fx) * x[y0 + 1, x0] + fy * fx * x[y0 + 1, x0 + 1])
    return out


def test_label_confidence_scales_against_its_definition(tmp_path, tiny_model):
    """``--confidence scales``: the stored map is the agreement formula between the prediction at the input
    size (42) and the prediction at 70 (1.5 x 42 to a multiple of 14) resized to the first's resolution."""
    from pseudodepth.infer import forward
    from pseudodepth.preprocess import prepare, upsample

    imgs = _folder(tmp_path)
    report = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                          settings=LabelSettings(input_size=42, confidence="scales"))
    assert report.ok == 2
    store = LabelStore(tmp_path / "s")
    meta = store.meta()
    assert meta["settings"]["confidence"] == meta["confidence"]["method"] == "scales"
    assert "1.5 x the input size" in meta["confidence"]["formula"]
    flip = label_folder("da-v2-tiny", imgs, tmp_path / "f", workers=0, model=tiny_model, progress=False,
                        settings=LabelSettings(input_size=42, confidence="flip"))
    assert flip.ok == 2 and LabelStore(tmp_path / "f").meta()["teacher"] != meta["teacher"], "method in the fingerprint"
    for row in store.rows():
        rgb = np.asarray(Image.open(imgs / row["source"]))
        x1, x2 = prepare(rgb, 42), prepare(rgb, 70)
        assert x1.shape == (3, 42, 56) and x2.shape == (3, 70, 98)  # lower-bound resize of 30 x 40 at each size
        a = forward(tiny_model, torch.from_numpy(x1)[None])[0].double().numpy()
        b = _slow_bilinear(forward(tiny_model, torch.from_numpy(x2)[None])[0].double().numpy(), a.shape)
        ref = upsample(torch.from_numpy(_reference(a, b)).float()[None], (30, 40))[0].numpy()
        conf = store.read_confidence(row)
        assert conf.shape == (30, 40) and np.abs(conf - ref).max() < 1e-4
        assert 0 < conf.min() < conf.max() <= 1
        # the label is the prediction at the input size
        label = upsample(torch.from_numpy(a).float()[None], (30, 40))[0].numpy()
        assert np.abs(store.read_disparity(row) - label).max() <= (row["max"] - row["min"]) / 65535 + 1e-5


def test_label_confidence_scales_of_a_constant_prediction_is_one(tmp_path, tiny_model):
    """Edge case: a teacher whose output is constant agrees with itself at every scale (mean absolute
    deviation 0 and residual 0 -> confidence 1), and its label is constant."""
    import copy

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.conv3.weight.zero_()
        model.head.conv3.bias.fill_(0.7)
    imgs = _folder(tmp_path)
    label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=model, progress=False,
                 settings=LabelSettings(input_size=42, confidence="scales"))
    store = LabelStore(tmp_path / "s")
    for row in store.rows():
        assert row["status"] == "ok" and row["min"] == pytest.approx(0.7) and row["max"] - row["min"] < 1e-6
        assert (store.read_confidence(row) == 1.0).all()
