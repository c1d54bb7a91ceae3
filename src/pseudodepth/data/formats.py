"""Readers (and a few writers) for the depth file formats users bring.

Every reader returns ``(depth, valid)``: ``depth`` is a float32 H x W array, ``valid`` a bool
H x W mask. Invalid pixels hold 0 in ``depth``. Units are metres unless the docstring says the
format has no fixed unit (``.npy``, ``.pfm``: whatever the file holds). Depth-range limits of a
dataset (e.g. KITTI <= 80 m) are applied by the dataset source, not here; the only exception is
Virtual KITTI 2, whose far/sky value is part of the format.

A file that cannot be read raises :class:`DepthFormatError`, whose message names the file, what
is wrong and what to do.

| format | function | layout / unit |
|---|---|---|
| 16-bit PNG (KITTI, folders) | :func:`read_png16` | uint16, depth = value / scale, 0 invalid (KITTI scale 256) |
| Virtual KITTI 2 | :func:`read_vkitti2` | uint16 centimetres, > 80 m (65535 = sky) invalid |
| NumPy | :func:`read_npy` | H x W (or H x W x 1 / 1 x H x W) float, non-finite or <= 0 invalid |
| PFM | :func:`read_pfm` | ``Pf`` header, scale < 0 little endian, rows stored bottom to top |
| Sintel ``.dpt`` | :func:`read_sintel_dpt` | float32 tag 202021.25, int32 w, int32 h, float32 data |
| DIODE | :func:`read_diode` | depth ``.npy`` H x W x 1 + mask ``.npy`` H x W |
| ETH3D | :func:`read_eth3d` | raw little-endian float32 4032 x 6048, inf invalid |
| NYUv2 labeled ``.mat`` | :func:`read_nyu_mat` | HDF5; ``images`` N x 3 x W x H, ``depths`` N x W x H |
| Hypersim | :func:`read_hypersim` | HDF5 ``dataset`` = distance to the camera centre -> planar depth |
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from pseudodepth import imageio

DepthMap = tuple[np.ndarray, np.ndarray]
"""``(depth float32 H x W, valid bool H x W)``; invalid pixels hold 0."""

SINTEL_TAG = 202021.25
VKITTI2_MAX_DEPTH = 80.0
HYPERSIM_FOCAL = 886.81
ETH3D_SHAPE = (4032, 6048)


class DepthFormatError(ValueError):
    """A depth file that cannot be read; the message names the file and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        message = f"{self.path}: {problem}"
        super().__init__(f"{message}. {fix}" if fix else message)


def finite_positive(depth: np.ndarray) -> DepthMap:
    """Return ``(depth, valid)`` with ``valid = isfinite(depth) & depth > 0`` and 0 elsewhere."""
    depth = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, depth, 0).astype(np.float32), valid


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise DepthFormatError(path, "file not found", "Check the dataset root and the list file.")


def _as_depth_2d(array: np.ndarray, path: Path) -> np.ndarray:
    """Accept H x W, H x W x 1 or 1 x H x W; anything else is refused."""
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise DepthFormatError(
            path, f"expected a single-channel depth map, got shape {tuple(array.shape)}",
            "Save one H x W depth array per file.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DepthFormatError(path, f"depth dtype {array.dtype} is not numeric", "Save float32 depth.")
    return array


# ----------------------------------------------------------------------------- 16-bit PNG
def _read_uint16_png(path: Path) -> np.ndarray:
    _check_exists(path)
    try:
        return imageio.read_png16(path)
    except imageio.ImageError as error:
        raise DepthFormatError(
            path, error.reason,
            "Depth PNGs must be 16-bit single-channel (value = depth * scale); 8-bit PNGs cannot hold "
            "depth: re-save as 16-bit PNG, .npy or .pfm.") from None


def read_png16(path: str | os.PathLike, scale: float) -> DepthMap:
    """16-bit PNG depth: ``depth = value / scale`` (KITTI: scale 256 -> metres), value 0 invalid.

    8-bit and multi-channel PNGs are refused with a message saying how to re-save them.
    """
    if not scale > 0:
        raise ValueError(f"png scale must be > 0, got {scale}")
    raw = _read_uint16_png(Path(path))
    valid = raw > 0
    return (raw.astype(np.float32) / np.float32(scale)) * valid, valid


def write_png16(path: str | os.PathLike, depth: np.ndarray, scale: float) -> None:
    """Write ``round(depth * scale)`` as a 16-bit PNG; invalid (<= 0, NaN, inf) pixels become 0.

    Values above ``65535 / scale`` are clipped to 65535 (e.g. 65.535 m at scale 1000).
    """
    stored, valid = finite_positive(depth)
    stored = np.clip(np.rint(stored.astype(np.float64) * scale), 0, 65535).astype(np.uint16)
    stored[~valid] = 0
    imageio.write_png(path, stored)


def read_vkitti2(path: str | os.PathLike) -> DepthMap:
    """Virtual KITTI 2 depth: uint16 PNG in centimetres -> metres; 0 and > 80 m (65535 = sky) invalid."""
    raw = _read_uint16_png(Path(path))
    depth = raw.astype(np.float32) / np.float32(100.0)
    valid = (raw > 0) & (depth <= VKITTI2_MAX_DEPTH)
    return depth * valid, valid


# ----------------------------------------------------------------------------- NumPy
def read_npy(path: str | os.PathLike) -> DepthMap:
    """``.npy`` depth in the file's own unit; non-finite and <= 0 values are invalid."""
    path = Path(path)
    array = _load_npy(path, "array", "Save with numpy.save.")
    return finite_positive(_as_depth_2d(array, path))


def _load_npy(path: Path, what: str, fix: str) -> np.ndarray:
    """``np.load`` without pickles; a missing or unreadable file raises :class:`DepthFormatError`."""
    _check_exists(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DepthFormatError(path, f"not a readable .npy {what} ({error})", fix) from error


# ----------------------------------------------------------------------------- PFM
def load_pfm(path: str | os.PathLike) -> np.ndarray:
    """Raw PFM array: ``Pf`` -> H x W, ``PF`` -> H x W x 3, float32, top row first.

    Header: ``Pf``/``PF``, ``width height``, ``scale`` (negative = little endian); then the rows
    from the bottom of the image to the top.
    """
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as handle:
        kind = handle.readline().strip()
        if kind not in (b"Pf", b"PF"):
            raise DepthFormatError(path, f"not a PFM file (header {kind[:8]!r})", "Expected 'Pf' or 'PF'.")
        try:
            width, height = (int(v) for v in handle.readline().split())
            scale = float(handle.readline().strip())
        except ValueError as error:
            raise DepthFormatError(path, "malformed PFM header", "Re-export the file.") from error
        if width <= 0 or height <= 0 or scale == 0:
            raise DepthFormatError(path, f"bad PFM header: {width} x {height}, scale {scale}", "Re-export it.")
        channels = 3 if kind == b"PF" else 1
        dtype = np.dtype("<f4" if scale < 0 else ">f4")
        data = np.frombuffer(handle.read(), dtype=dtype)
    if data.size != width * height * channels:
        raise DepthFormatError(
            path, f"holds {data.size} values, header says {width} x {height} x {channels}",
            "The file is truncated; re-export it.")
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.flipud(data.reshape(shape)).astype(np.float32)


def read_pfm(path: str | os.PathLike) -> DepthMap:
    """Single-channel (``Pf``) PFM depth in the file's own unit; non-finite and <= 0 invalid."""
    array = load_pfm(path)
    if array.ndim != 2:
        raise DepthFormatError(path, "colour PFM ('PF'), expected one channel ('Pf')", "Save depth as 'Pf'.")
    return finite_positive(array)


def write_pfm(path: str | os.PathLike, array: np.ndarray, little_endian: bool = True) -> None:
    """Write an H x W (``Pf``) or H x W x 3 (``PF``) float array as PFM, rows bottom to top."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 3:
        kind = b"PF"
    elif array.ndim == 2:
        kind = b"Pf"
    else:
        raise ValueError(f"PFM holds H x W or H x W x 3 arrays, got shape {array.shape}")
    height, width = array.shape[:2]
    dtype = np.dtype("<f4" if little_endian else ">f4")
    with open(path, "wb") as handle:
        handle.write(kind + b"\n" + f"{width} {height}\n{-1.0 if little_endian else 1.0}\n".encode())
        handle.write(np.ascontiguousarray(np.flipud(array)).astype(dtype).tobytes())


# ----------------------------------------------------------------------------- Sintel
def read_sintel_dpt(path: str | os.PathLike) -> DepthMap:
    """MPI Sintel ``.dpt``: float32 tag 202021.25, int32 width, int32 height, float32 data (metres-like units)."""
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12:
            raise DepthFormatError(path, "shorter than the 12-byte .dpt header", "The file is truncated.")
        tag = np.frombuffer(header[:4], "<f4")[0]
        width, height = (int(v) for v in np.frombuffer(header[4:], "<i4"))
        if tag != np.float32(SINTEL_TAG):
            raise DepthFormatError(
                path, f"wrong .dpt tag {tag!r} (expected {SINTEL_TAG}); not a Sintel depth file or wrong endianness",
                "Use the depth files from MPI-Sintel-depth-training.")
        if not (0 < width < 100_000 and 0 < height < 100_000):
            raise DepthFormatError(path, f"implausible size {width} x {height} in the .dpt header", "Re-export it.")
        data = np.frombuffer(handle.read(), "<f4")
    if data.size != width * height:
        raise DepthFormatError(
            path, f"holds {data.size} values, header says {width} x {height}", "The file is truncated or padded.")
    return finite_positive(data.reshape(height, width))


def write_sintel_dpt(path: str | os.PathLike, depth: np.ndarray) -> None:
    """Write an H x W float array as a Sintel ``.dpt`` file."""
    depth = np.asarray(depth, dtype="<f4")
    if depth.ndim != 2:
        raise ValueError(f".dpt holds an H x W array, got shape {depth.shape}")
    height, width = depth.shape
    with open(path, "wb") as handle:
        handle.write(np.array([SINTEL_TAG], "<f4").tobytes() + np.array([width, height], "<i4").tobytes())
        handle.write(np.ascontiguousarray(depth).tobytes())


# ----------------------------------------------------------------------------- DIODE
def read_diode(depth_npy: str | os.PathLike, mask_npy: str | os.PathLike) -> DepthMap:
    """DIODE: depth ``*_depth.npy`` (H x W x 1, metres) and ``*_depth_mask.npy`` (H x W, 1 = valid)."""
    depth, valid = read_npy(depth_npy)
    mask_path = Path(mask_npy)
    mask = _as_depth_2d(_load_npy(mask_path, "mask", "Re-download it."), mask_path)
    if mask.shape != depth.shape:
        raise DepthFormatError(
            mask_path, f"mask shape {mask.shape} differs from depth shape {depth.shape} ({depth_npy})",
            "Pair each depth file with its own mask.")
    valid = valid & (mask > 0)
    return depth * valid, valid


# ----------------------------------------------------------------------------- ETH3D
def read_eth3d(path: str | os.PathLike, h: int = ETH3D_SHAPE[0], w: int = ETH3D_SHAPE[1]) -> DepthMap:
    """ETH3D ground truth: raw little-endian float32, ``h`` x ``w`` (4032 x 6048), inf invalid."""
    path = Path(path)
    _check_exists(path)
    data = np.fromfile(path, dtype="<f4")
    if data.size != h * w:
        raise DepthFormatError(
            path, f"holds {data.size} float32 values, expected {h} x {w} = {h * w}",
            "Use the raw ground_truth_depth files of the ETH3D DSLR depth archive, or pass h and w.")
    return finite_positive(data.reshape(h, w))


def write_eth3d(path: str | os.PathLike, depth: np.ndarray) -> None:
    """Write an H x W array as raw little-endian float32 (the ETH3D ground-truth layout)."""
    np.ascontiguousarray(np.asarray(depth, dtype="<f4")).tofile(path)


# ----------------------------------------------------------------------------- NYUv2 .mat
def _open_hdf5(path: Path, needed: tuple[str, ...], what: str) -> h5py.File:
    _check_exists(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DepthFormatError(
            path, f"not an HDF5 file ({error})",
            f"{what} must be HDF5 (MATLAB v7.3 for NYUv2)") from error
    missing = [key for key in needed if key not in handle]
    if missing:
        keys = sorted(handle.keys())
        handle.close()
        raise DepthFormatError(path, f"missing HDF5 key(s) {missing}; found {keys}", f"Is this {what}?")
    return handle


def nyu_mat_count(path: str | os.PathLike) -> int:
    """Number of images in an NYUv2 labeled ``.mat`` file."""
    with _open_hdf5(Path(path), ("images", "depths"), "nyu_depth_v2_labeled.mat") as handle:
        return int(handle["depths"].shape[0])


def read_nyu_mat(path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of the NYUv2 labeled ``.mat``: ``(rgb uint8 H x W x 3, depth H x W, valid)``.

    The file is MATLAB v7.3 (HDF5), which stores arrays transposed: ``images`` is N x 3 x W x H
    and ``depths`` N x W x H (metres), so ``rgb = images[i].transpose(2, 1, 0)`` and
    ``depth = depths[i].T``.
    """
    path = Path(path)
    with _open_hdf5(path, ("images", "depths"), "nyu_depth_v2_labeled.mat") as handle:
        images, depths = handle["images"], handle["depths"]
        count = depths.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or depths.ndim != 3 or images.shape[0] != count:
            raise DepthFormatError(
                path, f"unexpected shapes images {images.shape}, depths {depths.shape}",
                "Expected images N x 3 x W x H and depths N x W x H (the official labeled .mat).")
        if not 0 <= index < count:
            raise IndexError(f"{path}: index {index} out of range, the file holds {count} images")
        rgb = np.ascontiguousarray(np.asarray(images[index]).transpose(2, 1, 0)).astype(np.uint8)
        depth_wh = np.asarray(depths[index])
    depth, valid = finite_positive(depth_wh.T)
    if rgb.shape[:2] != depth.shape:
        raise DepthFormatError(path, f"image {rgb.shape[:2]} and depth {depth.shape} sizes differ", "")
    return rgb, np.ascontiguousarray(depth), np.ascontiguousarray(valid)


# ----------------------------------------------------------------------------- Hypersim
def distance_to_planar_depth(distance: np.ndarray, focal: float) -> np.ndarray:
    """Convert distance to the camera centre into planar (z) depth for a centred pinhole camera.

    ``depth(v, u) = distance(v, u) / sqrt(1 + ((u + 0.5 - W/2) / f)^2 + ((v + 0.5 - H/2) / f)^2)``
    with pixel centres at ``u + 0.5`` and the principal point at the image centre.
    """
    height, width = distance.shape
    x = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / focal
    y = (np.arange(height, dtype=np.float64) + 0.5 - height / 2) / focal
    norm = np.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)
    return (distance / norm).astype(np.float32)


def read_hypersim(path: str | os.PathLike, focal: float = HYPERSIM_FOCAL) -> DepthMap:
    """Hypersim ``*.depth_meters.hdf5``: key ``dataset`` = distance to the camera centre in metres.

    Returned as planar depth (:func:`distance_to_planar_depth`); ``focal`` is in pixels at the file's
    resolution (886.81 for the 1024 x 768 renders). NaN (no geometry) is invalid.
    """
    path = Path(path)
    with _open_hdf5(path, ("dataset",), "a Hypersim depth_meters.hdf5 file") as handle:
        distance = np.asarray(handle["dataset"], dtype=np.float32)
    distance = _as_depth_2d(distance, path)
    with np.errstate(invalid="ignore"):
        return finite_positive(distance_to_planar_depth(distance, focal))
