"""How often a student's output dies early (final ReLU off on the pseudo-labeled images), by feature-alignment weight.

The demo's ablation found one student (seed 1, feature alignment at weight 1.0) whose output was 0 on
every target pixel. This script trains the first ``--steps`` steps of the same student recipe (the
learning-rate schedule of the full run, stopped early) for several seeds and feature-alignment
weights, and tabulates ``unlabeled_zero_share`` from each run's ``log.csv``.

    pseudodepth demo --ablation --out ablation_out
    .venv/bin/python bench/dead_output.py --config ablation_out/ablation/seed1/row4/config.yaml

Writes ``bench/results/dead_output.md`` (see bench/collect.py).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)
from pseudodepth.report import read_log
from pseudodepth.train import DEAD_SHARE

ROOT = Path(__file__).resolve().parents[1]


def logged_steps(path: Path) -> float:
    """The last step in a training log being written (0 before its first row)."""
    try:
        return float(read_log(path)["step"][-1])
    except (FileNotFoundError, ValueError):  # not there yet, or a row half-written
        return 0.0


def first_steps(config: dict, steps: int, out: Path) -> dict:
    """Run ``pseudodepth train`` on ``config`` until its log reaches ``steps``; the log's columns up to there."""
    config = {**config, "train": {**config["train"], "out": str(out), "log_every": 10}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.Popen([str(Path(sys.executable).with_name("pseudodepth")), "train", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and logged_steps(out / "log.csv") < steps:
            time.sleep(1)
    finally:
        proc.kill()
        proc.wait()
    log = read_log(out / "log.csv")
    return {name: values[log["step"] <= steps] for name, values in log.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="a student run's config.yaml (the demo's, say)")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--weights", default="1.0,0.1", help="feature_alignment.weight values")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dead_output.md")
    a = ap.parse_args()
    base = yaml.safe_load(a.config.read_text())
    if base.get("mode") != "student":
        raise SystemExit(f"{a.config}: not a student config (mode: {base.get('mode')})")
    seeds, weights = [int(s) for s in a.seeds.split(",")], [float(w) for w in a.weights.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for weight in weights:
            for seed in seeds:
                config = {**base, "train": {**base["train"], "seed": seed},
                          "feature_alignment": {**base["feature_alignment"], "enabled": True, "weight": weight}}
                log = first_steps(config, a.steps, Path(tmp) / f"w{weight}_s{seed}")
                shares, step = log["unlabeled_zero_share"], log["step"].astype(int)
                dead = step[shares > DEAD_SHARE]
                dead_at = int(dead[0]) if dead.size else None
                rows.append((weight, seed, dead_at, float(shares[-1]), float(log["unlabeled_ssi"][-1]), int(step[-1])))
                print(f"weight {weight} seed {seed}: dead at {dead_at}, zero share {shares[-1]:.3f} "
                      f"at step {step[-1]}", flush=True)
    lines = [f"Command: `.venv/bin/python bench/dead_output.py {shlex.join(sys.argv[1:])}`",
             f"Machine: {machine()}, {time.strftime('%Y-%m-%d')}", "",
             "| feature_alignment.weight | seed | first logged step with > 99% zero output | zero share at the last "
             "step | unlabeled SSI at the last step | last step |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w:g} | {s} | {d if d is not None else '-'} | {z:.3f} | {u:.3f} | {last} |"
              for w, s, d, z, u, last in rows]
    lines.append("")
    for weight in weights:
        dead = sum(1 for w, _, d, *_ in rows if w == weight and d is not None)
        lines.append(f"- weight {weight:g}: {dead} of {len(seeds)} seeds had a dead output within {a.steps} steps.")
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
