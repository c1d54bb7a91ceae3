"""`pseudodepth eval`: the evaluation loop, its outputs and the --data spec parser.

The data are small generated folders in the layout of `pseudodepth.data.folder`: PNG images under
`root/images/` and depth (16-bit PNG in millimetres, or .npy) under `root/depth/`. The depth of
a pixel is a function of its red value, `depth = 1 + r / 50` m (exact in millimetres), so a fake
model that reads the image can predict the true disparity up to any affine map.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudodepth import metrics
from pseudodepth.data.formats import write_png16
from pseudodepth.data.sources import SourceConfigError, make_source
from pseudodepth.evaluate import (
    DataSpecError,
    evaluate,
    format_table,
    name_models,
    parse_data_spec,
    read_data_spec,
)

SHAPE = (24, 32)


def depth_of(rgb: np.ndarray) -> np.ndarray:
    """The true depth (m) of the generated scenes: 1 + red / 50."""
    return 1.0 + rgb[..., 0].astype(np.float64) / 50.0


def affine_disparity(rgb: np.ndarray) -> np.ndarray:
    """A perfect relative-depth model: 3 * true disparity + 0.5."""
    return 3.0 / depth_of(rgb) + 0.5


def noisy_disparity(rgb: np.ndarray) -> np.ndarray:
    """An imperfect model: the true disparity times a smooth ramp (deterministic)."""
    ramp = np.linspace(0.7, 1.3, rgb.shape[1])[None, :]
    return ramp / depth_of(rgb)


def write_scene(root: Path, name: str, rgb: np.ndarray, depth: np.ndarray | None = None, ext: str = ".png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "images" / f"{name}.png")
    depth = depth_of(rgb) if depth is None else depth
    if ext == ".png":
        write_png16(root / "depth" / f"{name}.png", depth, 1000.0)
    else:
        np.save(root / "depth" / f"{name}.npy", depth.astype(np.float32))


def random_rgb(rng: np.random.Generator, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture()
def scenes(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "scenes"
    for i in range(3):
        write_scene(root, f"scene_{i}", random_rgb(rng))
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the loop


def test_affine_model_is_perfect(scenes: Path) -> None:
    results = evaluate({"perfect": affine_disparity}, {"type": "folder", "root": str(scenes)}, progress=False)
    scores = results["perfect"]
    assert scores["abs_rel"] < 1e-5 and scores["rmse"] < 1e-4 and scores["silog"] < 1e-3
    assert scores["delta1"] == scores["delta2"] == scores["delta3"] == 1.0
    assert scores["n_images"] == 3 and scores["n_skipped"] == 0
    assert set(scores) == {*metrics.METRIC_NAMES, "n_images", "n_skipped"}


def reference_abs_rel_delta1(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, low: float, high: float):
    """Slow reference from the definition: lstsq fit of 1/gt on [pred, 1], invert, clip, loop over pixels."""
    design = np.stack([pred[mask], np.ones(mask.sum())], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, 1.0 / gt[mask], rcond=None)
    rel, good = [], []
    for p, g in zip(pred[mask], gt[mask]):
        depth = min(max(1.0 / max(scale * p + shift, 1.0 / high), low), high)
        rel.append(abs(depth - g) / g)
        good.append(max(depth / g, g / depth) < 1.25)
    return float(np.mean(rel)), float(np.mean(good))


def test_matches_reference_with_crop_and_range_override(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    rgbs = [random_rgb(rng, (40, 48)) for _ in range(2)]
    for i, rgb in enumerate(rgbs):
        write_scene(root, f"im{i}", rgb)
    low, high = 1.5, 5.0
    results = evaluate({"noisy": noisy_disparity}, {"type": "folder", "root": str(root)}, crop="garg",
                       min_depth=low, max_depth=high, progress=False)
    expected_rel, expected_delta = [], []
    for rgb in rgbs:
        gt = depth_of(rgb).astype(np.float32).astype(np.float64)  # as read back from the PNG
        mask = metrics.garg_crop_mask(*gt.shape) & (gt > low) & (gt < high)
        rel, delta = reference_abs_rel_delta1(noisy_disparity(rgb), gt, mask, low, high)
        expected_rel.append(rel)
        expected_delta.append(delta)
    assert results["noisy"]["abs_rel"] == pytest.approx(np.mean(expected_rel), rel=1e-6)
    assert results["noisy"]["delta1"] == pytest.approx(np.mean(expected_delta), abs=1e-12)
    assert results["noisy"]["abs_rel"] > 0.01


def test_outputs_written_and_consistent(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = evaluate({"perfect": affine_disparity, "noisy": noisy_disparity}, f"folder:{scenes}",
                       out_dir=out, progress=False)
    report = json.loads((out / "metrics.json").read_text())
    assert report["models"] == results  # JSON round-trips floats exactly
    assert report["data"]["spec"]["type"] == "folder" and report["data"]["n_samples"] == 3
    assert report["data"]["max_depth"] == "inf" and report["settings"]["space"] == "disparity"
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 2 * 3
    assert list(rows[0]) == ["model", "index", "image", *metrics.METRIC_NAMES, "n_valid"]
    for name, scores in report["models"].items():
        mine = [row for row in rows if row["model"] == name]
        assert [int(row["index"]) for row in mine] == [0, 1, 2]
        for metric in metrics.METRIC_NAMES:
            assert scores[metric] == pytest.approx(np.mean([float(row[metric]) for row in mine]), rel=1e-9, abs=1e-12)
        assert all(int(row["n_valid"]) == SHAPE[0] * SHAPE[1] for row in mine)
    assert (out / "table.md").read_text().strip() == format_table(results)


def test_two_models_side_by_side_read_each_image_once(scenes: Path) -> None:
    source = make_source({"type": "folder", "root": str(scenes)})
    reads: list[str] = []

    def counting_read(sample):
        reads.append(sample.name)
        return source.read_image(sample)

    counted = dataclasses.replace(source, read_image=counting_read)
    results = evaluate({"perfect": affine_disparity, "noisy": noisy_disparity}, counted, progress=False)
    assert sorted(reads) == sorted(s.name for s in source.samples)
    assert list(results) == ["perfect", "noisy"]
    assert results["perfect"]["abs_rel"] < results["noisy"]["abs_rel"]
    assert results["perfect"]["delta1"] >= results["noisy"]["delta1"]


def test_limit_evaluates_first_images(scenes: Path) -> None:
    results = evaluate({"m": noisy_disparity}, {"type": "folder", "root": str(scenes)}, limit=2, progress=False)
    assert results["m"]["n_images"] == 2
    with pytest.raises(ValueError, match="limit"):
        evaluate({"m": noisy_disparity}, {"type": "folder", "root": str(scenes)}, limit=0, progress=False)


def test_nan_and_inf_ground_truth_ignored(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "npy"
    rgb = random_rgb(rng)
    depth = depth_of(rgb)
    depth[0, :5] = np.nan
    depth[3, 4] = np.inf
    depth[5, 6] = -np.inf
    write_scene(root, "a", rgb, depth, ext=".npy")
    out = tmp_path / "out"
    results = evaluate({"perfect": affine_disparity}, {"type": "folder", "root": str(root), "depth_ext": ".npy"},
                       out_dir=out, progress=False)
    assert results["perfect"]["abs_rel"] < 1e-5 and results["perfect"]["delta1"] == 1.0
    assert int(read_csv(out / "per_image.csv")[0]["n_valid"]) == SHAPE[0] * SHAPE[1] - 7
    # The same pixels with wrong finite depth do count: the fake model is no longer perfect.
    depth[np.isnan(depth) | np.isinf(depth)] = 50.0
    write_scene(root, "a", rgb, depth, ext=".npy")
    worse = evaluate({"perfect": affine_disparity}, {"type": "folder", "root": str(root), "depth_ext": ".npy"},
                     progress=False)
    assert worse["perfect"]["abs_rel"] > 1e-3


def test_image_without_valid_pixel_is_skipped_and_counted(scenes: Path, tmp_path: Path) -> None:
    write_scene(scenes, "scene_empty", random_rgb(np.random.default_rng(3)), np.zeros(SHAPE))
    out = tmp_path / "out"
    results = evaluate({"perfect": affine_disparity}, {"type": "folder", "root": str(scenes)}, out_dir=out,
                       progress=False)
    assert results["perfect"]["n_images"] == 3 and results["perfect"]["n_skipped"] == 1
    assert results["perfect"]["abs_rel"] < 1e-5
    empty = [row for row in read_csv(out / "per_image.csv") if row["image"].endswith("scene_empty.png")]
    assert len(empty) == 1 and empty[0]["n_valid"] == "0" and empty[0]["abs_rel"] == ""
    assert "(1 skipped)" in format_table(results)


def test_no_valid_pixel_anywhere_raises(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    write_scene(root, "a", random_rgb(np.random.default_rng(4)), np.zeros(SHAPE))
    with pytest.raises(ValueError, match="valid ground-truth pixel"):
        evaluate({"m": affine_disparity}, {"type": "folder", "root": str(root)}, progress=False)


def test_depth_space_alignment(scenes: Path) -> None:
    def affine_depth(rgb: np.ndarray) -> np.ndarray:
        return 2.0 * depth_of(rgb) + 0.3

    depth_space = evaluate({"m": affine_depth}, {"type": "folder", "root": str(scenes)}, space="depth",
                           progress=False)
    assert depth_space["m"]["abs_rel"] < 1e-5 and depth_space["m"]["delta1"] == 1.0
    disparity_space = evaluate({"m": affine_depth}, {"type": "folder", "root": str(scenes)}, progress=False)
    assert disparity_space["m"]["abs_rel"] > 1e-2
    with pytest.raises(ValueError, match="space"):
        evaluate({"m": affine_depth}, {"type": "folder", "root": str(scenes)}, space="log", progress=False)


def test_kb_crop_then_garg_crop(tmp_path: Path) -> None:
    root = tmp_path / "kitti_like"
    rng = np.random.default_rng(5)
    write_scene(root, "frame", random_rgb(rng, (356, 1220)))
    seen_shapes = []

    def model(rgb: np.ndarray) -> np.ndarray:
        seen_shapes.append(rgb.shape[:2])
        return affine_disparity(rgb)

    out = tmp_path / "out"
    results = evaluate({"m": model}, {"type": "folder", "root": str(root), "kb_crop": True, "crop": "garg"},
                       out_dir=out, progress=False)
    assert seen_shapes == [(352, 1216)]
    assert int(read_csv(out / "per_image.csv")[0]["n_valid"]) == metrics.garg_crop_mask(352, 1216).sum()
    assert results["m"]["abs_rel"] < 1e-5
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"]["crop"] == "garg" and report["data"]["kb_crop"] is True
    small = tmp_path / "small"
    write_scene(small, "frame", random_rgb(rng))
    with pytest.raises(ValueError, match="frame.png.*352 x 1216.*kb_crop=false"):
        evaluate({"m": model}, {"type": "folder", "root": str(small)}, kb_crop=True, progress=False)


def test_tiny_model_spec_and_loaded_model(scenes: Path, tiny_model) -> None:
    results = evaluate({"spec": "da-v2-tiny", "loaded": tiny_model}, {"type": "folder", "root": str(scenes)},
                       input_size=56, limit=2, progress=False)
    assert results["spec"] == pytest.approx(results["loaded"], rel=1e-6)  # same preset, same seed
    # a second way to run the model: predict() at the same input size, as a plain callable
    from pseudodepth.infer import predict

    direct = evaluate({"direct": lambda rgb: predict(tiny_model, rgb, input_size=56)},
                      {"type": "folder", "root": str(scenes)}, limit=2, progress=False)["direct"]
    assert results["spec"] == pytest.approx(direct, rel=1e-5)
    assert results["spec"]["n_images"] == 2 and results["spec"]["abs_rel"] > 1e-3  # a random model is not perfect


def test_prediction_at_wrong_resolution_is_refused(scenes: Path) -> None:
    with pytest.raises(ValueError, match="image's resolution"):
        evaluate({"bad": lambda rgb: np.ones((4, 4))}, {"type": "folder", "root": str(scenes)}, progress=False)


# --------------------------------------------------------------------------- --data specs


def test_compact_specs_parse_to_source_configs() -> None:
    assert read_data_spec("nyu_mat:nyu_depth_v2_labeled.mat") == (
        {"type": "nyu_mat", "path": "nyu_depth_v2_labeled.mat"}, None)
    spec, _ = read_data_spec("kitti:/data/kitti,split=eigen_test.txt,crop=eigen,max_depth=80")
    assert spec == {"type": "kitti", "image_root": "/data/kitti", "depth_root": "/data/kitti",
                    "list_file": "eigen_test.txt", "crop": "eigen", "max_depth": 80}
    spec, _ = read_data_spec("nyu_mat:x.mat,indices=[0, 1, 2]")
    assert spec["indices"] == [0, 1, 2]
    assert read_data_spec("diode:/data/diode/val/indoors")[0] == {"type": "diode", "root": "/data/diode/val/indoors"}


def test_parse_data_spec_builds_sources(scenes: Path, tmp_path: Path) -> None:
    source = parse_data_spec(f"folder:{scenes},max_depth=20,crop=eigen")
    assert len(source) == 3 and source.max_depth == 20.0 and source.eval_crop == "eigen"
    assert len(parse_data_spec(str(scenes))) == 3  # a plain folder
    config = tmp_path / "configs" / "test.yaml"
    config.parent.mkdir()
    config.write_text(f"type: folder\nroot: ../{scenes.name}\nmin_depth: 0.5\n")
    from_file = parse_data_spec(config)
    assert len(from_file) == 3 and from_file.min_depth == 0.5
    json_config = tmp_path / "test.json"
    json_config.write_text(json.dumps({"type": "folder", "root": str(scenes)}))
    assert len(parse_data_spec(json_config)) == 3


def test_parse_data_spec_errors(scenes: Path, tmp_path: Path) -> None:
    with pytest.raises(DataSpecError, match="unknown source type 'nyu'.*folder.*kitti"):
        parse_data_spec("nyu:/data/nyu.mat")
    with pytest.raises(SourceConfigError, match="unknown key 'scale'.*png_scale"):
        parse_data_spec(f"folder:{scenes},scale=256")
    with pytest.raises(DataSpecError, match="no path"):
        parse_data_spec("folder:")
    with pytest.raises(DataSpecError, match="unknown evaluation crop 'center'.*garg"):
        parse_data_spec(f"folder:{scenes},crop=center")
    with pytest.raises(DataSpecError, match="neither TYPE:PATH"):
        parse_data_spec(str(tmp_path / "missing_folder"))
    with pytest.raises(DataSpecError, match="not found"):
        parse_data_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(DataSpecError, match="'type' key"):
        parse_data_spec(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        parse_data_spec(f"folder:{tmp_path / 'nothing'}")


# --------------------------------------------------------------------------- names and table


def test_name_models() -> None:
    assert name_models(["runs/student/", "weights/depth_anything_v2_vits.pth", "da-v2-small"]) == {
        "student": "runs/student/", "depth_anything_v2_vits": "weights/depth_anything_v2_vits.pth",
        "da-v2-small": "da-v2-small"}
    assert list(name_models(["a/model", "b/model"])) == ["model", "model-2"]
    assert name_models(["x.pth", "y.pth"], ["teacher", "student"]) == {"teacher": "x.pth", "student": "y.pth"}
    with pytest.raises(ValueError, match="one name per model"):
        name_models(["x.pth", "y.pth"], ["only"])
    with pytest.raises(ValueError, match="distinct"):
        name_models(["x.pth", "y.pth"], ["same", "same"])


def test_format_table_marks_direction_and_best() -> None:
    base = {m: 0.5 for m in metrics.METRIC_NAMES}
    results = {"teacher": {**base, "abs_rel": 0.085, "delta1": 0.93, "n_images": 654, "n_skipped": 0},
               "student": {**base, "abs_rel": 0.076, "delta1": 0.95, "n_images": 654, "n_skipped": 0}}
    lines = format_table(results).splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---|")
    assert "AbsRel ↓" in lines[0] and "δ1 ↑" in lines[0]
    assert "| teacher | 0.0850 |" in lines[2] and "| student | **0.0760** |" in lines[3]
    assert "**0.950**" in lines[3] and "0.930" in lines[2] and "**" not in lines[2].split("|")[2]
    single = format_table({"only": results["teacher"]})
    assert "**" not in single and single.count("\n") == 2
