"""Training throughput: `pseudodepth train` in student mode vs a bare forward + backward + optimizer loop.

The student run is the full recipe: labeled + pseudo-labeled sources (1 : 2 per batch), top-10% loss
filter, strong perturbations, CutMix, feature alignment against a frozen encoder, the CSV log. The
ceiling is the same model (`build_model` of the same config), batch size, crop and precision on random
tensors: forward, mean of the output, backward, AdamW step; nothing else. Both after warm-up steps.

Usage:  .venv/bin/python bench/train_throughput.py [--model da-v2-small] [--crop 196] [--batch-size 6]
        [--steps 12] [--precision fp32] [--device cpu]        (on a GPU: --device cuda --crop 518 --batch-size 24)
Writes bench/results/train_throughput.md (BENCHMARKS.md is assembled by bench/collect.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]


def make_config(work: Path, a: argparse.Namespace) -> Path:
    """Generated labeled scenes + pseudo-labels of generated target scenes, and a student config over them."""
    from pseudodepth.label import label_folder
    from pseudodepth.synth import write_domain

    size = (a.crop + 28, a.crop + 56)
    write_domain(work / "labeled", "source", 24, 0, size)
    write_domain(work / "unlabeled", "target", 24, 100, size, with_depth=False)
    label_folder("da-v2-tiny", work / "unlabeled/images", work / "labels", workers=0, progress=False)
    config = {
        "mode": "student",
        "model": {"init": a.model},
        "data": {"labeled": [{"type": "folder", "root": "labeled"}],
                 "unlabeled": [{"type": "label_store", "root": "labels"}]},
        "loss": {"drop_top_ratio": 0.1},
        "augment": {"strong": True, "cutmix_p": 0.5},
        "feature_alignment": {"enabled": True, "margin": 0.85, "weight": 0.1},
        "train": {"steps": a.steps, "batch_size": a.batch_size, "labeled_ratio": [1, 2], "crop_size": a.crop,
                  "precision": a.precision, "seed": 0, "workers": a.workers, "log_every": 1,
                  "save_every": 10 ** 6, "out": "run", "device": a.device},
    }
    path = work / "student.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def student_rate(config: Path, warmup: int) -> tuple[float, float]:
    """(images/s after warm-up from the run's log.csv, whole-process seconds) of `pseudodepth train`."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pseudodepth.cli", "train", str(config)], check=True,
                   capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    with open(config.parent / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["images_per_s"]) for r in rows[warmup:]]
    return len(rates) / sum(1 / r for r in rates), wall  # images/s over the measured steps


def bare_rate(config_path: Path, warmup: int) -> float:
    """images/s of forward + backward + AdamW on random tensors: same model, batch, crop, precision."""
    import torch

    from pseudodepth.config import load_config
    from pseudodepth.infer import autocast
    from pseudodepth.train import build_model, make_optimizer

    config = load_config(config_path)
    t = config.train
    device = torch.device("cuda" if t.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if t.device == "auto" else t.device))
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config)
    x = torch.randn(t.batch_size, 3, t.crop_size, t.crop_size, device=device)
    times = []
    for step in range(t.steps):
        t0 = time.perf_counter()
        with autocast(device, t.precision):
            loss = model(pixel_values=x).predicted_depth.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return t.batch_size * len(times[warmup:]) / sum(times[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="da-v2-small")
    ap.add_argument("--crop", type=int, default=196)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2, help="alternate the two measurements this many times")
    ap.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_throughput.md")
    a = ap.parse_args()
    if a.bare:
        print(bare_rate(a.bare, a.warmup))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        config = make_config(work, a)
        student, bare, walls, loads = [], [], [], []
        for _ in range(a.repeat):  # interleaved: both see the same machine load
            loads.append(os.getloadavg()[0])
            shutil.rmtree(work / "run", ignore_errors=True)
            rate, wall = student_rate(config, a.warmup)
            student.append(rate)
            walls.append(wall)
            loads.append(os.getloadavg()[0])
            r = subprocess.run([sys.executable, __file__, "--bare", str(config), "--warmup", str(a.warmup)],
                               check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            bare.append(float(r.stdout.strip().splitlines()[-1]))
            print(f"student {rate:.2f} img/s, bare {bare[-1]:.2f} img/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, b = statistics.median(student), statistics.median(bare)
    lines = [
        f"Command: `.venv/bin/python bench/train_throughput.py --model {a.model} --crop {a.crop} --batch-size "
        f"{a.batch_size} --steps {a.steps} --precision {a.precision} --workers {a.workers} --device {a.device} "
        f"--repeat {a.repeat}`",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}; load average at each start: "
        + " / ".join(f"{x:.1f}" for x in loads),
        "",
        "| variant | images/s, each run | median images/s | share of the ceiling |",
        "|---|---|---:|---:|",
        f"| `pseudodepth train` student (2 sources, filter, perturbations, CutMix, feature alignment, log) | "
        f"{' / '.join(f'{x:.2f}' for x in student)} | {s:.2f} | {100 * s / b:.0f}% |",
        f"| bare forward + backward + AdamW, random tensors (ceiling) | {' / '.join(f'{x:.2f}' for x in bare)} "
        f"| {b:.2f} | 100% |",
        "",
        f"*Steps {a.warmup + 1}-{a.steps} of each run (the first {a.warmup} are warm-up); the student's rate is "
        "the images/s column of its log.csv. The student also runs the frozen encoder and a second encoder "
        "pass for feature alignment, which the ceiling does not. Whole `train` process: "
        + " / ".join(f"{w:.0f} s" for w in walls) + ".*",
    ]
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
