"""Strong perturbations for unlabeled images, batched on tensors, and ImageNet normalisation.

Depth Anything V1 perturbs only the unlabeled images the student sees (the pseudo-label belongs to
the clean image); labeled images get the dataset's horizontal flip only. The perturbations follow
UniMatch's strong augmentation (``ColorJitter(0.5, 0.5, 0.5, 0.25)`` with p = 0.8,
``RandomGrayscale`` p = 0.2, Gaussian blur p = 0.5 with sigma in [0.1, 2.0]); CutMix lives in
:mod:`pseudodepth.losses` because its loss needs both labels.

Every function takes un-normalised RGB images in [0, 1], shaped B x 3 x H x W (float, any device),
and keeps them in [0, 1]. Normalisation comes last, in the training step::

    images = normalize_imagenet(strong_perturbation(batch["image"], generator))

with the unlabeled dataset built with ``DepthDataset(..., normalize=False)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pseudodepth.preprocess import IMAGENET_MEAN, IMAGENET_STD

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601-2 luma, as Pillow's ``convert("L")`` (UniMatch's augmentations run on Pillow images)."""


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel with the ImageNet statistics; 3 x H x W or B x 3 x H x W."""
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def _per_image(factor: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(factor, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B``, shape B x 1 x H x W."""
    r, g, b = images.unbind(dim=-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """The luma copied to the three channels."""
    return rgb_to_grayscale(images).expand_as(images).contiguous()


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``clip(f * x, 0, 1)`` (blend with black)."""
    return (images * _per_image(factor, images)).clamp(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``clip(f * x + (1 - f) * m, 0, 1)`` with ``m`` the image's mean luma (blend with grey)."""
    mean = rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    factor = _per_image(factor, images)
    return (factor * images + (1 - factor) * mean).clamp(0, 1)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``clip(f * x + (1 - f) * luma(x), 0, 1)`` per pixel (blend with the grayscale image)."""
    factor = _per_image(factor, images)
    return (factor * images + (1 - factor) * rgb_to_grayscale(images)).clamp(0, 1)


def _rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = images.unbind(dim=-3)
    maxc, minc = images.amax(dim=-3), images.amin(dim=-3)
    chroma = maxc - minc
    flat = chroma == 0
    saturation = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    safe_chroma = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / safe_chroma, (maxc - g) / safe_chroma, (maxc - b) / safe_chroma
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    return torch.remainder(hue / 6.0, 1.0), saturation, maxc


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    table = torch.stack([  # rows: sector 0..5, columns: r, g, b
        torch.stack([value, t, p]), torch.stack([q, value, p]), torch.stack([p, value, t]),
        torch.stack([p, q, value]), torch.stack([t, p, value]), torch.stack([value, p, q]),
    ])  # 6 x 3 x B x H x W
    index = sector.unsqueeze(0).unsqueeze(0).expand(1, 3, *sector.shape)
    return table.gather(0, index)[0].movedim(0, -3)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    """Rotate the HSV hue: ``h' = (h + shift) mod 1`` (shift in [-0.5, 0.5]), saturation and value kept."""
    hue, saturation, value = _rgb_to_hsv(images)
    hue = torch.remainder(hue + _per_image(shift, images)[:, 0], 1.0)
    return _hsv_to_rgb(hue, saturation, value).clamp(0, 1)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """B x (2 radius + 1) normalised 1-D Gaussians ``exp(-x^2 / (2 sigma^2))``, each cut at ``|x| <= ceil(3 sigma)``."""
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    weights = weights * (offsets[None].abs() <= torch.ceil(3 * sigma)[:, None])
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding (``x[-1] = x[1]``).

    ``out(y, x) = sum_{i, j} k(i) k(j) in(y + i, x + j)`` with ``k`` from :func:`gaussian_kernels`
    (truncated at ``ceil(3 sigma)``). Images must be larger than ``ceil(3 max sigma)`` pixels.
    """
    batch, channels, height, width = images.shape
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).reshape(-1).expand(batch)
    if batch == 0:
        return images
    radius = int(math.ceil(3 * float(sigma.max())))
    if radius == 0:
        return images
    if radius >= min(height, width):
        raise ValueError(f"gaussian_blur: images of {height} x {width} are too small for sigma {float(sigma.max())}")
    kernels = gaussian_kernels(sigma, radius).repeat_interleave(channels, dim=0)  # (B C) x K
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernels[:, None, None, :],
                    groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernels[:, None, :, None],
                    groups=batch * channels)
    return flat.reshape(batch, channels, height, width).clamp(0, 1)


@dataclass(frozen=True)
class StrongPerturbation:
    """Parameters of :func:`strong_perturbation` (defaults: UniMatch / Depth Anything V1)."""

    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(low: float, high: float, count: int, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def strong_perturbation(
    images: torch.Tensor, generator: torch.Generator | None = None, config: StrongPerturbation = StrongPerturbation()
) -> torch.Tensor:
    """Colour jitter (p = ``jitter_p``), then grayscale (p = ``grayscale_p``), then blur (p = ``blur_p``).

    Each image draws independently: jitter factors uniform in ``[max(0, 1 - s), 1 + s]`` for
    brightness / contrast / saturation and ``[-hue, hue]`` for hue, applied in a random order
    (as ``torchvision.transforms.ColorJitter``); blur sigma uniform in ``blur_sigma``. Draws come
    from ``generator`` (a CPU ``torch.Generator``; the global one when None), so a seeded generator
    reproduces the batch exactly. Returns a new tensor in [0, 1].
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"strong_perturbation expects B x 3 x H x W images in [0, 1], got {tuple(images.shape)}")
    count, device = images.shape[0], images.device
    jitter = torch.rand(count, generator=generator) < config.jitter_p
    factors = torch.stack([
        _uniform(max(0.0, 1 - config.brightness), 1 + config.brightness, count, generator),
        _uniform(max(0.0, 1 - config.contrast), 1 + config.contrast, count, generator),
        _uniform(max(0.0, 1 - config.saturation), 1 + config.saturation, count, generator),
        _uniform(-config.hue, config.hue, count, generator),
    ], dim=1)
    order = torch.argsort(torch.rand(count, 4, generator=generator), dim=1)
    to_gray = torch.rand(count, generator=generator) < config.grayscale_p
    blur = torch.rand(count, generator=generator) < config.blur_p
    sigma = _uniform(*config.blur_sigma, count, generator)

    out = images.clone()
    operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for step in range(4):
        for op_index, operation in enumerate(operations):
            chosen = (jitter & (order[:, step] == op_index)).to(device)
            if chosen.any():
                out[chosen] = operation(out[chosen], factors[chosen.cpu(), op_index].to(device))
    if to_gray.any():
        out[to_gray.to(device)] = grayscale(out[to_gray.to(device)])
    if blur.any():
        out[blur.to(device)] = gaussian_blur(out[blur.to(device)], sigma[blur].to(device))
    return out
