"""How far ``transformers.pipeline("depth-estimation", model=CHECKPOINT)`` is from ``pseudodepth predict --raw``.

Every checkpoint pseudodepth writes is a Hugging Face folder with a ``preprocessor_config.json``
(``DPTImageProcessor``, see ``pseudodepth.hub``). The pipeline cannot reproduce the official
preprocessing exactly; this measures what that costs on real photos, and which part comes from where:

- ``pipeline``: the pipeline as a user runs it (Pillow bicubic resize, transformers' position-embedding
  interpolation, bicubic upsampling of the output) against ``predict``;
- ``same input``: our network input (OpenCV resize, as ``predict``) through the pipeline's model
  (``AutoModelForDepthEstimation``, i.e. transformers' position-embedding interpolation), upsampled as
  ``predict`` does: the part of the difference that is not the processor's resizing.

Relative L2 error = ||pipeline - predict|| / ||predict|| over the image's pixels, raw and after a
least-squares scale and shift (depth models are affine-invariant, so the aligned number is what a
user of relative depth sees).

Usage:  .venv/bin/python bench/hf_pipeline.py [--model da-v2-small] [--images DIR] [--limit 4]
Writes bench/results/hf_pipeline.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def rel_l2(a: np.ndarray, ref: np.ndarray, align: bool = False) -> float:
    if align:
        design = np.stack([a.ravel(), np.ones(a.size)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, ref.ravel().astype(np.float64), rcond=None)
        a = (design @ coef).reshape(ref.shape)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="da-v2-small", help="model SPEC saved as a checkpoint first")
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "photos"))
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hf_pipeline.md"))
    args = parser.parse_args()

    from transformers import AutoModelForDepthEstimation, pipeline

    from pseudodepth.imageio import read_rgb
    from pseudodepth.infer import predict
    from pseudodepth.models import load_model, save_checkpoint
    from pseudodepth.preprocess import prepare, upsample

    header = machine()
    torch.set_num_threads(2)
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_checkpoint(load_model(args.model), Path(tmp) / "ckpt")
        ours_model = load_model(folder)
        pipe = pipeline("depth-estimation", model=str(folder), device="cpu")
        hf_model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
        for path in sorted(Path(args.images).glob("*.jpg"))[: args.limit]:
            rgb = read_rgb(path)
            ours = predict(ours_model, rgb, 518)
            theirs = pipe(Image.fromarray(rgb))["predicted_depth"].numpy()
            with torch.inference_mode():
                x = torch.from_numpy(prepare(rgb, 518))[None]
                same = upsample(hf_model(pixel_values=x).predicted_depth, rgb.shape[:2], True)[0].numpy()
            cells = [rel_l2(theirs, ours), rel_l2(theirs, ours, True), rel_l2(same, ours), rel_l2(same, ours, True)]
            worst = max(worst, cells[1])
            rows.append(f"| {path.name} | {rgb.shape[1]}x{rgb.shape[0]} | " + " | ".join(f"{c:.2e}" for c in cells) + " |")
    text = "\n".join([
        f"Command: `.venv/bin/python bench/hf_pipeline.py --model {args.model} --limit {args.limit}` "
        f"(a `{args.model}` checkpoint written by `save_checkpoint`, random weights, fp32, input size 518)",
        f"Machine: {header}", "",
        "| image | size | pipeline: rel. L2 | pipeline: rel. L2 after scale+shift | same input: rel. L2 "
        "| same input: after scale+shift |",
        "|---|---|---:|---:|---:|---:|", *rows, "",
        f"Worst pipeline difference after a least-squares scale and shift: {worst:.2e}. *Same input*: our OpenCV "
        "network input through the pipeline's model and our bilinear upsampling, i.e. the difference that is "
        "not the processor's resizing (transformers' position-embedding interpolation).",
    ])
    write_table(text, Path(args.out))


if __name__ == "__main__":
    main()
