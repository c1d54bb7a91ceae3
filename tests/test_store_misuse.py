"""The label store under misuse: two writers, a full disk, decompression bombs, a store inside the image
folder, manifests and shard indexes that point outside their root, licences recorded."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudodepth.cli import main
from pseudodepth.imageio import ImageError, decode_rgb, is_pseudodepth_folder, list_files, read_png16, safe_join
from pseudodepth.label import LabelSettings, label_folder
from pseudodepth.store import LabelStore, StoreBusyError, StoreWriteError

ROOT = Path(__file__).resolve().parents[1]
FAST = LabelSettings(input_size=42)  # a small network input: these tests are about the store


def _images(folder: Path, n: int, size=(30, 40)) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------- one writer at a time
def test_second_writer_is_refused_at_once_naming_the_holder_and_a_killed_one_frees_the_store(tmp_path, tiny_model,
                                                                                           capsys):
    imgs, store = _images(tmp_path / "imgs", 2), tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pseudodepth.store import LabelStore\n"
         "with LabelStore(sys.argv[1]).writing():\n    print('locked', flush=True); time.sleep(120)", str(store)],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(StoreBusyError, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            label_folder("da-v2-tiny", imgs, store, workers=0, model=tiny_model, progress=False, settings=FAST)
        assert time.perf_counter() - start < 5  # at once, not after a wait
        code = main(["label", "--model", "da-v2-tiny", "--images", str(imgs), "--out", str(store), "--workers", "0", "--input-size", "42"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"pid {holder.pid}" in err
    finally:
        holder.kill()  # like a crash: no clean-up code runs
        holder.wait()
    report = label_folder("da-v2-tiny", imgs, store, workers=0, model=tiny_model, progress=False, settings=FAST)
    assert report.ok == 2 and (store / "label.lock").is_file()  # the stale lock file does not block


# ----------------------------------------------------------------------------- full disk
class _FullDisk:
    """``os.fdopen`` whose files write half their data then fail with ENOSPC, after ``after`` good files."""

    def __init__(self, after: int):
        self.after, self.real = after, os.fdopen

    def __call__(self, fd, *args, **kwargs):
        f = self.real(fd, *args, **kwargs)
        if self.after > 0:
            self.after -= 1
            return f
        write = f.write

        def half_then_fail(data):
            write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = half_then_fail
        return f


def test_full_disk_is_one_line_leaves_nothing_half_written_and_the_same_command_continues(tmp_path, tiny_model,
                                                                                         monkeypatch):
    imgs, store = _images(tmp_path / "imgs", 6), tmp_path / "store"
    monkeypatch.setattr(os, "fdopen", _FullDisk(after=4))  # store.json + 3 labels fit, then the disk is full
    with pytest.raises(StoreWriteError) as err:
        label_folder("da-v2-tiny", imgs, store, batch_size=1, workers=0, model=tiny_model, progress=False, settings=FAST)
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message and str(store / "labels") in message
    assert "free disk space" in message and "run the same command again" in message
    assert not list(store.rglob(".tmp-*")) and not list(store.rglob(".*.tmp"))
    rows = LabelStore(store).rows()
    assert len(rows) == 3
    for r in rows:  # every committed row has its whole label
        assert read_png16(store / r["label"]).shape == (30, 40)
    before = {r["label"]: (store / r["label"]).stat().st_mtime_ns for r in rows}
    monkeypatch.undo()  # space is back
    again = label_folder("da-v2-tiny", imgs, store, batch_size=1, workers=0, model=tiny_model, progress=False, settings=FAST)
    assert (again.ok, again.skipped) == (3, 3)
    final = LabelStore(store).rows()
    assert len(final) == 6 and all(r["status"] == "ok" for r in final)
    assert {r["label"]: (store / r["label"]).stat().st_mtime_ns for r in final if r["label"] in before} == before


def test_a_failed_journal_write_is_cut_back_and_a_torn_line_is_cut_before_appending(tmp_path, monkeypatch):
    store = LabelStore(tmp_path)
    row = {"source": "a.jpg", "hash": "h", "status": "ok", "error": "", "height": 2, "width": 3,
           "label": "labels/a.png", "min": 0.0, "max": 1.0, "teacher": "t", "invalid": 0}
    store.append([row])
    size = store.journal_path.stat().st_size

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StoreWriteError, match="manifest.journal: No space left"):
        store.append([{**row, "source": "b.jpg"}])
    monkeypatch.undo()
    assert store.journal_path.stat().st_size == size
    with open(store.journal_path, "ab") as f:
        f.write(b'{"source": "c.jpg", "st')  # a kill -9 in the middle of a line
    store.append([{**row, "source": "d.jpg"}])
    assert [r["source"] for r in store.rows()] == ["a.jpg", "d.jpg"]


def test_cli_full_disk_exits_non_zero_with_one_line(tmp_path):
    imgs, store = _images(tmp_path / "imgs", 1), tmp_path / "store"
    script = ("import errno, os, sys\n"
              "real, calls = os.fdopen, []\n"
              "def full(fd, *a, **k):\n"  # store.json fits, then every label write fails
              "    f = real(fd, *a, **k)\n"
              "    calls.append(fd)\n"
              "    def fail(data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
              "    if len(calls) > 1: f.write = fail\n"
              "    return f\n"
              "os.fdopen = full\n"
              "from pseudodepth.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", script, "label", "--model", "da-v2-tiny", "--images", str(imgs),
                          "--out", str(store), "--workers", "0", "--input-size", "42"], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("label:")]  # tqdm
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("pseudodepth label: error: cannot write") and "No space left on device" in lines[0]
    assert not list(store.rglob(".tmp-*"))


# ----------------------------------------------------------------------------- decompression bombs
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data: decoding it would fail or take ages)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_images_above_max_pixels_fail_from_the_header_without_decoding(tmp_path, tiny_model, monkeypatch):
    from pseudodepth.imageio import DEFAULT_MAX_PIXELS
    from pseudodepth.label import LabelSettings

    assert DEFAULT_MAX_PIXELS == 89_478_485  # Pillow's decompression-bomb limit
    bomb = _png_header_only(20000, 20000)  # 400 megapixels
    with pytest.raises(ImageError, match="400,000,000 pixels, above the limit of 89,478,485 .not decoded"):
        decode_rgb(bomb, "bomb.png")
    imgs = _images(tmp_path / "imgs", 2)
    (imgs / "bomb.png").write_bytes(bomb)
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    report = label_folder("da-v2-tiny", imgs, tmp_path / "s", workers=0, model=tiny_model, progress=False, settings=FAST)
    assert (report.ok, report.failed) == (2, 1) and (20000, 20000) not in decoded
    row = {r["source"]: r for r in LabelStore(tmp_path / "s").rows()}["bomb.png"]
    assert row["status"] == "failed" and "--max-pixels" in row["error"]
    # --max-pixels lowers (or raises) the limit; it is not part of the teacher fingerprint
    small = label_folder("da-v2-tiny", imgs, tmp_path / "t", workers=0, model=tiny_model, progress=False,
                         settings=LabelSettings(input_size=42, max_pixels=1000))
    assert (small.ok, small.failed) == (0, 3)
    assert main(["label", "--model", "da-v2-tiny", "--images", str(imgs), "--out", str(tmp_path / "u"),
                 "--workers", "0", "--max-pixels", "1199", "--input-size", "42"]) == 0
    assert all("1,199" in r["error"] for r in LabelStore(tmp_path / "u").rows())


# ----------------------------------------------------------------------------- the walker
def test_the_walker_never_enters_the_output_store_or_any_pseudodepth_folder(tmp_path, tiny_model):
    imgs = _images(tmp_path / "data", 3)
    first = label_folder("da-v2-tiny", imgs, imgs / "labels", workers=0, model=tiny_model, progress=False, settings=FAST)
    second = label_folder("da-v2-tiny", imgs, imgs / "labels", workers=0, model=tiny_model, progress=False, settings=FAST)
    assert first.ok == 3 and (second.ok, second.failed, second.skipped) == (0, 0, 3)
    assert not (imgs / "labels/labels/labels").exists()
    # another store, a training run, a checkpoint and a shard export inside the image folder
    (imgs / "old_store").mkdir()
    (imgs / "old_store/store.json").write_text("{}")
    (imgs / "run").mkdir()
    (imgs / "run/log.csv").write_text("step\n")
    (imgs / "run/config.yaml").write_text("mode: teacher\n")
    (imgs / "ckpt").mkdir()
    (imgs / "ckpt/pseudodepth.json").write_text("{}")
    (imgs / "shards").mkdir()
    (imgs / "shards/index.json").write_text("{}")
    (imgs / "shards/shard-000000.tar").write_bytes(b"")
    for folder in ("old_store", "run", "ckpt", "shards"):
        (imgs / folder / "x.png").write_bytes((imgs / "00.png").read_bytes())
        assert is_pseudodepth_folder(imgs / folder)
    # ordinary folders, even with one of those file names alone, are walked
    (imgs / "notes").mkdir()
    (imgs / "notes/log.csv").write_text("x\n")
    assert list_files(imgs) == ["00.png", "01.png", "02.png", "notes/log.csv"]
    assert list_files(imgs, exclude=(imgs / "notes",)) == ["00.png", "01.png", "02.png"]


# ----------------------------------------------------------------------------- paths read from files
def test_safe_join_refuses_absolute_dotdot_and_link_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (root / "sub/inside.png").write_bytes(b"1")
    (root / "link_out.png").symlink_to(tmp_path / "secret.txt")
    (root / "dir_out").symlink_to(tmp_path)
    (root / "link_in.png").symlink_to(root / "sub/inside.png")
    assert safe_join(root, "sub/inside.png") == root / "sub/inside.png"
    assert safe_join(root, "link_in.png") == root / "link_in.png"  # a link that stays inside is fine
    for bad in ("../secret.txt", "sub/../../secret.txt", "/etc/hostname", "", "link_out.png", "dir_out/secret.txt"):
        with pytest.raises(ValueError):
            safe_join(root, bad)
    # the user's own image folders may link to files elsewhere; '..' and absolute paths stay refused
    assert safe_join(root, "link_out.png", follow_links=True) == root / "link_out.png"
    for bad in ("../secret.txt", "/etc/hostname"):
        with pytest.raises(ValueError):
            safe_join(root, bad, follow_links=True)


@pytest.fixture
def small_store(tmp_path, tiny_model) -> LabelStore:
    label_folder("da-v2-tiny", _images(tmp_path / "imgs", 2), tmp_path / "store", workers=0, model=tiny_model,
                 progress=False, settings=FAST)
    return LabelStore(tmp_path / "store")


def _tamper(store: LabelStore, **changes) -> None:
    row = store.rows()[0]
    store.append([{**row, **changes}])


@pytest.mark.parametrize("label", ["../../../../etc/hostname", "/etc/hostname", "labels/../../outside.png", "link"])
def test_every_store_reader_refuses_a_manifest_label_outside_the_store(small_store, tmp_path, label, capsys):
    from pseudodepth.data.sources import label_store
    from pseudodepth.shards import export_shards

    (tmp_path / "outside.png").write_bytes(b"x")
    if label == "link":
        (small_store.root / "labels/evil.png").symlink_to(tmp_path / "outside.png")
        label = "labels/evil.png"
    _tamper(small_store, label=label)
    row = small_store.rows()[0]
    with pytest.raises(ValueError):
        small_store.read_disparity(row)
    with pytest.raises(ValueError):
        label_store(small_store.root)
    with pytest.raises(Exception, match="escapes|absolute|symbolic link"):
        export_shards(small_store.root, tmp_path / "shards")
    assert main(["shards", str(small_store.root), "--out", str(tmp_path / "shards2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "shards2/shard-000000.tar").exists()


@pytest.mark.parametrize("source", ["../../etc/hostname", "/etc/hostname"])
def test_every_store_reader_refuses_a_manifest_source_outside_the_image_folder(small_store, tmp_path, source):
    from pseudodepth.data.sources import label_store
    from pseudodepth.shards import export_shards

    _tamper(small_store, source=source)
    with pytest.raises(ValueError):
        label_store(small_store.root)
    with pytest.raises(ValueError):
        export_shards(small_store.root, tmp_path / "shards")


@pytest.mark.parametrize("name", ["../evil.tar", "/etc/hostname", "sub/../../evil.tar", "link.tar", 7])
def test_the_shard_index_reader_refuses_names_outside_its_folder(small_store, tmp_path, name):
    from pseudodepth.shards import ShardError, export_shards, read_index

    export_shards(small_store.root, tmp_path / "shards")
    index = tmp_path / "shards/index.json"
    meta = json.loads(index.read_text())
    assert meta["licence"] == "unknown" and meta["model"] == "da-v2-tiny"
    (tmp_path / "evil.tar").write_bytes((tmp_path / "shards/shard-000000.tar").read_bytes())
    if name == "link.tar":
        (tmp_path / "shards/link.tar").symlink_to(tmp_path / "evil.tar")
    meta["shards"][0]["name"] = name
    index.write_text(json.dumps(meta))
    with pytest.raises(ShardError, match="bad shard entry"):
        read_index(index)


# ----------------------------------------------------------------------------- licences
def test_licences_by_official_name_and_inherited(tmp_path):
    from pseudodepth.licences import combine, licence_of, licence_of_name

    table = {"depth_anything_vits14.pth": "Apache-2.0", "depth_anything_vitb14.pth": "Apache-2.0",
             "depth_anything_vitl14.pth": "Apache-2.0", "depth_anything_v2_vits.pth": "Apache-2.0",
             "depth_anything_v2_vitb.pth": "CC-BY-NC-4.0", "depth_anything_v2_vitl.pth": "CC-BY-NC-4.0",
             "depth_anything_v2_vitg.pth": "CC-BY-NC-4.0", "DA3MONO-LARGE": "Apache-2.0",
             "DA3METRIC-LARGE": "Apache-2.0", "DA3-SMALL": "Apache-2.0", "DA3-BASE": "Apache-2.0",
             "DA3-LARGE": "CC-BY-NC-4.0", "DA3-GIANT": "CC-BY-NC-4.0", "DA3NESTED-GIANT-LARGE": "CC-BY-NC-4.0",
             "Depth-Anything-V2-Small-hf": "Apache-2.0", "Depth-Anything-V2-Large-hf": "CC-BY-NC-4.0",
             "teacher.pth": "unknown", "da2_vits.pth": "unknown", "da-v2-small": "unknown"}
    for name, licence in table.items():
        assert licence_of_name(name) == licence, name
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub/config.json").write_text('{"model_name": "da3mono-large"}')
    assert licence_of(tmp_path / "hub") == "Apache-2.0"
    (tmp_path / "student").mkdir()
    (tmp_path / "student/pseudodepth.json").write_text('{"licence": "Apache-2.0 + CC-BY-NC-4.0"}')
    assert licence_of(tmp_path / "student") == "Apache-2.0 + CC-BY-NC-4.0"
    assert combine(["Apache-2.0", "CC-BY-NC-4.0 + Apache-2.0"]) == "Apache-2.0 + CC-BY-NC-4.0"
    assert combine([]) == "unknown"


def test_store_records_teacher_licence_and_label_prints_a_notice_for_non_commercial(tmp_path, tiny_model, capsys):
    from pseudodepth.convert import hf_to_official
    import torch

    teacher = tmp_path / "depth_anything_v2_vitl.pth"  # the official Large name, tiny weights
    torch.save(hf_to_official(tiny_model.state_dict()), teacher)
    imgs = _images(tmp_path / "imgs", 1)
    label_folder(str(teacher), imgs, tmp_path / "s", workers=0, progress=False, settings=FAST)
    meta = json.loads((tmp_path / "s/store.json").read_text())
    assert meta["licence"] == "CC-BY-NC-4.0" and meta["version"] == "v2"
    err = capsys.readouterr().err
    notice = [line for line in err.splitlines() if line.startswith("notice:")]
    assert len(notice) == 1 and "CC-BY-NC-4.0" in notice[0] and "non-commercial" in notice[0]
    label_folder("da-v2-tiny", imgs, tmp_path / "t", workers=0, model=tiny_model, progress=False, settings=FAST)
    assert json.loads((tmp_path / "t/store.json").read_text())["licence"] == "unknown"
    assert "notice:" not in capsys.readouterr().err


def test_a_student_inherits_every_licence_of_its_weights_and_labels(tmp_path):
    from pseudodepth.licences import trained_licence

    (tmp_path / "store").mkdir()
    (tmp_path / "store/store.json").write_text('{"licence": "CC-BY-NC-4.0"}')
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/index.json").write_text('{"licence": "Apache-2.0"}')
    stores = [{"type": "label_store", "root": str(tmp_path / "store")}]
    assert trained_licence(["da-v2-small"], stores) == "CC-BY-NC-4.0"  # a preset carries no terms
    assert trained_licence([str(tmp_path / "depth_anything_v2_vits.pth")],
                           [{"type": "shards", "index": str(tmp_path / "shards")}]) == "Apache-2.0"
    assert trained_licence([str(tmp_path / "dinov2_vits14_pretrain.pth")], stores) == "Apache-2.0 + CC-BY-NC-4.0"
    assert trained_licence(["da-v2-tiny"], []) == "unknown"
