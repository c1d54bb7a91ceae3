"""Metric depth: SiLog loss, metric models (official sigmoid * max_depth head), mode: metric training, eval --space metric."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pseudodepth import losses
from pseudodepth.config import ConfigError, load_config
from pseudodepth.convert import hf_to_official
from pseudodepth.evaluate import evaluate
from pseudodepth.metrics import evaluate_image
from pseudodepth.models import (
    build_model,
    fingerprint,
    is_metric,
    load_model,
    max_depth_of,
    official_metric_max_depth,
    save_checkpoint,
    spec_is_metric,
)
from pseudodepth.train import train
from train_helpers import labeled_folder, write_config


def read_log(out: Path) -> list[dict]:
    import csv

    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- SiLog


def slow_silog(pred, target, valid, lambd=0.5):
    """V2 metric_depth SiLogLoss written out pixel by pixel over the whole batch."""
    diffs = []
    for b in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            for j in range(pred.shape[2]):
                t = float(target[b, i, j])
                if bool(valid[b, i, j]) and math.isfinite(t) and t > 0:
                    diffs.append(math.log(t) - math.log(float(pred[b, i, j])))
    mean_sq = sum(d * d for d in diffs) / len(diffs)
    mean = sum(diffs) / len(diffs)
    return math.sqrt(mean_sq - lambd * mean * mean)


@pytest.mark.parametrize("lambd", [0.5, 0.0, 1.0])
def test_silog_matches_a_slow_reference_with_masks(lambd):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 5, 7, generator=g, dtype=torch.float64) * 10 + 0.1
    target = torch.rand(3, 5, 7, generator=g, dtype=torch.float64) * 10 + 0.1
    valid = torch.rand(3, 5, 7, generator=g) > 0.3
    valid[2] = False  # an image without valid pixels
    target[0, 0, 0] = float("nan")  # a non-finite target is invalid
    target[0, 0, 1] = 0.0  # so is a zero (missing) one
    got = losses.silog_loss(pred, target, valid, lambd)
    assert float(got) == pytest.approx(slow_silog(pred, target, valid, lambd), rel=1e-12)


def test_silog_equals_the_official_formula_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    pred = (torch.rand(2, 8, 8, generator=g) * 5 + 0.5).requires_grad_()
    target = torch.rand(2, 8, 8, generator=g) * 5 + 0.5
    valid = torch.rand(2, 8, 8, generator=g) > 0.2
    diff_log = torch.log(target[valid]) - torch.log(pred[valid])  # metric_depth/util/loss.py, verbatim
    official = torch.sqrt(torch.pow(diff_log, 2).mean() - 0.5 * torch.pow(diff_log.mean(), 2))
    loss = losses.silog_loss(pred, target, valid)
    assert torch.equal(loss, official)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[~valid] == 0).all() and pred.grad[valid].abs().sum() > 0
    # Scale invariance with lambda = 1: a global scale of the prediction costs nothing.
    assert float(losses.silog_loss(pred.detach() * 3, pred.detach(), valid, 1.0)) < 1e-3


def test_silog_without_valid_pixels_is_zero_with_a_graph():
    pred = torch.ones(1, 4, 4, requires_grad=True)
    loss = losses.silog_loss(pred, torch.ones(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert (pred.grad == 0).all()
    with pytest.raises(ValueError, match="lambd"):
        losses.silog_loss(pred, pred, torch.ones(1, 4, 4, dtype=torch.bool), 1.5)


def test_metric_cutmix_target_takes_b_inside_the_box():
    a, b = torch.full((1, 2, 3), 1.0), torch.full((1, 2, 3), 5.0)
    va, vb = torch.ones(1, 2, 3, dtype=torch.bool), torch.zeros(1, 2, 3, dtype=torch.bool)
    mask = torch.tensor([[[True, False, False], [True, True, False]]])
    target, valid = losses.metric_cutmix_target(a, b, va, vb, mask)
    assert target.tolist() == [[[5.0, 1.0, 1.0], [5.0, 5.0, 1.0]]] and valid.tolist() == (~mask).tolist()


# ----------------------------------------------------------------------------- metric models


def test_official_metric_names():
    assert official_metric_max_depth("depth_anything_v2_metric_hypersim_vitl.pth") == 20.0
    assert official_metric_max_depth("/x/depth_anything_v2_metric_vkitti_vits.pth") == 80.0
    assert official_metric_max_depth("depth_anything_v2_vits.pth") is None


def test_official_metric_checkpoint_is_sigmoid_times_max_depth(tmp_path):
    """The same weights under a metric and a relative name: conv3's output through Sigmoid * 20 vs ReLU."""
    state = hf_to_official(build_model("v2", "tiny", seed=3).state_dict())
    metric_path = tmp_path / "depth_anything_v2_metric_hypersim_vitt.pth"
    torch.save(state, metric_path)
    torch.save(state, tmp_path / "depth_anything_v2_vitt.pth")
    metric, relative = load_model(metric_path), load_model(tmp_path / "depth_anything_v2_vitt.pth")
    assert is_metric(metric) and not is_metric(relative) and max_depth_of(metric) == 20.0
    assert spec_is_metric(metric_path) and not spec_is_metric(tmp_path / "depth_anything_v2_vitt.pth")
    logits = {}
    metric.head.conv3.register_forward_hook(lambda m, i, o: logits.setdefault("metric", o))
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        out = metric(pixel_values=x).predicted_depth
        rel = relative(pixel_values=x).predicted_depth
    assert torch.allclose(out, torch.sigmoid(logits["metric"][:, 0]) * 20.0)
    assert torch.allclose(rel, torch.relu(logits["metric"][:, 0]))
    # --max-depth overrides the name; the fingerprint sees the range.
    eighty = load_model(metric_path, max_depth=80.0)
    with torch.no_grad():
        assert torch.allclose(eighty(pixel_values=x).predicted_depth, out * 4)
    assert fingerprint(eighty) != fingerprint(metric)
    # A saved metric model is a Hugging Face folder that transformers reads as metric.
    save_checkpoint(metric, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    assert is_metric(again) and max_depth_of(again) == 20.0 and spec_is_metric(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="metric models only"):
        load_model(save_checkpoint(relative, tmp_path / "rel"), max_depth=20.0)


def test_predict_raw_writes_metres(tmp_path):
    from pseudodepth.predict import predict_files

    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(rgb).save(tmp_path / "a.png")
    model = load_model("da-v2-tiny", max_depth=10.0)
    written, errors = predict_files("", [tmp_path / "a.png"], tmp_path / "out", raw=True, input_size=42,
                                    model=model, progress=False)
    depth = np.load(tmp_path / "out" / "a.npy")
    assert depth.shape == (30, 40) and 0 < depth.min() and depth.max() < 10.0 and not errors


# ----------------------------------------------------------------------------- training


def test_metric_training_from_a_relative_preset(tmp_path: Path, one_thread) -> None:
    labeled_folder(tmp_path / "labeled", count=2)
    config = load_config(write_config(tmp_path / "c.yaml", mode="metric", model={"max_depth": 10.0},
                                      train={"steps": 25}, augment={"flip_p": 0.0}))
    final = train(config)
    rows = read_log(tmp_path / "run")
    values = [float(r["loss"]) for r in rows]
    assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), values
    assert float(rows[0]["lr_decoder"]) == pytest.approx(10 * float(rows[0]["lr_encoder"]))
    model = load_model(final)
    assert is_metric(model) and max_depth_of(model) == 10.0
    # The encoder came from the relative preset; the decoder is a fresh metric one.
    rel = load_model("da-v2-tiny")
    fresh = build_model("v2", "tiny", max_depth=10.0)
    assert not torch.equal(model.head.conv3.weight, rel.head.conv3.weight)
    from pseudodepth.train import build_model as train_build

    start = train_build(config)
    assert torch.equal(start.backbone.embeddings.patch_embeddings.projection.weight,
                       rel.backbone.embeddings.patch_embeddings.projection.weight)
    assert torch.equal(start.head.conv3.weight, fresh.head.conv3.weight)


def test_metric_student_on_aligned_pseudo_labels(tmp_path: Path, one_thread) -> None:
    from pseudodepth.align import AlignSettings, sparse_sample
    from pseudodepth import infer
    from pseudodepth.imageio import read_rgb
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.synth import write_domain

    labeled_folder(tmp_path / "labeled", count=2)
    write_domain(tmp_path / "unlabeled", "target", 3, 100, (42, 56), with_depth=False)
    teacher = load_model("da-v2-tiny")
    rng = np.random.default_rng(0)
    (tmp_path / "sparse").mkdir()
    for path in sorted((tmp_path / "unlabeled" / "images").iterdir()):
        # LiDAR of a world in which this random teacher is exactly right up to scale and shift
        depth = 1.0 / (0.5 * infer.predict(teacher, read_rgb(path), 42) + 0.05)
        np.save(tmp_path / "sparse" / (path.stem + ".npy"), sparse_sample(depth, depth > 0, 0.05, rng, noise=0.01))
    settings = LabelSettings(input_size=42, align=AlignSettings(str(tmp_path / "sparse"), min_points=5))
    report = label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", settings=settings,
                          workers=0, progress=False, model=teacher)
    assert report.ok == 3, report.failures
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "relative", workers=0, progress=False,
                 settings=LabelSettings(input_size=42))
    path = write_config(tmp_path / "c.yaml", mode="metric", model={"max_depth": 30.0},
                        train={"steps": 3, "batch_size": 3}, augment={"cutmix_p": 1.0},
                        data={"unlabeled": [{"type": "label_store", "root": "labels"}]})
    final = train(load_config(path))
    rows = read_log(tmp_path / "run")
    assert len(rows) == 3 and all(float(r["cutmix_area"]) > 0 for r in rows)
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "labeled_silog", "unlabeled_silog"))
    assert is_metric(load_model(final))
    # Metric pseudo-labels alone train too (no labeled data), from the metric checkpoint just made.
    only = write_config(tmp_path / "only.yaml", mode="metric", model={"init": str(final)},
                        train={"steps": 2, "batch_size": 2, "out": "run2"},
                        data={"labeled": [], "unlabeled": [{"type": "label_store", "root": "labels"}]})
    assert max_depth_of(load_model(train(load_config(only)))) == 30.0
    # A relative store cannot train a metric model: said before any model is built.
    bad = write_config(tmp_path / "bad.yaml", mode="metric", model={"max_depth": 30.0}, train={"out": "run3"},
                       data={"unlabeled": [{"type": "label_store", "root": "relative"}]})
    with pytest.raises(ValueError, match="relative disparity labels.*--align-to"):
        train(load_config(bad))


def test_metric_config_errors(tmp_path: Path) -> None:
    labeled_folder(tmp_path / "labeled", count=1)
    with pytest.raises(ConfigError, match="model.max_depth is required in mode: metric"):
        load_config(write_config(tmp_path / "a.yaml", mode="metric"))
    with pytest.raises(ConfigError, match="model.max_depth applies to mode: metric only"):
        load_config(write_config(tmp_path / "b.yaml", model={"max_depth": 10.0}))
    with pytest.raises(ConfigError, match="feature_alignment.enabled"):
        load_config(write_config(tmp_path / "c.yaml", mode="metric", model={"max_depth": 10.0},
                                 feature_alignment={"enabled": True}))
    with pytest.raises(ConfigError, match="loss.silog_lambda"):
        load_config(write_config(tmp_path / "d.yaml", mode="metric", model={"max_depth": 10.0},
                                 loss={"silog_lambda": 2.0}))
    config = yaml.safe_load((tmp_path / "d.yaml").read_text())
    assert config["mode"] == "metric"


# ----------------------------------------------------------------------------- eval


def test_metric_protocol_is_unaligned_and_clipped():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    valid = gt > 0
    pred = np.array([[1.25, 1.0], [8.0, 3.0]])  # metres; the last pixel has no ground truth
    scores = evaluate_image(pred, gt, valid, 1e-3, 6.0, space="metric")
    # Clipped to 6 m: |1.25-1|/1, |1-2|/2, |6-4|/4 -> abs_rel = (0.25 + 0.5 + 0.5) / 3
    assert scores["abs_rel"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt((0.25 ** 2 + 1 + 4) / 3))
    assert scores["delta1"] == 0.0  # ratios 1.25 (not < 1.25), 2, 1.5
    assert scores["delta2"] == pytest.approx(2 / 3)  # 1.25 and 1.5 < 1.5625
    assert scores["n_valid"] == 3
    # The relative protocol would have aligned the scale away; the metric one keeps the error.
    assert evaluate_image(2 * gt + 1e-9, gt, valid, 1e-3, 10.0, space="metric")["abs_rel"] == pytest.approx(1.0)
    assert evaluate_image(2 * gt + 1e-9, gt, valid, 1e-3, 10.0, space="depth")["abs_rel"] == pytest.approx(0, abs=1e-6)


def test_eval_puts_relative_and_metric_protocols_side_by_side(tmp_path):
    root = labeled_folder(tmp_path / "data", count=2, size=(28, 28))
    source = {"type": "folder", "root": str(root)}
    from pseudodepth.data import make_source

    gts = [make_source(source).load(i)[1] for i in range(2)]
    calls = iter(range(100))

    def double(rgb):  # a metric "model" that is twice too far: metric AbsRel 1, aligned in depth space 0
        return 2.0 * gts[next(calls) % 2]

    metric_model = load_model("da-v2-tiny", max_depth=10.0)
    results = evaluate({"double": double, "tiny-metric": metric_model, "tiny": "da-v2-tiny"}, source,
                       space=["depth", "metric"], input_size=28, progress=False, out_dir=tmp_path / "out")
    assert set(results) == {"double (depth)", "double (metric)", "tiny-metric (depth)", "tiny-metric (metric)",
                            "tiny (depth)"}
    assert results["double (metric)"]["abs_rel"] == pytest.approx(1.0, rel=1e-6)
    assert results["double (depth)"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert "double (metric)" in (tmp_path / "out" / "table.md").read_text()
    with pytest.raises(ValueError, match="relative disparity, which has no metric scale"):
        evaluate({"tiny": "da-v2-tiny"}, source, space="metric", input_size=28, progress=False)


def test_a_metric_teacher_writes_a_metric_store(tmp_path):
    from PIL import Image

    from pseudodepth.infer import predict
    from pseudodepth.label import LabelSettings, label_folder
    from pseudodepth.store import LabelStore

    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rgb).save(tmp_path / "imgs" / "a.png")
    report = label_folder("da-v2-tiny", tmp_path / "imgs", tmp_path / "store", workers=0, progress=False,
                          settings=LabelSettings(input_size=42, max_depth=10.0))
    store = LabelStore(tmp_path / "store")
    assert report.ok == 1 and store.label_space == "metric_depth" and store.meta()["prediction"] == "depth"
    row = store.rows()[0]
    assert row["scale"] is None and row["inliers"] is None
    expect = predict(load_model("da-v2-tiny", max_depth=10.0), rgb, 42)
    np.testing.assert_allclose(store.read_label(row), expect, rtol=math.log(row["max"] / row["min"]) / 65534 + 1e-6)
