"""Training losses of Depth Anything (V1/V2) as pure functions on tensors.

Conventions shared by every function in this module:

- Depth/disparity maps are ``B x H x W`` tensors and ``valid`` is a bool ``B x H x W`` mask.
- Where a target is given, its non-finite pixels (NaN, inf) are invalid automatically:
  ``valid = valid & isfinite(target)``.
- A per-image mean is taken over that image's valid (or kept) pixels; the batch value is the
  mean over the images that have at least one such pixel. When no image has one, the result is
  ``0`` and still part of the autograd graph (``backward()`` works, gradients are 0). Images
  with no valid pixel never produce NaN.
- Every loss is differentiable w.r.t. ``pred``; the filter masks are computed without gradient.
  Predictions must be finite: a NaN/inf prediction makes the loss NaN (divergence is not hidden).

Contents: SSI normalisation and the affine-invariant loss (MiDaS), least-squares scale and
shift, multi-scale gradient matching (MiDaS), the V2 top-loss filter for pseudo-labels, V1
feature alignment, V1 CutMix, and the combined losses that ``pseudodepth.train`` calls
(``pseudo_label_loss``, ``labeled_loss``, ``cutmix_loss``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- input checks


def _check_maps(fn: str, pred: Tensor, target: Tensor | None, valid: Tensor) -> None:
    """Raise a clear error unless ``pred``/``target`` are B x H x W and ``valid`` is a bool mask."""
    if pred.dim() != 3:
        raise ValueError(
            f"pseudodepth.losses.{fn}: expected B x H x W maps, got a tensor of shape "
            f"{tuple(pred.shape)}; squeeze the channel of B x 1 x H x W outputs (x[:, 0])."
        )
    for name, other in (("target", target), ("valid", valid)):
        if other is not None and other.shape != pred.shape:
            raise ValueError(
                f"pseudodepth.losses.{fn}: {name} has shape {tuple(other.shape)} but the "
                f"prediction has {tuple(pred.shape)}; resize both to the same B x H x W."
            )
    if valid.dtype != torch.bool:
        raise TypeError(
            f"pseudodepth.losses.{fn}: valid must be a bool mask (e.g. depth > 0), "
            f"got dtype {valid.dtype}."
        )


def _check_reduction(fn: str, reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"pseudodepth.losses.{fn}: reduction must be 'mean' or 'none', got {reduction!r}.")


def _valid_target(target: Tensor, valid: Tensor) -> Tensor:
    return valid & torch.isfinite(target)


# --------------------------------------------------------------------------- reductions
# Hot paths multiply by 0/1 float weights instead of torch.where (several times faster on CPU);
# they need finite values at weight-0 pixels, so invalid targets are zeroed once up front.


def _weight(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask as 0/1 weights (through uint8: several times faster than ``mask.to(dtype)`` on CPU)."""
    return mask.view(torch.uint8).to(dtype)


def _masked_mean(values: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image mean of ``values`` over a 0/1 float ``weight`` (0 where empty), and the pixel counts."""
    counts = weight.sum((1, 2))
    return (values * weight).sum((1, 2)) / counts.clamp_min(1), counts


def _count(mask: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Number of True entries along ``dim`` (int32: several times faster than the default int64)."""
    return mask.sum(dim, dtype=torch.int32)


def _mean_over_images(per_image: Tensor, has_pixels: Tensor) -> Tensor:
    """Mean over the images with ``has_pixels``; 0 (still in the graph) when there are none."""
    return torch.where(has_pixels, per_image, 0).sum() / has_pixels.sum().clamp_min(1)


# --------------------------------------------------------------------------- exact order statistics


def _kth_smallest(values: Tensor, mask: Tensor, k: Tensor, counts: Tensor) -> Tensor:
    """Per row of ``values`` (B x N), the ``k[b]``-th smallest (1-based) of its ``counts[b]`` masked entries.

    Exact (NaN counts as the largest value, like ``torch.kthvalue``); rows without any entry
    give 0. Differentiable: the gradient goes to the selected element, as with ``torch.median``.
    """
    with torch.no_grad():
        value, index = _select(values.detach(), mask, k.clamp(min=1), counts)
    at_index = values.gather(1, index[:, None])[:, 0]
    picked = torch.where(at_index == value, at_index, value)  # index is arbitrary among ties with the fill
    return torch.where(counts > 0, picked, 0)


_SAMPLE = 8192  # sample size of the bracketing step; rows up to 4x this use kthvalue directly


def _select(values: Tensor, mask: Tensor, k: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """(value, column) of the ``k``-th smallest masked entry per row: bracketing where it pays, else kthvalue."""
    if values.shape[1] <= 4 * _SAMPLE:
        return _kthvalue_per_row(torch.where(mask, values, math.inf), k)
    found, value, index = _bracketed_select(values, mask, k, counts)
    if not bool(found.all()):  # exact fallback for the rows the bracket missed
        missed = ~found
        filled = torch.where(mask[missed], values[missed], math.inf)
        value[missed], index[missed] = _kthvalue_per_row(filled, k[missed])
    return value, index


def _kthvalue_per_row(x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Per row the ``k[b]``-th smallest of ``x`` (B x C, ``1 <= k[b] <= C``) in one ``kthvalue`` call.

    ``kthvalue`` takes one ``k`` for all rows; prepending ``max(k) - k[b]`` entries of -inf to
    row ``b`` moves its ``k[b]``-th smallest to rank ``max(k)``. Returns (values, columns of x).
    """
    k_max = int(k.max())
    shift = k_max - k
    width = int(shift.max())
    if width:
        pad = torch.where(torch.arange(width, device=x.device) < shift[:, None], -math.inf, math.inf)
        x = torch.cat([pad.to(x.dtype), x], 1)
    values, columns = x.kthvalue(k_max, 1)
    return values, (columns - width).clamp_min(0)


def _bracketed_select(values: Tensor, mask: Tensor, k: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact selection in a few cheap passes instead of a ``kthvalue`` over whole rows.

    A fixed random sample of columns gives, per row, two values ``lo <= x_k <= hi``, 5 standard
    deviations of the sample rank of ``x_k`` on either side. One pass counts the entries below ``lo``
    and collects those in ``[lo, hi]`` (a few % of the row); when ``x_k`` is provably among them
    it is selected there. Returns (found, value, column); rows not found (unlucky sample, many
    ties at ``x_k``, NaN) are left to the caller's exact fallback.
    """
    batch, width = values.shape
    columns = _sample_columns(width, values.device)
    sample_mask = mask.index_select(1, columns)
    sample = torch.where(sample_mask, values.index_select(1, columns), math.inf)
    sampled = _count(sample_mask, 1)
    share = (k - 0.5) / counts.clamp_min(1)
    position = share * sampled  # expected 0-based rank of x_k in the sample, ~binomial
    margin = 5 * (sampled * share * (1 - share)).sqrt() + 3  # 5 standard deviations
    lo_rank, hi_rank = (position - margin).floor().long() + 1, (position + margin).ceil().long() + 1
    bounds = _kthvalue_per_row(sample.repeat(2, 1), torch.cat([lo_rank, hi_rank]).clamp(1, _SAMPLE))[0]
    lo = torch.where(lo_rank >= 1, bounds[:batch], -math.inf)
    hi = torch.where(hi_rank <= sampled, bounds[batch:], math.inf)

    is_below = (values < lo[:, None]) & mask
    up_to_hi = (values <= hi[:, None]) & mask
    below = _count(is_below, 1)
    count = _count(up_to_hi, 1) - below
    found = (below < k) & (k <= below + count) & (count <= width // 8) & ~hi.isnan() | (counts == 0)
    inside = up_to_hi ^ is_below  # lo <= hi, so is_below is a subset of up_to_hi
    if not bool(found.all()):
        inside &= found[:, None]
        count = torch.where(found, count, 0)

    # pack each row's candidates into a B x max(count) matrix padded with +inf
    flat = inside.view(-1).nonzero()[:, 0]  # row-major: grouped by row
    candidates = values.new_full((batch, max(int(count.max()), 1)), math.inf)
    row_offset = torch.arange(batch, device=values.device) * candidates.shape[1] - (count.cumsum(0) - count)
    slot = torch.arange(flat.numel(), device=values.device)
    slot += row_offset.repeat_interleave(count, output_size=flat.numel())
    candidates.view(-1)[slot] = values.reshape(-1).index_select(0, flat)
    candidate_flat = torch.zeros(candidates.shape, dtype=torch.long, device=values.device)
    candidate_flat.view(-1)[slot] = flat
    value, at = _kthvalue_per_row(candidates, torch.where(found, k - below, 1))
    return found, value, candidate_flat.gather(1, at[:, None])[:, 0] % width


@functools.lru_cache(maxsize=16)
def _sample_columns(width: int, device: torch.device) -> Tensor:
    """A fixed random sample of ``_SAMPLE`` columns (sorted, for cache-friendly reads)."""
    columns = torch.randint(width, (_SAMPLE,), generator=torch.Generator().manual_seed(0))
    return columns.sort().values.to(device)


# --------------------------------------------------------------------------- affine-invariant loss


def _normalize(d: Tensor, valid: Tensor, weight: Tensor, counts: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``normalize_ssi`` for a map that is finite everywhere; ``weight``/``counts`` come from ``valid``."""
    t = _kth_smallest(d.flatten(1), valid.flatten(1), (counts + 1) // 2, counts)[:, None, None]
    centered = (d - t) * weight
    s = (centered.abs().sum((1, 2)) / counts.clamp_min(1)).clamp_min(eps)[:, None, None]
    return centered / s, t[:, 0, 0], s[:, 0, 0]


def normalize_ssi(d: Tensor, valid: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Scale-and-shift normalisation of MiDaS / Depth Anything, per image.

    ``t = median(d[valid])``, ``s = max(mean(|d[valid] - t|), eps)``, ``d_hat = (d - t) / s``.

    The median is the *lower* median (``torch.median`` convention): the ``ceil(n/2)``-th
    smallest of the ``n`` valid values. ``eps`` keeps constant maps finite (they give
    ``d_hat = 0``). Non-finite values of ``d`` count as invalid. Invalid pixels of ``d_hat`` are
    0; images without valid pixels get ``t = 0``, ``s = eps``. Returns ``(d_hat, t, s)`` with
    ``t`` and ``s`` of shape ``(B,)``.
    """
    _check_maps("normalize_ssi", d, None, valid)
    valid = valid & torch.isfinite(d)
    return _normalize(torch.where(valid, d, 0), valid, _weight(valid, d.dtype), _count(valid, (1, 2)), eps)


def _ssi_loss_map(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``|pred_hat - target_hat|`` (0 at invalid pixels), ``pred_hat``, ``target_hat``, valid weights.

    ``valid`` must already exclude non-finite targets; those are zeroed here.
    """
    weight, counts = _weight(valid, pred.dtype), _count(valid, (1, 2))
    pred_hat = _normalize(pred, valid, weight, counts, 1e-6)[0]
    target_hat = _normalize(torch.where(valid, target, 0), valid, weight, counts, 1e-6)[0]
    return (pred_hat - target_hat).abs(), pred_hat, target_hat, weight


def affine_invariant_loss(pred: Tensor, target: Tensor, valid: Tensor, reduction: str = "mean") -> Tensor:
    """Scale-and-shift-invariant L1 loss (MiDaS ``L_ssi``, Depth Anything).

    ``L = 1/M sum_valid |pred_hat - target_hat|`` per image, with both maps normalised by
    ``normalize_ssi`` over the image's valid pixels; the batch loss is the mean over images with
    a valid pixel. ``reduction="none"`` returns the B x H x W map (0 at invalid pixels).
    """
    _check_maps("affine_invariant_loss", pred, target, valid)
    _check_reduction("affine_invariant_loss", reduction)
    loss_map, _, _, weight = _ssi_loss_map(pred, target, _valid_target(target, valid))
    if reduction == "none":
        return loss_map
    per_image, counts = _masked_mean(loss_map, weight)
    return _mean_over_images(per_image, counts > 0)


def scale_shift_ls(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form least squares ``(s, t) = argmin sum_valid (s * pred + t - target)^2`` per image.

    ``s = cov(pred, target) / var(pred)``, ``t = mean(target) - s * mean(pred)`` over the valid
    pixels. When ``pred`` is constant there (including 0 or 1 valid pixel) the scale is
    undetermined: ``s = 0`` and ``t = mean(target)`` (0 without valid pixels). Returns two
    ``(B,)`` tensors.
    """
    _check_maps("scale_shift_ls", pred, target, valid)
    valid = _valid_target(target, valid)
    weight = _weight(valid, pred.dtype)
    p, y = pred * weight, torch.where(valid, target, 0)
    mean_p, n = _masked_mean(p, weight)
    mean_y = _masked_mean(y, weight)[0]
    dp, dy = (p - mean_p[:, None, None]) * weight, (y - mean_y[:, None, None]) * weight
    n = n.clamp_min(1)
    var, cov = (dp * dp).sum((1, 2)) / n, (dp * dy).sum((1, 2)) / n
    # float rounding leaves var ~ (log2(n) * eps)^2 * mean(p^2) for a constant map
    degenerate = var <= (64 * torch.finfo(p.dtype).eps) ** 2 * (p * p).sum((1, 2)) / n
    s = torch.where(degenerate, 0, cov / torch.where(degenerate, 1, var))
    return s, mean_y - s * mean_p


def ls_affine_loss(pred: Tensor, target: Tensor, valid: Tensor, reduction: str = "mean") -> Tensor:
    """MSE after least-squares alignment (MiDaS' other scale-and-shift-invariant loss).

    ``(s, t) = scale_shift_ls(pred, target, valid)``, ``L = 1/M sum_valid (s * pred + t - target)^2``
    per image, mean over images with a valid pixel. (MiDaS' ``mse_loss`` divides by ``2M`` and
    reduces over the batch; this is the plain per-image mean.) Gradients flow through ``s, t``.
    ``reduction="none"`` returns the B x H x W map of squared residuals (0 at invalid pixels).
    """
    _check_maps("ls_affine_loss", pred, target, valid)
    _check_reduction("ls_affine_loss", reduction)
    valid = _valid_target(target, valid)
    weight = _weight(valid, pred.dtype)
    s, t = scale_shift_ls(pred, target, valid)
    residual = (s[:, None, None] * pred + t[:, None, None] - torch.where(valid, target, 0)) * weight
    loss_map = residual**2
    if reduction == "none":
        return loss_map
    per_image, counts = _masked_mean(loss_map, weight)
    return _mean_over_images(per_image, counts > 0)


# --------------------------------------------------------------------------- gradient matching


def _gradient_matching(pred_hat: Tensor, target_hat: Tensor, weight: Tensor, scales: int) -> Tensor:
    """Per-image multi-scale gradient loss (see ``gradient_matching_loss``); inputs finite everywhere."""
    residual = (pred_hat - target_hat) * weight
    total = residual.new_zeros(residual.shape[0])
    for k in range(scales):
        r, m = residual[:, :: 2**k, :: 2**k], weight[:, :: 2**k, :: 2**k]
        grad_x = ((r[:, :, 1:] - r[:, :, :-1]).abs() * (m[:, :, 1:] * m[:, :, :-1])).sum((1, 2))
        grad_y = ((r[:, 1:, :] - r[:, :-1, :]).abs() * (m[:, 1:, :] * m[:, :-1, :])).sum((1, 2))
        total = total + (grad_x + grad_y) / m.sum((1, 2)).clamp_min(1)
    return total


def gradient_matching_loss(
    pred_hat: Tensor,
    target_hat: Tensor,
    valid: Tensor,
    scales: int = 4,
    keep: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-scale gradient matching loss of MiDaS on the residual ``R = pred_hat - target_hat``.

    With ``M = valid & keep & isfinite(target_hat)`` and, at scale ``k``, ``R_k, M_k`` the maps
    subsampled every ``2^k`` pixels (``x[:, ::2^k, ::2^k]``)::

        L_k = ( sum |R_k[i, j+1] - R_k[i, j]| * M_k[i, j+1] * M_k[i, j]
              + sum |R_k[i+1, j] - R_k[i, j]| * M_k[i+1, j] * M_k[i, j] ) / sum M_k

        L = sum_{k < scales} L_k   (per image; L_k = 0 when sum M_k = 0)

    This is MiDaS ``GradientLoss`` with the image-based reduction, except that the batch mean
    skips images without any pixel in ``M`` (MiDaS counts them as 0). ``reduction="none"``
    returns the per-image ``(B,)`` values. ``pred_hat`` must be finite.
    """
    _check_maps("gradient_matching_loss", pred_hat, target_hat, valid)
    _check_reduction("gradient_matching_loss", reduction)
    mask = _valid_target(target_hat, valid)
    if keep is not None:
        _check_maps("gradient_matching_loss", pred_hat, None, keep)
        mask = mask & keep
    weight = _weight(mask, pred_hat.dtype)
    per_image = _gradient_matching(pred_hat, torch.where(mask, target_hat, 0), weight, scales)
    if reduction == "none":
        return per_image
    return _mean_over_images(per_image, weight.sum((1, 2)) > 0)


# --------------------------------------------------------------------------- top-loss filter (V2)


def _drop_top(loss_map: Tensor, valid: Tensor, ratio: float) -> Tensor:
    if ratio == 0:
        return valid.clone()
    counts = _count(valid, (1, 2))
    k = torch.ceil((1 - ratio) * (counts.clamp_min(1) - 1).double()).long() + 1
    v = _kth_smallest(loss_map.flatten(1), valid.flatten(1), k, counts)[:, None, None]
    keep = valid & ~(loss_map >= v)  # L < v, and NaN losses (never dropped)
    nothing_kept = (_count(keep, (1, 2)) == 0) & (counts > 0)
    if bool(nothing_kept.any()):
        keep |= nothing_kept[:, None, None] & valid & (loss_map <= v)
    return keep


@torch.no_grad()
def drop_top_losses(
    loss_map: Tensor,
    valid: Tensor,
    ratio: float = 0.1,
    confidence: Tensor | None = None,
    min_confidence: float = 0.5,
    edges: Tensor | None = None,
) -> Tensor:
    """Depth Anything V2 filter: per image, drop the valid pixels with the top ``ratio`` losses.

    Per image with ``n`` valid losses sorted ``x_1 <= ... <= x_n``::

        v = x_k,  k = ceil((1 - ratio) * (n - 1)) + 1      (computed in float64)
        keep = valid & (L < v)

    so ``L[keep].mean()`` is the V2 rule ``L[L < v].mean()``. This ``v`` gives exactly the set
    ``L < torch.quantile(L[valid], 1 - ratio)`` of the default linear interpolation (that
    quantile lies in ``[x_{k-1}, x_k]``, and above ``x_{k-1}`` unless it equals ``x_k``), up
    to float rounding at ties; but it is found by exact selection (a sampled bracket, then
    ``kthvalue`` on the few candidates in it): no sort of the image, no 16M-element limit.

    Special cases: ``ratio = 0`` keeps every valid pixel; if ``L < v`` keeps nothing in an image
    that has valid pixels (one valid pixel, constant losses) the pixels with ``L <= v`` are kept,
    so the loss never runs on an empty set; NaN losses are never dropped (a diverging model
    shows as a NaN loss instead of being hidden).

    Extras: ``confidence`` (float or bool B x H x W) makes pixels with
    ``confidence < min_confidence`` (or ``False``) invalid before ranking. ``edges`` (bool
    B x H x W, e.g. ``depth_edge_mask``) ranks edge and non-edge pixels separately, each
    with its own ``v``, so the naturally larger losses at depth edges are not all dropped.
    Returns the bool ``keep`` mask (a subset of ``valid``).
    """
    _check_maps("drop_top_losses", loss_map, None, valid)
    if not 0 <= ratio < 1:
        raise ValueError(f"pseudodepth.losses.drop_top_losses: ratio must be in [0, 1), got {ratio}.")
    if confidence is not None:
        if confidence.shape != valid.shape:
            raise ValueError(
                f"pseudodepth.losses.drop_top_losses: confidence has shape {tuple(confidence.shape)}, "
                f"expected {tuple(valid.shape)} like the loss map."
            )
        valid = valid & (confidence if confidence.dtype == torch.bool else confidence >= min_confidence)
    if edges is None:
        return _drop_top(loss_map, valid, ratio)
    _check_maps("drop_top_losses", loss_map, None, edges)
    return _drop_top(loss_map, valid & edges, ratio) | _drop_top(loss_map, valid & ~edges, ratio)


def filtered_mean(loss_map: Tensor, keep: Tensor) -> Tensor:
    """``mean_b( 1/|K_b| sum_{K_b} L )`` over the images ``b`` whose kept set ``K_b`` is non-empty (0 if none)."""
    _check_maps("filtered_mean", loss_map, None, keep)
    per_image, counts = _masked_mean(torch.where(keep, loss_map, 0), _weight(keep, loss_map.dtype))
    return _mean_over_images(per_image, counts > 0)


@torch.no_grad()
def depth_edge_mask(target_hat: Tensor, valid: Tensor, threshold: float = 0.2) -> Tensor:
    """Pixels at a depth edge: a jump ``|d[p] - d[q]| > threshold`` to a valid 4-neighbour ``q``.

    ``target_hat`` should be SSI-normalised (``normalize_ssi``), so ``threshold`` is in units of
    the image's mean absolute deviation. Both pixels of a jump are marked; only valid pixels.
    """
    _check_maps("depth_edge_mask", target_hat, None, valid)
    valid = _valid_target(target_hat, valid)
    d = torch.where(valid, target_hat, 0)
    jump_x = valid[:, :, 1:] & valid[:, :, :-1] & ((d[:, :, 1:] - d[:, :, :-1]).abs() > threshold)
    jump_y = valid[:, 1:, :] & valid[:, :-1, :] & ((d[:, 1:, :] - d[:, :-1, :]).abs() > threshold)
    edges = torch.zeros_like(valid)
    edges[:, :, 1:] |= jump_x
    edges[:, :, :-1] |= jump_x
    edges[:, 1:, :] |= jump_y
    edges[:, :-1, :] |= jump_y
    return edges


# --------------------------------------------------------------------------- feature alignment (V1)


def feature_alignment_loss(student_feats: Tensor, frozen_feats: Tensor, margin: float = 0.85) -> Tensor:
    """Depth Anything V1 feature alignment with a tolerance margin.

    Per patch ``c_i = cos(f_student_i, f_frozen_i)`` over channels; the loss is the mean of
    ``1 - c_i`` over the patches of the whole batch with ``c_i <= margin`` (patches already
    more similar are ignored), 0 if there are none. Accepts ``B x N x C`` patch tokens or
    ``B x C x h x w`` feature maps; ``frozen_feats`` is detached.
    """
    if student_feats.shape != frozen_feats.shape or student_feats.dim() not in (3, 4):
        raise ValueError(
            "pseudodepth.losses.feature_alignment_loss: expected two B x N x C or B x C x h x w "
            f"tensors of equal shape, got {tuple(student_feats.shape)} and {tuple(frozen_feats.shape)}."
        )
    channel_dim = -1 if student_feats.dim() == 3 else 1
    cos = F.cosine_similarity(student_feats, frozen_feats.detach(), dim=channel_dim, eps=1e-8)
    active = cos <= margin
    return torch.where(active, 1 - cos, 0).sum() / active.sum().clamp_min(1)


# --------------------------------------------------------------------------- CutMix (V1)


def output_anchor_loss(pre_activation: Tensor) -> Tensor:
    """Hinge that keeps a ReLU output alive: ``mean(max(0, -z))`` over every pixel of every image.

    ``z`` is the head's last convolution before its final ReLU. The affine-invariant and gradient
    matching losses do not change when the prediction is shifted, so nothing in them holds the
    output level above 0; once ``z < 0`` on every pixel the ReLU passes no gradient and training
    cannot recover (a "dead" output). This term is 0 whenever ``z >= 0`` everywhere and, because
    every optimum of the shift-invariant losses can be shifted to ``z >= 0`` at no cost, it does not
    move their optimum; where ``z < 0`` its gradient (-1 per pixel, divided by the pixel count)
    lifts the output back into the ReLU's live range.
    """
    return torch.relu(-pre_activation.float()).mean()


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (), generator=generator).item())


def cutmix_box(
    h: int,
    w: int,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 100,
) -> tuple[int, int, int, int] | None:
    """A random CutMix rectangle ``(y0, y1, x0, x1)`` as in UniMatch / Depth Anything V1, or None.

    With probability ``1 - p`` there is no box (None). Otherwise ``a ~ U(area)`` (share of the
    image), then until the box fits: ``r ~ U(aspect)`` (height / width),
    ``box_w = int(sqrt(a*h*w / r))``, ``box_h = int(sqrt(a*h*w * r))``, top-left ``x0 ~ U{0..w-1}``,
    ``y0 ~ U{0..h-1}``; the box is accepted when ``x0 + box_w <= w`` and ``y0 + box_h <= h``.
    After ``max_tries`` rejections (very elongated images) the box is clipped to the image.
    """
    if _uniform(0, 1, generator) > p:
        return None
    size = _uniform(*area, generator) * h * w
    for _ in range(max_tries):
        ratio = _uniform(*aspect, generator)
        box_w, box_h = int(math.sqrt(size / ratio)), int(math.sqrt(size * ratio))
        x0, y0 = _randint(w, generator), _randint(h, generator)
        if x0 + box_w <= w and y0 + box_h <= h:
            return y0, y0 + box_h, x0, x0 + box_w
    box_w, box_h = min(box_w, w), min(box_h, h)
    x0, y0 = _randint(w - box_w + 1, generator), _randint(h - box_h + 1, generator)
    return y0, y0 + box_h, x0, x0 + box_w


def cutmix_masks(
    batch: int,
    h: int,
    w: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    **box_args,
) -> Tensor:
    """Bool ``batch x h x w`` masks, one ``cutmix_box`` per sample (all False where none is drawn)."""
    masks = torch.zeros(batch, h, w, dtype=torch.bool, device=device)
    for b in range(batch):
        box = cutmix_box(h, w, generator, **box_args)
        if box is not None:
            y0, y1, x0, x1 = box
            masks[b, y0:y1, x0:x1] = True
    return masks


def apply_cutmix(images_a: Tensor, images_b: Tensor, mask: Tensor) -> Tensor:
    """``where(mask, images_b, images_a)``: b inside the box; images B x C x H x W or B x H x W."""
    if images_a.shape != images_b.shape or mask.shape != images_a.shape[:1] + images_a.shape[-2:]:
        raise ValueError(
            f"pseudodepth.losses.apply_cutmix: images {tuple(images_a.shape)} and {tuple(images_b.shape)} "
            f"must match and the mask {tuple(mask.shape)} must be B x H x W of the same B, H, W."
        )
    return torch.where(mask[:, None] if images_a.dim() == 4 else mask, images_b, images_a)


# --------------------------------------------------------------------------- combined losses


class LossTerms(NamedTuple):
    """Per-image pieces of a training loss, for reductions that weight images (CutMix) and for logging."""

    loss: Tensor  # (B,) ssi + gm_weight * gm, 0 for images without kept pixels
    ssi: Tensor  # (B,) mean of the ssi map over the kept pixels
    gm: Tensor  # (B,) gradient matching loss on the kept pixels
    keep: Tensor  # (B, H, W) bool: pixels that entered the loss
    kept_count: Tensor  # (B,) number of kept pixels
    valid_count: Tensor  # (B,) number of valid pixels before filtering


def pseudo_label_terms(
    pred: Tensor,
    target: Tensor,
    valid: Tensor,
    drop_ratio: float = 0.1,
    gm_weight: float = 2.0,
    scales: int = 4,
    confidence: Tensor | None = None,
    min_confidence: float = 0.5,
    edge_aware: bool = False,
    edge_threshold: float = 0.2,
) -> LossTerms:
    """Per-image V2 loss terms: ssi map -> ``drop_top_losses`` -> filtered ssi + ``gm_weight`` * gm.

    ``pred_hat, target_hat`` are normalised over all valid pixels; the filter then picks the
    kept pixels ``K`` (``confidence`` and, with ``edge_aware``, ``depth_edge_mask(target_hat)``
    are passed to it); ``loss_b = mean_K |pred_hat - target_hat| + gm_weight * GM(K)``.
    """
    _check_maps("pseudo_label_terms", pred, target, valid)
    valid = _valid_target(target, valid)
    loss_map, pred_hat, target_hat, weight = _ssi_loss_map(pred, target, valid)
    if drop_ratio == 0 and confidence is None:
        keep, keep_weight = valid, weight
    else:
        edges = depth_edge_mask(target_hat, valid, edge_threshold) if edge_aware else None
        keep = drop_top_losses(loss_map, valid, drop_ratio, confidence, min_confidence, edges)
        keep_weight = _weight(keep, weight.dtype)
    ssi, kept_count = _masked_mean(loss_map, keep_weight)
    gm = _gradient_matching(pred_hat, target_hat, keep_weight, scales)
    return LossTerms(ssi + gm_weight * gm, ssi, gm, keep, kept_count, weight.sum((1, 2)))


def filter_dropped(pred, pseudo, ratio: float):
    """Pixels the V2 filter drops when ``pred`` is trained on the pseudo-label ``pseudo`` (H x W disparity
    arrays, every pixel valid as for a pseudo-label): the ``ratio`` largest of the per-pixel SSI losses
    ``|pred_hat - pseudo_hat|`` as :func:`pseudo_label_terms` selects them; a boolean H x W NumPy array
    (what the reports' "dropped by the filter" panels show)."""
    pred_t = torch.as_tensor(pred, dtype=torch.float32)[None]
    pseudo_t = torch.as_tensor(pseudo, dtype=torch.float32)[None]
    terms = pseudo_label_terms(pred_t, pseudo_t, torch.ones_like(pred_t, dtype=torch.bool), drop_ratio=ratio)
    return ~terms.keep[0].numpy()


def _reduce_with_stats(
    per_image: Tensor, ssi: Tensor, gm: Tensor, kept_count: Tensor, valid_count: Tensor
) -> tuple[Tensor, dict[str, float]]:
    has_pixels = kept_count > 0
    loss = _mean_over_images(per_image, has_pixels)
    parts = [loss, _mean_over_images(ssi, has_pixels), _mean_over_images(gm, has_pixels)]
    values = torch.stack(parts + [kept_count.sum(), valid_count.sum()]).detach().tolist()
    dropped = 1 - values[3] / values[4] if values[4] else 0.0
    return loss, {"loss": values[0], "ssi": values[1], "gm": values[2], "dropped_share": dropped}


def pseudo_label_loss(
    pred: Tensor, target: Tensor, valid: Tensor, drop_ratio: float = 0.1, gm_weight: float = 2.0, **terms_args
) -> tuple[Tensor, dict[str, float]]:
    """Depth Anything V2 loss on pseudo-labels: ``L = mean_b(L_ssi_b + gm_weight * L_gm_b)`` on kept pixels.

    See ``pseudo_label_terms`` (extra keyword arguments go there). Returns ``(loss, stats)``;
    ``stats`` holds floats ``loss``, ``ssi``, ``gm`` (batch means) and ``dropped_share``
    (share of valid pixels left out by the filters).
    """
    terms = pseudo_label_terms(pred, target, valid, drop_ratio, gm_weight, **terms_args)
    return _reduce_with_stats(terms.loss, terms.ssi, terms.gm, terms.kept_count, terms.valid_count)


def labeled_loss(
    pred: Tensor, target: Tensor, valid: Tensor, gm_weight: float = 2.0, scales: int = 4
) -> tuple[Tensor, dict[str, float]]:
    """``pseudo_label_loss`` without filtering (labeled data): ``mean_b(L_ssi_b + gm_weight * L_gm_b)``."""
    return pseudo_label_loss(pred, target, valid, drop_ratio=0.0, gm_weight=gm_weight, scales=scales)


def cutmix_loss(
    pred: Tensor,
    label_a: Tensor,
    label_b: Tensor,
    valid_a: Tensor,
    valid_b: Tensor,
    mask: Tensor,
    drop_ratio: float = 0.1,
    loss_fn: Callable[..., LossTerms] = pseudo_label_terms,
) -> tuple[Tensor, dict[str, float]]:
    """Depth Anything V1 loss on a CutMix image ``where(mask, image_b, image_a)``.

    Inside the box the prediction is compared with b's pseudo-label, outside with a's, each
    as its own problem (``loss_fn(pred, label, valid & region, drop_ratio=drop_ratio)``, so the
    normalisation and the top-loss filter use that region only). Per image, with ``A`` the
    share of the image inside the box::

        L_b = A * L_inside + (1 - A) * L_outside

    then the mean over images with kept pixels in either region. ``loss_fn`` returns
    ``LossTerms`` (default ``pseudo_label_terms``; bind other arguments with
    ``functools.partial``). Returns ``(loss, stats)`` like ``pseudo_label_loss`` plus
    ``cutmix_area`` (mean ``A``); ``dropped_share`` counts both regions.
    """
    _check_maps("cutmix_loss", pred, label_a, valid_a)
    _check_maps("cutmix_loss", pred, label_b, valid_b)
    _check_maps("cutmix_loss", pred, None, mask)
    inside = loss_fn(pred, label_b, valid_b & mask, drop_ratio=drop_ratio)
    outside = loss_fn(pred, label_a, valid_a & ~mask, drop_ratio=drop_ratio)
    area = _weight(mask, pred.dtype).mean((1, 2))

    def mix(x_in: Tensor, x_out: Tensor) -> Tensor:
        return area * x_in + (1 - area) * x_out

    loss, stats = _reduce_with_stats(
        mix(inside.loss, outside.loss),
        mix(inside.ssi, outside.ssi),
        mix(inside.gm, outside.gm),
        inside.kept_count + outside.kept_count,
        inside.valid_count + outside.valid_count,
    )
    stats["cutmix_area"] = float(area.mean())
    return loss, stats


# --------------------------------------------------------------------------- metric depth


def silog_loss(pred: Tensor, target: Tensor, valid: Tensor, lambd: float = 0.5) -> Tensor:
    """Scale-invariant log loss of metric depth, as Depth Anything V2's ``metric_depth/util/loss.py``.

    Over the valid pixels of the **whole batch** taken together (the official ``target[valid_mask]``
    flattens the batch), with ``d = log(target) - log(pred)``::

        L = sqrt(mean(d^2) - lambd * mean(d)^2)        (lambd = 0.5: the official "variance focus")

    ``pred`` and ``target`` are depths in metres (``B x H x W``); ``valid`` should already exclude
    pixels outside the training range (the official step passes ``valid & min_depth <= target <=
    max_depth``) and non-finite targets are excluded here. No valid pixel: 0 with a graph. As in the
    official code there is no clamping: the prediction must be > 0 on valid pixels (a sigmoid head
    times ``max_depth`` is, until it underflows).
    """
    _check_maps("silog_loss", pred, target, valid)
    if not 0 <= lambd <= 1:
        raise ValueError(f"pseudodepth.losses.silog_loss: lambd must be in [0, 1], got {lambd}")
    valid = _valid_target(target, valid) & (target > 0)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    diff_log = torch.log(target[valid]) - torch.log(pred[valid])
    return torch.sqrt(diff_log.pow(2).mean() - lambd * diff_log.mean().pow(2))


def metric_cutmix_target(target_a: Tensor, target_b: Tensor, valid_a: Tensor, valid_b: Tensor,
                         mask: Tensor) -> tuple[Tensor, Tensor]:
    """The target of a CutMix image in metres: ``b`` inside ``mask`` (B x H x W bool), ``a`` outside.

    Metric depth needs no per-source alignment, so one mixed map replaces the two-part loss of
    :func:`cutmix_loss`."""
    return torch.where(mask, target_b, target_a), torch.where(mask, valid_b, valid_a)
