"""Strong perturbations: each against a slow reference of its definition; determinism; range."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from pseudodepth.data import augment
from pseudodepth.data.augment import StrongPerturbation, strong_perturbation

LUMA = (0.299, 0.587, 0.114)


@pytest.fixture
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(3, 3, 9, 11, generator=generator)
    batch[0, :, 0, :4] = torch.tensor([0.0, 0.5, 1.0, 0.25])  # grey pixels: hue undefined
    batch[1, :, 1, 1] = torch.tensor([1.0, 0.0, 0.0])  # saturated primaries
    batch[1, :, 1, 2] = torch.tensor([0.0, 1.0, 0.0])
    return batch


def luma(pixel: np.ndarray) -> float:
    return sum(w * float(c) for w, c in zip(LUMA, pixel))


def per_pixel(images: torch.Tensor, function) -> np.ndarray:
    """Apply ``function(image_index, rgb_pixel) -> rgb`` to every pixel with Python loops."""
    array = images.double().numpy()
    out = np.empty_like(array)
    for b, _, y, x in np.ndindex(array.shape[0], 1, *array.shape[2:]):
        out[b, :, y, x] = function(b, array[b, :, y, x])
    return out


def test_brightness_contrast_saturation_match_their_definitions(images):
    factors = torch.tensor([0.5, 1.0, 1.5])
    clip = lambda v: np.clip(v, 0, 1)  # noqa: E731
    expected = per_pixel(images, lambda b, p: clip(float(factors[b]) * p))
    np.testing.assert_allclose(augment.adjust_brightness(images, factors).numpy(), expected, atol=1e-6)

    array = images.double().numpy()
    means = [np.mean([luma(array[b, :, y, x]) for y in range(9) for x in range(11)]) for b in range(3)]
    expected = per_pixel(images, lambda b, p: clip(float(factors[b]) * p + (1 - float(factors[b])) * means[b]))
    np.testing.assert_allclose(augment.adjust_contrast(images, factors).numpy(), expected, atol=1e-6)

    expected = per_pixel(images, lambda b, p: clip(float(factors[b]) * p + (1 - float(factors[b])) * luma(p)))
    np.testing.assert_allclose(augment.adjust_saturation(images, factors).numpy(), expected, atol=1e-6)

    expected = per_pixel(images, lambda b, p: np.full(3, luma(p)))
    np.testing.assert_allclose(augment.grayscale(images).numpy(), expected, atol=1e-6)


def test_factor_one_is_identity_and_zero_gives_the_degenerate_image(images):
    for adjust in (augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation):
        torch.testing.assert_close(adjust(images, 1.0), images)
    assert (augment.adjust_brightness(images, 0.0) == 0).all()
    torch.testing.assert_close(augment.adjust_saturation(images, 0.0), augment.grayscale(images))


@pytest.mark.parametrize("shifts", [[0.25, -0.25, 0.1], [0.5, -0.5, 0.0]])
def test_hue_rotation_matches_colorsys(images, shifts):
    def rotate(b: int, pixel: np.ndarray) -> np.ndarray:
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        return np.array(colorsys.hsv_to_rgb((h + shifts[b]) % 1.0, s, v))

    out = augment.adjust_hue(images, torch.tensor(shifts))
    np.testing.assert_allclose(out.numpy(), per_pixel(images, rotate), atol=2e-6)
    torch.testing.assert_close(out[0, :, 0, :4], images[0, :, 0, :4])  # greys have no hue


def reflect(index: int, size: int) -> int:
    """Mirror without repeating the edge pixel: -1 -> 1, size -> size - 2."""
    if index < 0:
        return -index
    if index >= size:
        return 2 * (size - 1) - index
    return index


def test_gaussian_blur_matches_direct_convolution(images):
    sigmas = [0.1, 0.8, 2.0]
    out = augment.gaussian_blur(images, torch.tensor(sigmas))
    array = images.double().numpy()
    expected = np.empty_like(array)
    for b, sigma in enumerate(sigmas):
        radius = math.ceil(3 * sigma)
        weights = {i: math.exp(-i * i / (2 * sigma * sigma)) for i in range(-radius, radius + 1)}
        total = sum(weights.values())
        for c, y, x in np.ndindex(*array.shape[1:]):
            expected[b, c, y, x] = sum(
                weights[i] * weights[j] / total**2 * array[b, c, reflect(y + i, 9), reflect(x + j, 11)]
                for i in weights for j in weights)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_gaussian_blur_refuses_images_smaller_than_its_kernel():
    with pytest.raises(ValueError, match="too small"):
        augment.gaussian_blur(torch.rand(1, 3, 5, 40), 2.0)


def test_normalize_imagenet_formula():
    image = torch.rand(2, 3, 4, 5)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = augment.normalize_imagenet(image)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (image[:, c] - mean[c]) / std[c])
    torch.testing.assert_close(augment.normalize_imagenet(image[0]), out[0])


def test_strong_perturbation_is_seeded_and_leaves_the_input_alone():
    images = torch.rand(16, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    before = images.clone()
    first = strong_perturbation(images, torch.Generator().manual_seed(5))
    again = strong_perturbation(images, torch.Generator().manual_seed(5))
    other = strong_perturbation(images, torch.Generator().manual_seed(6))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    torch.testing.assert_close(images, before, rtol=0, atol=0)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert ((first - images).abs().flatten(1).amax(dim=1) > 1e-6).any()  # (every op clamps to [0, 1] itself)


def test_strong_perturbation_probabilities():
    images = torch.rand(600, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    none = StrongPerturbation(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    torch.testing.assert_close(strong_perturbation(images, torch.Generator().manual_seed(0), none), images)
    only_gray = StrongPerturbation(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)
    torch.testing.assert_close(strong_perturbation(images, None, only_gray), augment.grayscale(images))

    default = strong_perturbation(images, torch.Generator().manual_seed(3))
    is_gray = ((default - default.mean(dim=1, keepdim=True)).abs().flatten(1).amax(dim=1) < 1e-6).float().mean()
    assert abs(is_gray.item() - 0.2) < 0.06  # binomial(600, 0.2): sd 0.016
    only_jitter = StrongPerturbation(grayscale_p=0.0, blur_p=0.0)
    jittered = strong_perturbation(images, torch.Generator().manual_seed(4), only_jitter)
    changed = ((jittered - images).abs().flatten(1).amax(dim=1) > 1e-6).float().mean()
    assert abs(changed.item() - 0.8) < 0.06


def test_strong_perturbation_wants_rgb_batches():
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        strong_perturbation(torch.rand(3, 8, 8))
