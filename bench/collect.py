"""Assemble BENCHMARKS.md (and README's benchmark section) from the tables in bench/results/.

Usage: .venv/bin/python bench/collect.py   (after running the scripts; nothing here is typed by hand)
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_START, README_END = "<!-- BENCHMARKS:START -->", "<!-- BENCHMARKS:END -->"
SECTIONS = [  # (results file, heading, what it measures)
    ("demo.md", "End-to-end demo and ablation (`pseudodepth demo --ablation`, `bench/demo_results.py`)",
     "Generated rooms: a labeled source domain and an unlabeled target domain (the same kind of rooms through a "
     "poor camera). Every model "
     "stands next to the image-blind baseline, a compute-matched teacher and an oracle, on three seeds."),
    ("demo_seeds.md", "The demo on fresh seeds (`pseudodepth demo --seed N`, `bench/demo_seeds.py`)",
     "Whole `pseudodepth demo` runs checked against the demo's goals: `make demo` (seed 0) from a fresh clone, "
     "and seeds on which no choice of the recipe was made."),
    ("dead_output.md", "Dead student output: the output anchor (`bench/dead_output.py`)",
     "The first steps of a student recipe that used to collapse (full schedule, stopped early), per seed, "
     "feature-alignment weight and `loss.output_anchor`."),
    ("label_throughput.md", "Pseudo-labelling throughput (`bench/label_throughput.py`)",
     "The 20 real photos, V2-small architecture with random weights, 518 input unless the variant names "
     "another (`-392`: `--input-size 392`), each variant a whole process."),
    ("label_throughput_pool.md", "Pseudo-labelling throughput on a pool of 100+ photos (`bench/label_throughput.py --pool`)",
     "1-3 MP photos made from the 20 real ones, V2-small architecture with random weights, 518 input unless "
     "the variant names another, each variant a whole process."),
    ("input_size.md", "What a smaller labelling input size costs (`bench/input_size.py`)",
     "The accuracy side of `label --input-size`: the demo's trained teachers at their own input size and at "
     "smaller ones in the proportions of 448 / 392 / 322 to 518 (the speed side is in the tables above)."),
    ("label_throughput_gpu.md", "Pseudo-labelling throughput on a GPU (`bench/label_throughput.py`)",
     "The same benchmark on a lent GPU machine."),
    ("train_throughput.md", "Training throughput (`bench/train_throughput.py`)",
     "`pseudodepth train` in student mode vs a bare forward + backward + optimizer loop of the same model."),
    ("train_phases.md", "Where a student step's time goes (`bench/train_phases.py`)",
     "CPU time per phase of a `pseudodepth train` student step and of the bare loop, one thread, data loading in "
     "the step: why the student is slower than the bare loop."),
    ("frozen_precision.md", "Feature alignment's frozen encoder in bf16 (`bench/frozen_precision.py`)",
     "`feature_alignment.precision: bf16` vs fp32 on the 20 real photos: the frozen encoder's tokens, the "
     "alignment loss and its gradient for students at several distances from the frozen encoder."),
    ("train_throughput_compile.md", "Training throughput with `--compile` (`bench/train_throughput.py --compile`)",
     "The same comparison with `pseudodepth train --compile` and the bare loop and ceiling compiled too, in "
     "another run (its uncompiled rows show the run-to-run spread)."),
    ("loss_filter.md", "Top-10% loss filter cost (`bench/loss_filter.py`)",
     "Forward + backward of the pseudo-label loss step with and without the V2 filter."),
    ("official_agreement.md", "Agreement with the official implementation (`bench/compare_official.py`)",
     "`pseudodepth predict --raw` vs the official Depth-Anything-V2 `infer_image`, fp32."),
    ("da3_agreement.md", "Agreement with the official Depth Anything 3 code (`bench/compare_da3.py`)",
     "`pseudodepth.models.load_model(DA3MONO-LARGE folder)` and our DA3 preprocessing vs the official DA3 "
     "`DinoV2` + `DPT` and `InputProcessor`, fp32. A sky error of `nan` means both sky maps are all zero "
     "there (random weights), so their relative error is 0 / 0; the mask agreement column covers them."),
    ("da3_agreement_large.md",
     "Agreement with the official Depth Anything 3 code at DA3MONO-LARGE size (`bench/compare_da3.py --size large`)",
     "The same comparison with the released mono models' architecture (ViT-L/14, out layers [4, 11, 17, 23], "
     "DPT features 256, out channels [256, 512, 1024, 1024]), random weights, fp32."),
    ("official_metric_agreement.md",
     "Agreement with the official metric model (`bench/compare_official.py --metric hypersim`)",
     "`pseudodepth predict --raw` (metres) vs the official `metric_depth` `infer_image`, fp32, on a checkpoint "
     "recognised as metric by its official file name."),
    ("metric_demo.md", "Metric pseudo-labels from sparse LiDAR (`bench/metric_demo.py`)",
     "Relative teacher -> `label --align-to` -> metric student on generated outdoor scenes, 3 seeds."),
    ("metric_demo_quick.md", "Metric pseudo-labels from sparse LiDAR, quick setting (`bench/metric_demo.py --quick`)",
     "The same loop at smoke-test size (one seed, minutes): it shows the script runs, not what the method gives."),
    ("hf_pipeline.md", "transformers' pipeline on a pseudodepth checkpoint (`bench/hf_pipeline.py`)",
     "`transformers.pipeline(\"depth-estimation\", model=CHECKPOINT)` vs `pseudodepth predict --raw` on real photos."),
]


def main() -> None:
    parts = ["# Benchmarks", "",
             "Every table below was written by the script named in its heading; `bench/collect.py` "
             "assembles this file from `bench/results/`.", ""]
    for name, heading, what in SECTIONS:
        path = ROOT / "bench" / "results" / name
        if path.is_file():
            parts += [f"## {heading}", "", what, "", path.read_text().strip(), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + ("\n" + "\n".join(parts[4:])).replace("\n## ", "\n### ") + "\n" + text[end:])
    print(f"wrote {ROOT / 'BENCHMARKS.md'} and the benchmark section of README.md")


if __name__ == "__main__":
    main()
