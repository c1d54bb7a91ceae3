"""The demo's results for BENCHMARKS.md: student vs teacher, and the Table 9 ablation, from a finished run.

    pseudodepth demo --ablation --out ablation_out     # about 80 minutes on 2 CPU cores
    .venv/bin/python bench/demo_results.py --run ablation_out

Reads ``RUN/metrics.json``, ``RUN/run.json`` and ``RUN/ablation.json`` (all written by the demo),
prints the tables and writes them to ``bench/results/demo.md``; ``bench/collect.py`` then puts them
into BENCHMARKS.md and the README. Nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from common import cpu_model, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]


def results_markdown(run: Path) -> str:
    """The demo's and the ablation's tables from the files a ``pseudodepth demo --ablation`` run wrote."""
    from pseudodepth import ablation, demo

    needed = {name: run / name for name in ("metrics.json", "run.json", "ablation.json")}
    for path in needed.values():
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run `pseudodepth demo --ablation --out {run}` first "
                             f"(it writes {', '.join(needed)})")
    metrics, info, summary = (json.loads(path.read_text()) for path in needed.values())
    summary["setup"] = ablation.setup_text(demo.load_settings(quick=info["quick"]))  # the shipped settings
    stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in info["seconds"].items())
    seed = info.get("seed", 0)
    first, last = training_span(run)
    lines = [
        f"Command: `{summary['command']} --out {run.name}`, then `python bench/demo_results.py --run {run.name}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU only. The last "
        f"`pseudodepth demo` call took {info['total_seconds'] / 60:.1f} min wall ({stages}; models it found "
        f"finished were reused) and {info.get('cpu_seconds', float('nan')) / 60:.1f} min of CPU time (its "
        "processes and their workers; on a shared machine the wall time says little, the CPU time bounds "
        f"what one idle core needs); the {last[1]} trained models of the run were written between {first[0]} "
        f"and {last[0]} (file times of their config.yaml and final/pseudodepth.json).",
        "",
        f"**The demo (`make demo`): student vs teacher vs the image-blind map.** Seed {seed}, the run the "
        "ablation's first seed reuses.",
        "",
        demo.metrics_table(metrics).markdown(),
        "",
        f"**Ablation on seeds {', '.join(map(str, summary['seeds']))}** (mean ± std over seeds). " + summary["setup"],
        "",
    ]
    for table in [ablation.goals(summary, summary["student_row"]), *ablation.tables(summary)]:
        lines += [table.markdown(), ""]
    lines += collapsed_runs(summary)
    return "\n".join(lines)


def training_span(run: Path) -> tuple[tuple[str, int], tuple[str, int]]:
    """When the run's trainings started (first ``config.yaml``) and ended (last ``final/pseudodepth.json``),
    as ``(time, count of trained models)``; the seeds of an ablation may have run in parallel processes."""
    import time

    starts = [p.stat().st_mtime for p in run.rglob("config.yaml")]
    ends = [p.stat().st_mtime for p in run.rglob("final/pseudodepth.json")]
    stamp = lambda times: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(times)) if times else "-"  # noqa: E731
    return (stamp(min(starts, default=0)), len(starts)), (stamp(max(ends, default=0)), len(ends))


def collapsed_runs(summary: dict, share: float = 0.5) -> list[str]:
    """A sentence per trained run whose output is exactly 0 on more than ``share`` of the target test
    pixels (its final ReLU is off there): such a run drags its row's mean and must be read per seed."""
    found = [(name, seed, scores) for seed, rows in summary["per_seed"].items() for name, scores in rows.items()
             if (scores.get("zero_output_target") or 0.0) > share]
    if not found:
        return [f"No run collapsed (every trained model's output is non-zero on at least {100 * (1 - share):.0f}% "
                "of the target test pixels).", ""]
    lines = ["**Collapsed runs** (output exactly 0 on most target test pixels):", ""]
    for name, seed, scores in found:
        lines.append(f"- `{name}`, seed {seed}: zero on {100 * scores['zero_output_target']:.0f}% of the target "
                     f"test pixels, target AbsRel {scores['target_test']['abs_rel']:.4f}")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="the --out folder of `pseudodepth demo --ablation`")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo.md")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    write_table(results_markdown(args.run.resolve()), args.out)


if __name__ == "__main__":
    main()
