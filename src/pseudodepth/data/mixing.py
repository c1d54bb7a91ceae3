"""Mixed labeled + pseudo-labeled batches for student training (Depth Anything V1: 1 : 2 per batch).

Only the split of a batch lives here; the training loop (:mod:`pseudodepth.train`) draws both streams
with its step-deterministic sampler, so that ``--resume`` and DDP sharding stay exact. The unlabeled
batch carries the clean image's pseudo-label; strong perturbations
(:func:`pseudodepth.data.augment.strong_perturbation`) are applied to its images in the training
step, after loading, and the target stays the clean image's label.
"""

from __future__ import annotations


def split_batch_size(batch_size: int, ratio: tuple[int, int] = (1, 2)) -> tuple[int, int]:
    """Split a per-process batch into ``(labeled, unlabeled)`` sizes by ``ratio`` (each at least 1).

    ``labeled = round(batch_size * ratio[0] / sum(ratio))``; e.g. 12 -> (4, 8), 3 -> (1, 2).
    """
    if batch_size < 2:
        raise ValueError(f"a mixed batch needs at least 2 images (1 labeled + 1 unlabeled), got {batch_size}")
    if min(ratio) <= 0:
        raise ValueError(f"labeled : unlabeled ratio must be positive, got {ratio}")
    labeled = min(batch_size - 1, max(1, round(batch_size * ratio[0] / sum(ratio))))
    return labeled, batch_size - labeled
