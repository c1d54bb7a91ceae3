"""Mixed labeled / unlabeled batches: split sizes, epochs, restarts, determinism, DDP sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset

from pseudodepth.data import DepthDataset, DepthSource, Sample, mixing, normalize_imagenet, strong_perturbation
from pseudodepth.data.mixing import MixedBatches, make_loader, mixed_batches, split_batch_size


class Numbered(Dataset):
    """Item i = {"id": offset + i, "epoch": the epoch set by set_epoch}."""

    def __init__(self, size: int, offset: int = 0) -> None:
        self.size, self.offset, self.epoch = size, offset, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        return {"id": self.offset + index, "epoch": self.epoch, "image": torch.full((3, 2, 2), float(index))}


def ids(batch: dict) -> list[int]:
    return batch["id"].tolist()


@pytest.mark.parametrize("batch_size, ratio, expected", [
    (12, (1, 2), (4, 8)), (3, (1, 2), (1, 2)), (2, (1, 2), (1, 1)), (8, (1, 1), (4, 4)), (7, (1, 2), (2, 5)),
])
def test_split_batch_size(batch_size, ratio, expected):
    assert split_batch_size(batch_size, ratio) == expected


def test_split_batch_size_rejects_impossible_batches():
    with pytest.raises(ValueError, match="at least 2"):
        split_batch_size(1)
    with pytest.raises(ValueError, match="positive"):
        split_batch_size(6, (0, 1))


def test_one_epoch_is_one_pass_over_unlabeled_and_labeled_restarts():
    labeled, unlabeled = Numbered(5), Numbered(12, offset=100)
    batches = MixedBatches(make_loader(labeled, 2, seed=0), make_loader(unlabeled, 4, seed=1))
    assert len(batches) == 3
    pairs = list(batches)
    assert len(pairs) == 3 and all(len(ids(a)) == 2 and len(ids(b)) == 4 for a, b in pairs)
    assert sorted(i for _, b in pairs for i in ids(b)) == list(range(100, 112))
    first_pass, second_pass = ids(pairs[0][0]) + ids(pairs[1][0]), ids(pairs[2][0])
    assert len(set(first_pass)) == 4 and set(first_pass + second_pass) <= set(range(5))
    # The labeled loader restarted once: its second pass carries the next sampler/dataset epoch.
    assert pairs[0][0]["epoch"].tolist() == [0, 0] and pairs[2][0]["epoch"].tolist() == [1, 1]


def test_order_is_a_function_of_seed_and_epoch():
    def run(epoch: int, seed: int = 0) -> list[list[int]]:
        batches = mixed_batches(Numbered(9), Numbered(18, offset=100), batch_size=3, seed=seed)
        batches.set_epoch(epoch)
        return [ids(a) + ids(b) for a, b in batches]

    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0) != run(0, seed=1)
    assert len(run(0)) == 9  # 18 unlabeled / 2 per step


def test_steps_per_epoch_override_restarts_both_loaders():
    batches = MixedBatches(make_loader(Numbered(4), 2), make_loader(Numbered(4, 100), 2), steps_per_epoch=5)
    pairs = list(batches)
    assert len(pairs) == 5
    assert sorted(i for _, b in pairs[:2] for i in ids(b)) == [100, 101, 102, 103]


def test_empty_loader_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="labeled loader yields no batch.*3 samples.*batch size 4"):
        MixedBatches(make_loader(Numbered(3), 4), make_loader(Numbered(8), 4))


def test_set_epoch_reaches_concatenated_datasets():
    parts = [Numbered(3), Numbered(4, 10)]
    loader = make_loader(ConcatDataset(parts), 2)
    mixing.set_epoch(loader, 7)
    assert [p.epoch for p in parts] == [7, 7] and loader.sampler.epoch == 7


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_follow_the_process_group(monkeypatch, drop_last):
    dataset = Numbered(11)
    monkeypatch.setattr(mixing.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(mixing.dist, "get_world_size", lambda: 3)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(mixing.dist, "get_rank", lambda rank=rank: rank)
        shards.append(list(mixing.shard_sampler(dataset, seed=4, drop_last=drop_last)))
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank (DDP needs it)
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(flat) == 9 and len(set(flat)) == 9
    else:
        assert set(flat) == set(range(11)) and len(flat) == 12  # padded by one repeat


def test_single_process_sampler_covers_everything():
    assert sorted(mixing.shard_sampler(Numbered(7), drop_last=False)) == list(range(7))


def test_depth_datasets_mix_and_the_unlabeled_images_take_the_perturbation():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(24, 30, 3), dtype=np.uint8) for _ in range(6)]
    values = [rng.uniform(1, 5, size=(24, 30)).astype(np.float32) for _ in range(6)]

    def source(kind: str) -> DepthSource:
        return DepthSource(kind, [Sample(image_path=Path(f"{kind}/{i}.png"), index=i) for i in range(6)],
                           lambda s: (values[s.index], np.ones((24, 30), bool)),
                           read_image=lambda s: images[s.index], kind=kind)

    labeled = DepthDataset(source("labeled"), crop_size=16, seed=0)
    pseudo = DepthDataset(source("pseudo"), crop_size=16, normalize=False, seed=0)
    labeled_batch, unlabeled_batch = next(iter(mixed_batches(labeled, pseudo, batch_size=3)))
    assert labeled_batch["image"].shape == (1, 3, 16, 16) and unlabeled_batch["image"].shape == (2, 3, 16, 16)
    assert unlabeled_batch["kind"] == ["pseudo", "pseudo"] and unlabeled_batch["target"].shape == (2, 16, 16)
    clean = unlabeled_batch["image"]
    student_input = normalize_imagenet(strong_perturbation(clean, torch.Generator().manual_seed(0)))
    assert student_input.shape == clean.shape and torch.isfinite(student_input).all()
