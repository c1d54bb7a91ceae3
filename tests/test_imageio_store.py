"""Decoding every awkward input kind, atomic writes, label encoding, manifest journal."""

from __future__ import annotations

import io
from pathlib import Path

import cv2

import numpy as np
import pytest
from PIL import Image

from conftest import make_awkward_folder
from pseudodepth.imageio import ImageError, is_image_name, list_files, list_images, read_rgb, safe_join
from pseudodepth.store import LabelStore, decode_label, encode_label, label_paths


def test_awkward_inputs_decode_or_fail_with_one_line_reason(tmp_path):
    expect = make_awkward_folder(tmp_path)
    for rel, status in expect.items():
        if status == "ok":
            rgb = read_rgb(tmp_path / rel)
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, rel
        else:
            with pytest.raises(ImageError) as err:
                read_rgb(tmp_path / rel)
            assert rel in str(err.value) and "\n" not in str(err.value)


def test_exif_rotation_is_applied(tmp_path):
    make_awkward_folder(tmp_path)
    assert read_rgb(tmp_path / "plain.jpg").shape[:2] == (37, 53)
    assert read_rgb(tmp_path / "rotated.jpg").shape[:2] == (53, 37)


def test_conversions_keep_values(tmp_path):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(np.dstack([g, g, g, 255 - g])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_rgb(tmp_path / "g.png")[..., 1], g)
    assert np.array_equal(read_rgb(tmp_path / "g16.png")[..., 0], g)
    assert np.array_equal(read_rgb(tmp_path / "rgba.png")[..., 2], g)  # alpha dropped, colour kept


def test_list_files_walks_subfolders_and_skips_hidden(tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    for rel in ("x.jpg", "a/y.png", "a/b/z.jpg", ".hidden.jpg", "a/.cache/w.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"1")
    assert list_files(tmp_path) == ["a/b/z.jpg", "a/y.png", "x.jpg"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_files(tmp_path / "missing")


def test_list_images_splits_by_extension_not_content(tmp_path):
    for rel in ("a.JPG", "b.png", "c.tiff", "README.md", "notes.txt", "sub/d.webp", "sub/e.jpg.bak", "jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"not decoded here")
    assert list_images(tmp_path) == (["a.JPG", "b.png", "c.tiff", "sub/d.webp"],
                                     ["README.md", "jpg", "notes.txt", "sub/e.jpg.bak"])
    assert list_images(tmp_path, exclude=(tmp_path / "sub",)) == (["a.JPG", "b.png", "c.tiff"],
                                                                  ["README.md", "jpg", "notes.txt"])
    assert is_image_name("x.Jpeg") and is_image_name(Path("d/y.gif")) and not is_image_name("x.jpeg.txt")


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "a/b.png") == tmp_path / "a/b.png"
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd"):
        with pytest.raises(ValueError):
            safe_join(tmp_path, bad)


@pytest.mark.parametrize("kind", ["random", "constant", "with_nan", "with_inf", "all_nan", "constant_with_nan",
                                  "one_pixel", "huge_range", "random_float32", "constant_float32"])
def test_label_encoding_round_trip_against_reference(kind):
    rng = np.random.default_rng(0)
    d = {"random": rng.random((31, 17)) * 5,
         "constant": np.full((4, 4), 2.5),
         "with_nan": np.where(rng.random((9, 9)) > 0.2, rng.random((9, 9)), np.nan),
         "with_inf": np.array([[np.inf, 1.0], [2.0, -np.inf]]),
         "all_nan": np.full((3, 3), np.nan),
         "constant_with_nan": np.array([[2.0, np.nan], [2.0, 2.0]]),
         "one_pixel": np.array([[3.0]]),
         "huge_range": np.array([[1e-6, 1e6], [5.0, 7.0]]),
         "random_float32": (rng.random((23, 29)) * 3 + 0.25).astype(np.float32),  # what the teachers hand in
         "constant_float32": np.full((5, 3), 0.75, np.float32)}[kind]
    q, lo, hi, invalid = encode_label(d)
    assert q.dtype == np.uint16
    fin = np.isfinite(d)
    assert invalid == int((~fin).sum())
    # slow reference from the definition: without invalid pixels q = round((d - min) / (max - min) * 65535);
    # with invalid pixels 0 = invalid, q = 1 + round((d - min) / (max - min) * 65534)
    for idx in np.ndindex(d.shape):
        if not fin[idx]:
            assert q[idx] == 0
        elif invalid == 0:
            assert q[idx] == (int(np.rint((float(d[idx]) - lo) / (hi - lo) * 65535)) if hi > lo else 0)
        else:
            assert q[idx] == 1 + (int(np.rint((float(d[idx]) - lo) / (hi - lo) * 65534)) if hi > lo else 0)
    back = decode_label(q, lo, hi, invalid)
    assert np.array_equal(np.isfinite(back), fin)  # a non-finite teacher pixel never decodes as a valid one
    assert np.all(np.abs(back[fin] - d[fin]) <= (hi - lo) / 65534 / 2 + 1e-6 * max(1.0, abs(hi)))
    if fin.any():
        assert lo == np.nanmin(d[fin]) and hi == np.nanmax(d[fin])


def test_non_finite_teacher_output_is_invalid_in_every_reader(tmp_path):
    from pseudodepth.data.sources import label_store

    store = LabelStore(tmp_path / "s")
    d = np.array([[1.0, np.nan, 3.0], [np.inf, 2.0, 0.5]], np.float32)
    lo, hi, invalid = store.write_label("labels/a.png", d)
    row = {**_row("a.jpg"), "label": "labels/a.png", "min": lo, "max": hi, "invalid": invalid}
    assert invalid == 2
    back = store.read_disparity(row)
    assert np.array_equal(np.isfinite(back), np.isfinite(d))
    store.root.joinpath("store.json").write_text('{"source_root": "%s"}' % tmp_path)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "a.jpg")
    store.append([row])
    _, values, valid = label_store(store.root).load(0)
    assert np.array_equal(valid, np.isfinite(d)) and np.allclose(values[valid], d[np.isfinite(d)], atol=(hi - lo) / 65534)
    # rows written before the column existed decode as before
    assert store.rows()[0]["invalid"] == 2


def test_label_paths_mirror_sources_and_never_collide():
    paths = label_paths(["a/b.jpg", "a/c.jpg", "a/c.png", "d.jpeg"])
    assert paths["a/b.jpg"] == "labels/a/b.png" and paths["d.jpeg"] == "labels/d.png"
    assert paths["a/c.jpg"] == "labels/a/c.jpg.png" and paths["a/c.png"] == "labels/a/c.png.png"
    assert len(set(paths.values())) == 4


def _row(src, status="ok"):
    return {"source": src, "hash": "h", "status": status, "error": "", "height": 2, "width": 3,
            "label": f"labels/{src}.png", "min": 0.0, "max": 1.0, "teacher": "t"}


def test_journal_torn_line_is_not_a_row_and_consolidate_is_atomic(tmp_path):
    store = LabelStore(tmp_path)
    store.append([_row("a.jpg"), _row("b.jpg", "failed")])
    with open(store.journal_path, "ab") as f:
        f.write(b'{"source": "c.jpg", "sta')  # a kill in the middle of a write
    assert [r["source"] for r in store.rows()] == ["a.jpg", "b.jpg"]
    assert [r["source"] for r in store.rows("ok")] == ["a.jpg"]
    assert store.consolidate() == 2
    assert not store.journal_path.exists() and store.manifest_path.is_file()
    store.append([_row("c.jpg")])
    assert [r["source"] for r in store.rows()] == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(ValueError, match="lacks"):
        store.append([{"source": "x"}])


def test_reduced_decode_shrinks_jpegs_but_never_below_the_minimum(tmp_path):
    from PIL import Image

    from pseudodepth.imageio import decode_rgb, decode_rgb_reduced

    rng = np.random.default_rng(0)
    rgb = cv2.resize(rng.integers(0, 256, (25, 35, 3), dtype=np.uint8), (560, 400), interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    for need, expect in [((100, 140), (100, 140)), ((90, 100), (100, 140)), ((101, 140), (200, 280)),
                         ((200, 280), (200, 280)), ((201, 10), (400, 560))]:
        small, full = decode_rgb_reduced(data, "x.jpg", lambda h, w: need)
        assert full == (400, 560) and small.shape == (*expect, 3), need
    small, _ = decode_rgb_reduced(data, "x.jpg", lambda h, w: (100, 140))
    ref = cv2.resize(decode_rgb(data).astype(np.float32), (140, 100), interpolation=cv2.INTER_AREA)
    assert np.abs(small - ref).mean() < 1.0  # DCT scaling is close to an area average
    # EXIF rotation: the minimum is for the upright image; the reduced image is upright too
    exif = Image.Exif()
    exif[274] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    small, full = decode_rgb_reduced(buf.getvalue(), "r.jpg", lambda h, w: (h // 4, w // 4))
    assert full == (560, 400) and small.shape == (140, 100, 3)
    # other formats decode in full
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    small, full = decode_rgb_reduced(buf.getvalue(), "p.png", lambda h, w: (10, 10))
    assert full == (400, 560) and np.array_equal(small, rgb)


def test_palette_cmyk_and_exif_files_decode_to_the_right_pixels(tmp_path):
    make_awkward_folder(tmp_path)
    # palette PNG: each index looked up in the file's own palette
    with Image.open(tmp_path / "palette.png") as img:
        assert img.mode == "P"
        palette = np.array(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
        expected = palette[np.asarray(img)]
    np.testing.assert_array_equal(read_rgb(tmp_path / "palette.png"), expected)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): the same JPEG data as plain.jpg, turned
    np.testing.assert_array_equal(read_rgb(tmp_path / "rotated.jpg"), np.rot90(read_rgb(tmp_path / "plain.jpg"), k=-1))
    # CMYK JPEG of a smooth image: back to the original colours (within JPEG error), not inverted ones
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.dstack([x * 4, y * 5, 255 - x * 2]).astype(np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "smooth_cmyk.jpg", quality=95)
    got = read_rgb(tmp_path / "smooth_cmyk.jpg").astype(int)
    assert np.abs(got - rgb).mean() < 3 and np.abs(got - rgb).max() < 40
