"""Mixed labeled + pseudo-labeled batches for student training (Depth Anything V1: 1 : 2 per batch).

Two loaders with their own batch sizes run side by side; :class:`MixedBatches` yields
``(labeled_batch, unlabeled_batch)`` pairs. An epoch is one pass over the unlabeled (pseudo-labeled)
loader by default, the large set; the labeled loader restarts, reshuffled, whenever it runs out.

Sharding: every loader uses a ``DistributedSampler``, with the process group's world size and rank
when ``torch.distributed`` is initialised (``torchrun``) and a single replica otherwise, so one
code path shuffles the same way on one process and on many. Batch sizes are per process.

The unlabeled batch carries the clean image's pseudo-label; strong perturbations
(:func:`pseudodepth.data.augment.strong_perturbation`) are applied to its images in the training
step, after loading, and the target stays the clean image's label.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


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


def shard_sampler(dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = True) -> DistributedSampler:
    """A ``DistributedSampler`` over this process's shard (the whole dataset without a process group)."""
    if dist.is_available() and dist.is_initialized():
        replicas, rank = dist.get_world_size(), dist.get_rank()
    else:
        replicas, rank = 1, 0
    return DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over this process's shard, reshuffled by :func:`set_epoch`.

    Workers are not persistent, so the dataset's epoch (crop/flip draws) reaches them each epoch.
    """
    return DataLoader(dataset, batch_size=batch_size, sampler=shard_sampler(dataset, shuffle, seed, drop_last),
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler (shuffle order) and of its dataset(s) (random crops)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    pending = [loader.dataset]
    while pending:
        dataset = pending.pop()
        if isinstance(dataset, ConcatDataset):
            pending.extend(dataset.datasets)
        elif hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)


class _Restarting:
    """Batches of a loader forever; pass ``k`` of epoch ``e`` uses sampler/dataset epoch ``e * passes + k``."""

    def __init__(self, loader: DataLoader, epoch: int, passes_per_epoch: int) -> None:
        self.loader, self.epoch, self.passes_per_epoch = loader, epoch, passes_per_epoch
        self.passes, self.iterator = 0, None

    def __next__(self) -> dict:
        while True:
            if self.iterator is None:
                set_epoch(self.loader, self.epoch * self.passes_per_epoch + self.passes)
                self.passes += 1
                self.iterator = iter(self.loader)
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator = None


class MixedBatches:
    """Iterate ``(labeled_batch, unlabeled_batch)`` pairs for ``steps_per_epoch`` steps per epoch.

    ``steps_per_epoch`` defaults to ``len(unlabeled)`` (one pass over the pseudo-labeled set). Call
    :meth:`set_epoch` before each epoch; the order is then a function of the loaders' seeds and
    the epoch only.
    """

    def __init__(self, labeled: DataLoader, unlabeled: DataLoader, steps_per_epoch: int | None = None) -> None:
        for name, loader in (("labeled", labeled), ("unlabeled", unlabeled)):
            if len(loader) == 0:
                raise ValueError(f"the {name} loader yields no batch: its dataset ({len(loader.dataset)} samples "
                                 f"on this process) is smaller than the batch size {loader.batch_size}")
        self.labeled, self.unlabeled = labeled, unlabeled
        self.steps_per_epoch = len(unlabeled) if steps_per_epoch is None else int(steps_per_epoch)
        if self.steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        streams = [_Restarting(loader, self.epoch, math.ceil(self.steps_per_epoch / len(loader)))
                   for loader in (self.labeled, self.unlabeled)]
        for _ in range(self.steps_per_epoch):
            yield next(streams[0]), next(streams[1])


def mixed_batches(
    labeled: Dataset,
    unlabeled: Dataset,
    batch_size: int,
    ratio: tuple[int, int] = (1, 2),
    seed: int = 0,
    num_workers: int = 0,
    steps_per_epoch: int | None = None,
) -> MixedBatches:
    """Labeled and unlabeled loaders splitting ``batch_size`` (per process) by ``ratio``, paired."""
    labeled_size, unlabeled_size = split_batch_size(batch_size, ratio)
    return MixedBatches(make_loader(labeled, labeled_size, seed=seed, num_workers=num_workers),
                        make_loader(unlabeled, unlabeled_size, seed=seed + 1, num_workers=num_workers),
                        steps_per_epoch)
