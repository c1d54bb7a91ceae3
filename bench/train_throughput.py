"""Training throughput: `pseudodepth train` in student mode vs a bare forward + backward + optimizer loop.

The student run is the full recipe: labeled + pseudo-labeled sources (1 : 2 per batch), top-10% loss
filter, strong perturbations, CutMix, feature alignment against a frozen encoder, the CSV log. The
bare loop is the same network (`train.DepthAndFeatures` over `build_model` of the same config), batch
size, crop and precision on random tensors: forward, mean of the output, backward, AdamW step;
nothing else. The ceiling adds what feature alignment costs by definition: the frozen encoder's
no-grad forward on the pseudo-labeled part of the batch (`train.frozen_tokens`). Bare loop and
ceilings run in one process, alternating step by step, so they see the same machine; every variant is
interleaved with the others `--repeat` times.

`--frozen-bf16` adds the student with `feature_alignment.precision: bf16` (the frozen encoder under bf16
autocast, the student in `--precision`) and its ceiling. `--compile` adds `pseudodepth train --compile`
and, like for like, the bare loop and ceilings with the same network (and frozen encoder) through
`torch.compile`; their compilation falls in the warm-up steps, whose extra time (over the steady step
time) and the whole `train` process time are reported, with the steps it takes a compiled run to win
that time back.

Usage:  .venv/bin/python bench/train_throughput.py [--model da-v2-small] [--crop 196] [--batch-size 6]
        [--steps 12] [--precision fp32] [--device cpu] [--repeat 2] [--frozen-bf16] [--compile]
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


def student_rate(config: Path, warmup: int, compile: bool = False,
                 frozen_precision: str | None = None) -> tuple[float, float, float]:
    """`pseudodepth train` as a whole process: (images/s over the steps after warm-up from its log.csv,
    extra seconds of the warm-up steps over the steady step time, whole-process seconds)."""
    run = config.parent / "run"
    shutil.rmtree(run, ignore_errors=True)
    if frozen_precision:
        data = yaml.safe_load(config.read_text())
        data["feature_alignment"]["precision"] = frozen_precision
        config = config.with_name(f"student-{frozen_precision}.yaml")
        config.write_text(yaml.safe_dump(data))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pseudodepth.cli", "train", str(config)] + (["--compile"] if compile else []),
                   check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    with open(run / "log.csv") as f:
        seconds = [1 / float(r["images_per_s"]) for r in csv.DictReader(f)]  # per image; log_every 1
    steady = statistics.mean(seconds[warmup:])
    batch = yaml.safe_load(config.read_text())["train"]["batch_size"]
    return 1 / steady, batch * (sum(seconds[:warmup]) - warmup * steady), wall


BARE = {"bare": None, "bare-frozen": "fp32", "bare-frozen-bf16": "bf16"}  # variant: the frozen forward's precision


def bare_rates(config_path: Path, warmup: int, variants: list[str], compile: bool) -> dict[str, list[float]]:
    """{variant: [images/s after warm-up, extra seconds of the warm-up steps]} of forward + backward + AdamW on
    random tensors (same network, batch, crop, precision as the student), without (``bare``) and with the frozen
    encoder's no-grad forward on the pseudo-labeled part of the batch in fp32 or bf16; the variants alternate
    step by step, so all see the same machine. ``compile``: the network and the frozen encoder through
    ``torch.compile``, as ``train --compile`` does."""
    import torch

    from pseudodepth.config import load_config
    from pseudodepth.data import split_batch_size
    from pseudodepth.infer import autocast
    from pseudodepth.train import DepthAndFeatures, build_model, frozen_encoder, frozen_tokens, make_optimizer

    config = load_config(config_path)
    t = config.train
    device = torch.device("cuda" if t.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if t.device == "auto" else t.device))
    model = build_model(config).to(device)
    net, frozen = DepthAndFeatures(model), frozen_encoder(config, model).to(device)
    if compile:
        net, frozen = torch.compile(net), torch.compile(frozen)
    optimizer = make_optimizer(model, config)
    x = torch.randn(t.batch_size, 3, t.crop_size, t.crop_size, device=device)
    n_l, _ = split_batch_size(t.batch_size, tuple(t.labeled_ratio))
    times: dict[str, list[float]] = {v: [] for v in variants}
    for step in range(len(variants) * t.steps):
        variant = variants[step % len(variants)]
        t0 = time.perf_counter()
        with autocast(device, t.precision):
            loss = net(x).depth.mean()
        if BARE[variant]:
            config.feature_alignment.precision = BARE[variant]
            frozen_tokens(frozen, x[n_l:], config, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[variant].append(time.perf_counter() - t0)
    out = {}
    for variant, seconds in times.items():
        steady = statistics.mean(seconds[warmup:])
        out[variant] = [t.batch_size / steady, sum(seconds[:warmup]) - warmup * steady]
    return out


LABELS = {
    "student": "`pseudodepth train` student (2 sources, filter, perturbations, CutMix, feature alignment, log)",
    "student-fa-bf16": "the same student, frozen encoder in bf16 (`feature_alignment.precision: bf16`)",
    "student-compile": "`pseudodepth train --compile`, the same student",
    "student-compile-fa-bf16": "`pseudodepth train --compile`, frozen encoder in bf16",
    "bare": "bare forward + backward + AdamW, random tensors",
    "bare-frozen": "the same + the frozen encoder's no-grad forward on the pseudo-labeled part (ceiling)",
    "bare-frozen-bf16": "the same + that frozen forward in bf16 (ceiling of the bf16 student)",
}
# like for like: each student row against the bare loop and the ceiling with the same compile and frozen precision
# (the compiled rows use the compiled bare loop and ceiling)
REFERENCE = {"student": ("bare", "bare-frozen"), "student-fa-bf16": ("bare", "bare-frozen-bf16")}


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
    ap.add_argument("--frozen-bf16", action="store_true",
                    help="also the student with feature_alignment.precision: bf16, and its ceiling")
    ap.add_argument("--compile", action="store_true",
                    help="also `pseudodepth train --compile` and the bare loop compiled (like for like)")
    ap.add_argument("--repeat", type=int, default=2, help="interleave the measurements this many times")
    ap.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bare-variants", default="bare,bare-frozen", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_throughput.md")
    a = ap.parse_args()
    if a.bare:
        print(json.dumps(bare_rates(a.bare, a.warmup, a.bare_variants.split(","), a.compile)))
        return
    bare_variants = ["bare", "bare-frozen"] + (["bare-frozen-bf16"] if a.frozen_bf16 else [])
    students = [("student", False, None)] + ([("student-fa-bf16", False, "bf16")] if a.frozen_bf16 else [])
    if a.compile:
        students += [(name.replace("student", "student-compile"), True, fp) for name, _, fp in students]
    names = [n for n, _, _ in students] + bare_variants + ([f"{v} compiled" for v in bare_variants] if a.compile else [])
    rates: dict[str, list[float]] = {n: [] for n in names}
    extra: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n, _, _ in students}
    loads = []
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        config = make_config(work, a)
        for _ in range(a.repeat):  # interleaved: every variant sees the same machine load
            for name, compile, frozen_precision in students:
                loads.append(os.getloadavg()[0])
                rate, warm, wall = student_rate(config, a.warmup, compile, frozen_precision)
                rates[name].append(rate)
                extra[name].append(warm)
                walls[name].append(wall)
            for compile in [False] + ([True] if a.compile else []):
                loads.append(os.getloadavg()[0])
                r = subprocess.run([sys.executable, __file__, "--bare", str(config), "--warmup", str(a.warmup),
                                    "--bare-variants", ",".join(bare_variants)] + (["--compile"] if compile else []),
                                   check=True, capture_output=True, text=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
                for variant, (rate, warm) in json.loads(r.stdout.strip().splitlines()[-1]).items():
                    name = f"{variant} compiled" if compile else variant
                    rates[name].append(rate)
                    extra[name].append(warm)
            print(", ".join(f"{n} {v[-1]:.2f} img/s" for n, v in rates.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: statistics.median(v) for n, v in rates.items()}
    lines = [
        f"Command: `.venv/bin/python bench/train_throughput.py --model {a.model} --crop {a.crop} --batch-size "
        f"{a.batch_size} --steps {a.steps} --precision {a.precision} --workers {a.workers} --device {a.device} "
        f"--repeat {a.repeat}{' --frozen-bf16' if a.frozen_bf16 else ''}{' --compile' if a.compile else ''}`",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}; load average at each start: "
        + " / ".join(f"{x:.1f}" for x in loads),
        "",
        "| variant | images/s, each run | median images/s | share of its bare loop | share of its ceiling | "
        "warm-up steps' extra time | whole `train` process |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        suffix = " compiled" if "compile" in n else ""  # student-compile* rows, and the compiled bare rows
        bare, ceiling = REFERENCE[n.replace("-compile", "")] if n.startswith("student") else ("bare", None)
        label = LABELS[n.removesuffix(" compiled")] + (", compiled" if n.endswith(" compiled") else "")
        share_ceiling = f"{100 * med[n] / med[ceiling + suffix]:.0f}%" if ceiling else ""
        wall = " / ".join(f"{w:.0f} s" for w in walls.get(n, []))
        lines.append(f"| {label} | {' / '.join(f'{x:.2f}' for x in rates[n])} | {med[n]:.2f} | "
                     f"{100 * med[n] / med[bare + suffix]:.0f}% | {share_ceiling} | {statistics.median(extra[n]):.0f} s | "
                     f"{wall} |")
    notes = [
        f"*Steps {a.warmup + 1}-{a.steps} of each run (the first {a.warmup} are warm-up, compilation included); "
        "the student's rate is the images/s column of its log.csv. A student row's shares compare it with the bare "
        "loop and the ceiling of the same compilation and frozen-encoder precision. Feature alignment runs the frozen "
        "encoder on the pseudo-labeled images, which the bare loop does not: the ceiling adds exactly that. The "
        "warm-up steps' extra time is their time beyond the steady step time (compilation, first-call set-up).",
    ]
    if a.compile:
        for n, _, _ in students:
            if "compile" in n:
                eager = n.replace("-compile", "")
                saving = batch_seconds(a, med[eager]) - batch_seconds(a, med[n])
                cost = statistics.median(extra[n]) - statistics.median(extra[eager])
                notes.append(f"`{n}`: compilation costs {cost:.0f} s more warm-up than `{eager}` and saves "
                             f"{1000 * saving:.0f} ms per step: " + (f"it pays off after about {cost / saving:.0f} "
                                                                    "steps" if saving > 0 else "it never pays off") + ".")
    lines += ["", " ".join(notes) + "*"]
    write_table("\n".join(lines), a.out)


def batch_seconds(a: argparse.Namespace, images_per_s: float) -> float:
    return a.batch_size / images_per_s


if __name__ == "__main__":
    main()
