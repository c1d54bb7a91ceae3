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
    assert {r["source"]: r["status"] for r in table} == expect  # no row for notes.txt, sub/README.md
    assert report.ignored == ["notes.txt", "sub/README.md"]
    assert ", 2 non-image files ignored (notes.txt, sub/README.md); " in report.summary()
    assert not (tmp_path / "store" / "labels" / "notes.png").exists()
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


def test_resume_relabels_a_source_that_changed_since_it_was_labelled(tmp_path, tiny_model):
    """A row is kept only while its source file is the one that was labelled: a changed file (size or
    mtime differ, and so does its sha256) is relabelled and counted; a file only touched is not."""
    import hashlib

    from PIL import Image

    rng = np.random.default_rng(5)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / name)
    settings = LabelSettings(input_size=42)
    first = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                         settings=settings)
    store = LabelStore(tmp_path / "s")
    rows = {r["source"]: r for r in store.rows()}
    assert first.ok == 3 and first.relabelled == 0
    assert all(r["bytes"] == (imgs / s).stat().st_size and r["mtime_ns"] == (imgs / s).stat().st_mtime_ns
               for s, r in rows.items())
    kept = {s: (tmp_path / "s" / rows[s]["label"]).stat().st_mtime_ns for s in ("b.png", "c.png")}
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(imgs / "a.png")  # new content
    stamp = (imgs / "b.png").stat()
    os.utime(imgs / "b.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # touched, same bytes
    again = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                         settings=settings)
    assert (again.ok, again.failed, again.skipped, again.relabelled) == (1, 0, 2, 1)
    assert "1 relabelled (source changed since labelled)" in again.summary()
    row = {r["source"]: r for r in store.rows()}["a.png"]
    assert row["hash"] == hashlib.sha256((imgs / "a.png").read_bytes()).hexdigest()
    assert (row["height"], row["width"]) == (20, 30) and len(store.rows()) == 3
    expected = predict(tiny_model, read_rgb(imgs / "a.png"), input_size=42)
    assert np.abs(store.read_disparity(row) - expected).max() <= (row["max"] - row["min"]) / 65535 + 1e-5
    assert {s: (tmp_path / "s" / rows[s]["label"]).stat().st_mtime_ns for s in kept} == kept
    # the touched file's new time is recorded (not hashed again next time), its label kept
    assert {r["source"]: r for r in store.rows()}["b.png"]["mtime_ns"] == (imgs / "b.png").stat().st_mtime_ns
    # a store written before size/mtime were recorded: every row is checked by its sha256 instead
    legacy = [{**r, "bytes": None, "mtime_ns": None} for r in store.rows()]
    (tmp_path / "s/manifest.parquet").unlink()
    store.append(legacy)
    store.consolidate()
    stamp = (imgs / "c.png").stat()
    data = bytearray((imgs / "c.png").read_bytes())
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / "c.png")
    os.utime(imgs / "c.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert bytes(data) != (imgs / "c.png").read_bytes()
    third = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False,
                         settings=settings)
    assert (third.ok, third.skipped, third.relabelled) == (1, 2, 1)
    assert all(r["bytes"] == (imgs / r["source"]).stat().st_size for r in store.rows())  # recorded again
    assert "relabelled" not in label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model,
                                            progress=False, settings=settings).summary()


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


def test_resize_on_device_path_matches_the_standard_path(tmp_path, tiny_model, photos):
    """The GPU path (uint8 to the device, resize + upsample there, non-blocking copies) run with device=cpu."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("demo08.jpg", "demo04.jpg", "demo18.jpg"):
        (imgs / name).symlink_to(photos / name)
    make_awkward_folder(imgs / "awkward")
    std = label_folder("da-v2-tiny", imgs, tmp_path / "std", batch_size=2, workers=0, model=tiny_model,
                       progress=False)
    dev = label_folder("da-v2-tiny", imgs, tmp_path / "dev", batch_size=2, workers=1, model=tiny_model,
                       progress=False, resize_on="device", writer_threads=2)
    assert (dev.ok, dev.failed) == (std.ok, std.failed)
    rows_std, rows_dev = LabelStore(tmp_path / "std").rows(), LabelStore(tmp_path / "dev").rows()
    assert [(r["source"], r["status"], r["height"], r["width"], r["teacher"]) for r in rows_std] == \
           [(r["source"], r["status"], r["height"], r["width"], r["teacher"]) for r in rows_dev]
    for a, b in zip(rows_std, rows_dev):
        if a["status"] != "ok":
            continue
        da, db = LabelStore(tmp_path / "std").read_disparity(a), LabelStore(tmp_path / "dev").read_disparity(b)
        # documented tolerance (README, label): relative L2 < 1e-3 against the official float64 preprocessing
        assert np.linalg.norm(db - da) / np.linalg.norm(da) < 1e-3, a["source"]


@pytest.mark.parametrize("method", ["flip", "scales"])
def test_resize_on_device_with_confidence_matches_the_standard_path(tmp_path, tiny_model, photos, method):
    """``--resize-on device`` is honoured with ``--confidence``: inputs at both sizes are resized on the
    device; labels and confidence maps stay within the device path's documented tolerance."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "demo08.jpg").symlink_to(photos / "demo08.jpg")
    settings = LabelSettings(input_size=70, confidence=method)
    std = label_folder("da-v2-tiny", imgs, tmp_path / "std", workers=0, model=tiny_model, progress=False,
                       settings=settings)
    dev = label_folder("da-v2-tiny", imgs, tmp_path / "dev", workers=0, model=tiny_model, progress=False,
                       settings=settings, resize_on="device")
    assert std.ok == dev.ok == 1
    s_std, s_dev = LabelStore(tmp_path / "std"), LabelStore(tmp_path / "dev")
    a, b = s_std.rows()[0], s_dev.rows()[0]
    da, db = s_std.read_disparity(a), s_dev.read_disparity(b)
    assert np.linalg.norm(db - da) / np.linalg.norm(da) < 1e-3
    ca, cb = s_std.read_confidence(a), s_dev.read_confidence(b)
    assert np.linalg.norm(cb - ca) / np.linalg.norm(ca) < 1e-2 and np.abs(cb - ca).mean() < 1e-2


def test_reduced_decode_keeps_sizes_and_stays_close(tmp_path, tiny_model, photos):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("demo01.jpg", "demo08.jpg"):  # 2048 x 1362 decodes at 1/2; 640 x 425 cannot shrink
        (imgs / name).symlink_to(photos / name)
    std = label_folder("da-v2-tiny", imgs, tmp_path / "std", workers=0, model=tiny_model, progress=False)
    red = label_folder("da-v2-tiny", imgs, tmp_path / "red", workers=0, model=tiny_model, progress=False,
                       settings=LabelSettings(reduced_decode=True))
    assert std.ok == red.ok == 2
    s_std, s_red = LabelStore(tmp_path / "std"), LabelStore(tmp_path / "red")
    assert s_std.meta()["teacher"] != s_red.meta()["teacher"], "reduced decoding is part of the teacher fingerprint"
    assert "reduced_decode" not in LabelSettings().as_dict(), "default stores keep their old fingerprint"
    for a, b in zip(s_std.rows(), s_red.rows()):
        assert (a["height"], a["width"]) == (b["height"], b["width"])
        da, db = s_std.read_disparity(a), s_red.read_disparity(b)
        err = np.linalg.norm(db - da) / np.linalg.norm(da)
        assert err == 0 if a["source"] == "demo08.jpg" else 0 < err < 0.05, (a["source"], err)


@pytest.mark.parametrize("confidence", [None, "flip"])
def test_forward_in_workers_gives_the_main_process_labels(tmp_path, tiny_model, photos, confidence):
    """``--forward-in workers`` (the CPU default with workers): the same rows, labels within one quantisation
    step and confidence maps as the batched forward in the main process, corrupt files included."""
    imgs = tmp_path / "imgs"
    expect = make_awkward_folder(imgs)
    for name in ("demo08.jpg", "demo04.jpg"):
        (imgs / name).symlink_to(photos / name)
    settings = LabelSettings(input_size=70, confidence=confidence)
    main = label_folder("da-v2-tiny", imgs, tmp_path / "main", batch_size=2, workers=2, model=tiny_model,
                        progress=False, settings=settings, forward_in="main")
    work = label_folder("da-v2-tiny", imgs, tmp_path / "work", batch_size=2, workers=2, model=tiny_model,
                        progress=False, settings=settings, forward_in="workers")
    assert (main.ok, main.failed) == (work.ok, work.failed) == (sum(v == "ok" for v in expect.values()) + 2,
                                                                  sum(v == "failed" for v in expect.values()))
    a, b = LabelStore(tmp_path / "main"), LabelStore(tmp_path / "work")
    rows_b = {r["source"]: r for r in b.rows()}
    for row in a.rows():
        other = rows_b.pop(row["source"])
        assert (row["status"], row["label"], row["error"]) == (other["status"], other["label"], other["error"])
        if row["status"] != "ok":
            continue
        qa, qb = (read_png16(s.root / r["label"]).astype(int) for s, r in ((a, row), (b, other)))
        assert np.abs(qa - qb).max() <= 1
        if confidence:
            assert np.abs(a.read_confidence(row) - b.read_confidence(other)).max() < 1e-3
    assert not rows_b


def test_forward_in_defaults_and_impossible_choices_fail_before_any_work(tmp_path, tiny_model, photos):
    from pseudodepth.label import check_forward_in

    cores = os.cpu_count() or 1
    assert check_forward_in(None, tiny_model, cores, False, "worker") == "workers"  # one worker per core
    assert check_forward_in(None, tiny_model, cores - 1, False, "worker") == "main"
    assert check_forward_in(None, tiny_model, cores, True, "worker") == "main"  # one compiled model
    assert check_forward_in(None, tiny_model, cores, False, "device") == "main"
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "demo08.jpg").symlink_to(photos / "demo08.jpg")
    for kwargs in ({"workers": 0}, {"compile": True}, {"resize_on": "device"}):
        with pytest.raises(ValueError, match="--forward-in workers needs"):
            label_folder("da-v2-tiny", imgs, tmp_path / "s", model=tiny_model, progress=False,
                         forward_in="workers", **{"workers": 2, **kwargs})
    with pytest.raises(ValueError, match="--forward-in must be one of"):
        label_folder("da-v2-tiny", imgs, tmp_path / "s", model=tiny_model, progress=False, forward_in="gpu")
    assert not (tmp_path / "s" / "labels").exists()  # nothing written


@pytest.mark.timeout(120)
def test_forward_in_workers_after_a_parallel_forward_in_this_process_does_not_hang(tmp_path, tiny_model, photos):
    """A worker forked after this process ran a multi-threaded forward pass runs its own on one thread: GNU
    OpenMP cannot start a parallel region in such a child (it used to wait for ever with one worker)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        predict(tiny_model, read_rgb(photos / "demo08.jpg"))  # a parallel region in this process first
        imgs = tmp_path / "imgs"
        imgs.mkdir()
        (imgs / "demo08.jpg").symlink_to(photos / "demo08.jpg")
        report = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=1, model=tiny_model, progress=False,
                              forward_in="workers")
    finally:
        torch.set_num_threads(threads)
    assert report.ok == 1
