"""Batches for training steps: which samples each step of each rank reads, as a function of (seed, step, rank).

- :class:`WeightedSources`: several :class:`~pseudodepth.data.DepthDataset` s behind one index, each
  source contributing ``round(weight x size)`` samples to an epoch's shuffled order;
- :class:`StepBatches`: a batch sampler that deals each epoch's order to the ranks and cuts it into the
  batches of steps ``[start, steps)``, so a resumed run reads exactly what an uninterrupted one would;
- :class:`ShardBatches`: the same for a WebDataset stream (:class:`pseudodepth.shards.ShardDataset`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from pseudodepth.data.dataset import DepthDataset
from pseudodepth.interrupt import ignore_in_worker
from pseudodepth.shards import ShardDataset, ShardError

if TYPE_CHECKING:
    from pseudodepth.config import TrainConfig


class WeightedSources(Dataset):
    """Several :class:`DepthDataset` s behind one index; items are addressed as ``(epoch, index)``.

    The epoch travels with the index so that crops and flips (``DepthDataset`` draws from
    ``rng([seed, epoch, index])``) are right in any worker process.
    """

    def __init__(self, datasets: list[DepthDataset], weights: list[float]) -> None:
        self.datasets, self.weights = datasets, weights
        self.offsets = np.cumsum([0] + [len(d) for d in datasets]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        which = bisect.bisect_right(self.offsets, index) - 1
        dataset = self.datasets[which]
        dataset.set_epoch(epoch)
        return dataset[index - self.offsets[which]]

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The epoch's shuffled global index list: source ``k`` contributes ``round(w_k n_k)`` samples
        (a random subset, or whole passes plus a random subset when ``w_k > 1``)."""
        rng = np.random.default_rng([seed, epoch])
        parts = []
        for dataset, weight, offset in zip(self.datasets, self.weights, self.offsets):
            n = len(dataset)
            count = max(1, round(weight * n))
            passes = [rng.permutation(n) for _ in range(math.ceil(count / n))]
            parts.append(offset + np.concatenate(passes)[:count])
        order = np.concatenate(parts)
        return order[rng.permutation(len(order))]


class StepBatches(Sampler):
    """Batch sampler: for each step in ``[start, steps)``, this rank's ``batch_size`` ``(epoch, index)`` keys.

    Epoch ``e``'s order (:meth:`WeightedSources.epoch_order`) is split between ranks round-robin
    (``order[rank::world]``, truncated to equal length), so ranks never see the same sample in an
    epoch; each rank's shard is cut into full batches.
    """

    def __init__(self, data: WeightedSources, batch_size: int, seed: int, start: int, steps: int,
                 rank: int = 0, world: int = 1, name: str = "data") -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.start, self.steps, self.rank, self.world = start, steps, rank, world
        self.per_epoch = len(data.epoch_order(seed, 0)) // world // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{name}: {len(data)} samples are too few for {world} process(es) x batch size "
                             f"{batch_size}; add data, raise its weight or lower train.batch_size")
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(step, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            order = self.data.epoch_order(self.seed, epoch)
            self._cache = (epoch, order[self.rank::self.world][: self.per_epoch * self.batch_size])
        shard = self._cache[1]
        return [(epoch, int(i)) for i in shard[position * self.batch_size:(position + 1) * self.batch_size]]

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.batch(step)


class ShardBatches:
    """This rank's unlabeled batches of a shard stream for steps ``[start, steps)``, epoch after epoch.

    Epoch ``e`` (``data.set_epoch(e)``) lasts :meth:`epoch_steps` steps, the same on every rank.
    On resume the epoch holding ``start`` is read again from its beginning and the batches before
    ``start`` are dropped, so the batches are those of an uninterrupted run. ``ctx`` is this process's
    place in the run (:class:`pseudodepth.train.Dist`; its device decides on pinned memory).
    """

    def __init__(self, data: ShardDataset, batch_size: int, config: TrainConfig, start: int, ctx: Any) -> None:
        self.data, self.batch_size, self.start, self.steps = data, batch_size, start, config.train.steps
        self.workers = config.train.workers
        self.loader = DataLoader(data, batch_size=batch_size, num_workers=self.workers, drop_last=True,
                                 pin_memory=ctx.device.type == "cuda", prefetch_factor=2 if self.workers else None,
                                 persistent_workers=False, worker_init_fn=ignore_in_worker)
        self.epoch_steps(0)  # too little data fails now, not after the first epoch

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def epoch_steps(self, epoch: int) -> int:
        """Steps of ``epoch``: the fewest full batches of any rank (each rank's count is computable everywhere)."""
        self.data.set_epoch(epoch)
        counts = [self.data.full_batches(self.batch_size, self.workers, rank) for rank in range(self.data.world_size)]
        if min(counts) == 0:
            rank = counts.index(0)
            raise ShardError(f"data.unlabeled: {self.data.shards.paths[0].parent}: in epoch {epoch} rank {rank} of "
                             f"{self.data.world_size} gets no full batch of {self.batch_size} from any of its "
                             f"{max(1, self.workers)} loader worker(s); export more, smaller shards (--max-count), "
                             "or lower train.workers or train.batch_size")
        return min(counts)

    def __iter__(self) -> Iterator[dict]:
        epoch, first = 0, 0  # first: the epoch's first step
        while first < self.steps:
            length = self.epoch_steps(epoch)  # also sets the epoch that iter() below reads
            end = min(first + length, self.steps)
            if end > self.start:
                batches = iter(self.loader)
                for step in range(first, end):
                    batch = next(batches, None)
                    if batch is None:
                        raise ShardError(f"{self.data.shards.paths[0].parent}: epoch {epoch} ended early on rank "
                                         f"{self.data.rank}; the shards hold fewer samples than index.json says: "
                                         "re-export them with `pseudodepth shards`")
                    if step >= self.start:  # before it: consumed by the run being resumed
                        yield batch
                del batches
            epoch, first = epoch + 1, first + length
