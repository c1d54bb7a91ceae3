"""Metric pseudo-labels from sparse "LiDAR" at small scale: relative teacher -> aligned labels -> metric student.

Per seed, on generated scenes with exact depth (``pseudodepth.synth``):

1. a relative teacher (``da-v2-tiny``) trains on labeled outdoor scenes (``synth`` domain ``outdoor``; ``mode: teacher``);
2. every outdoor image (unlabeled pool and held-out test) gets sparse "LiDAR": 1-5% of its valid
   pixels (drawn per image), 2% multiplicative noise and 10% gross outliers (depth x 0.3..3);
3. ``label --align-to`` turns the teacher's disparity on the pool into metric pseudo-labels (RANSAC
   least-squares scale and shift per image);
4. a metric student (``mode: metric``, the teacher's encoder, a fresh ``sigmoid * max_depth``
   decoder) trains on those labels only;
5. on the outdoor test split, metric AbsRel and delta1 against the exact depth of
   - the student, as it is (metric protocol: no alignment),
   - the teacher aligned per image to the same kind of sparse points (what a user with LiDAR gets
     without a student),
   - the teacher aligned by least squares to the dense ground truth (an oracle, for reference).

Usage:  .venv/bin/python bench/metric_demo.py [--quick] [--seeds 0 1 2] [--work DIR]
Writes bench/results/metric_demo.md (``--quick``: bench/results/metric_demo_quick.md).

The default ("small") setting: 100 / 100 / 30 scenes, 300 + 250 training steps of ``da-v2-tiny`` at
56 px, about 1.6 CPU minutes for three seeds on one thread (23 min wall, niced, beside other jobs'
training at load 6-13). A larger setting (200 / 300 / 50 scenes, 600 + 1000 steps, ~5 CPU minutes)
ran at ~3 s per step under that load and could not finish in the session. ``--quick`` is a smoke test
that shows the script runs, not what the method gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

from pseudodepth import infer, metrics
from pseudodepth.align import AlignError, AlignSettings, align_prediction, sparse_sample
from pseudodepth.config import load_config
from pseudodepth.data import make_source
from pseudodepth.label import LabelSettings, label_folder
from pseudodepth.models import load_model
from pseudodepth.synth import write_domain
from pseudodepth.train import train

ROOT = Path(__file__).resolve().parents[1]
MAX_DEPTH = 80.0  # the outdoor (Virtual KITTI) range of the official metric models; scenes reach 60 m
SETTINGS = {  # name: (source train, target pool, target test, size, crop, teacher steps, student steps, batch)
    "small": (100, 100, 30, (64, 80), 56, 300, 250, 4),  # ~0.5 CPU minute per seed; ~8 min wall at load 12
    "quick": (16, 16, 6, (64, 80), 56, 80, 30, 4),
}


def lidar(depth: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-5% of the valid pixels, 2% noise, 10% gross outliers (x 0.3..3)."""
    return sparse_sample(depth, valid, rng.uniform(0.01, 0.05), rng, noise=0.02, outlier_fraction=0.1,
                         outlier_range=(0.3, 3.0))


def write_lidar(folder: Path, out: Path, rng: np.random.Generator) -> list[Path]:
    source = make_source({"type": "folder", "root": str(folder), "max_depth": MAX_DEPTH})
    out.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(source.samples):
        _, depth, valid = source.load(index)
        np.save(out / f"{sample.image_path.stem}.npy", lidar(depth, valid, rng))
    return [s.image_path for s in source.samples]


def config(mode: str, out: Path, data: dict, steps: int, batch: int, crop: int, seed: int, **model) -> Path:
    body = {"mode": mode, "model": {"init": "da-v2-tiny", **model}, "data": data,
            "loss": {"drop_top_ratio": 0.0}, "augment": {"strong": False, "cutmix_p": 0.0},
            "optim": {"encoder_lr": 1e-4, "decoder_lr_mult": 10, "schedule": "poly", "warmup_steps": 10},
            "train": {"steps": steps, "batch_size": batch, "crop_size": crop, "seed": seed, "workers": 0,
                      "log_every": 10, "save_every": steps, "out": str(out)}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def scores(pred: np.ndarray, depth: np.ndarray, valid: np.ndarray) -> dict:
    return metrics.evaluate_image(np.where(pred > 0, pred, MAX_DEPTH), depth, valid, 1e-3, MAX_DEPTH, space="metric")


def run_seed(seed: int, setting: str, work: Path) -> dict:
    n_source, n_pool, n_test, size, crop, teacher_steps, student_steps, batch = SETTINGS[setting]
    base = 10_000 * (seed + 1)
    times = {}
    tic = time.perf_counter()
    write_domain(work / "source", "outdoor", n_source, base, size)
    write_domain(work / "pool", "outdoor_shifted", n_pool, base + 3000, size)  # depth only to sample the LiDAR from
    write_domain(work / "test", "outdoor_shifted", n_test, base + 6000, size)
    rng = np.random.default_rng(seed)
    write_lidar(work / "pool", work / "pool_lidar", rng)
    write_lidar(work / "test", work / "test_lidar", rng)
    times["data"] = time.perf_counter() - tic

    tic = time.perf_counter()
    teacher = train(load_config(config("teacher", work / "teacher", {"labeled": [
        {"type": "folder", "root": str(work / "source")}]}, teacher_steps, batch, crop, seed)))
    times["teacher"] = time.perf_counter() - tic

    tic = time.perf_counter()
    align = AlignSettings(str(work / "pool_lidar"), min_points=10)
    report = label_folder(str(teacher), work / "pool" / "images", work / "labels", workers=0, progress=False,
                          settings=LabelSettings(input_size=crop, align=align))
    times["label"] = time.perf_counter() - tic
    if report.ok == 0:
        raise SystemExit(f"seed {seed}: no pool image could be aligned ({report.failures[:3]}); the teacher is too "
                         "weak for its disparity to fall with the LiDAR depth: train it longer")

    tic = time.perf_counter()
    student = train(load_config(config("metric", work / "student", {"unlabeled": [
        {"type": "label_store", "root": str(work / "labels")}]}, student_steps, min(batch, report.ok), crop, seed,
        init=str(teacher), max_depth=MAX_DEPTH)))
    times["student"] = time.perf_counter() - tic

    tic = time.perf_counter()
    teacher_model, student_model = load_model(teacher), load_model(student)
    test = make_source({"type": "folder", "root": str(work / "test"), "max_depth": MAX_DEPTH})
    rows = {"student": [], "teacher_sparse": [], "teacher_oracle": []}
    failed = 0
    for index, sample in enumerate(test.samples):
        rgb, depth, valid = test.load(index)
        disparity = infer.predict(teacher_model, rgb, crop)
        points = np.load(work / "test_lidar" / f"{sample.image_path.stem}.npy")
        try:
            aligned, _ = align_prediction(disparity, points, "disparity", align)
        except AlignError:
            failed += 1
            continue
        rows["teacher_sparse"].append(scores(aligned, depth, valid))
        rows["student"].append(scores(infer.predict(student_model, rgb, crop), depth, valid))
        rows["teacher_oracle"].append(metrics.evaluate_image(disparity, depth, valid, 1e-3, MAX_DEPTH))
    times["eval"] = time.perf_counter() - tic
    return {"seed": seed, "labels_ok": report.ok, "labels_failed": report.failed, "test_failed": failed,
            "n_test": len(test), "times": times,
            "results": {k: metrics.aggregate(v) for k, v in rows.items()}}


def mean_std(values: list[float], fmt: str) -> str:
    """``mean ± std (seed / seed / ...)``; std over seeds with ddof 1 (``-`` for a single seed)."""
    spread = f" ± {np.std(values, ddof=1):{fmt}}" if len(values) > 1 else ""
    return f"{np.mean(values):{fmt}}{spread} ({' / '.join(format(v, fmt) for v in values)})"


def verdict(runs: list[dict], metric: str, lower_is_better: bool) -> str:
    """Student vs the sparse-aligned teacher on one metric, decided by the numbers: "within the seed
    spread" when the means differ by no more than the larger of the two standard deviations over seeds."""
    a = [r["results"]["student"][metric] for r in runs]
    b = [r["results"]["teacher_sparse"][metric] for r in runs]
    diff = np.mean(a) - np.mean(b)
    spread = max(np.std(a, ddof=1), np.std(b, ddof=1)) if len(runs) > 1 else 0.0
    wins = sum((x < y) if lower_is_better else (x > y) for x, y in zip(a, b))
    if abs(diff) <= spread:
        word = "within the seed spread of"
    else:
        word = "better than" if (diff < 0) == lower_is_better else "worse than"
    return (f"{metric}: student {word} the sparse-aligned teacher (difference of means {diff:+.4f}, larger seed "
            f"std {spread:.4f}; student better in {wins} of {len(runs)} seeds)")


def table(runs: list[dict], setting: str, command: str, load: str, minutes: float, cpu_minutes: float,
          load_end: float) -> str:
    n_source, n_pool, n_test, size, crop, t_steps, s_steps, batch = SETTINGS[setting]
    names = {"student": "metric student (no alignment)",
             "teacher_sparse": "relative teacher aligned to the test image's sparse points",
             "teacher_oracle": "relative teacher aligned to dense ground truth (oracle)"}
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [f"Command: `{command}`",
             f"Machine: {load}, {load_end:.2f} at the end (this script at niceness {os.nice(0)}, one torch "
             f"thread); {minutes:.1f} min wall, {cpu_minutes:.1f} min CPU in all.", "",
             f"Outdoor scenes {size[0]} x {size[1]}: teacher `da-v2-tiny` {t_steps} steps x {batch} on {n_source} "
             f"labeled outdoor scenes; {n_pool} unlabeled shifted outdoor scenes with sparse LiDAR (1-5% of pixels, 2% noise, "
             f"10% outliers x 0.3..3) -> `label --align-to`; metric student ({s_steps} steps x {batch}, max depth "
             f"{MAX_DEPTH:g} m) on those labels only; {n_test} held-out outdoor test scenes, depth "
             f"1e-3..{MAX_DEPTH:g} m. Seeds {seeds}; mean ± std over seeds (each seed in brackets). Metric "
             "protocol for the student and the sparse-aligned teacher: their metres as they are, no alignment "
             "to the ground truth; the oracle row is aligned to the dense ground truth (least squares in "
             "disparity).", "",
             "| model | AbsRel ↓ | δ1 ↑ |", "|---|---:|---:|"]
    for key, title in names.items():
        cells = [mean_std([r["results"][key][metric] for r in runs], fmt)
                 for metric, fmt in (("abs_rel", ".4f"), ("delta1", ".3f"))]
        lines.append(f"| {title} | {' | '.join(cells)} |")
    lines += ["", "Pseudo-labels aligned ok / failed per seed: "
              + ", ".join(f"{r['labels_ok']} / {r['labels_failed']}" for r in runs)
              + "; test images whose sparse alignment failed (left out of every row): "
              + ", ".join(str(r["test_failed"]) for r in runs) + ".", "",
              "Verdict (computed): " + "; ".join((verdict(runs, "abs_rel", True), verdict(runs, "delta1", False)))
              + ". The teacher row uses the test image's own LiDAR points; the student sees only the image.", "",
              "Seconds per stage (data / teacher / label / student / eval), per seed: "
              + ", ".join(" / ".join(f"{r['times'][k]:.0f}" for k in ("data", "teacher", "label", "student", "eval"))
                          for r in runs) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a minutes-long smoke run (tiny data, few steps)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    setting = "quick" if a.quick else "small"
    out = a.out or ROOT / "bench" / "results" / ("metric_demo_quick.md" if a.quick else "metric_demo.md")
    torch.set_num_threads(1)
    load = machine()
    start, cpu_start = time.perf_counter(), time.process_time()
    runs = []
    for seed in a.seeds:
        work = (a.work or Path(tempfile.mkdtemp(prefix="metric-demo-"))) / f"seed{seed}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        runs.append(run_seed(seed, setting, work))
        print(json.dumps(runs[-1], indent=1, default=float))
        if a.work is None:
            shutil.rmtree(work.parent, ignore_errors=True)
    command = ".venv/bin/python bench/metric_demo.py" + (" --quick" if a.quick else "") + (
        f" --seeds {' '.join(map(str, a.seeds))}" if a.seeds != [0, 1, 2] else "")
    write_table(table(runs, setting, command, load, (time.perf_counter() - start) / 60,
                      (time.process_time() - cpu_start) / 60, os.getloadavg()[0]), out)


if __name__ == "__main__":
    main()
