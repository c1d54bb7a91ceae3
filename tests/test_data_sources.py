"""Dataset sources: file layouts of each dataset, range masking, config validation, path safety."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from pseudodepth.data import formats, sources
from pseudodepth.data.formats import DepthFormatError
from pseudodepth.data.sources import SourceConfigError, make_source
from pseudodepth.store import LabelStore


def write_rgb(path: Path, height: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def write_png16(path: Path, raw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), raw.astype(np.uint16))


# ----------------------------------------------------------------------------- plain folders
def test_folder_primary_layout_matches_by_relative_path(tmp_path):
    rgb = write_rgb(tmp_path / "images" / "a" / "x.png")
    write_rgb(tmp_path / "images" / "y.png", seed=1)
    depth_mm = np.full((6, 8), 2500, np.uint16)
    depth_mm[0, 0] = 0
    write_png16(tmp_path / "depth" / "a" / "x.png", depth_mm)
    write_png16(tmp_path / "depth" / "y.png", depth_mm)
    source = sources.folder(tmp_path)
    assert [s.image_path.relative_to(tmp_path).as_posix() for s in source.samples] == ["images/a/x.png", "images/y.png"]
    image, depth, valid = source.load(0)
    np.testing.assert_array_equal(image, rgb)
    assert valid.sum() == 47 and depth[1, 1] == pytest.approx(2.5) and depth[0, 0] == 0


def test_folder_side_by_side_layout_with_npy_and_pfm(tmp_path):
    write_rgb(tmp_path / "scene" / "x.jpg")
    np.save(tmp_path / "scene" / "x.depth.npy", np.full((6, 8), 3.0, np.float32))
    source = sources.folder(tmp_path, depth_ext=".npy")
    assert len(source) == 1 and source.samples[0].depth_path.name == "x.depth.npy"
    assert source.load(0)[2].all()
    formats.write_pfm(tmp_path / "scene" / "x.depth.pfm", np.full((6, 8), 4.0, np.float32))
    _, depth, _ = sources.folder(tmp_path, depth_ext=".pfm").load(0)
    assert (depth == 4.0).all()


def test_folder_missing_depth_and_empty_folder_errors(tmp_path):
    write_rgb(tmp_path / "images" / "x.png")
    (tmp_path / "depth").mkdir()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) have no depth file.*x.png"):
        sources.folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        sources.folder(tmp_path / "nope")
    with pytest.raises(SourceConfigError, match="depth_ext"):
        sources.folder(tmp_path, depth_ext=".exr")


def test_folder_size_mismatch_names_both_files(tmp_path):
    write_rgb(tmp_path / "images" / "x.png", 6, 8)
    write_png16(tmp_path / "depth" / "x.png", np.ones((5, 8)))
    with pytest.raises(DepthFormatError, match=r"depth/x.png: depth is 5 x 8 but its image .*x.png is 6 x 8"):
        sources.folder(tmp_path).load(0)


def test_range_masks_labeled_depth(tmp_path):
    write_rgb(tmp_path / "images" / "x.png", 1, 4)
    write_png16(tmp_path / "depth" / "x.png", np.array([[500, 1000, 5000, 9000]]))
    _, depth, valid = sources.folder(tmp_path, min_depth=1.0, max_depth=5.0).load(0)
    np.testing.assert_array_equal(valid, [[False, True, True, False]])
    np.testing.assert_array_equal(depth, [[0, 1, 5, 0]])


# ----------------------------------------------------------------------------- dataset layouts
def test_kitti_glob_and_list_file(tmp_path):
    drive = "2011_09_26_drive_0002_sync"
    write_rgb(tmp_path / "raw" / "2011_09_26" / drive / "image_02" / "data" / "0000000005.png")
    raw = np.zeros((6, 8), np.uint16)
    raw[2, 3], raw[4, 4] = 256 * 10, 256 * 90
    write_png16(tmp_path / "gt" / drive / "proj_depth" / "groundtruth" / "image_02" / "0000000005.png", raw)
    source = sources.kitti(tmp_path / "raw", tmp_path / "gt")
    assert len(source) == 1 and source.kb_crop and source.eval_crop == "garg"
    _, depth, valid = source.load(0)
    assert valid.sum() == 1 and depth[2, 3] == 10.0  # 90 m is beyond KITTI's 80 m
    list_file = tmp_path / "split.txt"
    list_file.write_text(f"2011_09_26/{drive}/image_02/data/0000000005.png "
                         f"{drive}/proj_depth/groundtruth/image_02/0000000005.png 721.5377\n"
                         f"2011_09_26/{drive}/image_02/data/0000000006.png None 721.5377\n")
    assert len(sources.kitti(tmp_path / "raw", tmp_path / "gt", list_file)) == 1


def test_list_file_path_escaping_its_root_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "gt").mkdir()
    list_file = tmp_path / "split.txt"
    list_file.write_text("../../etc/passwd x.png\n")
    with pytest.raises(ValueError, match="escapes its root"):
        sources.kitti(tmp_path / "raw", tmp_path / "gt", list_file)
    list_file.write_text("/etc/passwd x.png\n")
    with pytest.raises(ValueError, match="must be relative"):
        sources.kitti(tmp_path / "raw", tmp_path / "gt", list_file)


def test_vkitti2_layout(tmp_path):
    frames = tmp_path / "Scene01" / "clone" / "frames"
    write_rgb(frames / "rgb" / "Camera_0" / "rgb_00003.jpg")
    write_png16(frames / "depth" / "Camera_0" / "depth_00003.png", np.full((6, 8), 65535))
    write_png16(frames / "depth" / "Camera_0" / "depth_00004.png", np.full((6, 8), 500))
    source = sources.vkitti2(tmp_path)
    assert len(source) == 1 and source.samples[0].depth_path.name == "depth_00003.png"
    assert not source.load(0)[2].any()  # 65535 cm = sky


def test_nyu_mat_source_reads_image_and_depth_from_the_mat(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 12, size=(3, 4, 5)).astype(np.float32)
    with h5py.File(tmp_path / "nyu.mat", "w") as handle:
        handle["images"] = rgb.transpose(0, 3, 2, 1)
        handle["depths"] = depth.transpose(0, 2, 1)
    source = sources.nyu_mat(tmp_path / "nyu.mat", indices=[2, 0])
    assert [s.index for s in source.samples] == [2, 0] and source.eval_crop == "eigen_nyu"
    image, values, valid = source.load(0)
    np.testing.assert_array_equal(image, rgb[2])
    np.testing.assert_array_equal(valid, depth[2] <= 10.0)
    np.testing.assert_array_equal(values[valid], depth[2][valid])
    with pytest.raises(SourceConfigError, match="0-based"):
        sources.nyu_mat(tmp_path / "nyu.mat", indices=[3])


def test_hypersim_layout(tmp_path):
    images = tmp_path / "ai_001_001" / "images"
    write_rgb(images / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg")
    (images / "scene_cam_00_geometry_hdf5").mkdir(parents=True)
    distance = np.full((6, 8), 4.0, np.float16)
    distance[0, 0] = np.nan
    with h5py.File(images / "scene_cam_00_geometry_hdf5" / "frame.0000.depth_meters.hdf5", "w") as handle:
        handle["dataset"] = distance
    source = sources.hypersim(tmp_path, focal=10.0)
    _, depth, valid = source.load(0)
    assert valid.sum() == 47 and (depth[valid] < 4.0).all()


def test_diode_sintel_eth3d_layouts(tmp_path):
    scan = tmp_path / "diode" / "val" / "indoors" / "scene_00019" / "scan_00183"
    write_rgb(scan / "00019_00183_indoors_000_010.png")
    np.save(scan / "00019_00183_indoors_000_010_depth.npy", np.full((6, 8, 1), 0.5, np.float32))
    np.save(scan / "00019_00183_indoors_000_010_depth_mask.npy", np.ones((6, 8), np.float32))
    _, _, valid = sources.diode(tmp_path / "diode").load(0)
    assert not valid.any()  # 0.5 m is below DIODE's 0.6 m minimum

    write_rgb(tmp_path / "sintel" / "training" / "final" / "alley_1" / "frame_0001.png")
    (tmp_path / "sintel" / "training" / "depth" / "alley_1").mkdir(parents=True)
    formats.write_sintel_dpt(tmp_path / "sintel" / "training" / "depth" / "alley_1" / "frame_0001.dpt",
                             np.full((6, 8), 100.0, np.float32))
    source = sources.sintel(tmp_path / "sintel")
    assert source.samples[0].image_path.parts[-3:] == ("final", "alley_1", "frame_0001.png")
    assert not source.load(0)[2].any()  # beyond the 72 m cap

    write_rgb(tmp_path / "eth3d" / "courtyard" / "images" / "dslr_images" / "DSC_0286.JPG")
    (tmp_path / "eth3d" / "courtyard" / "ground_truth_depth" / "dslr_images").mkdir(parents=True)
    gt = np.full((6, 8), 7.0, np.float32)
    gt[:, 0] = np.inf
    formats.write_eth3d(tmp_path / "eth3d" / "courtyard" / "ground_truth_depth" / "dslr_images" / "DSC_0286.JPG", gt)
    _, depth, valid = sources.eth3d(tmp_path / "eth3d", height=6, width=8).load(0)
    assert valid.sum() == 42 and (depth[valid] == 7.0).all()


# ----------------------------------------------------------------------------- config factory
def test_make_source_builds_from_config_relative_to_base_dir(tmp_path):
    write_rgb(tmp_path / "data" / "images" / "x.png")
    (tmp_path / "data" / "depth").mkdir()
    np.save(tmp_path / "data" / "depth" / "x.npy", np.ones((6, 8), np.float32))
    source = make_source({"type": "folder", "root": "data", "depth_ext": ".npy", "max_depth": 10}, base_dir=tmp_path)
    assert len(source) == 1 and source.max_depth == 10


@pytest.mark.parametrize("spec, message", [
    ({"type": "folder", "root": "x", "png_scal": 1000}, "unknown key 'png_scal'"),
    ({"type": "folder"}, "missing required key.*'root'"),
    ({"type": "kitty", "root": "x"}, "type 'kitty' is unknown"),
    ({"root": "x"}, "type None is unknown"),
    (["folder"], "must be a mapping"),
])
def test_make_source_bad_config_names_the_problem(spec, message):
    with pytest.raises(SourceConfigError, match=message):
        make_source(spec)



def test_label_store_without_ok_rows_says_what_to_run(tmp_path):
    store = LabelStore(tmp_path / "store")
    store.open_for("teacher", {"source_root": str(tmp_path)})
    store.append([{"source": "bad.jpg", "hash": "", "status": "failed", "error": "truncated", "height": 0,
                   "width": 0, "label": "", "min": 0.0, "max": 0.0, "teacher": "teacher"}])
    with pytest.raises(FileNotFoundError, match="no 'ok' rows; run `pseudodepth label"):
        sources.label_store(tmp_path / "store")


@pytest.mark.parametrize("field, value", [("label", "../../outside.png"), ("source", "../secret.jpg")])
def test_label_store_manifest_paths_escaping_their_root_are_refused(tmp_path, field, value):
    store = LabelStore(tmp_path / "store")
    store.open_for("teacher", {"source_root": str(tmp_path / "photos")})
    row = {"source": "a.jpg", "hash": "", "status": "ok", "error": "", "height": 2, "width": 2,
           "label": "labels/a.png", "min": 0.0, "max": 1.0, "teacher": "teacher"}
    store.append([{**row, field: value}])
    with pytest.raises(ValueError, match="escapes its root"):
        sources.label_store(tmp_path / "store")
