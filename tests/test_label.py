"""``pseudodepth label``: the label-store contract end to end (awkward inputs, resume, kill -9, teachers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_awkward_folder
from pseudodepth.imageio import read_png16, read_rgb
from pseudodepth.infer import predict
from pseudodepth.label import LabelSettings, label_folder
from pseudodepth.store import LabelStore, StoreError


def test_awkward_folder_contract(tmp_path, tiny_model):
    expect = make_awkward_folder(tmp_path / "imgs")
    report = label_folder("da-v2-tiny", tmp_path / "imgs", tmp_path / "store", batch_size=3, workers=0,
                          model=tiny_model, progress=False)
    assert report.ok == sum(v == "ok" for v in expect.values())
    assert report.failed == sum(v == "failed" for v in expect.values())
    table = pq.read_table(tmp_path / "store" / "manifest.parquet").to_pylist()
    assert {r["source"]: r["status"] for r in table} == expect
    store = LabelStore(tmp_path / "store")
    for row in table:
        if row["status"] == "failed":
            assert row["error"] and "\n" not in row["error"] and row["label"] == ""
            continue
        src = read_rgb(tmp_path / "imgs" / row["source"])
        assert (row["height"], row["width"]) == src.shape[:2]
        assert row["label"] == "labels/" + str(Path(row["source"]).with_suffix(".png"))
        q = read_png16(tmp_path / "store" / row["label"])
        assert q.shape == src.shape[:2] and q.min() == 0 and q.max() == 65535
        # restored values equal a direct prediction within one quantisation step
        ref = predict(tiny_model, src)
        got = store.read_disparity(row)
        assert np.abs(got - ref).max() <= (row["max"] - row["min"]) / 65535 + 1e-5
        assert row["min"] == pytest.approx(float(ref.min()), rel=1e-5) and row["max"] == pytest.approx(float(ref.max()), rel=1e-5)
    assert (tmp_path / "store/labels/sub/deeper/nested.png").is_file()
    assert not list((tmp_path / "store").rglob(".tmp-*"))


def test_resume_skips_done_rows_and_refuses_another_teacher(tmp_path, tiny_model):
    imgs = tmp_path / "imgs"
    make_awkward_folder(imgs)
    first = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "s/labels").rglob("*.png")}
    again = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False)
    assert again.ok == again.failed == 0 and again.skipped == first.ok + first.failed
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "s/labels").rglob("*.png")}
    # a new image is picked up on the next run, alone
    (imgs / "new.jpg").write_bytes((imgs / "plain.jpg").read_bytes())
    third = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False)
    assert (third.ok, third.failed) == (1, 0)
    # other settings = another teacher fingerprint: refused, then allowed with overwrite
    with pytest.raises(StoreError, match="--overwrite"):
        label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                     settings=LabelSettings(tta="flip"))
    redo = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                        settings=LabelSettings(tta="flip"), overwrite=True)
    assert redo.ok + redo.failed == len(LabelStore(tmp_path / "s").rows())


def test_batching_and_workers_give_identical_labels(tmp_path, tiny_model, photos):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("demo08.jpg", "demo04.jpg", "demo18.jpg"):  # two share a network size, one does not
        (imgs / name).symlink_to(photos / name)
    a = label_folder("da-v2-tiny", imgs, tmp_path / "a", batch_size=1, workers=0, model=tiny_model, progress=False)
    b = label_folder("da-v2-tiny", imgs, tmp_path / "b", batch_size=2, workers=2, model=tiny_model, progress=False)
    assert a.ok == b.ok == 3
    for row in LabelStore(tmp_path / "a").rows():
        qa = read_png16(tmp_path / "a" / row["label"]).astype(int)
        qb = read_png16(tmp_path / "b" / row["label"]).astype(int)
        assert np.abs(qa - qb).max() <= 1


def test_cli_label_kill9_then_resume_loses_and_redoes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    from PIL import Image

    for i in range(40):
        (imgs / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(imgs / f"d{i % 3}/{i:03d}.jpg")
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "pseudodepth.cli", "label", "--model", "da-v2-tiny", "--images", str(imgs),
           "--out", str(store), "--batch-size", "2", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    journal = store / "manifest.journal"
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = LabelStore(store).rows()
    assert 0 < len(rows) < 40, "the kill should land mid-run"
    # every committed row has its complete label; no temp file survives as a label
    for r in rows:
        assert read_png16(store / r["label"]).shape == (120, 160)
    committed = {r["source"] for r in rows}
    before = {r["label"]: (store / r["label"]).stat().st_mtime_ns for r in rows}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{len(committed)} already done" in out.stdout
    final = LabelStore(store).rows()
    assert len(final) == 40 and all(r["status"] == "ok" for r in final)
    assert {r["label"]: (store / r["label"]).stat().st_mtime_ns for r in final if r["source"] in committed} == before
    assert not (store / "manifest.journal").exists()
    assert len(list((store / "labels").rglob("*.png"))) == 40
