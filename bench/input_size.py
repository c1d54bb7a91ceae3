"""What labelling at a smaller input size (`label --input-size`) costs in accuracy, on trained teachers.

No released Depth Anything checkpoint can be downloaded on this machine, so the trained teachers are the
demo's (V2-Small architecture trained at 112 px on 128 x 128 synthetic scenes; one per seed). Each is
evaluated (zero-shot protocol, bf16 as `label --precision bf16` runs) at its own input size and at
smaller ones in the same proportions as 448 / 392 / 322 to the 518 of a released checkpoint (0.875 /
0.75 / 0.625 of it), on the demo's target_test and source_test splits; the image-blind map gives the
scale of what a teacher knows (its AbsRel on the same split).

    pseudodepth demo --ablation --out RUN       # a demo run with several seeds (seeds 1+ under RUN/ablation/)
    .venv/bin/python bench/input_size.py --run RUN

Writes the table to ``bench/results/input_size.md`` (``bench/collect.py`` puts it into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (1.0, 0.875, 0.75, 0.625)  # of the teacher's own input size; 518 x these: 518, 453, 388, 324
SPLITS = ("target_test", "source_test")


def seed_runs(run: Path) -> list[Path]:
    """The run folders of every seed of a demo run: RUN itself (seed 0) and RUN/ablation/seedN."""
    return [run, *sorted(p for p in (run / "ablation").glob("seed*") if (p / "teacher" / "final").is_dir())]


def sizes(native: int) -> list[int]:
    """Input sizes at ``FRACTIONS`` of ``native``, multiples of the 14-pixel patch."""
    return [max(14, round(native * f / 14) * 14) for f in FRACTIONS]


def measure(run: Path, native: int, precision: str) -> dict[int, dict[str, float]]:
    """``{input size: {split: teacher AbsRel}}`` for one seed's teacher."""
    from pseudodepth.evaluate import evaluate

    out: dict[int, dict[str, float]] = {}
    for size in sizes(native):
        out[size] = {split: evaluate({"teacher": str(run / "teacher" / "final")}, f"folder:{run / 'data' / split}",
                                     input_size=size, precision=precision, progress=False)["teacher"]["abs_rel"]
                     for split in SPLITS}
    return out


def blinds(run: Path) -> list[dict[str, float]]:
    """The image-blind map's AbsRel per seed, from the run's ``ablation.json``."""
    per_seed = json.loads((run / "ablation.json").read_text())["per_seed"]
    return [{split: per_seed[s]["image-blind mean map"][split]["abs_rel"] for split in SPLITS}
            for s in sorted(per_seed, key=int)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a `pseudodepth demo --ablation` output folder")
    ap.add_argument("--native", type=int, default=112, help="the teachers' own input size (the demo's: 112)")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "input_size.md")
    a = ap.parse_args()
    native, head = a.native, machine()
    runs = seed_runs(a.run)
    per_seed = [measure(r, native, a.precision) for r in runs]
    lines = [
        f"Command: `.venv/bin/python bench/input_size.py --run {a.run.name} --precision {a.precision}` "
        f"({len(runs)} seeds' teachers, native input size {native})",
        f"Machine: {head}, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "| input size (x native; the same at 518) | network pixels | " + " | ".join(
            f"{s} AbsRel, each seed | {s} x native, mean ± std" for s in SPLITS) + " |",
        "|---|---:|" + "---|---:|" * len(SPLITS),
    ]
    for i, size in enumerate(sizes(native)):
        frac = size / native
        cells = []
        for split in SPLITS:
            vals = [m[size][split] for m in per_seed]
            rel = [m[size][split] / m[native][split] for m in per_seed]
            spread = statistics.stdev(rel) if len(rel) > 1 else 0.0
            cells += [" / ".join(f"{v:.4f}" for v in vals), f"{statistics.mean(rel):.3f} ± {spread:.3f}"]
        at518 = round(518 * FRACTIONS[i] / 14) * 14
        lines.append(f"| {size} ({frac:.3f}; {at518}) | {frac ** 2:.2f} | " + " | ".join(cells) + " |")
    blind = blinds(a.run)[:len(runs)]
    lines.append("| image-blind map (no image) | - | " + " | ".join(
        f"{' / '.join(f'{b[s]:.4f}' for b in blind)} | -" for s in SPLITS) + " |")
    lines += ["", "*Zero-shot protocol (least-squares scale and shift in disparity per image, AbsRel); each "
              "teacher evaluated at its own input size (112, as trained) and at 0.875 / 0.75 / 0.625 of it, "
              "the proportions of 448 / 392 / 322 to 518; network pixels: the share of the native input's. "
              "Demo teachers only (trained on synthetic 128 x 128 scenes): a released checkpoint's cost at "
              "392 is not measured here; measure it on your own data with `pseudodepth evaluate "
              "--input-size`.*"]
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
