"""Training throughput: `pseudodepth train` in student mode vs a bare forward + backward + optimizer loop.

The student run is the full recipe: labeled + pseudo-labeled sources (1 : 2 per batch), top-10% loss
filter, strong perturbations, CutMix, feature alignment against a frozen encoder, the CSV log. The
ceiling is the same model (`build_model` of the same config), batch size, crop and precision on random
tensors: forward, mean of the output, backward, AdamW step; nothing else. A second ceiling adds what
feature alignment costs by definition: the frozen encoder's no-grad forward on the pseudo-labeled part
of the batch. Both after warm-up steps; the two ceilings run in one process, alternating step by step.
`--compile` adds `pseudodepth train --compile` (torch.compile; its compilation is in the warm-up steps).

Usage:  .venv/bin/python bench/train_throughput.py [--model da-v2-small] [--crop 196] [--batch-size 6]
        [--steps 12] [--precision fp32] [--device cpu] [--compile]
        (on a GPU: --device cuda --crop 518 --batch-size 24)
Writes bench/results/train_throughput.md (BENCHMARKS.md is assembled by bench/collect.py).
"""

from __future__ import annotations

import argparse
import csv
import json
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


def student_rate(config: Path, warmup: int, compile: bool = False) -> tuple[float, float]:
    """(images/s after warm-up from the run's log.csv, whole-process seconds) of `pseudodepth train`."""
    shutil.rmtree(config.parent / "run", ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pseudodepth.cli", "train", str(config)] + (["--compile"] if compile else []),
                   check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    with open(config.parent / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["images_per_s"]) for r in rows[warmup:]]
    return len(rates) / sum(1 / r for r in rates), wall  # images/s over the measured steps


def bare_rates(config_path: Path, warmup: int) -> tuple[float, float]:
    """images/s of forward + backward + AdamW on random tensors (same model, batch, crop, precision), without
    and with the frozen encoder's no-grad forward on the pseudo-labeled part of the batch; the two alternate
    step by step, so both see the same machine."""
    import torch

    from pseudodepth.config import load_config
    from pseudodepth.data import split_batch_size
    from pseudodepth.infer import autocast
    from pseudodepth.train import build_model, frozen_encoder, make_optimizer

    config = load_config(config_path)
    t = config.train
    device = torch.device("cuda" if t.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if t.device == "auto" else t.device))
    model = build_model(config).to(device)
    frozen = frozen_encoder(config, model).to(device)
    optimizer = make_optimizer(model, config)
    x = torch.randn(t.batch_size, 3, t.crop_size, t.crop_size, device=device)
    n_l, _ = split_batch_size(t.batch_size, tuple(t.labeled_ratio))
    times: dict[bool, list[float]] = {False: [], True: []}
    for step in range(2 * t.steps):
        with_frozen = bool(step % 2)
        t0 = time.perf_counter()
        with autocast(device, t.precision):
            loss = model(pixel_values=x).predicted_depth.float().mean()
            if with_frozen:
                with torch.no_grad():
                    frozen(pixel_values=x[n_l:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[with_frozen].append(time.perf_counter() - t0)
    return tuple(t.batch_size * len(v[warmup:]) / sum(v[warmup:]) for v in (times[False], times[True]))


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
    ap.add_argument("--compile", action="store_true", help="also run `pseudodepth train --compile`")
    ap.add_argument("--repeat", type=int, default=2, help="alternate the measurements this many times")
    ap.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_throughput.md")
    a = ap.parse_args()
    if a.bare:
        print(json.dumps(bare_rates(a.bare, a.warmup)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    names = ["student"] + (["student-compile"] if a.compile else []) + ["bare", "bare-frozen"]
    rates: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {"student": [], "student-compile": []}
    loads = []
    try:
        config = make_config(work, a)
        for _ in range(a.repeat):  # interleaved: every variant sees the same machine load
            for name in ("student", "student-compile"):
                if name in names:
                    loads.append(os.getloadavg()[0])
                    rate, wall = student_rate(config, a.warmup, compile=name.endswith("compile"))
                    rates[name].append(rate)
                    walls[name].append(wall)
            loads.append(os.getloadavg()[0])
            r = subprocess.run([sys.executable, __file__, "--bare", str(config), "--warmup", str(a.warmup)],
                               check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            bare, frozen = json.loads(r.stdout.strip().splitlines()[-1])
            rates["bare"].append(bare)
            rates["bare-frozen"].append(frozen)
            print(", ".join(f"{n} {v[-1]:.2f} img/s" for n, v in rates.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: statistics.median(v) for n, v in rates.items()}
    ceiling = med["bare-frozen"]
    labels = {
        "student": "`pseudodepth train` student (2 sources, filter, perturbations, CutMix, feature alignment, log)",
        "student-compile": "`pseudodepth train --compile`, the same student",
        "bare": "bare forward + backward + AdamW, random tensors",
        "bare-frozen": "the same + the frozen encoder's no-grad forward on the pseudo-labeled part (ceiling)",
    }
    lines = [
        f"Command: `.venv/bin/python bench/train_throughput.py --model {a.model} --crop {a.crop} --batch-size "
        f"{a.batch_size} --steps {a.steps} --precision {a.precision} --workers {a.workers} --device {a.device} "
        f"--repeat {a.repeat}{' --compile' if a.compile else ''}`",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}; load average at each start: "
        + " / ".join(f"{x:.1f}" for x in loads),
        "",
        "| variant | images/s, each run | median images/s | share of the ceiling | share of the bare loop |",
        "|---|---|---:|---:|---:|",
    ]
    for n in names:
        lines.append(f"| {labels[n]} | {' / '.join(f'{x:.2f}' for x in rates[n])} | {med[n]:.2f} | "
                     f"{100 * med[n] / ceiling:.0f}% | {100 * med[n] / med['bare']:.0f}% |")
    lines += [
        "",
        f"*Steps {a.warmup + 1}-{a.steps} of each run (the first {a.warmup} are warm-up, compilation included); "
        "the student's rate is the images/s column of its log.csv. Feature alignment runs the frozen encoder on "
        "the pseudo-labeled images, which the bare loop does not: the ceiling row adds exactly that. Whole "
        "`train` process: " + "; ".join(f"{n}: " + " / ".join(f"{w:.0f} s" for w in walls[n])
                                       for n in walls if walls[n]) + ".*",
    ]
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
