"""Student training from a WebDataset shard export: config checks, equal steps on every rank, exact resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pseudodepth.config import ConfigError, load_config
from pseudodepth.label import label_folder
from pseudodepth.models import load_model
from pseudodepth.shards import ShardDataset, ShardError, assign_shards, export_shards
from pseudodepth.synth import write_domain
from pseudodepth.data.sampling import ShardBatches
from pseudodepth.train import Dist, build_unlabeled, train

from train_helpers import labeled_folder, write_config

UNLABELED = 8  # exported as 4 shards of 2 (shards/) and as shards of 3, 3, 2 (shards3/)
SHARDS = {"unlabeled": [{"type": "shards", "index": "shards/index.json"}]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model) -> Path:
    """``labeled/`` ground truth, ``labels/`` a label store of 8 generated scenes, ``shards*/`` its exports."""
    root = tmp_path_factory.mktemp("train_shards")
    labeled_folder(root / "labeled", count=2)
    write_domain(root / "unlabeled", "target", UNLABELED, 100, (42, 56), with_depth=False, image_ext=".jpg")
    label_folder("da-v2-tiny", root / "unlabeled" / "images", root / "labels", workers=0, model=tiny_model,
                 progress=False)
    export_shards(root / "labels", root / "shards", max_count=2)
    export_shards(root / "labels", root / "shards3", max_count=3)
    return root


def read_log(out: Path) -> list[dict]:
    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def student_config(root: Path, name: str, train: dict | None = None, data: dict | None = None) -> Path:
    return write_config(root / f"{name}.yaml", mode="student",
                        train={"batch_size": 3, "out": f"runs/{name}", **(train or {})}, data=data or SHARDS)


def unlabeled_paths(out: Path) -> list[str]:
    """The unlabeled sample paths of each step from ``rank0_samples.txt`` (1 labeled, then 2 unlabeled)."""
    lines = (out / "rank0_samples.txt").read_text().split()
    return [p for i, p in enumerate(lines) if i % 3]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("data, key, message", [
    ({"unlabeled": [{"type": "shards", "index": "nowhere/index.json"}]}, r"data\.unlabeled\[0\]\.index",
     "does not exist"),
    ({"unlabeled": [{"type": "shards"}]}, r"data\.unlabeled\[0\]\.index", "is required"),
    ({"unlabeled": [{"type": "shards", "index": "shards", "weight": 2.0}]}, r"data\.unlabeled\[0\]\.weight",
     "must be 1"),
    ({"unlabeled": [{"type": "shards", "index": "shards", "shard_size": 2}]}, r"data\.unlabeled\[0\]",
     "unknown key"),
    ({"unlabeled": [{"type": "label_store", "root": "labels"}, {"type": "shards", "index": "shards"}]},
     r"data\.unlabeled\[1\]", "must be the only data.unlabeled entry"),
    ({"unlabeled": [{"type": "shards", "index": "shards", "flip_p": 2}]}, r"data\.unlabeled\[0\]\.flip_p",
     "probability"),
    ({"unlabeled": [{"type": "tars", "root": "shards"}]}, r"data\.unlabeled\[0\]\.type", "'shards'"),
    ({"labeled": [{"type": "shards", "index": "shards"}]}, r"data\.labeled\[0\]\.type", "list it under"),
])
def test_config_errors_name_the_key(root: Path, data: dict, key: str, message: str) -> None:
    path = student_config(root, "bad", data={**SHARDS, **data})
    with pytest.raises(ConfigError, match=key) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_shard_entry_resolves_against_the_config_folder(root: Path) -> None:
    config = load_config(student_config(root, "ok"))
    assert config.to_dict()["data"]["unlabeled"] == [{"type": "shards", "index": str(root / "shards/index.json")}]
    data = build_unlabeled(config, Dist(0, 1, torch.device("cpu")))
    assert isinstance(data, ShardDataset) and len(data) == UNLABELED
    assert not data.normalize and data.crop_size == config.train.crop_size and data.seed == config.train.seed


# ----------------------------------------------------------------------------- the loop's batches


def shard_batches(root: Path, rank: int, world: int, start: int, steps: int, workers: int,
                  index: str = "shards3") -> ShardBatches:
    config = load_config(student_config(root, "batches", train={"steps": steps, "workers": workers},
                                        data={"unlabeled": [{"type": "shards", "index": index}]}))
    ctx = Dist(rank, world, torch.device("cpu"))
    return ShardBatches(build_unlabeled(config, ctx), 2, config, start, ctx)


def test_full_batches_counts_what_the_loader_yields(root: Path) -> None:
    """Shards of 3, 3, 2 over 2 ranks x 2 workers: per-worker drop_last makes counts unequal and epoch-dependent."""
    counts = set()
    for epoch in range(4):
        for rank in range(2):
            data = ShardDataset(root / "shards3", crop_size=14, seed=0, rank=rank, world_size=2)
            data.set_epoch(epoch)
            got = len(list(DataLoader(data, batch_size=2, num_workers=2, drop_last=True)))
            per_worker = [sum(data.shards.counts[s] for s in assign_shards(3, rank, 2, w, 2, epoch, seed=0))
                          for w in range(2)]
            assert got == data.full_batches(2, num_workers=2) == sum(n // 2 for n in per_worker)
            other = ShardDataset(root / "shards3", seed=0, rank=1 - rank, world_size=2)
            other.set_epoch(epoch)
            assert other.full_batches(2, 2, rank=rank) == got  # any rank can count every rank's batches
            counts.add(got)
    assert len(counts) > 1, counts  # the case the loop's min over ranks exists for


def epoch_paths(batches: list[dict], first: int, length: int) -> list[str]:
    return [p for batch in batches[first:first + length] for p in batch["path"]]


def test_ranks_take_the_fewest_full_batches_of_any_rank(root: Path) -> None:
    """Shards of 3, 3, 2: one rank gets 2 full batches per epoch, the other 1, so every epoch lasts 1 step."""
    steps = 4
    runs = [shard_batches(root, rank, 2, 0, steps, workers=2) for rank in range(2)]
    for epoch in range(steps):
        counts = []
        for rank in range(2):
            data = ShardDataset(root / "shards3", seed=0, rank=rank, world_size=2)
            data.set_epoch(epoch)
            counts.append(data.full_batches(2, 2))
        assert runs[0].epoch_steps(epoch) == runs[1].epoch_steps(epoch) == min(counts) == 1 < max(counts)
    batches = [list(run) for run in runs]
    assert len(batches[0]) == len(batches[1]) == steps
    for epoch in range(steps):
        assert not set(epoch_paths(batches[0], epoch, 1)) & set(epoch_paths(batches[1], epoch, 1))


def test_ranks_read_disjoint_samples_and_resume_inside_an_epoch(root: Path) -> None:
    """4 shards of 2, 2 ranks x 2 workers: epochs of 2 steps; resuming at step 1 or 3 skips into an epoch."""
    steps = 5
    batches = [list(shard_batches(root, rank, 2, 0, steps, workers=2, index="shards")) for rank in range(2)]
    for first in (0, 2):  # each epoch: the ranks together read every sample exactly once
        epoch = [epoch_paths(batches[rank], first, 2) for rank in range(2)]
        assert sorted(epoch[0] + epoch[1]) == [f"{i:06d}.jpg" for i in range(UNLABELED)]
    assert not torch.equal(batches[0][0]["image"], batches[0][2]["image"])  # epochs differ
    for rank in range(2):
        for start in (1, 3):
            resumed = list(shard_batches(root, rank, 2, start, steps, workers=2, index="shards"))
            assert len(resumed) == steps - start
            for got, want in zip(resumed, batches[rank][start:]):
                assert got["path"] == want["path"]
                for key in ("image", "target", "valid"):
                    assert torch.equal(got[key], want[key]), key


def test_too_few_samples_for_a_batch_is_explained(root: Path) -> None:
    config = load_config(student_config(root, "small", train={"workers": 2}))
    ctx = Dist(0, 1, torch.device("cpu"))
    with pytest.raises(ShardError, match="no full batch of 5 .* 2 loader worker"):
        ShardBatches(build_unlabeled(config, ctx), 5, config, 0, ctx)  # each worker streams 2 shards of 2
    assert ShardBatches(build_unlabeled(config, ctx), 4, config, 0, ctx).epoch_steps(0) == 2


# ----------------------------------------------------------------------------- training


def test_student_trains_from_shards_and_resumes_exactly(root: Path) -> None:
    """7 steps of 2 unlabeled images: epochs of 4 steps; the run resumed at step 5 replays epoch 1's tail."""
    path = student_config(root, "student", train={"steps": 7, "save_every": 5, "debug_dump_weights": True})
    reference = train(load_config(path))
    out = reference.parent
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    for row in rows:
        assert np.isfinite(float(row["unlabeled_loss"])) and float(row["unlabeled_loss"]) > 0
        assert 0.08 <= float(row["dropped_share"]) <= 0.13, row  # V2: the top 10% losses per image
    seen = unlabeled_paths(out)
    assert len(seen) == 14 and len(set(seen[:8])) == UNLABELED  # epoch 0: every sample once
    stored = {p.relative_to(root / "unlabeled" / "images").as_posix()
              for p in (root / "unlabeled" / "images").iterdir()}
    assert set(seen) == stored

    interrupted = out.with_name("student_resumed")
    shutil.copytree(out, interrupted)  # as if killed after the step-5 checkpoint
    shutil.rmtree(interrupted / "final")
    resumed = train(load_config(path, {"train": {"out": str(interrupted)}}), resume=True)
    assert unlabeled_paths(interrupted) == seen[10:]
    a, b = load_model(resumed).state_dict(), load_model(reference).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [int(r["step"]) for r in read_log(interrupted)] == list(range(1, 8))
