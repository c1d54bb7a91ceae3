"""Dataset sources: which (image, depth) pairs a dataset has, how to read them, and their range.

A :class:`DepthSource` is a list of :class:`Sample` s plus a depth reader (one function of
:mod:`pseudodepth.data.formats`), the valid depth range ``[min_depth, max_depth]`` (pixels outside
are masked), the benchmark's evaluation crop and whether it is labeled ground truth or a teacher's
pseudo-label. :class:`pseudodepth.data.dataset.DepthDataset` turns any source into training or
evaluation samples, so a new format only needs a constructor here.

Constructors and the file layouts they expect (``<rel>`` may contain sub-folders):

- :func:`folder` - the plain layout (primary, what :mod:`pseudodepth.synth` writes)::

      ROOT/images/<rel>.jpg|.png|...      ROOT/depth/<rel>.png|.npy|.pfm

  matched by relative path without extension. If ``ROOT/images`` does not exist the side-by-side
  layout ``ROOT/<rel>.jpg`` + ``ROOT/<rel>.depth.png`` is read instead. PNG depth is 16-bit,
  ``depth = value / png_scale`` (1000: millimetres), 0 invalid.
- :func:`kitti` - ``IMAGE_ROOT/<date>/<drive>/image_0X/data/<frame>.png`` and
  ``DEPTH_ROOT/<drive>/proj_depth/groundtruth/image_0X/<frame>.png`` (PNG16, / 256), or a list
  file of ``image_rel depth_rel [focal]`` lines (the BTS / ZoeDepth split files; ``None`` depth
  lines are skipped).
- :func:`vkitti2` - ``ROOT/<scene>/<variant>/frames/rgb/Camera_X/rgb_NNNNN.jpg`` +
  ``.../frames/depth/Camera_X/depth_NNNNN.png`` (centimetres).
- :func:`nyu_mat` - ``nyu_depth_v2_labeled.mat`` (HDF5), optionally a subset of indices.
- :func:`hypersim` - ``ROOT/<scene>/images/scene_cam_XX_final_preview/frame.NNNN.tonemap.jpg`` +
  ``ROOT/<scene>/images/scene_cam_XX_geometry_hdf5/frame.NNNN.depth_meters.hdf5``.
- :func:`diode` - ``ROOT/**/<name>.png`` + ``<name>_depth.npy`` + ``<name>_depth_mask.npy``.
- :func:`sintel` - ``ROOT/training/<pass>/<scene>/frame_NNNN.png`` +
  ``ROOT/training/depth/<scene>/frame_NNNN.dpt``.
- :func:`eth3d` - ``ROOT/<scene>/images/dslr_images/DSC_NNNN.JPG`` +
  ``ROOT/<scene>/ground_truth_depth/dslr_images/DSC_NNNN.JPG`` (raw float32).
- :func:`label_store` - pseudo-labels written by ``pseudodepth label`` (:class:`pseudodepth.store.LabelStore`).

:func:`make_source` builds any of them from a config dict such as
``{"type": "folder", "root": "data/train", "depth_ext": ".png", "png_scale": 1000}``.
Paths read from list files and manifests must stay inside their root.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pseudodepth import imageio
from pseudodepth.data import formats
from pseudodepth.data.formats import DepthFormatError, DepthMap
from pseudodepth.metrics import DATASET_CROPS, DATASET_RANGES
from pseudodepth.store import LabelStore

SourceKind = Literal["labeled", "pseudo"]
FOLDER_DEPTH_EXTENSIONS = (".png", ".npy", ".pfm")


class SourceConfigError(ValueError):
    """A data-source config that cannot be built; the message names the bad key."""


@dataclass(frozen=True)
class Sample:
    """One training/evaluation pair. ``index`` addresses an image inside a container file (NYUv2
    ``.mat``); ``row`` is the label-store manifest row of a pseudo-label."""

    image_path: Path
    depth_path: Path | None = None
    mask_path: Path | None = None
    index: int | None = None
    row: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def name(self) -> str:
        """A readable id: the image path, plus ``#index`` for container files."""
        return f"{self.image_path}#{self.index}" if self.index is not None else str(self.image_path)


def read_image_file(sample: Sample) -> np.ndarray:
    """The sample's image as uint8 RGB H x W x 3 (:func:`pseudodepth.imageio.read_rgb`)."""
    return imageio.read_rgb(sample.image_path)


@dataclass
class DepthSource:
    """A dataset: samples, a depth reader, the valid range and the evaluation crop.

    ``read_depth(sample) -> (values, valid)`` returns depth in metres for ``kind="labeled"`` and for
    metric pseudo-labels, disparity for relative pseudo-labels (``values`` says which). ``eval_crop`` is a crop name of
    :func:`pseudodepth.metrics.crop_mask`; ``kb_crop`` asks evaluation to apply the KITTI benchmark
    crop (:func:`pseudodepth.metrics.kb_crop`) to image and depth before inference.
    """

    name: str
    samples: list[Sample]
    read_depth: Callable[[Sample], DepthMap]
    read_image: Callable[[Sample], np.ndarray] = read_image_file
    kind: SourceKind = "labeled"
    min_depth: float = 1e-3
    max_depth: float = math.inf
    eval_crop: str | None = None
    kb_crop: bool = False
    # "depth" (metres) or "disparity" (relative pseudo-labels); None: disparity for kind "pseudo", else depth
    values: Literal["depth", "disparity"] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("labeled", "pseudo"):
            raise ValueError(f"source {self.name}: kind must be 'labeled' or 'pseudo', got {self.kind!r}")
        if self.values is None:
            self.values = "disparity" if self.kind == "pseudo" else "depth"
        if self.values not in ("depth", "disparity") or (self.kind == "labeled" and self.values != "depth"):
            raise ValueError(f"source {self.name}: values must be 'depth' (labeled) or 'disparity', got {self.values!r}")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"source {self.name}: need 0 <= min_depth < max_depth, "
                             f"got {self.min_depth}..{self.max_depth}")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rgb uint8 H x W x 3, values float32 H x W, valid bool H x W)`` of sample ``index``.

        Labeled depth outside ``[min_depth, max_depth]`` is masked; pseudo-label disparity keeps
        every finite value >= 0 (0 = the farthest, e.g. sky); metric pseudo-labels keep depth > 0.
        Invalid pixels hold 0.
        """
        sample = self.samples[index]
        rgb = self.read_image(sample)
        values, valid = self.read_depth(sample)
        if rgb.shape[:2] != values.shape:
            raise DepthFormatError(
                sample.depth_path or sample.image_path,
                f"depth is {values.shape[0]} x {values.shape[1]} but its image {sample.name} is "
                f"{rgb.shape[0]} x {rgb.shape[1]}", "Image and depth must have the same size.")
        with np.errstate(invalid="ignore"):
            valid = valid & np.isfinite(values)
            if self.kind == "labeled":
                valid &= (values >= self.min_depth) & (values <= self.max_depth)
            elif self.values == "depth":
                valid &= values > 0
            else:
                valid &= values >= 0
        return rgb, np.where(valid, values, 0).astype(np.float32), valid


# ----------------------------------------------------------------------------- helpers
def _files(root: Path, what: str) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {what} folder not found; check the dataset root in your config")
    return imageio.list_files(root)


def _require(samples: list[Sample], root: Path, layout: str) -> list[Sample]:
    if not samples:
        raise FileNotFoundError(f"{root}: no samples found; expected the layout {layout}")
    return samples


def _missing_error(root: Path, missing: list[str], what: str) -> FileNotFoundError:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return FileNotFoundError(f"{root}: {len(missing)} image(s) have no {what}: {shown}; "
                             "add the missing files or remove those images")


def _range(dataset: str, min_depth: float | None, max_depth: float | None) -> tuple[float, float]:
    default_min, default_max = DATASET_RANGES[dataset]
    return (default_min if min_depth is None else min_depth), (default_max if max_depth is None else max_depth)


# ----------------------------------------------------------------------------- plain folders
def _read_folder_depth(sample: Sample, png_scale: float) -> DepthMap:
    suffix = sample.depth_path.suffix.lower()
    if suffix == ".png":
        return formats.read_png16(sample.depth_path, png_scale)
    if suffix == ".npy":
        return formats.read_npy(sample.depth_path)
    return formats.read_pfm(sample.depth_path)


def folder(
    root: str | os.PathLike,
    depth_ext: str = ".png",
    png_scale: float = 1000.0,
    min_depth: float = 1e-3,
    max_depth: float = math.inf,
) -> DepthSource:
    """Plain image + depth folders: ``ROOT/images/<rel>.<img>`` + ``ROOT/depth/<rel><depth_ext>``.

    Without ``ROOT/images``, the side-by-side layout ``ROOT/<rel>.<img>`` +
    ``ROOT/<rel>.depth<depth_ext>`` is read. Every image needs its depth file.
    """
    root = Path(root)
    if depth_ext not in FOLDER_DEPTH_EXTENSIONS:
        raise SourceConfigError(f"depth_ext must be one of {FOLDER_DEPTH_EXTENSIONS}, got {depth_ext!r}")
    if not png_scale > 0:
        raise SourceConfigError(f"png_scale must be > 0, got {png_scale!r}")
    side_by_side = not (root / "images").is_dir()
    image_root, depth_root = (root, root) if side_by_side else (root / "images", root / "depth")
    depth_suffix = (".depth" + depth_ext) if side_by_side else depth_ext
    layout = (f"{root}/<name>.jpg + {root}/<name>{depth_suffix}" if side_by_side
              else f"{root}/images/<name>.jpg + {root}/depth/<name>{depth_ext}")
    files = _files(image_root, "image")
    depth_files = set(files) if side_by_side else set(_files(depth_root, "depth"))
    samples, missing, seen = [], [], {}
    for rel in files:
        if not imageio.is_image_name(rel) or rel.lower().endswith(".depth" + depth_ext):
            continue
        stem = os.path.splitext(rel)[0]
        if stem in seen:
            raise FileNotFoundError(f"{image_root}: {seen[stem]} and {rel} share the name {stem!r}; "
                                    "their depth file would be ambiguous, rename one")
        seen[stem] = rel
        depth_rel = stem + depth_suffix
        if depth_rel not in depth_files:
            missing.append(rel)
            continue
        samples.append(Sample(image_root / rel, depth_root / depth_rel))
    if missing:
        raise _missing_error(root, missing, f"depth file ({layout})")
    return DepthSource(f"folder:{root}", _require(samples, root, layout),
                       partial(_read_folder_depth, png_scale=png_scale),
                       min_depth=min_depth, max_depth=max_depth)


# ----------------------------------------------------------------------------- KITTI
def _read_kitti_depth(sample: Sample) -> DepthMap:
    return formats.read_png16(sample.depth_path, 256.0)


def kitti(
    image_root: str | os.PathLike,
    depth_root: str | os.PathLike,
    list_file: str | os.PathLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> DepthSource:
    """KITTI annotated depth (PNG16 / 256 m, 0 invalid), evaluated with the KB crop then the Garg crop.

    With ``list_file``: lines ``image_rel depth_rel [focal]`` relative to ``image_root`` /
    ``depth_root`` (lines whose depth is ``None`` are skipped). Without it, every
    ``DEPTH_ROOT/<drive>/proj_depth/groundtruth/image_0X/<frame>.png`` is paired with
    ``IMAGE_ROOT/<drive[:10]>/<drive>/image_0X/data/<frame>.png``.
    """
    image_root, depth_root = Path(image_root), Path(depth_root)
    pairs: list[tuple[str, str]] = []
    if list_file is not None:
        for number, line in enumerate(Path(list_file).read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise SourceConfigError(f"{list_file}:{number}: expected 'image_rel depth_rel [focal]', got {line!r}")
            if fields[1] != "None":
                pairs.append((fields[0], fields[1]))
    else:
        for rel in _files(depth_root, "KITTI depth"):
            parts = rel.split("/")
            if len(parts) >= 5 and parts[-4:-2] == ["proj_depth", "groundtruth"] and rel.endswith(".png"):
                drive, camera, frame = parts[-5], parts[-2], parts[-1]
                pairs.append((f"{drive[:10]}/{drive}/{camera}/data/{frame}", rel))
    samples, missing = [], []
    for image_rel, depth_rel in pairs:
        sample = Sample(imageio.safe_join(image_root, image_rel, follow_links=True),
                        imageio.safe_join(depth_root, depth_rel, follow_links=True))
        (samples if sample.image_path.is_file() else missing).append(sample)
    if missing:
        raise _missing_error(image_root, [str(s.image_path) for s in missing], "image file")
    low, high = _range("kitti", min_depth, max_depth)
    return DepthSource("kitti", _require(samples, depth_root, "<drive>/proj_depth/groundtruth/image_0X/*.png"),
                       _read_kitti_depth, min_depth=low, max_depth=high,
                       eval_crop=DATASET_CROPS["kitti"], kb_crop=True)


# ----------------------------------------------------------------------------- Virtual KITTI 2
def _read_vkitti2_depth(sample: Sample) -> DepthMap:
    return formats.read_vkitti2(sample.depth_path)


def vkitti2(root: str | os.PathLike, min_depth: float = 1e-3,
            max_depth: float = formats.VKITTI2_MAX_DEPTH) -> DepthSource:
    """Virtual KITTI 2: ``.../frames/rgb/Camera_X/rgb_N.jpg`` + ``.../frames/depth/Camera_X/depth_N.png``."""
    root = Path(root)
    samples, missing = [], []
    for rel in _files(root, "Virtual KITTI 2"):
        parts = rel.split("/")
        if len(parts) < 4 or parts[-4:-2] != ["frames", "rgb"] or not parts[-1].startswith("rgb_"):
            continue
        depth_name = "depth_" + os.path.splitext(parts[-1])[0][len("rgb_"):] + ".png"
        depth_path = root.joinpath(*parts[:-3], "depth", parts[-2], depth_name)
        (samples if depth_path.is_file() else missing).append(Sample(root / rel, depth_path))
    if missing:
        raise _missing_error(root, [str(s.image_path) for s in missing], "depth_N.png")
    return DepthSource("vkitti2", _require(samples, root, "<scene>/<variant>/frames/rgb/Camera_X/rgb_N.jpg"),
                       _read_vkitti2_depth, min_depth=min_depth, max_depth=max_depth)


# ----------------------------------------------------------------------------- NYUv2 labeled .mat
def _read_nyu_image(sample: Sample) -> np.ndarray:
    return formats.read_nyu_mat(sample.image_path, sample.index)[0]


def _read_nyu_depth(sample: Sample) -> DepthMap:
    _, depth, valid = formats.read_nyu_mat(sample.depth_path, sample.index)
    return depth, valid


def nyu_mat(path: str | os.PathLike, indices: Sequence[int] | None = None,
            min_depth: float | None = None, max_depth: float | None = None) -> DepthSource:
    """NYUv2 ``nyu_depth_v2_labeled.mat``: every image, or the 0-based ``indices`` (e.g. the 654 test images)."""
    path = Path(path)
    count = formats.nyu_mat_count(path)
    chosen = range(count) if indices is None else [int(i) for i in indices]
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise SourceConfigError(f"{path}: indices {bad[:5]} out of range 0..{count - 1} (indices are 0-based)")
    low, high = _range("nyu", min_depth, max_depth)
    return DepthSource("nyu", [Sample(path, path, index=i) for i in chosen], _read_nyu_depth,
                       read_image=_read_nyu_image, min_depth=low, max_depth=high, eval_crop=DATASET_CROPS["nyu"])


# ----------------------------------------------------------------------------- Hypersim
def _read_hypersim_depth(sample: Sample, focal: float) -> DepthMap:
    return formats.read_hypersim(sample.depth_path, focal)


def hypersim(root: str | os.PathLike, focal: float = formats.HYPERSIM_FOCAL,
             min_depth: float = 1e-3, max_depth: float = 65.0) -> DepthSource:
    """Hypersim tone-mapped previews + ``depth_meters.hdf5`` (distance -> planar depth, NaN invalid).

    Default range 1e-3..65 m (the 65 m cap of Marigold's Hypersim config).
    """
    root = Path(root)
    samples, missing = [], []
    for rel in _files(root, "Hypersim"):
        if not rel.endswith(".depth_meters.hdf5") or "_geometry_hdf5/" not in rel:
            continue
        image_rel = rel.replace("_geometry_hdf5/", "_final_preview/").replace(".depth_meters.hdf5", ".tonemap.jpg")
        sample = Sample(root / image_rel, root / rel)
        (samples if sample.image_path.is_file() else missing).append(sample)
    if missing:
        raise _missing_error(root, [str(s.depth_path) for s in missing], "tonemap.jpg preview")
    layout = "<scene>/images/scene_cam_XX_geometry_hdf5/frame.N.depth_meters.hdf5"
    return DepthSource("hypersim", _require(samples, root, layout), partial(_read_hypersim_depth, focal=focal),
                       min_depth=min_depth, max_depth=max_depth)


# ----------------------------------------------------------------------------- DIODE
def _read_diode_depth(sample: Sample) -> DepthMap:
    return formats.read_diode(sample.depth_path, sample.mask_path)


def diode(root: str | os.PathLike, min_depth: float | None = None, max_depth: float | None = None) -> DepthSource:
    """DIODE: every ``<name>.png`` with ``<name>_depth.npy`` and ``<name>_depth_mask.npy`` beside it."""
    root = Path(root)
    files = _files(root, "DIODE")
    present = set(files)
    samples, missing = [], []
    for rel in files:
        if not rel.endswith(".png"):
            continue
        stem = rel[: -len(".png")]
        sample = Sample(root / rel, root / f"{stem}_depth.npy", root / f"{stem}_depth_mask.npy")
        has_both = f"{stem}_depth.npy" in present and f"{stem}_depth_mask.npy" in present
        (samples if has_both else missing).append(sample)
    if missing:
        raise _missing_error(root, [str(s.image_path) for s in missing], "_depth.npy + _depth_mask.npy pair")
    low, high = _range("diode", min_depth, max_depth)
    return DepthSource("diode", _require(samples, root, "<scene>/<scan>/<name>.png + <name>_depth(_mask).npy"),
                       _read_diode_depth, min_depth=low, max_depth=high, eval_crop=DATASET_CROPS["diode"])


# ----------------------------------------------------------------------------- Sintel
def _read_sintel_depth(sample: Sample) -> DepthMap:
    return formats.read_sintel_dpt(sample.depth_path)


def sintel(root: str | os.PathLike, pass_name: str = "final",
           min_depth: float | None = None, max_depth: float | None = None) -> DepthSource:
    """MPI Sintel: ``training/depth/<scene>/frame_N.dpt`` with ``training/<pass_name>/<scene>/frame_N.png``."""
    root = Path(root)
    if pass_name not in ("final", "clean", "albedo"):
        raise SourceConfigError(f"sintel pass_name must be 'final', 'clean' or 'albedo', got {pass_name!r}")
    depth_root = root / "training" / "depth"
    samples, missing = [], []
    for rel in _files(depth_root, "Sintel training/depth"):
        if rel.endswith(".dpt"):
            sample = Sample(root / "training" / pass_name / (rel[: -len(".dpt")] + ".png"), depth_root / rel)
            (samples if sample.image_path.is_file() else missing).append(sample)
    if missing:
        raise _missing_error(root, [str(s.depth_path) for s in missing], f"training/{pass_name} image")
    low, high = _range("sintel", min_depth, max_depth)
    return DepthSource("sintel", _require(samples, root, "training/depth/<scene>/frame_N.dpt"), _read_sintel_depth,
                       min_depth=low, max_depth=high, eval_crop=DATASET_CROPS["sintel"])


# ----------------------------------------------------------------------------- ETH3D
def _read_eth3d_depth(sample: Sample, height: int, width: int) -> DepthMap:
    return formats.read_eth3d(sample.depth_path, height, width)


def eth3d(root: str | os.PathLike, height: int = formats.ETH3D_SHAPE[0], width: int = formats.ETH3D_SHAPE[1],
          min_depth: float | None = None, max_depth: float | None = None) -> DepthSource:
    """ETH3D DSLR: ``<scene>/images/dslr_images/X.JPG`` with the raw float32
    ``<scene>/ground_truth_depth/dslr_images/X.JPG`` (``height`` x ``width``, inf invalid)."""
    root = Path(root)
    samples, missing = [], []
    for rel in _files(root, "ETH3D"):
        parts = rel.split("/")
        if len(parts) >= 3 and parts[-3:-1] == ["images", "dslr_images"] and imageio.is_image_name(rel):
            depth_path = root.joinpath(*parts[:-3], "ground_truth_depth", "dslr_images", parts[-1])
            (samples if depth_path.is_file() else missing).append(Sample(root / rel, depth_path))
    if missing:
        raise _missing_error(root, [str(s.image_path) for s in missing], "ground_truth_depth file")
    low, high = _range("eth3d", min_depth, max_depth)
    return DepthSource("eth3d", _require(samples, root, "<scene>/images/dslr_images/*.JPG"),
                       partial(_read_eth3d_depth, height=height, width=width),
                       min_depth=low, max_depth=high, eval_crop=DATASET_CROPS["eth3d"])


# ----------------------------------------------------------------------------- pseudo-labels
def _read_pseudo_label(sample: Sample, store: LabelStore, min_confidence: float | None = None) -> DepthMap:
    values = np.asarray(store.read_label(sample.row), dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values) & (values > 0 if store.label_space == "metric_depth" else values >= 0)
    if min_confidence is not None:
        valid &= store.read_confidence(sample.row) >= min_confidence
    return np.where(valid, values, 0).astype(np.float32), valid


def label_store(root: str | os.PathLike, min_confidence: float | None = None) -> DepthSource:
    """Pseudo-labels written by ``pseudodepth label``: every ``ok`` row of the store's manifest.

    The targets are the teacher's disparity (already inverse depth), restored from the 16-bit PNG, or
    metres for a metric store (a metric teacher, or ``label --align-to``; 0 = invalid); pixels without
    a label (non-finite teacher output, DA3 sky) are invalid. ``min_confidence``
    (training config ``loss.confidence.min``) also makes pixels whose stored confidence is below it
    invalid, so they are dropped before the top-n% loss filter ranks the rest.
    """
    root = Path(root)
    store = LabelStore(root)
    rows = store.rows(status="ok")
    if min_confidence is not None and (bare := [r["source"] for r in rows if not r.get("confidence")]):
        raise SourceConfigError(f"{root}: {len(bare)} row(s) have no confidence map (e.g. {bare[0]!r}) but "
                                "loss.confidence.min is set; relabel with `pseudodepth label --confidence flip|scales "
                                "--overwrite`, or drop loss.confidence")
    samples = [Sample(store.source_path(row), store.label_path(row), row=row) for row in rows]
    if not samples:
        raise FileNotFoundError(f"{root}: the label store has no 'ok' rows; run `pseudodepth label --out {root}` first")
    values = "depth" if store.label_space == "metric_depth" else "disparity"
    return DepthSource(f"labels:{root}", samples, partial(_read_pseudo_label, store=store,
                                                          min_confidence=min_confidence),
                       kind="pseudo", min_depth=0.0, values=values)


# ----------------------------------------------------------------------------- config factory
SOURCE_TYPES: dict[str, Callable[..., DepthSource]] = {
    "folder": folder,
    "kitti": kitti,
    "vkitti2": vkitti2,
    "nyu_mat": nyu_mat,
    "hypersim": hypersim,
    "diode": diode,
    "sintel": sintel,
    "eth3d": eth3d,
    "label_store": label_store,
}
_PATH_KEYS = ("root", "image_root", "depth_root", "list_file", "path")


def make_source(spec: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> DepthSource:
    """Build a source from a config dict ``{"type": NAME, **constructor arguments}``.

    Unknown types and keys, and missing required keys, raise :class:`SourceConfigError` naming
    them. Relative paths are taken relative to ``base_dir`` (the config file's folder) when given.
    """
    if not isinstance(spec, Mapping):
        raise SourceConfigError(f"a data source must be a mapping with a 'type' key, got {spec!r}")
    arguments = dict(spec)
    kind = arguments.pop("type", None)
    if kind not in SOURCE_TYPES:
        raise SourceConfigError(f"data source type {kind!r} is unknown; 'type' must be one of {sorted(SOURCE_TYPES)}")
    parameters = inspect.signature(SOURCE_TYPES[kind]).parameters
    for key in arguments:
        if key not in parameters:
            raise SourceConfigError(f"data source {kind!r}: unknown key {key!r}; allowed keys: "
                                    f"type, {', '.join(parameters)}")
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in arguments]
    if missing:
        raise SourceConfigError(f"data source {kind!r}: missing required key(s) {', '.join(map(repr, missing))}")
    if base_dir is not None:
        for key in _PATH_KEYS:
            if isinstance(arguments.get(key), (str, os.PathLike)):
                arguments[key] = Path(base_dir) / arguments[key]
    return SOURCE_TYPES[kind](**arguments)
