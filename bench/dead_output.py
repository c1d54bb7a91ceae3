"""How often a student's output dies early (final ReLU off on the pseudo-labeled images), by feature-alignment
weight and with / without the output anchor (``loss.output_anchor``, the fix).

An earlier demo recipe (a student from random weights aligned at weight 1.0 to the trained teacher's
encoder) had students whose output was 0 on every target pixel. This script trains the first
``--steps`` steps of a student recipe (the learning-rate schedule of the full run, stopped early)
for several seeds, feature-alignment weights and anchor weights, and tabulates
``unlabeled_zero_share`` from each run's ``log.csv``.

    .venv/bin/python bench/dead_output.py --config RUN/student/config.yaml --anchors 0,1

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
    ap.add_argument("--anchors", default="0,1", help="loss.output_anchor values (0: no anchor)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dead_output.md")
    a = ap.parse_args()
    base = yaml.safe_load(a.config.read_text())
    if base.get("mode") != "student":
        raise SystemExit(f"{a.config}: not a student config (mode: {base.get('mode')})")
    seeds, weights = [int(s) for s in a.seeds.split(",")], [float(w) for w in a.weights.split(",")]
    anchors = [float(x) for x in a.anchors.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for anchor in anchors:
            for weight in weights:
                for seed in seeds:
                    config = {**base, "train": {**base["train"], "seed": seed},
                              "loss": {**base["loss"], "output_anchor": anchor},
                              "feature_alignment": {**base["feature_alignment"], "enabled": True, "weight": weight}}
                    log = first_steps(config, a.steps, Path(tmp) / f"a{anchor}_w{weight}_s{seed}")
                    shares, step = log["unlabeled_zero_share"], log["step"].astype(int)
                    dead = step[shares > DEAD_SHARE]
                    dead_at = int(dead[0]) if dead.size else None
                    rows.append((anchor, weight, seed, dead_at, float(shares[-1]), float(log["unlabeled_ssi"][-1]),
                                 int(step[-1])))
                    print(f"anchor {anchor} weight {weight} seed {seed}: dead at {dead_at}, zero share "
                          f"{shares[-1]:.3f} at step {step[-1]}", flush=True)
    lines = [f"Command: `.venv/bin/python bench/dead_output.py {shlex.join(sys.argv[1:])}`",
             f"Machine: {machine()}, {time.strftime('%Y-%m-%d')}", "",
             "| loss.output_anchor | feature_alignment.weight | seed | first logged step with > 99% zero output | "
             "zero share at the last step | unlabeled SSI at the last step | last step |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {x:g} | {w:g} | {s} | {d if d is not None else '-'} | {z:.3f} | {u:.3f} | {last} |"
              for x, w, s, d, z, u, last in rows]
    lines.append("")
    for anchor in anchors:
        for weight in weights:
            dead = sum(1 for x, w, _, d, *_ in rows if (x, w) == (anchor, weight) and d is not None)
            lines.append(f"- output anchor {anchor:g}, weight {weight:g}: {dead} of {len(seeds)} seeds had a dead "
                         f"output within {a.steps} steps.")
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
