"""Feature alignment with the frozen encoder in bf16 (``feature_alignment.precision: bf16``) vs fp32.

On real photos (../shared/data/photos, each resized so its shorter side is the crop, centre-cropped,
strongly perturbed as in training, ImageNet-normalised), the frozen encoder's last-layer patch tokens
are computed in fp32 and under bf16 autocast (:func:`pseudodepth.train.frozen_tokens`). Against
both references the script evaluates the feature-alignment loss of student encoders that have
drifted from the frozen one by a known amount (every weight plus Gaussian noise of ``scale`` times
its tensor's standard deviation, so that the patch similarities span the 0.85 margin), and its
gradient with respect to the student's tokens (the gradient of every encoder weight is this one
back-propagated, so its relative error is the same order). Reported: the tokens' cosine between the
two precisions, the loss's relative change, the share of patches whose margin decision flips, the
gradient's relative L2 error (over all patches, and over the patches whose decision agrees: a flipped
patch adds or removes its whole term) and cosine.

The encoder is the ``--model`` preset's random initialisation (no pretrained weights are downloaded
here); with an official checkpoint pass its path as ``--model``.

Usage:  .venv/bin/python bench/frozen_precision.py [--model da-v2-small] [--crop 196] [--device cpu]
Writes bench/results/frozen_precision.md (BENCHMARKS.md is assembled by bench/collect.py).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from common import machine, write_table  # bench/common.py (scripts run as `python bench/NAME.py`)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def photo_batch(folder: Path, crop: int, seed: int = 0) -> torch.Tensor:
    """The photos as a training step sees them: shorter side ``crop``, centre crop, strong perturbations,
    ImageNet normalisation (N x 3 x crop x crop)."""
    from pseudodepth.data import normalize_imagenet, strong_perturbation
    from pseudodepth.data.augment import StrongPerturbation
    from pseudodepth.imageio import list_images, read_rgb

    images = []
    for name in list_images(folder)[0]:
        x = torch.from_numpy(read_rgb(folder / name).copy()).permute(2, 0, 1)[None].float() / 255
        scale = crop / min(x.shape[-2:])
        size = [max(crop, round(s * scale)) for s in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
        images.append(x[..., top:top + crop, left:left + crop])
    generator = torch.Generator().manual_seed(seed)
    return normalize_imagenet(strong_perturbation(torch.cat(images), generator, StrongPerturbation()))


def drifted(encoder: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """A copy of ``encoder`` with every weight plus ``scale * std(weight) * N(0, 1)`` noise."""
    out = copy.deepcopy(encoder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if p.numel() > 1:
                noise = torch.randn(p.shape, generator=generator).to(p.device)
                p.add_(scale * p.float().std() * noise)
    return out


def alignment(student: torch.Tensor, reference: torch.Tensor, margin: float) -> tuple[float, torch.Tensor]:
    """(feature-alignment loss, its gradient with respect to the student's tokens)."""
    from pseudodepth.losses import feature_alignment_loss

    tokens = student.clone().requires_grad_(True)
    loss = feature_alignment_loss(tokens, reference, margin)
    loss.backward()
    return float(loss.detach()), tokens.grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="da-v2-small")
    ap.add_argument("--crop", type=int, default=196)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--margin", type=float, default=0.85)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.3, 0.4, 0.5, 1.0])
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frozen_precision.md")
    a = ap.parse_args()

    from pseudodepth.models import load_model
    from pseudodepth.train import frozen_tokens, patch_tokens

    device = torch.device(a.device)
    encoder = load_model(a.model).backbone.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    images = photo_batch(a.photos, a.crop).to(device)

    def reference(precision: str) -> torch.Tensor:
        config = SimpleNamespace(feature_alignment=SimpleNamespace(precision=precision),
                                 train=SimpleNamespace(precision="fp32"))
        return torch.cat([frozen_tokens(encoder, x[None], config, device) for x in images])

    ref32, ref16 = reference("fp32"), reference("bf16")
    token_cos = F.cosine_similarity(ref32, ref16, dim=-1)
    rows = []
    for i, scale in enumerate(a.scales):
        student = drifted(encoder, scale, seed=i + 1)
        with torch.no_grad():
            tokens = torch.cat([patch_tokens(student, x[None]) for x in images])
        cos32, cos16 = (F.cosine_similarity(tokens, r, dim=-1) for r in (ref32, ref16))
        loss32, grad32 = alignment(tokens, ref32, a.margin)
        loss16, grad16 = alignment(tokens, ref16, a.margin)
        agree = (cos32 <= a.margin) == (cos16 <= a.margin)
        flipped = 1 - agree.double().mean()
        grad16, grad32 = grad16.double(), grad32.double()
        error = (grad16 - grad32).norm() / grad32.norm().clamp_min(1e-30)
        kept = agree[..., None]
        error_agreeing = ((grad16 - grad32) * kept).norm() / (grad32 * kept).norm().clamp_min(1e-30)
        rows.append(
            f"| {scale:g} | {cos32.mean():.3f} | {100 * (cos32 <= a.margin).float().mean():.1f}% | {loss32:.6f} | "
            f"{abs(loss16 - loss32) / max(loss32, 1e-12):.1e} | {100 * flipped:.3f}% | "
            f"{float(error):.1e} | {float(error_agreeing):.1e} | "
            f"{float(F.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)):.6f} |")
    lines = [
        f"Command: `.venv/bin/python bench/frozen_precision.py --model {a.model} --crop {a.crop} --device {a.device} "
        f"--margin {a.margin} --scales {' '.join(f'{s:g}' for s in a.scales)}`",
        f"Machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"{len(images)} photos of {a.photos.name}/ at {a.crop} x {a.crop}, strongly perturbed as in training, "
        f"{ref32.shape[1]} patch tokens each. Frozen encoder's tokens, bf16 autocast vs fp32: cosine min "
        f"{token_cos.min():.6f}, mean {token_cos.mean():.6f}; relative L2 difference "
        f"{float((ref16 - ref32).norm() / ref32.norm()):.1e}.",
        "",
        "| student drift (noise / weight std) | mean cos to the frozen tokens | patches under the margin | "
        "alignment loss, fp32 reference | its relative change with the bf16 reference | patches whose margin "
        "decision flips | gradient's relative L2 error | the same over the other patches | gradient's cosine |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"*Loss: `losses.feature_alignment_loss` (1 - cos over the patches with cos <= {a.margin}); gradient with "
        "respect to the student's tokens. The encoder is the preset's random initialisation: no pretrained "
        "weights are downloaded on this machine.*",
    ]
    write_table("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
