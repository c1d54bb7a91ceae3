"""Depth-format readers: round trips, unit rules, validity masks and clear errors on bad files."""

from __future__ import annotations

import math

import cv2
import h5py
import numpy as np
import pytest

from pseudodepth.data import formats
from pseudodepth.data.formats import DepthFormatError


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- PNG16 / KITTI / VKITTI2
def test_kitti_png16_divides_by_256_and_zero_is_invalid(tmp_path, rng):
    raw = rng.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    raw[0, :3] = 0
    cv2.imwrite(str(tmp_path / "d.png"), raw)
    depth, valid = formats.read_png16(tmp_path / "d.png", 256.0)
    assert depth.dtype == np.float32 and valid.dtype == bool
    for y in range(5):
        for x in range(7):
            assert valid[y, x] == (raw[y, x] > 0)
            assert depth[y, x] == pytest.approx(raw[y, x] / 256.0 if raw[y, x] else 0.0, rel=1e-7)


def test_png16_write_read_round_trip(tmp_path, rng):
    depth = rng.uniform(0.5, 60.0, size=(6, 9)).astype(np.float32)
    depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, np.inf, -1.0
    formats.write_png16(tmp_path / "d.png", depth, 1000.0)
    back, valid = formats.read_png16(tmp_path / "d.png", 1000.0)
    expected_valid = np.isfinite(depth) & (depth > 0)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_allclose(back[valid], depth[valid], atol=0.5e-3 + 1e-6)
    assert (back[~valid] == 0).all()


def test_png16_refuses_8bit_and_colour_png(tmp_path):
    cv2.imwrite(str(tmp_path / "eight.png"), np.full((4, 4), 7, np.uint8))
    with pytest.raises(DepthFormatError, match="eight.png.*16-bit"):
        formats.read_png16(tmp_path / "eight.png", 256.0)
    cv2.imwrite(str(tmp_path / "colour.png"), np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(DepthFormatError, match="colour.png"):
        formats.read_png16(tmp_path / "colour.png", 256.0)
    with pytest.raises(DepthFormatError, match="missing.png: file not found"):
        formats.read_png16(tmp_path / "missing.png", 256.0)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DepthFormatError, match="junk.png"):
        formats.read_png16(tmp_path / "junk.png", 256.0)


def test_vkitti2_centimetres_and_far_is_invalid(tmp_path):
    raw = np.array([[0, 100, 8000], [8001, 65535, 1]], np.uint16)
    cv2.imwrite(str(tmp_path / "depth_00000.png"), raw)
    depth, valid = formats.read_vkitti2(tmp_path / "depth_00000.png")
    np.testing.assert_array_equal(valid, [[False, True, True], [False, False, True]])
    np.testing.assert_allclose(depth, [[0, 1.0, 80.0], [0, 0, 0.01]], rtol=1e-6)


# ----------------------------------------------------------------------------- NumPy / PFM / Sintel / ETH3D
def test_npy_accepts_hw1_and_masks_nonfinite(tmp_path, rng):
    depth = rng.uniform(0.1, 5, size=(4, 5, 1)).astype(np.float32)
    depth[0, 0, 0], depth[1, 1, 0], depth[2, 2, 0] = np.nan, -np.inf, 0.0
    np.save(tmp_path / "d.npy", depth)
    back, valid = formats.read_npy(tmp_path / "d.npy")
    assert back.shape == (4, 5) and valid.sum() == 17
    np.testing.assert_array_equal(back[valid], depth[..., 0][valid])
    np.save(tmp_path / "rgb.npy", np.zeros((4, 5, 3), np.float32))
    with pytest.raises(DepthFormatError, match="rgb.npy.*single-channel"):
        formats.read_npy(tmp_path / "rgb.npy")


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_round_trip_both_endians(tmp_path, rng, little_endian):
    depth = rng.uniform(0.1, 100, size=(5, 8)).astype(np.float32)
    depth[4, 7] = np.inf
    formats.write_pfm(tmp_path / "d.pfm", depth, little_endian=little_endian)
    header = (tmp_path / "d.pfm").read_bytes().split(b"\n")[:3]
    assert header[0] == b"Pf" and header[1] == b"8 5" and (float(header[2]) < 0) == little_endian
    back, valid = formats.read_pfm(tmp_path / "d.pfm")
    assert not valid[4, 7] and valid.sum() == 39
    np.testing.assert_array_equal(back[valid], depth[valid])


def test_pfm_rows_are_stored_bottom_to_top(tmp_path):
    # Written by hand from the format definition: the first stored row is the image's last row.
    rows = np.array([[1, 2, 3], [4, 5, 6]], "<f4")
    (tmp_path / "d.pfm").write_bytes(b"Pf\n3 2\n-1.0\n" + rows.tobytes())
    np.testing.assert_array_equal(formats.load_pfm(tmp_path / "d.pfm"), [[4, 5, 6], [1, 2, 3]])
    (tmp_path / "big.pfm").write_bytes(b"Pf\n3 2\n1.0\n" + rows.astype(">f4").tobytes())
    np.testing.assert_array_equal(formats.load_pfm(tmp_path / "big.pfm"), [[4, 5, 6], [1, 2, 3]])
    colour = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    formats.write_pfm(tmp_path / "c.pfm", colour)
    np.testing.assert_array_equal(formats.load_pfm(tmp_path / "c.pfm"), colour)
    with pytest.raises(DepthFormatError, match="c.pfm.*colour"):
        formats.read_pfm(tmp_path / "c.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n3 2\n-1.0\n" + rows.tobytes()[:-4])
    with pytest.raises(DepthFormatError, match="short.pfm.*truncated"):
        formats.load_pfm(tmp_path / "short.pfm")


def test_sintel_dpt_round_trip_and_checks(tmp_path, rng):
    depth = rng.uniform(0.1, 1000, size=(3, 4)).astype(np.float32)
    formats.write_sintel_dpt(tmp_path / "frame_0001.dpt", depth)
    raw = (tmp_path / "frame_0001.dpt").read_bytes()
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(raw[4:12], "<i4")) == (4, 3)
    back, valid = formats.read_sintel_dpt(tmp_path / "frame_0001.dpt")
    assert valid.all()
    np.testing.assert_array_equal(back, depth)
    (tmp_path / "bad_tag.dpt").write_bytes(np.array([1.5], "<f4").tobytes() + raw[4:])
    with pytest.raises(DepthFormatError, match="bad_tag.dpt: wrong .dpt tag"):
        formats.read_sintel_dpt(tmp_path / "bad_tag.dpt")
    (tmp_path / "bad_size.dpt").write_bytes(raw[:-4])
    with pytest.raises(DepthFormatError, match="bad_size.dpt.*header says 4 x 3"):
        formats.read_sintel_dpt(tmp_path / "bad_size.dpt")
    (tmp_path / "tiny.dpt").write_bytes(raw[:6])
    with pytest.raises(DepthFormatError, match="tiny.dpt.*header"):
        formats.read_sintel_dpt(tmp_path / "tiny.dpt")


def test_eth3d_raw_float32_inf_is_invalid(tmp_path, rng):
    depth = rng.uniform(0.5, 30, size=(6, 9)).astype(np.float32)
    depth[0, :4] = np.inf
    formats.write_eth3d(tmp_path / "DSC_0001.JPG", depth)
    assert (tmp_path / "DSC_0001.JPG").stat().st_size == 6 * 9 * 4
    back, valid = formats.read_eth3d(tmp_path / "DSC_0001.JPG", h=6, w=9)
    assert valid.sum() == 50 and not valid[0, :4].any() and (back[0, :4] == 0).all()
    np.testing.assert_array_equal(back[valid], depth[valid])
    with pytest.raises(DepthFormatError, match="DSC_0001.JPG.*expected 4032 x 6048"):
        formats.read_eth3d(tmp_path / "DSC_0001.JPG")


def test_diode_mask_and_depth_layout(tmp_path, rng):
    depth = rng.uniform(0.7, 50, size=(4, 6, 1)).astype(np.float32)
    mask = (rng.random((4, 6)) > 0.3).astype(np.float32)
    depth[0, 0, 0] = 0.0
    np.save(tmp_path / "x_depth.npy", depth)
    np.save(tmp_path / "x_depth_mask.npy", mask)
    back, valid = formats.read_diode(tmp_path / "x_depth.npy", tmp_path / "x_depth_mask.npy")
    np.testing.assert_array_equal(valid, (mask > 0) & (depth[..., 0] > 0))
    np.testing.assert_array_equal(back, np.where(valid, depth[..., 0], 0))
    np.save(tmp_path / "wrong_mask.npy", np.ones((3, 6), np.float32))
    with pytest.raises(DepthFormatError, match="wrong_mask.npy.*differs"):
        formats.read_diode(tmp_path / "x_depth.npy", tmp_path / "wrong_mask.npy")


# ----------------------------------------------------------------------------- HDF5 formats
def write_nyu_mat(path, rgb: np.ndarray, depth: np.ndarray) -> None:
    """A tiny labeled .mat in MATLAB v7.3 layout: images N x 3 x W x H, depths N x W x H."""
    with h5py.File(path, "w") as handle:
        handle["images"] = rgb.transpose(0, 3, 2, 1)
        handle["depths"] = depth.transpose(0, 2, 1)


def test_nyu_mat_transposition(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)  # N x H x W x 3
    depth = rng.uniform(0.5, 9, size=(2, 5, 7)).astype(np.float32)
    depth[1, 4, 6] = 0.0
    write_nyu_mat(tmp_path / "nyu.mat", rgb, depth)
    assert formats.nyu_mat_count(tmp_path / "nyu.mat") == 2
    for index in range(2):
        image, back, valid = formats.read_nyu_mat(tmp_path / "nyu.mat", index)
        assert image.shape == (5, 7, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, rgb[index])
        np.testing.assert_array_equal(back[valid], depth[index][valid])
        assert valid.sum() == (35 if index == 0 else 34)
    with pytest.raises(IndexError, match="out of range"):
        formats.read_nyu_mat(tmp_path / "nyu.mat", 2)
    with h5py.File(tmp_path / "other.mat", "w") as handle:
        handle["rgb"] = np.zeros(3)
    with pytest.raises(DepthFormatError, match=r"other.mat: missing HDF5 key\(s\) \['images', 'depths'\]"):
        formats.read_nyu_mat(tmp_path / "other.mat", 0)
    (tmp_path / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DepthFormatError, match="v5.mat: not an HDF5 file"):
        formats.read_nyu_mat(tmp_path / "v5.mat", 0)


def test_hypersim_distance_to_planar_depth_matches_per_pixel_reference(tmp_path, rng):
    height, width, focal = 6, 8, 5.5
    distance = rng.uniform(1, 20, size=(height, width)).astype(np.float32)
    distance[2, 3] = np.nan
    with h5py.File(tmp_path / "frame.0000.depth_meters.hdf5", "w") as handle:
        handle["dataset"] = distance.astype(np.float16)
    depth, valid = formats.read_hypersim(tmp_path / "frame.0000.depth_meters.hdf5", focal=focal)
    stored = distance.astype(np.float16).astype(np.float64)
    for v in range(height):
        for u in range(width):
            # Ray through the pixel centre (u + 0.5, v + 0.5) of a camera centred on the image.
            ray = np.array([u + 0.5 - width / 2, v + 0.5 - height / 2, focal])
            expected = stored[v, u] * focal / math.sqrt(ray @ ray)
            if math.isnan(expected):
                assert not valid[v, u] and depth[v, u] == 0
            else:
                assert valid[v, u] and depth[v, u] == pytest.approx(expected, rel=1e-6)


def test_hypersim_default_focal_keeps_the_centre_and_shrinks_the_corner():
    distance = np.full((768, 1024), 10.0, np.float32)
    depth = formats.distance_to_planar_depth(distance, formats.HYPERSIM_FOCAL)
    assert depth[384, 512] == pytest.approx(10.0 / math.sqrt(1 + 2 * (0.5 / 886.81) ** 2), rel=1e-6)
    corner = 10.0 / math.sqrt(1 + (511.5 / 886.81) ** 2 + (383.5 / 886.81) ** 2)
    assert depth[0, 0] == pytest.approx(corner, rel=1e-6)
