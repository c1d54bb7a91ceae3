"""The demo: settings, per-pixel views against slow references, the ablation tables, and a quick end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pseudodepth import ablation, demo
from pseudodepth import report as rp
from pseudodepth.evaluate import evaluate
from pseudodepth.stages import finished_run
from pseudodepth.store import LabelStore

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"
BENCH = Path(__file__).resolve().parents[1] / "bench"


# --------------------------------------------------------------------------- settings


def test_shipped_settings_load_and_quick_shrinks_everything():
    full, quick = demo.load_settings(), demo.load_settings(quick=True)
    assert full.teacher["mode"] == "teacher" and full.student["mode"] == "student"
    assert full.input_size % 14 == 0 and quick.input_size % 14 == 0
    assert quick.data["n_target_unlabeled"] < full.data["n_target_unlabeled"]
    for recipe in (quick.teacher, quick.student):
        assert recipe["train"]["steps"] < full.teacher["train"]["steps"]
        assert recipe["train"]["crop_size"] == quick.teacher["train"]["crop_size"]
    # the student starts from the teacher's trained weights (no pretrained encoder exists here), and trains as long
    assert full.student["model"]["init"] == f"{full.teacher['train']['out']}/final"
    assert full.student["train"]["steps"] >= full.teacher["train"]["steps"]
    names = [row.name for row in ablation.plan(full)]
    assert names[1].startswith("teacher") and len(names) == len(set(names))


def test_settings_errors_name_the_file_and_key(tmp_path):
    shutil.copytree(demo.CONFIG_DIR, tmp_path / "configs")
    path = tmp_path / "configs" / "demo.yaml"
    path.write_text(path.read_text() + "\nsurprise: 1\n")
    with pytest.raises(ValueError, match=r"demo.yaml: unknown key\(s\) surprise"):
        demo.load_settings(config_dir=tmp_path / "configs")
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="demo.yaml: expected a mapping"):
        demo.load_settings(config_dir=tmp_path / "configs")


def test_link_first_images_links_the_first_images(tmp_path):
    source = tmp_path / "photos"
    source.mkdir()
    for name in ("b.jpg", "a.png", "README.md", "c.JPG"):
        (source / name).write_bytes(b"x")
    assert demo.link_first_images(source, None, tmp_path / "sub") == source
    subset = demo.link_first_images(source, 2, tmp_path / "sub")
    assert sorted(p.name for p in subset.iterdir()) == ["a.png", "b.jpg"]
    assert (subset / "a.png").resolve() == (source / "a.png").resolve()
    assert sorted(p.name for p in demo.link_first_images(source, 9, tmp_path / "sub").iterdir()) == [
        "a.png", "b.jpg", "c.JPG"]


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    demo.add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", "x", "--quick", "--no-photos"])
    assert (args.out, args.quick, args.ablation, args.photos) == ("x", True, False, False)
    args = parser.parse_args(["demo", "--ablation", "--photos", "p"])
    assert (args.out, args.ablation, args.photos) == ("demo_out", True, "p")


# --------------------------------------------------------------------------- per-pixel views


def views(errors, dropped):
    shape = errors[0].shape
    zeros = np.zeros(shape)
    return [demo.SceneViews(np.zeros(shape + (3,), np.uint8), zeros, np.ones(shape, bool), zeros, zeros, e, d)
            for e, d in zip(errors, dropped)]


def test_filter_overlap_counts_dropped_pixels_among_the_worst():
    error = np.arange(20, dtype=float).reshape(4, 5)  # worst 10%: the values >= quantile(0.9) = 18.1 -> {19}
    error_nan = error.copy()
    error_nan[0, 0] = np.nan
    dropped = np.zeros((4, 5), bool)
    dropped[3, 4] = dropped[0, 0] = dropped[1, 1] = True  # 19 (worst), 0/NaN, 6
    overlap = demo.filter_overlap(views([error, error_nan], [dropped, dropped]), 0.1)
    # image 1: 1 of 3 dropped pixels is among the worst; image 2: (0,0) has no ground truth -> 1 of 2
    assert overlap == pytest.approx(2 / 5)
    assert math.isnan(demo.filter_overlap(views([error], [np.zeros((4, 5), bool)]), 0.1))
    assert math.isnan(demo.filter_overlap(views([np.full((4, 5), np.nan)], [dropped]), 0.1))


# --------------------------------------------------------------------------- ablation tables


# --------------------------------------------------------------------------- end to end (quick)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("demo")
    photos = PHOTOS if PHOTOS.is_dir() else False
    metrics = demo.run_demo(out, quick=True, photos=photos, progress=False)
    return out, metrics, photos


def test_quick_demo_writes_metrics_and_report(quick_run):
    out, metrics, photos = quick_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"blind", "teacher", "student"}
    settings = demo.load_settings(quick=True)
    for name, model in metrics.items():
        assert set(model) == {"source_test", "target_test"}
        if name == "blind":
            continue
        for split, scores in model.items():  # the saved models, evaluated again through the public API
            again = evaluate({name: str(out / name / "final")}, f"folder:{out / 'data' / split}",
                             input_size=settings.input_size, progress=False)[name]
            assert scores == pytest.approx(again, rel=1e-6), (name, split)
    assert metrics["teacher"]["target_test"]["abs_rel"] != metrics["student"]["target_test"]["abs_rel"]
    for path in ("teacher/final/model.safetensors", "student/final/model.safetensors", "teacher/log.csv",
                 "student/log.csv", "labels/target_unlabeled/manifest.parquet", "eval/target_test/per_image.csv",
                 "run.json", "figures/examples.png", "figures/curves.png"):
        assert (out / path).is_file(), path
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for section in ("Results", "What the models see", "Training", "Run"):
        assert f"## {section}" in md and f">{section}</h2>" in page
    for figure in ("figures/examples.png", "figures/curves.png"):
        assert f"({figure})" in md and f'src="{figure}"' in page
    if photos:
        assert (out / "figures/photos.png").is_file() and "## Real photos" in md
    with Image.open(out / "figures/examples.png") as image:  # 2 target + 2 source rows, 6 columns
        assert image.width > 6 * 150 and image.height > 4 * 150


def test_report_without_photos_says_so(quick_run, tmp_path):
    out, metrics, _ = quick_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, symlinks=True)
    settings = demo.load_settings(quick=True)
    models = {name: demo.load_model(copy / name / "final") for name in demo.MODELS}
    run = demo.DemoRun(copy, settings, {}, metrics, "labels ok", None, "", {"data": 1.0})
    md, _ = demo.write_demo_report(run, models)
    assert "No real photos were pseudo-labelled" in md.read_text()


def test_zero_output_share_sees_a_collapsed_output(quick_run):
    out, _, _ = quick_run
    model = demo.load_model(out / "teacher" / "final")
    with torch.no_grad():
        model.head.conv3.bias.fill_(-1e6)  # the final ReLU is off everywhere
        assert demo.zero_output_share(model, out / "data" / "target_test", 56) == 1.0
        model.head.conv3.bias.fill_(1e6)
        assert demo.zero_output_share(model, out / "data" / "target_test", 56) == 0.0


def test_quick_demo_report_renders_in_chromium(quick_run):
    out, _, _ = quick_run
    if rp.find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser check is skipped")
    shot = np.asarray(Image.open(rp.screenshot(out / "report.html", out / "report.png")).convert("RGB"))
    assert shot.shape[:2] == (2400, 1200)
    coloured = (shot.max(axis=2).astype(int) - shot.min(axis=2)) > 60  # figure pixels, not text or white
    assert coloured.mean() > 0.05


def test_quick_ablation_reuses_the_main_run(quick_run):
    out, metrics, _ = quick_run
    settings = demo.load_settings(quick=True)
    settings.ablation = {**settings.ablation, "rows": [
        {"name": "+ pseudo-labeled target pool",
         "student": {"augment": {"strong": False, "cutmix_p": 0.0}, "loss": {"drop_top_ratio": 0.0},
                     "feature_alignment": {"enabled": False}}},
        {"name": "full recipe", "student": {}}]}
    reuse = {"teacher": demo.Trained(out / "teacher" / "final", fresh=False),
             "student": demo.Trained(out / "student" / "final", fresh=False)}
    summary = demo.run_ablation(out, settings, progress=False, reuse=reuse)
    rows = summary["per_seed"]["0"]
    names = [r.name for r in ablation.plan(settings)]
    assert list(rows) == names and summary["student_row"] == "full recipe"
    for model in ("teacher (labeled source only)", "full recipe"):  # the main run's models, not retrained
        key = "teacher" if model.startswith("teacher") else "student"
        assert rows[model]["target_test"]["abs_rel"] == pytest.approx(metrics[key]["target_test"]["abs_rel"])
    assert rows["image-blind mean map"]["target_test"]["abs_rel"] == pytest.approx(
        metrics["blind"]["target_test"]["abs_rel"])
    assert (out / "teacher_matched" / "final").is_dir() and (out / "oracle" / "final").is_dir()
    assert (out / "data" / "target_train" / "depth").is_dir() and (out / "data" / "target_val" / "depth").is_dir()
    wrong = [n for n in names if n.startswith("wrong labels")]
    assert len(wrong) == 2 and all("target_val" in rows[n] for n in wrong)
    assert (out / "labels" / "target_unlabeled_wrong" / "manifest.parquet").is_file()
    # the confidence row trains on the same pool labelled with flip-agreement maps; the edge row on the clean store
    quality = [n for n in names if rows[n]["group"] == "pseudo_label_quality"]
    assert len(quality) == 2 and names[-2:] == quality
    flip = LabelStore(out / "labels" / "target_unlabeled_flip")
    assert flip.meta()["settings"]["confidence"] == "flip" and all(r["confidence"] for r in flip.rows("ok"))
    for folder, loss in (("student_confidence", {"confidence": settings.ablation["confidence"]}),
                         ("student_edges", {"edge_aware": True})):
        config = yaml.safe_load((out / folder / "config.yaml").read_text())
        assert (out / folder / "final").is_dir() and loss.items() <= config["loss"].items()
    assert json.loads((out / "ablation.json").read_text())["per_seed"]["0"].keys() == rows.keys()
    text = (out / "ablation.md").read_text()
    assert "+ pseudo-labeled target pool" in text and "chosen on target_val" in text and "confidence and edges" in text


def test_bench_demo_results_tabulates_a_finished_run(quick_run, tmp_path, monkeypatch):
    out, metrics, _ = quick_run
    monkeypatch.syspath_prepend(str(BENCH))
    import demo_results  # bench/demo_results.py

    with pytest.raises(SystemExit, match="metrics.json: missing; run `pseudodepth demo --ablation"):
        demo_results.results_markdown(tmp_path)
    per_seed = {name: {"group": "baselines" if name != "student" else "table9", **scores, "zero_output_target": 0.0}
                for name, scores in (("image-blind mean map", metrics["blind"]),
                                     ("teacher (labeled source only)", metrics["teacher"]),
                                     ("student", metrics["student"]))}
    summary = {"seeds": [0], "command": "pseudodepth demo --ablation --quick", "per_seed": {"0": per_seed},
               "setup": "set-up", "student_row": "student"}
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "run.json"):
        shutil.copy(out / name, run / name)
    (run / "ablation.json").write_text(json.dumps(summary))
    demo_results.main(["--run", str(run), "--out", str(tmp_path / "demo.md")])
    text = (tmp_path / "demo.md").read_text()
    teacher_target = metrics["teacher"]["target_test"]["abs_rel"]
    assert "`pseudodepth demo --ablation --quick --out run`" in text
    assert text.count(f"{teacher_target:.4f}") == 2  # the demo table and the ablation's teacher row
    assert "| student |" in text and "trained models of the run" in text and "No run collapsed" in text


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_reuses_finished_models_and_retrains_changed_ones(tmp_path):
    run = tmp_path / "run"  # its own run: configs hold absolute paths, so a copied folder would not resume
    metrics = demo.run_demo(run, quick=True, photos=False, progress=False)
    shutil.rmtree(run / "student" / "final")  # killed while the student was training
    teacher_files = _mtimes(run / "teacher")
    labels = (run / "labels" / "target_unlabeled" / "manifest.parquet").read_bytes()
    resumed = demo.run_demo(run, quick=True, photos=False, progress=False, resume=True)
    assert _mtimes(run / "teacher") == teacher_files  # reused, not retrained
    assert (run / "labels" / "target_unlabeled" / "manifest.parquet").read_bytes() == labels  # nothing relabelled
    assert (run / "student" / "final" / "model.safetensors").is_file()
    assert resumed["teacher"] == metrics["teacher"]
    assert resumed["student"]["target_test"]["abs_rel"] == pytest.approx(metrics["student"]["target_test"]["abs_rel"],
                                                                       rel=1e-4)  # the same deterministic training
    student_files = _mtimes(run / "student")
    demo.run_demo(run, quick=True, photos=False, progress=False, resume=True)
    assert _mtimes(run / "student") == student_files

    settings = demo.with_seed(demo.load_settings(quick=True), 0)  # what run_demo trained (seed 0)
    name = "configs/demo_teacher.yaml"
    assert demo.train_recipe(settings.teacher, run, name=name, resume=True) == demo.Trained(
        run / "teacher" / "final", fresh=False)
    changed = demo.train_recipe(settings.teacher, run, {"optim": {"encoder_lr": 1e-6}}, name=name, resume=True)
    assert changed.fresh and "encoder_lr: 1.0e-06" in (run / "teacher" / "config.yaml").read_text()
    assert finished_run(run / "teacher", "something else") is None
    assert finished_run(run / "nothing_here", "") is None


def test_resume_continues_an_interrupted_training_from_its_checkpoint(tmp_path):
    """An interrupted recipe (a checkpoint, no final model) continues from its checkpoint: the steps before it
    are not trained again, and the result equals an uninterrupted run's."""
    settings = demo.with_seed(demo.load_settings(quick=True), 0)
    data = demo.generate_data(tmp_path / "run", settings.data)
    assert data["source_train"].is_dir()
    overrides = {"train": {"steps": 4, "save_every": 2}}
    whole = demo.train_recipe(settings.teacher, tmp_path / "run", {**overrides, "train": {**overrides["train"],
                                                                                        "out": "whole"}})
    part = demo.train_recipe(settings.teacher, tmp_path / "run", {**overrides, "train": {**overrides["train"],
                                                                                       "out": "part"}})
    shutil.rmtree(part.final)  # killed after the step-2 checkpoint (save_every 2; step 4 is the end)
    shutil.rmtree(part.final.parent / "checkpoints" / "step_000004", ignore_errors=True)
    checkpoint = part.final.parent / "checkpoints" / "step_000002"
    stamp = (checkpoint / "trainer.pt").stat().st_mtime_ns
    resumed = demo.train_recipe(settings.teacher, tmp_path / "run", {**overrides, "train": {**overrides["train"],
                                                                                          "out": "part"}}, resume=True)
    assert resumed.fresh and resumed.final == part.final
    assert (checkpoint / "trainer.pt").stat().st_mtime_ns == stamp  # kept, not removed and retrained
    a, b = demo.load_model(whole.final).state_dict(), demo.load_model(resumed.final).state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_generated_data_is_rendered_again_when_a_domain_definition_changes(tmp_path, monkeypatch):
    import dataclasses

    from pseudodepth import synth

    data = {"n_source_train": 1, "n_target_unlabeled": 1, "n_source_test": 1, "n_target_test": 1, "size": [16, 16],
            "seed": 3, "workers": 1}
    first = demo.generate_data(tmp_path, data)["target_test"] / "images" / "000000.png"
    before = first.read_bytes()
    assert demo.generate_data(tmp_path, data)["target_test"] / "images" / "000000.png" == first
    monkeypatch.setitem(synth.DOMAINS, "target", dataclasses.replace(synth.DOMAINS["target"], camera_effects=(1.0, 1.0)))
    demo.generate_data(tmp_path, data)
    assert first.read_bytes() != before  # same names, counts and seeds; another domain: new images
