"""`pseudodepth demo` runs on seeds of your choice, checked against the demo's goals (issue 9, point 3).

    pseudodepth demo --seed 5 --out demo_s5            # any seed; `make demo` is seed 0
    .venv/bin/python bench/demo_seeds.py --runs demo_out demo_s5

Reads each run's ``metrics.json`` and ``run.json`` (written by the demo), prints one row per run and
writes the table to ``bench/results/demo_seeds.md`` (``bench/collect.py`` puts it into BENCHMARKS.md).
Goals: target_test AbsRel teacher <= 0.85 x the image-blind map and student <= 0.90 x teacher;
source_test AbsRel student <= 1.02 x teacher; the whole demo process <= 10 minutes on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from common import cpu_model, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"teacher / blind (target)": 0.85, "student / teacher (target)": 0.90, "student / teacher (source)": 1.02}


def ratios(metrics: dict) -> dict[str, float]:
    """The goal ratios of one demo run's ``metrics.json`` (AbsRel)."""
    a = {m: {split: metrics[m][split]["abs_rel"] for split in ("target_test", "source_test")}
         for m in ("blind", "teacher", "student")}
    return {"teacher / blind (target)": a["teacher"]["target_test"] / a["blind"]["target_test"],
            "student / teacher (target)": a["student"]["target_test"] / a["teacher"]["target_test"],
            "student / teacher (source)": a["student"]["source_test"] / a["teacher"]["source_test"]}


def table(runs: list[Path]) -> str:
    rows = []
    for run in runs:
        metrics, info = (json.loads((run / name).read_text()) for name in ("metrics.json", "run.json"))
        if info.get("quick"):
            raise SystemExit(f"{run}: a --quick run; its numbers mean nothing")
        r = ratios(metrics)
        met = all(r[k] <= goal for k, goal in GOALS.items()) and info["total_seconds"] <= 600
        rows.append(f"| `{run.name}` | {info.get('seed', 0)} | " + " | ".join(f"{r[k]:.3f}" for k in GOALS)
                    + f" | {info['total_seconds']:.0f} | {info.get('cpu_seconds', float('nan')):.0f} | "
                    + ("yes" if met else "**no**") + " |")
    head = ("| run | seed | " + " | ".join(f"{k} (goal <= {g:g})" for k, g in GOALS.items())
            + " | whole process (s) | CPU time (s) | every goal met |")
    return "\n".join([
        f"Command: `pseudodepth demo --seed N --out RUN` per run, then "
        f"`python bench/demo_seeds.py --runs {' '.join(r.name for r in runs)}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU only.",
        "",
        head, "|" + "---|" * 2 + "---:|" * (len(GOALS) + 2) + "---|", *rows, "",
        "*AbsRel ratios on the generated test splits (least-squares scale and shift in disparity per image); the "
        "image-blind map predicts the same map for every image. The whole process is the run's wall time as "
        "`pseudodepth demo` measured it (the goal, <= 600 s, holds for a run alone on an idle machine; a run "
        "beside other work says nothing about it).*"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="demo output folders")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_seeds.md")
    args = parser.parse_args()
    write_table(table([r.resolve() for r in args.runs]), args.out)


if __name__ == "__main__":
    main()
