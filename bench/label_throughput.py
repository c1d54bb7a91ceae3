"""Pseudo-labelling throughput, side by side in one run, each variant a whole process.

Variants (same photos, same V2-small architecture with random weights, 518 input):
  official    the official per-image loop: cv2.imread -> infer_image (fp32) -> synchronous 16-bit PNG write
  hf-pipeline transformers pipeline("depth-estimation") with the DPT image processor, per image, + PNG write
  label-fp32  `pseudodepth label --precision fp32`
  label-bf16  `pseudodepth label --precision bf16`
  label-bf16-compile, label-bf16-reduced, label-bf16-compile-reduced, label-bf16-device, label-bf16-392, ...
              the same with `--compile` (torch.compile), `--reduced-decode` (JPEG DCT-domain downscaling
              while >= the network size), `--resize-on device` (uint8 to the device, resized there) and/or
              `--input-size N` (a number: the network's lower bound instead of 518) and/or `--forward-in
              main` (the batched forward in the main process instead of the CPU default, in the workers)
  ray-bf16    `pseudodepth label --engine ray --precision bf16` (local Ray started by the command)
  fwd-fp32    the model's forward pass alone on pre-made tensors of the same shapes, batched alike (ceiling)
  fwd-bf16    the same in bf16 autocast (fwd-bf16-392: at input size 392)

Usage:  .venv/bin/python bench/label_throughput.py [--images DIR] [--pool N] [--repeat R] [--variants a,b,...]
        [--device cuda] [--out bench/results/NAME.md]
--pool N builds N photos of 1-3 MP from --images (random crops, flips and rescales of the originals, JPEG
quality 90; fixed seed) and labels those. --repeat R runs the list R times, interleaved, and reports the
median. Each label variant's labels are compared with the official loop's (both min-max normalised 16-bit).
On a GPU machine:  bench/label_throughput.py --device cuda --pool 2000 --workers 14 --batch-size 32
        --variants official,label-bf16-device,label-bf16-device-reduced,fwd-bf16 --out bench/results/label_throughput_gpu.md
Writes the table to bench/results/label_throughput.md (BENCHMARKS.md is assembled by bench/collect.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "photos"
VARIANTS = ["official", "label-bf16", "label-bf16-reduced", "label-bf16-compile", "label-bf16-compile-reduced",
            "fwd-fp32", "fwd-bf16"]
FLAGS = {"compile": "--compile", "reduced": "--reduced-decode", "device": "--resize-on device"}


def _images(folder: Path) -> list[Path]:
    from pseudodepth.imageio import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def build_pool(source: Path, n: int, out: Path, seed: int = 0) -> Path:
    """``n`` JPEGs of 1-3 MP made from the photos in ``source``: random crop (70-100% per side), maybe a
    horizontal flip, rescaled so the result has 1-3 MP, quality 90. Reused when already built."""
    import numpy as np
    from PIL import Image

    if out.is_dir() and len(_images(out)) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    photos = _images(source)
    for i in range(n):
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = im.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            scale = (rng.uniform(1.0e6, 3.0e6) / (cw * ch)) ** 0.5
            im = im.resize((round(cw * scale), round(ch * scale)), Image.Resampling.LANCZOS)
            im.save(out / f"pool{i:04d}.jpg", quality=90)
    return out


def run_variant(name: str, images: Path, model_spec: str, batch_size: int, workers: int, device: str,
                out: Path) -> dict:
    """Runs inside the child process; returns {"n": images, "seconds": steady-state seconds}."""
    import cv2
    import torch

    from pseudodepth import infer
    from pseudodepth.imageio import write_png
    from pseudodepth.models import load_model
    from pseudodepth.preprocess import prepare, upsample
    from pseudodepth.store import encode_label

    files = _images(images)
    model = load_model(model_spec, device=device)
    t0 = time.perf_counter()
    if name == "official":  # the official per-image loop (infer_image), fp32
        for f in files:
            bgr = cv2.imread(str(f))
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(prepare(rgb))[None].to(device)
            with torch.no_grad():
                d = model(pixel_values=x).predicted_depth
            d = upsample(d, rgb.shape[:2], align_corners=True)[0].cpu().numpy()
            write_png(out / f"{f.stem}.png", encode_label(d)[0])
    elif name == "hf-pipeline":
        from PIL import Image
        from transformers import DPTImageProcessor, pipeline

        proc = DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                                 ensure_multiple_of=14, resample=Image.BICUBIC, do_normalize=True,
                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        pipe = pipeline("depth-estimation", model=model, image_processor=proc, device=device)
        for f in files:
            d = pipe(Image.open(f))["predicted_depth"]
            write_png(out / f"{f.stem}.png", encode_label(d.cpu().numpy())[0])
    elif name.startswith("label-") or name.startswith("ray-"):
        from pseudodepth.label import LabelSettings, label_folder

        _, precision, *flags = name.split("-")
        settings = LabelSettings(_size(name), precision=precision, reduced_decode="reduced" in flags)
        if name.startswith("ray-"):
            from pseudodepth.label_ray import label_folder_ray

            label_folder_ray(model_spec, images, out, batch_size=batch_size, settings=settings, progress=False)
        else:
            label_folder(model_spec, images, out, batch_size=batch_size, workers=workers, settings=settings,
                         model=model, progress=False, device=device, compile="compile" in flags,
                         resize_on="device" if "device" in flags else None,
                         forward_in="main" if "main" in flags else None)
    elif name.startswith("fwd-"):
        from collections import defaultdict

        from PIL import Image

        from pseudodepth.preprocess import network_size

        groups = defaultdict(int)
        size = _size(name) or 518  # fwd-bf16-392: at input size 392
        for f in files:
            w, h = Image.open(f).size
            groups[network_size(h, w, size)] += 1
        batches = []
        for (h, w), n in groups.items():
            for i in range(0, n, batch_size):
                batches.append(torch.randn(min(batch_size, n - i), 3, h, w, device=device))
        model = infer.fast_layout(model, name.split("-")[1])  # as `label` runs it (channels-last, blocked attention)
        infer.forward(model, batches[0][:1], name.split("-")[1])  # warm-up outside the timing
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in batches:
            infer.forward(model, x, name.split("-")[1])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    else:
        raise SystemExit(f"unknown variant {name}")
    return {"n": len(files), "seconds": time.perf_counter() - t0}


def _size(name: str) -> int | None:
    """The input size a variant names (label-bf16-392 -> 392), None for the default."""
    return next((int(f) for f in name.split("-")[2:] if f.isdigit()), None)


def _label_files(out: Path) -> dict[str, Path]:
    root = out / "labels" if (out / "labels").is_dir() else out
    return {p.stem: p for p in root.rglob("*.png")}


def agreement(official: Path, other: Path) -> tuple[float, float]:
    """(mean relative L2, worst max |difference|) of min-max normalised 16-bit labels vs the official loop's."""
    import numpy as np

    from pseudodepth.imageio import read_png16

    ref, got = _label_files(official), _label_files(other)
    rel, worst = [], 0.0
    for stem, path in ref.items():
        a = read_png16(path).astype(np.float64) / 65535
        b = read_png16(got[stem]).astype(np.float64) / 65535
        rel.append(float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12)))
        worst = max(worst, float(np.abs(b - a).max()))
    return float(np.mean(rel)), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--pool", type=int, default=0, help="label a pool of N 1-3 MP photos made from --images")
    ap.add_argument("--repeat", type=int, default=1, help="run the variant list this many times, interleaved")
    ap.add_argument("--model", default="da-v2-small")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "label_throughput.md")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_variant(a.child, a.images, a.model, a.batch_size, a.workers, a.device, a.child_out)))
        return

    images = a.images
    if a.pool:
        images = build_pool(a.images, a.pool, Path(tempfile.gettempdir()) / f"pseudodepth-pool-{a.pool}")
    names = a.variants.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-label-"))
    runs: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}  # (wall, steady, load)
    outs: dict[str, Path] = {}
    n_images = len(_images(images))
    try:
        for r in range(a.repeat):
            for name in names:
                out = work / f"{name}-{r}"
                out.mkdir()
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--child", name, "--images", str(images),
                                       "--model", a.model, "--batch-size", str(a.batch_size), "--workers",
                                       str(a.workers), "--device", a.device, "--child-out", str(out)],
                                      capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[name].append((wall, res["seconds"], load))
                if name in outs:
                    shutil.rmtree(out)
                else:
                    outs[name] = out
                print(f"[{r + 1}/{a.repeat}] {name}: {wall:.1f} s whole process, {res['n'] / res['seconds']:.2f} "
                      f"img/s steady, load {load:.2f}", flush=True)
        agree = {n: agreement(outs["official"], outs[n]) for n in outs  # same input size only (518)
                 if "official" in outs and n != "official" and not n.startswith("fwd") and not _size(n)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {n: statistics.median(w for w, _, _ in v) for n, v in runs.items() if v}
    base = med.get("official")
    what = f"a pool of {n_images} photos of 1-3 MP made from `{a.images.name}/` (`--pool {a.pool}`)" if a.pool \
        else f"{n_images} photos from `{images.name}/`"
    cmd = (f"`.venv/bin/python bench/label_throughput.py --model {a.model} --batch-size {a.batch_size} --workers "
           f"{a.workers}{f' --pool {a.pool}' if a.pool else ''} --repeat {a.repeat}"
           f"{f' --device {a.device}' if a.device != 'cpu' else ''} --variants {a.variants}`")
    lines = [
        f"Command: {cmd}, on {what}",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "| variant | images | whole process (s), each run | median (s) | images/s (whole process) | "
        "images/s (steady) | vs official (whole) | load average at each start | labels vs official: rel. L2 / max |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for name, v in runs.items():
        if not v:
            continue
        steady = statistics.median(n_images / s for _, s, _ in v)
        loads = " / ".join(f"{x:.1f}" for _, _, x in v)
        if name.startswith("fwd"):
            lines.append(f"| {name} | {n_images} | - | - | - | {steady:.2f} | - | {loads} | - |")
            continue
        each = " / ".join(f"{w:.1f}" for w, _, _ in v)
        ratio = f"{base / med[name]:.2f}x" if base else "-"
        ag = agree.get(name)
        ag_s = f"{ag[0]:.1e} / {ag[1]:.1e}" if ag else \
            f"other input size: accuracy in `bench/input_size.py`" if _size(name) else "-"
        lines.append(f"| {name} | {n_images} | {each} | {med[name]:.1f} | {n_images / med[name]:.2f} | {steady:.2f} "
                     f"| {ratio} | {loads} | {ag_s} |")
    lines.append("")
    lines.append("*Whole process: from starting the Python process to its exit (imports, model set-up, compilation, "
                 "all labels written). Steady: the labelling loop alone. Labels vs official: both min-max "
                 "normalised 16-bit maps; mean over images of the relative L2 difference, and the largest "
                 "absolute difference in units of the label range.*")
    for name, lab in runs.items():  # each label variant against the forward-only ceiling at its precision and size
        if not name.startswith("label-") or not lab:
            continue
        prec, size = name.split("-")[1], _size(name)
        ceil = runs.get(f"fwd-{prec}" + (f"-{size}" if size else ""))
        if ceil:
            ratio = statistics.median(1 / s for _, s, _ in lab) / statistics.median(1 / s for _, s, _ in ceil)
            lines.append(f"\n`{name}` steady-state throughput is {100 * ratio:.0f}% of the forward-only ceiling.")
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
