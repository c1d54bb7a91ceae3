"""Image and label-file I/O: one decoder for every input, atomic writers for every output.

Every image the toolkit reads goes through :func:`read_rgb`, so every stage sees the same pixels:
EXIF orientation applied, CMYK / 16-bit / grayscale / palette / RGBA converted to 8-bit RGB.
Pillow decodes JPEGs bit-identically to OpenCV's ``cv2.imread`` (checked on the demo photos) and,
unlike OpenCV, refuses truncated files instead of returning a half-grey picture.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's guard against decompression bombs, as one limit of ours: :func:`decode_rgb` reads the size
# from the header and refuses larger images before decoding a pixel (``--max-pixels`` changes it).
# Pillow's own check is switched off so that a raised ``--max-pixels`` is not refused a second time.
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)  # Pillow's default: 89,478,485 pixels
Image.MAX_IMAGE_PIXELS = None

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case); the content is not read."""
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


class ImageError(ValueError):
    """An input file that cannot be decoded as an image. ``str(err)`` is one line naming the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an 8-bit RGB array (H x W x 3, uint8)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale the full integer range to 8 bits (as cv2.IMREAD_COLOR does for PNG16).
        arr = np.asarray(img, dtype=np.float64 if mode == "I" else np.uint16)
        if mode == "I":
            arr = np.clip(arr, 0, 65535)
        arr8 = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).round().astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    # L, LA, P, PA, RGBA, CMYK, YCbCr, 1: Pillow converts; alpha is dropped as cv2.imread(IMREAD_COLOR) does.
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def decode_rgb(data: bytes, name: str | os.PathLike = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into an upright 8-bit RGB array (H x W x 3).

    Raises :class:`ImageError` (naming ``name``) for empty, truncated, corrupt or non-image data, and
    for images of more than ``max_pixels`` pixels (read from the header: nothing is decoded).
    """
    return decode_rgb_reduced(data, name, max_pixels=max_pixels)[0]


# EXIF orientations that swap width and height (transpose, 90 and 270 degree rotations)
_SWAPS_AXES = (5, 6, 7, 8)


def decode_rgb_reduced(data: bytes, name: str | os.PathLike = "<bytes>",
                       min_size: Callable[[int, int], tuple[int, int]] | None = None,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`decode_rgb`, optionally letting a JPEG decode at 1/2, 1/4 or 1/8 of its size.

    ``min_size(height, width)`` of the upright full image gives the smallest (height, width) the
    decoded image must keep; JPEG's DCT-domain scaling then skips most of the decoding work for photos
    much larger than that (other formats decode in full). Returns (upright RGB, upright full (H, W)).
    Images of more than ``max_pixels`` pixels are refused from the header, before any decoding.
    """
    if not data:
        raise ImageError(name, "empty file (0 bytes); remove it or re-download it")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(name, f"{width} x {height} = {width * height:,} pixels, above the limit of "
                                       f"{max_pixels:,} (not decoded); downscale it or raise --max-pixels")
            swap = img.getexif().get(0x0112, 1) in _SWAPS_AXES
            full = (img.width, img.height) if swap else (img.height, img.width)
            if min_size is not None and img.format == "JPEG":
                h, w = min_size(*full)
                img.draft(None, (h, w) if swap else (w, h))  # file orientation: (width, height)
            img.load()  # forces a full decode: truncated files raise here
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(name, f"corrupt or truncated image ({err})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(name, f"decoded to an empty image of shape {rgb.shape}")
    return rgb, full


def read_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as upright 8-bit RGB (H x W x 3). Raises :class:`ImageError` naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageError(path, f"cannot read file ({err.strerror})") from None
    return decode_rgb(data, path, max_pixels)


# Files that mark a folder pseudodepth wrote: a label store, a training run or checkpoint, a shard export.
STORE_MARKERS = ("store.json", "manifest.parquet", "manifest.journal", "label.lock")
CHECKPOINT_MARKERS = ("pseudodepth.json", "trainer.pt")


def is_pseudodepth_folder(path: str | os.PathLike) -> bool:
    """True for a folder written by pseudodepth: a label store (``store.json``, manifest, lock), a
    checkpoint (``pseudodepth.json``), a training run (``log.csv`` + ``config.yaml``) or a shard export."""
    path = Path(path)
    if any((path / m).is_file() for m in STORE_MARKERS + CHECKPOINT_MARKERS):
        return True
    if (path / "log.csv").is_file() and (path / "config.yaml").is_file():
        return True
    return (path / "index.json").is_file() and (path / "shard-000000.tar").is_file()


def list_files(root: str | os.PathLike, exclude: tuple[str | os.PathLike, ...] = ()) -> list[str]:
    """Every regular, non-hidden file under ``root`` (sub-folders walked), as sorted POSIX relative paths.

    Every file is listed, whatever its name (:func:`list_images` splits images from the rest). Folders
    in ``exclude`` (e.g. the output store) and every folder pseudodepth wrote
    (:func:`is_pseudodepth_folder`) are not entered.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of images; pass --images DIR with your image folder")
    skip = {os.path.realpath(p) for p in exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in skip
                             and not is_pseudodepth_folder(os.path.join(dirpath, d)))
        for f in filenames:
            if f.startswith("."):
                continue
            full = Path(dirpath) / f
            if full.is_file():
                out.append(full.relative_to(root).as_posix())
    return sorted(out)


def list_images(root: str | os.PathLike, exclude: tuple[str | os.PathLike, ...] = ()) -> tuple[list[str], list[str]]:
    """The walk of :func:`list_files` split by file name: (image files, other files), both sorted.

    An image is a file with an image extension (:func:`is_image_name`); whether it decodes is found out
    later (a corrupt ``.jpg`` becomes a failed row of the label store, a ``README.md`` is not an input)."""
    files = list_files(root, exclude)
    return [f for f in files if is_image_name(f)], [f for f in files if not is_image_name(f)]


def safe_join(root: str | os.PathLike, rel: str, follow_links: bool = False) -> Path:
    """Join a relative path read from a file (manifest, shard index, list file) onto ``root``,
    refusing anything that escapes it: absolute paths and ``..`` that leaves the root always; with
    ``follow_links=False`` (the default) also a symbolic link inside the root that points outside it
    (the resolved path must stay under the resolved root).

    ``follow_links=True`` is for the user's own image and dataset folders, where a link to a file
    elsewhere is a deliberate layout (a folder of links to a photo library); pseudodepth's own
    outputs (label stores, shard exports) never contain links, so there one that escapes is refused.
    The one path join for every path read from a file; returns the lexical (unresolved) path.
    """
    root_a = Path(os.path.abspath(root))
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise ValueError(f"path {rel!r} under {root_a} is not a non-empty relative path; fix the manifest or config entry")
    if Path(rel).is_absolute():
        raise ValueError(f"path {rel!r} must be relative to {root_a}, not absolute")
    full = Path(os.path.normpath(root_a / rel))
    if full != root_a and root_a not in full.parents:
        raise ValueError(f"path {rel!r} escapes its root {root_a}; fix the manifest or config entry")
    if not follow_links:
        real_root, real = Path(os.path.realpath(root_a)), Path(os.path.realpath(full))
        if real != real_root and real_root not in real.parents:
            raise ValueError(f"path {rel!r} under {root_a} leads outside it through a symbolic link (to {real}); "
                             "a pseudodepth store or export holds no links: re-create it")
    return full


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_png(array: np.ndarray, compression: int = 1) -> bytes:
    """Encode a uint8 (H x W or H x W x 3 RGB) or uint16 (H x W) array as PNG bytes (lossless).

    The "sub" row filter for every row instead of libpng's adaptive choice, zlib level 1; zlib's default
    strategy for 16-bit maps, run-length for 8-bit images. Measured on this project's 2-core CPU
    (16-bit labels of the 2048 x 1362 demo photos, and the same colourised): 16-bit
    50 ms and 1.5 MB per label (adaptive filter + run-length, the previous setting: 69 ms, 2.5 MB); RGB
    22 ms, 0.44 MB (51 ms, 0.43 MB).
    """
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    strategy = cv2.IMWRITE_PNG_STRATEGY_DEFAULT if array.dtype == np.uint16 else cv2.IMWRITE_PNG_STRATEGY_RLE
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, compression,
                                           cv2.IMWRITE_PNG_STRATEGY, strategy,
                                           cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | os.PathLike, array: np.ndarray, compression: int = 1) -> None:
    """Atomically write a uint8 RGB / gray or uint16 gray array as PNG."""
    atomic_write_bytes(path, encode_png(array, compression))


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """Read a 16-bit single-channel PNG exactly (uint16 H x W); refuses 8-bit or colour PNGs."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(path, "cannot decode PNG (missing or corrupt file)")
    if arr.dtype != np.uint16 or arr.ndim != 2:
        raise ImageError(path, f"expected a 16-bit single-channel PNG, got {arr.dtype} with shape {arr.shape}")
    return arr
