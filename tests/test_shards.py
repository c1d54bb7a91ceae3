"""WebDataset shards: export from a label store, read back exactly, split across ranks x workers once."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from conftest import make_awkward_folder
from pseudodepth.data import DepthDataset, label_store
from pseudodepth.label import label_folder
from pseudodepth.shards import (
    ShardDataset,
    ShardError,
    assign_shards,
    decode_sample,
    export_shards,
    iter_shard,
    make_shard_dataset,
    read_index,
    sample_key,
)
from pseudodepth.store import LabelStore, StoreError


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("shards")
    make_awkward_folder(root / "imgs")  # 8 ok rows (JPEG, EXIF-rotated, CMYK, PNGs), 4 failed rows
    label_folder("da-v2-tiny", root / "imgs", root / "store", workers=0, model=tiny_model, progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def export(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_shards(store, out, max_count=3)
    return out


def test_export_writes_webdataset_members_keys_and_index(store, export):
    ok = LabelStore(store).rows(status="ok")
    index = json.loads((export / "index.json").read_text())
    assert [s["name"] for s in index["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["count"] for s in index["shards"]] == [3, 3, 2] and index["total"] == len(ok) == 8
    assert index["teacher"] == ok[0]["teacher"]
    assert not list(export.glob(".tmp-*"))
    names = []
    for shard in sorted(export.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    keys = [n.split(".", 1)[0] for n in names[::3]]
    assert len(set(keys)) == 8 and all("." not in k and "/" not in k for k in keys)
    for i, key in enumerate(keys):  # three consecutive members per key, in manifest order
        assert names[3 * i: 3 * i + 3] == [f"{key}.jpg", f"{key}.depth.png", f"{key}.json"]
        assert key == sample_key(i, ok[i]["source"])


def test_samples_read_back_exactly(store, export):
    labels = LabelStore(store)
    rows = {r["source"]: r for r in labels.rows(status="ok")}
    imgs = labels.source_root
    seen = []
    for shard in read_index(export).paths:
        for key, group in iter_shard(shard):
            rgb, disparity, meta = decode_sample(key, group, shard)
            row = rows[meta["source"]]
            seen.append(meta["source"])
            assert meta == {k: row[k] for k in ("source", "hash", "min", "max", "height", "width", "teacher", "invalid")}
            assert group["depth.png"] == (store / row["label"]).read_bytes()
            np.testing.assert_array_equal(disparity, labels.read_disparity(row))
            assert rgb.shape == (row["height"], row["width"], 3)
            original = (imgs / row["source"]).read_bytes()
            if meta["source"] == "plain.jpg":  # an upright RGB JPEG keeps its bytes
                assert group["jpg"] == original
            else:  # PNGs, CMYK and EXIF-rotated JPEGs are re-encoded upright
                assert group["jpg"] != original and Image.open(io.BytesIO(group["jpg"])).format == "JPEG"
    assert sorted(seen) == sorted(rows)


def test_webdataset_reads_the_shards(export):
    samples = list(wds.WebDataset([str(p) for p in read_index(export).paths], shardshuffle=False))
    assert len(samples) == 8
    assert all({"jpg", "depth.png", "json"} <= set(s) for s in samples)


def test_training_samples_equal_the_label_store_dataset(store, export):
    """Same seed, same epoch: the streamed sample i is the label-store dataset's sample i (target exactly,
    image exactly for the JPEG kept byte for byte)."""
    reference = DepthDataset(label_store(store), crop_size=28, seed=3)
    streamed = ShardDataset(export / "index.json", crop_size=28, seed=3, shuffle_shards=False)
    for dataset in (reference, streamed):
        dataset.set_epoch(2)
    items = list(streamed)
    assert len(items) == len(reference) == len(streamed) == 8
    for i, item in enumerate(items):
        ref = reference[i]
        assert item["kind"] == "pseudo" and Path(ref["path"]).as_posix().endswith(item["path"])
        torch.testing.assert_close(item["target"], ref["target"], rtol=0, atol=0)
        assert torch.equal(item["valid"], ref["valid"])
        assert item["image"].shape == ref["image"].shape == (3, 28, 28)
        if item["path"] == "plain.jpg":
            torch.testing.assert_close(item["image"], ref["image"], rtol=0, atol=0)


@pytest.mark.parametrize("n_shards", [1, 3, 4, 7, 8])
@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2), (4, 1)])
def test_assign_shards_partitions_every_epoch(n_shards, world, workers):
    for epoch in range(3):
        got = [s for r in range(world) for w in range(workers)
               for s in assign_shards(n_shards, r, world, w, workers, epoch, seed=5)]
        assert sorted(got) == list(range(n_shards))


def test_two_ranks_two_workers_see_every_sample_once(store, tmp_path):
    export_shards(store, tmp_path, max_count=2)  # 4 shards of 2
    paths = []
    for rank in range(2):
        dataset = ShardDataset(tmp_path / "index.json", crop_size=14, seed=0, rank=rank, world_size=2)
        dataset.set_epoch(1)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        got = [item["path"] for item in loader]
        assert len(got) == len(dataset) == 4
        paths += got
    assert Counter(paths) == Counter(r["source"] for r in LabelStore(store).rows(status="ok"))


def test_bad_inputs_raise_clear_errors(store, tmp_path):
    with pytest.raises(ShardError, match="cannot read the shard index"):
        read_index(tmp_path / "nowhere.json")
    export_shards(store, tmp_path / "one", max_count=100)
    with pytest.raises(ShardError, match="cannot feed 2 ranks"):
        ShardDataset(tmp_path / "one", rank=0, world_size=2)
    (tmp_path / "one/shard-000000.tar").unlink()
    with pytest.raises(ShardError, match="missing"):
        read_index(tmp_path / "one")
    with pytest.raises(StoreError, match="no 'ok' rows"):
        export_shards(tmp_path / "empty-store", tmp_path / "x")
    with pytest.raises(ValueError, match="max-count"):
        export_shards(store, tmp_path / "x", max_count=0)


def test_changed_source_is_refused(tmp_path, tiny_model):
    (tmp_path / "imgs").mkdir()
    for value, name in enumerate(("plain.jpg", "other.jpg")):
        Image.fromarray(np.full((20, 30, 3), 60 * value, np.uint8)).save(tmp_path / "imgs" / name)
    label_folder("da-v2-tiny", tmp_path / "imgs", tmp_path / "s", workers=0, model=tiny_model, progress=False)
    (tmp_path / "imgs/plain.jpg").write_bytes((tmp_path / "imgs/other.jpg").read_bytes())
    with pytest.raises(ShardError, match="plain.jpg: changed since it was labelled"):
        export_shards(tmp_path / "s", tmp_path / "out")
    assert not (tmp_path / "out/index.json").exists() and not list((tmp_path / "out").glob("*.tar"))


def test_sample_key_and_config_entry(export, tmp_path):
    assert sample_key(7, "a.b/c d.v2.jpg") == "000007_a_b_c_d_v2"
    dataset = make_shard_dataset({"type": "shards", "index": export.name + "/index.json"}, base_dir=export.parent,
                                 crop_size=14, seed=0)
    assert isinstance(dataset, ShardDataset) and len(dataset) == 8
    with pytest.raises(ValueError, match="unknown key"):
        make_shard_dataset({"type": "shards", "index": str(export), "crop": 3})


def test_confidence_maps_travel_through_the_shards_and_filter_like_the_label_store(tmp_path, tiny_model, export):
    """Round trip: ``label --confidence`` -> ``shards`` (``KEY.confidence.png``, byte for byte) -> the training
    stream with ``loss.confidence.min`` drops exactly the pixels the label-store source drops."""
    from pseudodepth.label import LabelSettings
    from pseudodepth.shards import decode_confidence

    rng = np.random.default_rng(4)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.jpg", quality=90)
    label_folder("da-v2-tiny", imgs, tmp_path / "store", workers=0, model=tiny_model, progress=False,
                 settings=LabelSettings(input_size=42, confidence="scales"))
    export_shards(tmp_path / "store", tmp_path / "out", max_count=2)
    store = LabelStore(tmp_path / "store")
    rows = {r["source"]: r for r in store.rows(status="ok")}
    assert json.loads((tmp_path / "out/index.json").read_text())["confidence"] == "scales"
    for shard in read_index(tmp_path / "out").paths:
        for key, group in iter_shard(shard):
            rgb, disparity, meta = decode_sample(key, group, shard)
            row = rows[meta["source"]]
            assert group["confidence.png"] == (tmp_path / "store" / row["confidence"]).read_bytes()
            np.testing.assert_array_equal(decode_confidence(key, group, shard, disparity.shape),
                                          store.read_confidence(row))
    threshold = float(np.median(store.read_confidence(store.rows()[0])))
    reference = DepthDataset(label_store(tmp_path / "store", min_confidence=threshold), crop_size=28, seed=3)
    streamed = make_shard_dataset({"type": "shards", "index": str(tmp_path / "out/index.json"),
                                   "min_confidence": threshold, "shuffle_shards": False}, crop_size=28, seed=3)
    plain = ShardDataset(tmp_path / "out/index.json", crop_size=28, seed=3, shuffle_shards=False)
    items, unfiltered = list(streamed), list(plain)
    assert len(items) == len(reference) == 3
    for i, item in enumerate(items):
        ref = reference[i]
        assert torch.equal(item["valid"], ref["valid"]) and 0 < item["valid"].float().mean() < 1
        torch.testing.assert_close(item["target"], ref["target"], rtol=0, atol=0)
        assert unfiltered[i]["valid"].sum() > item["valid"].sum()
    # an export without maps is refused at once when a minimum is asked for
    with pytest.raises(ShardError, match="no confidence maps.*--confidence"):
        ShardDataset(export / "index.json", crop_size=28, min_confidence=0.5)
