"""Pseudo-labelling throughput, side by side in one run, each variant a whole process.

Variants (same photos, same V2-small architecture with random weights, 518 input):
  official    the official per-image loop: cv2.imread -> infer_image (fp32) -> synchronous 16-bit PNG write
  hf-pipeline transformers pipeline("depth-estimation") with the DPT image processor, per image, + PNG write
  label-fp32  `pseudodepth label --precision fp32`
  label-bf16  `pseudodepth label --precision bf16`
  ray-bf16    `pseudodepth label --engine ray --precision bf16` (local Ray started by the command)
  fwd-fp32    the model's forward pass alone on pre-made tensors of the same shapes, batched alike (ceiling)
  fwd-bf16    the same in bf16 autocast

Usage:  .venv/bin/python bench/label_throughput.py [--images DIR] [--model da-v2-small] [--variants a,b,...]
Writes the table to bench/results/label_throughput.md (pasted into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "photos"
VARIANTS = ["official", "hf-pipeline", "label-fp32", "label-bf16", "ray-bf16", "fwd-fp32", "fwd-bf16"]


def _images(folder: Path) -> list[Path]:
    from pseudodepth.imageio import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def run_variant(name: str, images: Path, model_spec: str, batch_size: int, workers: int) -> dict:
    """Runs inside the child process; returns {"n": images, "seconds": steady-state seconds}."""
    import cv2
    import torch

    from pseudodepth import infer
    from pseudodepth.imageio import write_png
    from pseudodepth.models import load_model
    from pseudodepth.preprocess import prepare, upsample
    from pseudodepth.store import encode_label

    files = _images(images)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    model = load_model(model_spec)
    t0 = time.perf_counter()
    if name == "official":
        for f in files:
            bgr = cv2.imread(str(f))
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(prepare(rgb))[None]
            with torch.no_grad():
                d = model(pixel_values=x).predicted_depth
            d = upsample(d, rgb.shape[:2], align_corners=True)[0].numpy()
            write_png(out / f"{f.stem}.png", encode_label(d)[0])
    elif name == "hf-pipeline":
        from PIL import Image
        from transformers import DPTImageProcessor, pipeline

        proc = DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                                 ensure_multiple_of=14, resample=Image.BICUBIC, do_normalize=True,
                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        pipe = pipeline("depth-estimation", model=model, image_processor=proc, device="cpu")
        for f in files:
            d = pipe(Image.open(f))["predicted_depth"]
            write_png(out / f"{f.stem}.png", encode_label(d.numpy())[0])
    elif name.startswith("label-") or name.startswith("ray-"):
        from pseudodepth.label import LabelSettings, label_folder

        settings = LabelSettings(precision=name.split("-")[1])
        if name.startswith("ray-"):
            from pseudodepth.label_ray import label_folder_ray

            label_folder_ray(model_spec, images, out, batch_size=batch_size, settings=settings, progress=False)
        else:
            label_folder(model_spec, images, out, batch_size=batch_size, workers=workers, settings=settings,
                         model=model, progress=False)
    elif name.startswith("fwd-"):
        from collections import defaultdict

        from PIL import Image

        from pseudodepth.preprocess import network_size

        groups = defaultdict(int)
        for f in files:
            w, h = Image.open(f).size
            groups[network_size(h, w)] += 1
        batches = []
        for (h, w), n in groups.items():
            for i in range(0, n, batch_size):
                batches.append(torch.randn(min(batch_size, n - i), 3, h, w))
        infer.forward(model, batches[0][:1], name.split("-")[1])  # warm-up outside the timing
        t0 = time.perf_counter()
        for x in batches:
            infer.forward(model, x, name.split("-")[1])
    else:
        raise SystemExit(f"unknown variant {name}")
    return {"n": len(files), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--model", default="da-v2-small")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "label_throughput.md")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_variant(a.child, a.images, a.model, a.batch_size, a.workers)))
        return


    rows = []
    for name in a.variants.split(","):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--images", str(a.images), "--model",
                               a.model, "--batch-size", str(a.batch_size), "--workers", str(a.workers)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((name, res["n"], wall, res["seconds"]))
        print(f"{name}: {res['n'] / res['seconds']:.2f} img/s steady, {wall:.1f} s whole process", flush=True)

    base = {r[0]: r for r in rows}.get("official")
    lines = [
        f"Command: `.venv/bin/python bench/label_throughput.py --model {a.model} --batch-size {a.batch_size} "
        f"--workers {a.workers}` on {len(_images(a.images))} photos from `{a.images.name}/`",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d')}",
        "",
        "| variant | images | whole process (s) | images/s (whole process) | images/s (steady) | vs official (whole) |",
        "|---|---|---|---|---|---|",
    ]
    for name, n, wall, secs in rows:
        speed = f"{base[2] / wall:.2f}x" if base else "-"
        whole = f"{wall:.1f}" if not name.startswith("fwd") else "-"
        whole_ips = f"{n / wall:.2f}" if not name.startswith("fwd") else "-"
        lines.append(f"| {name} | {n} | {whole} | {whole_ips} | {n / secs:.2f} | {speed if whole != '-' else '-'} |")
    fwd = {r[0]: r for r in rows}
    for prec in ("fp32", "bf16"):
        if f"label-{prec}" in fwd and f"fwd-{prec}" in fwd:
            lab, ceil = fwd[f"label-{prec}"], fwd[f"fwd-{prec}"]
            lines.append(f"\n`label --precision {prec}` steady-state throughput is "
                         f"{100 * (lab[1] / lab[3]) / (ceil[1] / ceil[3]):.0f}% of the forward-only ceiling.")
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
