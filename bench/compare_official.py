"""Agreement with the official Depth-Anything-V2 ``infer_image`` on real photos (fp32).

The official code is not part of this project: point ``--official-repo`` at your own checkout of
github.com/DepthAnything/Depth-Anything-V2. It imports only ``Compose`` from torchvision, so a
stand-in is registered here (torchvision is not installed in this project). The official model is
randomly initialised (seeded; weights perturbed so no layer is trivially zero), saved as an
official ``.pth``, loaded through ``pseudodepth`` (key mapping + our preprocessing) and run through
the same code path as ``pseudodepth predict --raw``.

With ``--metric hypersim|vkitti`` the official ``metric_depth`` model (sigmoid * max_depth head, 20 or
80 m) is compared instead: saved as ``depth_anything_v2_metric_<dataset>_<encoder>.pth``, which
pseudodepth recognises as metric by its name, so ``predict --raw`` writes metres.

Usage:  .venv/bin/python bench/compare_official.py --official-repo PATH [--encoder vits] [--images DIR]
        .venv/bin/python bench/compare_official.py --official-repo PATH --metric hypersim
Writes bench/results/official_agreement.md (official_metric_agreement.md with --metric).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import cv2
import numpy as np
import torch
from common import (
    write_table,  # bench/common.py (scripts run as `python bench/NAME.py`)
)

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"vits": (64, [48, 96, 192, 384]), "vitb": (128, [96, 192, 384, 768]), "vitl": (256, [256, 512, 1024, 1024])}


METRIC_DEPTHS = {"hypersim": 20.0, "vkitti": 80.0}  # the official metric_depth/run.py --max-depth per dataset


def official_model(repo: Path, encoder: str, seed: int, metric: str | None = None):
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    tr.Compose, tv.transforms = Compose, tr
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.transforms", tr)
    sys.path.insert(0, str(repo / "metric_depth" if metric else repo))
    from depth_anything_v2.dpt import DepthAnythingV2

    torch.manual_seed(seed)
    features, out_channels = DIMS[encoder]
    extra = {"max_depth": METRIC_DEPTHS[metric]} if metric else {}
    model = DepthAnythingV2(encoder=encoder, features=features, out_channels=out_channels, **extra).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", type=Path, required=True)
    ap.add_argument("--encoder", choices=sorted(DIMS), default="vits")
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--metric", choices=sorted(METRIC_DEPTHS), default=None,
                    help="compare the official metric_depth model (sigmoid * max depth) of this dataset's range")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or ROOT / "bench" / "results" / ("official_metric_agreement.md" if a.metric else "official_agreement.md")

    from pseudodepth.models import is_metric, load_model
    from pseudodepth.predict import predict_files

    ref_model = official_model(a.official_repo, a.encoder, a.seed, a.metric)
    files = sorted(a.images.glob("*.jpg"))[: a.limit]
    if a.metric:  # spread the sigmoid: random weights give logits near 0, i.e. every pixel near max_depth / 2
        last = ref_model.depth_head.scratch.output_conv2[2]
        probe = ref_model.infer_image(cv2.imread(str(files[0])), 518) / ref_model.max_depth
        spread = 2.0 / float(np.log(probe / (1 - probe)).std())
        with torch.no_grad():
            last.weight.mul_(spread)
            last.bias.mul_(spread)
    tmp = Path(tempfile.mkdtemp(prefix="official-"))
    name = f"depth_anything_v2_metric_{a.metric}_{a.encoder}.pth" if a.metric else f"depth_anything_v2_{a.encoder}.pth"
    pth = tmp / name
    torch.save(ref_model.state_dict(), pth)
    ours_model = load_model(pth)
    assert is_metric(ours_model) == bool(a.metric), "the metric checkpoint was not recognised by its name"
    predict_files(str(pth), files, tmp / "ours", raw=True, progress=False, model=ours_model)
    what = (f"official metric_depth code (`--max-depth {METRIC_DEPTHS[a.metric]:g}`), file `{name}`; the last "
            "convolution scaled so that its logits have standard deviation 2 on the first photo, so the sigmoid "
            "spans most of its range" if a.metric
            else "official V2 code")
    flag = f" --metric {a.metric}" if a.metric else ""
    lines = [f"Command: `.venv/bin/python bench/compare_official.py --official-repo PATH --encoder {a.encoder}{flag} "
             f"--limit {a.limit}` ({what}, random weights seed {a.seed}, fp32, 518 input)", "",
             "| image | size | relative L2 error | max abs error / max | max abs error / (max - min) | "
             "output range (official) |", "|---|---|---|---|---|---|"]
    worst = 0.0
    for f in files:
        ref = ref_model.infer_image(cv2.imread(str(f)), 518)
        ours = np.load(tmp / "ours" / f"{f.stem}.npy")
        rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
        worst = max(worst, rel)
        unit = " m" if a.metric else ""
        lines.append(f"| {f.name} | {ref.shape[1]}x{ref.shape[0]} | {rel:.2e} | "
                     f"{float(np.abs(ours - ref).max() / np.abs(ref).max()):.2e} | "
                     f"{float(np.abs(ours - ref).max() / (ref.max() - ref.min())):.2e} | {ref.min():.3g}..{ref.max():.3g}{unit} |")
    lines.append(f"\nWorst relative L2 error: {worst:.2e} (required: < 1e-3).")
    write_table("\n".join(lines), out)


if __name__ == "__main__":
    main()
