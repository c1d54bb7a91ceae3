"""Where a student step's time goes: CPU time per phase of `pseudodepth train` vs the bare loop.

`bench/train_throughput.py` gives the wall-clock images/s; this script says why the student is slower
than the bare forward + backward + AdamW loop. It runs the real `train()` in-process (same generated
data and config as train_throughput.py) with one intra-op thread and `train.workers: 0` (data loading
in the step, so its cost is counted rather than hidden in worker processes that share the same cores),
and times each phase with the calling thread's CPU time (`time.thread_time`), which a busy machine
hardly changes, unlike wall-clock time. Then the bare loop and the ceilings in the same process.

Phases: data (next batch), perturbations, student forward (network, one pass for depth and the
aligned tokens), frozen forward (`train.frozen_tokens`), labeled loss, pseudo-label loss (CutMix's two
regions with the top-10% filter), output anchor, feature-alignment loss, backward, gradient clipping,
optimizer, log; the rest of the step (stats, moving tensors, the schedule) is the remainder.

Usage:  .venv/bin/python bench/train_phases.py [--model da-v2-small] [--crop 196] [--batch-size 6] [--steps 6]
Writes bench/results/train_phases.md (BENCHMARKS.md is assembled by bench/collect.py).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)
from train_throughput import BARE, make_config

ROOT = Path(__file__).resolve().parents[1]
clock = time.thread_time


def student_phases(config_path: Path, steps: int, frozen_precision: str | None, warmup: int) -> dict[str, float]:
    """CPU seconds per step of each phase of the student's steps after ``warmup`` (key ``step``: the whole step)."""
    import torch.utils.data.dataloader as loader

    from pseudodepth import losses
    from pseudodepth import train as T
    from pseudodepth.config import load_config

    totals: dict[str, float] = collections.defaultdict(float)
    done = [0]
    patches = []

    def timed(owner, name: str, phase: str):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t0 = clock()
            try:
                return original(*args, **kwargs)
            finally:
                if done[0] >= warmup:
                    totals[phase] += clock() - t0
        patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    marks: list[float] = []
    step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        t0 = clock()
        out = step(self, *args, **kwargs)
        if done[0] >= warmup:
            totals["optimizer"] += clock() - t0
        done[0] += 1
        marks.append(clock())
        return out

    for owner, name, phase in [
        (loader._BaseDataLoaderIter, "__next__", "data"), (T, "strong_perturbation", "perturbations"),
        (T.DepthAndFeatures, "forward", "student forward"), (T, "frozen_tokens", "frozen forward"),
        (T, "labeled_term", "labeled loss"), (losses, "cutmix_loss", "pseudo-label loss (CutMix, filter)"),
        (T, "add_anchor", "output anchor"), (losses, "feature_alignment_loss", "feature-alignment loss"),
        (torch.Tensor, "backward", "backward"), (torch.nn.utils, "clip_grad_norm_", "gradient clipping"),
        (T.CsvLog, "write", "log"),
    ]:
        timed(owner, name, phase)
    patches.append((torch.optim.AdamW, "step", step))
    torch.optim.AdamW.step = counting_step
    try:
        overrides = {"train": {"workers": 0, "steps": steps}}
        if frozen_precision:
            overrides["feature_alignment"] = {"enabled": True, "precision": frozen_precision}
        config = load_config(config_path, overrides)
        shutil.rmtree(config.out_dir, ignore_errors=True)
        T.train(config)
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
    measured = steps - warmup
    out = {k: v / measured for k, v in totals.items()}
    out["step"] = statistics.mean(b - a for a, b in zip(marks[warmup - 1:], marks[warmup:]))
    return out


def bare_phases(config_path: Path, steps: int, warmup: int, compile: bool = False) -> dict[str, dict[str, float]]:
    """CPU seconds per step of forward, frozen forward, backward and AdamW of the bare loop and its ceilings
    (the variants alternate step by step); ``compile``: the network and the frozen encoder through
    ``torch.compile``, with the wall-clock seconds of the warm-up steps (``warm-up wall``)."""
    from pseudodepth.config import load_config
    from pseudodepth.data import split_batch_size
    from pseudodepth.train import DepthAndFeatures, build_model, frozen_encoder, frozen_tokens, make_optimizer

    config = load_config(config_path)
    t = config.train
    device = torch.device("cpu")
    model = build_model(config)
    net, frozen = DepthAndFeatures(model), frozen_encoder(config, model)
    if compile:
        net, frozen = torch.compile(net), torch.compile(frozen)
    optimizer = make_optimizer(model, config)
    x = torch.randn(t.batch_size, 3, t.crop_size, t.crop_size)
    n_l, _ = split_batch_size(t.batch_size, tuple(t.labeled_ratio))
    times: dict[str, list[list[float]]] = {v: [] for v in BARE}
    for i in range(len(BARE) * steps):
        variant = list(BARE)[i % len(BARE)]
        wall, t0 = time.perf_counter(), clock()
        loss = net(x).depth.mean()
        t1 = clock()
        if BARE[variant]:
            config.feature_alignment.precision = BARE[variant]
            frozen_tokens(frozen, x[n_l:], config, device)
        t2 = clock()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = clock()
        optimizer.step()
        t4 = clock()
        times[variant].append([t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3, time.perf_counter() - wall])
    keys = ["step", "student forward", "frozen forward", "backward", "optimizer"]
    out = {v: dict(zip(keys, (statistics.mean(c) for c in zip(*rows[warmup:])))) for v, rows in times.items()}
    for v, rows in times.items():
        out[v]["warm-up wall"] = sum(r[-1] for r in rows[:warmup])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="da-v2-small")
    ap.add_argument("--crop", type=int, default=196)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also the bare loop and ceilings through torch.compile")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_phases.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    settings = argparse.Namespace(model=a.model, crop=a.crop, batch_size=a.batch_size, steps=a.steps,
                                  precision="fp32", workers=0, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-phases-"))
    load = [os.getloadavg()[0]]  # machine() reports the start
    try:
        config = make_config(work, settings)
        columns = {"student, frozen fp32": student_phases(config, a.steps, "fp32", a.warmup),
                   "student, frozen bf16": student_phases(config, a.steps, "bf16", a.warmup)}
        bare = bare_phases(config, a.steps, a.warmup)
        columns.update({"bare loop": bare["bare"], "ceiling, frozen fp32": bare["bare-frozen"],
                        "ceiling, frozen bf16": bare["bare-frozen-bf16"]})
        if a.compile:
            bare = bare_phases(config, a.steps, a.warmup, compile=True)
            columns.update({"bare loop, compiled": bare["bare"], "ceiling, frozen fp32, compiled": bare["bare-frozen"],
                            "ceiling, frozen bf16, compiled": bare["bare-frozen-bf16"]})
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    phases = ["data", "perturbations", "student forward", "frozen forward", "labeled loss",
              "pseudo-label loss (CutMix, filter)", "output anchor", "feature-alignment loss", "backward",
              "gradient clipping", "optimizer", "log"]
    for values in columns.values():
        values["rest of the step"] = values["step"] - sum(values.get(p, 0.0) for p in phases)
    bare_step = columns["bare loop"]["step"]
    lines = [
        f"Command: `.venv/bin/python bench/train_phases.py --model {a.model} --crop {a.crop} --batch-size "
        f"{a.batch_size} --steps {a.steps}{' --compile' if a.compile else ''}`",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}; load average {load[-1]:.1f} at the end "
        "(CPU time of one thread: little affected by the load)",
        "",
        "| CPU ms per step (one thread) | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for phase in phases + ["rest of the step", "step"]:
        cells = [f"{1000 * v[phase]:.0f}" if phase in v else "" for v in columns.values()]
        name = "**whole step**" if phase == "step" else phase
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **images/s of one core** | " + " | ".join(f"{a.batch_size / v['step']:.2f}"
                                                            for v in columns.values()) + " |")
    lines.append("| **share of the bare loop** | " + " | ".join(f"{100 * bare_step / v['step']:.0f}%"
                                                             for v in columns.values()) + " |")
    if a.compile:
        lines.append("| **warm-up steps, wall s** | " + " | ".join(f"{v['warm-up wall']:.0f}" if "warm-up wall" in v else ""
                                                                for v in columns.values()) + " |")
    lines += [
        "",
        f"*Steps {a.warmup + 1}-{a.steps}; student mode as `bench/train_throughput.py` (2 labeled + 4 pseudo-labeled "
        "images per step, top-10% filter, perturbations, CutMix, feature alignment, the log), data loading in the "
        "step (`train.workers: 0`). Backward of the student includes the losses' backward. The bare loop and the "
        "ceilings alternate step by step in one process. Compiled columns: the variants compile in their warm-up "
        "steps (wall-clock seconds on the loaded machine, compile workers included).*",
    ]
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
