"""Agreement with the official Depth Anything 3 mono code (DA3MONO-LARGE architecture, random weights, fp32).

The official code is not part of this project: point ``--official-repo`` at your own checkout of
github.com/ByteDance-Seed/Depth-Anything-3. Its model code (``DinoV2`` + ``DPT`` from
``da3mono-large.yaml``) and ``InputProcessor`` are run here with small stand-ins registered in
``sys.modules`` for what this project does not install: ``addict.Dict`` (a dict with attribute access),
``einops.rearrange`` (only the axis regroupings the model uses), ``torchvision.transforms`` (``ToTensor``,
``Normalize``, ``CenterCrop``) and ``imageio`` (imported, unused). The official network is randomly
initialised (seeded; every weight perturbed), saved in the hub layout (``config.json`` +
``model.safetensors`` with ``model.backbone.pretrained.*`` / ``model.head.*``), loaded through
``pseudodepth.models.load_model`` and compared:

1. network: the same input tensor through both; official ``head(...)["depth"]`` vs our ``predicted_depth``,
   and the sky maps;
2. end to end on real photos: official ``InputProcessor`` (upper_bound_resize, 504) + network vs our
   ``prepare_da3`` + network: the preprocessed tensors and the depth at the network resolution.

Usage:  .venv/bin/python bench/compare_da3.py --official-repo PATH [--images DIR] [--limit 3]
Writes bench/results/da3_agreement.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]
# (DinoV2 name, out layers, DPT dim_in, features, out channels): the released DA3 mono models are "large";
# "small" is the same code path at ViT-S widths (the mapping is size-generic), for a loaded CPU
SIZES = {"large": ("vitl", [4, 11, 17, 23], 1024, 256, [256, 512, 1024, 1024]),
         "small": ("vits", [2, 5, 8, 11], 384, 64, [48, 96, 192, 384])}


def _rearrange(x: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
    """einops.rearrange for patterns that only merge or split axes in order (what the DA3 model uses)."""
    left, right = (side.strip() for side in pattern.split("->"))

    def groups(side: str) -> list[list[str]]:  # "(b s) n c" -> [["b", "s"], ["n"], ["c"]]
        return [g.strip("()").split() for g in re.findall(r"\([^)]*\)|\S+", side)]

    lg, rg = groups(left), groups(right)
    if [a for g in lg for a in g] != [a for g in rg for a in g] or "..." in pattern:
        raise NotImplementedError(f"stand-in rearrange: unsupported pattern {pattern!r}")
    known = dict(sizes)
    for g, dim in zip(lg, x.shape):
        unknown = [a for a in g if a not in known]
        prod = int(np.prod([known[a] for a in g if a in known])) if len(g) > len(unknown) else 1
        if len(unknown) == 1:
            known[unknown[0]] = dim // prod
    return x.reshape([int(np.prod([known[a] for a in g])) for g in rg])


def install_stand_ins() -> None:
    addict = types.ModuleType("addict")

    class Dict(dict):
        __getattr__ = dict.__getitem__

        def __setattr__(self, key, value):
            self[key] = value

        def __delattr__(self, key):
            del self[key]

    addict.Dict = Dict
    einops = types.ModuleType("einops")
    einops.rearrange = _rearrange
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")

    class ToTensor:
        def __call__(self, img):
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, x):
            return (x - self.mean) / self.std

    class CenterCrop:
        def __init__(self, size):
            self.size = size

        def __call__(self, x):
            h, w = self.size
            top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
            return x[..., top:top + h, left:left + w]

    tr.ToTensor, tr.Normalize, tr.CenterCrop, tv.transforms = ToTensor, Normalize, CenterCrop, tr
    for name, module in {"addict": addict, "einops": einops, "torchvision": tv, "torchvision.transforms": tr,
                         "imageio": types.ModuleType("imageio")}.items():
        sys.modules.setdefault(name, module)


def official_network(repo: Path, seed: int, size: str = "large"):
    """DinoV2 + DPT exactly as ``da3mono-large.yaml`` builds them (without the package __init__ that
    pulls in the any-view and Gaussian-splatting code)."""
    src = repo / "src"
    sys.path.insert(0, str(src))
    pkg = types.ModuleType("depth_anything_3.model")
    pkg.__path__ = [str(src / "depth_anything_3" / "model")]
    sys.modules["depth_anything_3.model"] = pkg
    from depth_anything_3.model.dinov2.dinov2 import DinoV2
    from depth_anything_3.model.dpt import DPT

    torch.manual_seed(seed)
    net = torch.nn.Module()
    name, layers, dim_in, features, out_channels = SIZES[size]
    net.backbone = DinoV2(name=name, out_layers=layers, alt_start=-1, qknorm_start=-1, rope_start=-1, cat_token=False)
    net.head = DPT(dim_in=dim_in, output_dim=1, features=features, out_channels=out_channels)
    net.eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net


@torch.no_grad()
def official_forward(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DepthAnything3Net._process_depth_head`` on (B, 3, H, W): (depth, sky) at the network resolution."""
    feats, _ = net.backbone(x[:, None])
    out = net.head(feats, x.shape[-2], x.shape[-1], patch_start_idx=0)
    return out["depth"][:, 0], out["sky"][:, 0]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm((a - b).flatten()) / torch.linalg.norm(b.flatten()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--size", choices=sorted(SIZES), default="large",
                    help="large = the DA3MONO-LARGE architecture; small = the same code at ViT-S widths")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "da3_agreement.md")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    from safetensors.torch import save_file

    from pseudodepth.imageio import read_rgb
    from pseudodepth.models import load_model  # transformers first: it must not see the torchvision stand-in
    from pseudodepth.preprocess import prepare_da3

    install_stand_ins()

    net = official_network(a.official_repo, a.seed, a.size)
    from depth_anything_3.utils.io.input_processor import InputProcessor

    tmp = Path(tempfile.mkdtemp(prefix="da3-")) / "DA3MONO-LARGE"
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps({"model_name": "da3mono-large"}))
    save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
    ours = load_model(tmp)

    arch = "DA3MONO-LARGE architecture" if a.size == "large" else "DA3 mono code at ViT-S widths (--size small)"
    lines = [f"Command: `.venv/bin/python bench/compare_da3.py --official-repo PATH --size {a.size} --limit {a.limit}` "
             f"(official DA3 code, {arch}, random weights seed {a.seed}, fp32, 504 input)", "",
             f"Machine: {machine()}", "",
             "| input | network size | preprocessing max abs diff | depth relative L2 error | sky relative L2 error "
             "| sky mask (>= 0.3) agreement |", "|---|---|---|---|---|---|"]
    worst = 0.0

    def row(name: str, x_ref: torch.Tensor, x_ours: torch.Tensor) -> None:
        nonlocal worst
        depth_ref, sky_ref = official_forward(net, x_ref)
        depth = ours(pixel_values=x_ours).predicted_depth
        sky = ours.head.sky
        err = rel(depth, depth_ref)
        worst = max(worst, err)
        pre = float((x_ours - x_ref).abs().max())
        agree = float(((sky >= 0.3) == (sky_ref >= 0.3)).float().mean())
        lines.append(f"| {name} | {x_ref.shape[-1]}x{x_ref.shape[-2]} | {pre:.1e} | {err:.2e} | {rel(sky, sky_ref):.2e} "
                     f"| {agree:.4f} |")

    x = torch.randn(1, 3, 378, 504, generator=torch.Generator().manual_seed(0))
    row("random tensor (network only)", x, x)
    processor = InputProcessor()
    for f in sorted(a.images.glob("*.jpg"))[: a.limit]:
        rgb = read_rgb(f)
        x_ref = processor([rgb], process_res=504, process_res_method="upper_bound_resize", num_workers=1)[0]
        row(f.name, x_ref, torch.from_numpy(prepare_da3(rgb))[None])
    lines.append(f"\nWorst depth relative L2 error: {worst:.2e} (required: < 1e-3).")
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
