"""Pseudo-labelling an image folder into a label store (the local engine).

Pipeline, so that the model never waits::

    DataLoader workers (processes): read bytes -> sha256 -> decode -> official resize + normalise
    main thread:  bucket by network size (no padding) -> batched forward (fp32 / bf16 / fp16, flip TTA)
    writer thread: upsample to source size -> 16-bit PNG -> atomic write -> journal row

On a CPU with at least one worker per core the forward pass runs in the workers instead, on chunks of
``batch_size`` sources (batched by network size within a chunk), one thread each (``forward_in="workers"``):
a forward pass spread over all cores stalls whenever a decode worker or writer thread takes one of them,
while one per worker only waits for its own.

Resumable: sources with a row (ok or failed) are skipped, unless the source file changed since its row
was written (size or modification time differ from the row's and so does its sha256): those are
relabelled (:func:`plan`, counted in :attr:`LabelReport.relabelled`). A killed run loses at most the
batch in flight, never a committed row. The Ray engine (:mod:`pseudodepth.label_ray`) reuses
:func:`load_item`, :func:`plan` and :func:`finish_item` so both engines write identical labels.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import infer
from .align import AlignError, AlignSettings, align_to_sparse
from .confidence import FORMULAS as CONFIDENCE_FORMULAS
from .confidence import METHODS as CONFIDENCE_METHODS
from .confidence import agreement, second_input_size
from .da3 import METRIC_FOCAL_SCALE, FocalError, FocalSettings, check_focal, metres_from_disparity, network_focal
from .imageio import DEFAULT_MAX_PIXELS, ImageError, decode_rgb_reduced, list_images, safe_join
from .licences import licence_of, non_commercial_notice
from .models import fingerprint, load_model, max_depth_of, model_info, prediction_space
from .preprocess import DEFAULT_INPUT_SIZE, network_size, prepare, prepare_tensor, upsample
from .store import LabelStore, label_paths


@dataclass
class LabelSettings:
    """Everything that changes label values: part of the teacher fingerprint.

    ``max_depth`` loads the teacher as a metric model with that range (``--max-depth``); ``align``
    makes metric labels from a relative teacher and sparse metric depth (``--align-to``,
    :mod:`pseudodepth.align`); ``focal`` gives a DA3METRIC teacher its metres (``--focal-px`` /
    ``--intrinsics``, :class:`pseudodepth.da3.FocalSettings`). They are left out of the fingerprint when
    unset, so stores written before they existed keep their fingerprint. ``max_pixels``: images above it become failed rows
    without being decoded (it changes no label value).
    """

    input_size: int | None = None  # None: the model's own (518; DA3: 504)
    precision: str = "fp32"
    tta: str | None = None
    keep_aspect: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: str = "lower_bound"  # set from the model by :func:`for_model`
    confidence: str | None = None  # "flip" | "scales": a confidence map per label (:mod:`pseudodepth.confidence`)
    max_depth: float | None = None
    align: AlignSettings | None = None
    reduced_decode: bool = False  # JPEGs decoded at 1/2, 1/4 or 1/8 scale while >= the network size
    focal: FocalSettings | None = None  # DA3METRIC: metres = focal_net * output / 300

    def as_dict(self) -> dict:
        out = {"input_size": self.input_size, "precision": self.precision, "tta": self.tta,
               "keep_aspect": self.keep_aspect, "resize": self.resize}
        if self.confidence:
            out["confidence"] = self.confidence
        if self.max_depth is not None:
            out["max_depth"] = self.max_depth
        if self.align is not None:
            out["align"] = self.align.as_dict()
        if self.focal is not None:
            out["focal"] = self.focal.as_dict()
        if self.reduced_decode:  # only when on, so that stores labelled before it existed keep their fingerprint
            out["reduced_decode"] = True
        return out

    def label_space(self, model) -> str:
        """What the store will hold: ``"metric_depth"`` for a metric teacher, with ``align`` or ``focal``, else
        ``"disparity"``."""
        metric = self.align is not None or self.focal is not None or prediction_space(model) == "depth"
        return "metric_depth" if metric else "disparity"

    def check_teacher(self, model, spec) -> None:
        """Refuse, before any work, a DA3METRIC teacher with no metric scale (no focal length, no ``align``)
        and a focal length for any other teacher (:func:`pseudodepth.da3.check_focal`)."""
        check_focal(model_info(model).version, spec, self.focal, self.align is not None)

    def metric_scale(self, model) -> dict | None:
        """Where a metric store's metres come from (``store.json`` ``metric_scale``); None for relative stores."""
        if self.align is not None:
            return {"source": "sparse_alignment", "align_to": self.align.as_dict()["sparse_root"],
                    "formula": "per image a RANSAC least-squares fit y ~ scale * prediction + shift to the sparse "
                               "depth (y = 1/z for a disparity teacher, z for a depth teacher); manifest columns "
                               "scale, shift, inliers"}
        if self.focal is not None:
            return {"source": "focal_length", **self.focal.as_dict(),
                    "formula": "metres = focal_net_px * output / 300 (DA3METRIC), focal_net_px = (fx * net_w / w + "
                               "fy * net_h / h) / 2; manifest column scale = focal_net_px / 300, shift = 0"}
        if prediction_space(model) == "depth":
            return {"source": "model", "max_depth": max_depth_of(model),
                    "formula": "the metric model's own metres (sigmoid * max_depth)"}
        return None


    def for_model(self, model) -> LabelSettings:
        """These settings with the model's preprocessing and default input size filled in."""
        resize = infer.resize_method(model)
        return replace(self, resize=resize, input_size=self.input_size or DEFAULT_INPUT_SIZE[resize])


@dataclass
class LabelReport:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    relabelled: int = 0  # rows redone because their source file changed since they were written
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files without an image extension: not inputs

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def count(self, rows: list[dict]) -> None:
        """Add committed manifest rows: ``ok`` ones, and ``failed`` ones with their one-line reasons."""
        for r in rows:
            if r["status"] == "ok":
                self.ok += 1
            else:
                self.failed += 1
                self.failures.append(f"{r['source']}: {r['error']}")

    def summary(self) -> str:
        ignored = ""
        if self.ignored:
            names = ", ".join(self.ignored[:3]) + (", ..." if len(self.ignored) > 3 else "")
            ignored = f", {len(self.ignored)} non-image file{'s' * (len(self.ignored) > 1)} ignored ({names})"
        changed = f", {self.relabelled} relabelled (source changed since labelled)" if self.relabelled else ""
        return (f"labelled {self.ok} ok, {self.failed} failed, {self.skipped} already done{changed}{ignored}; "
                f"{self.images_per_second:.2f} images/s over {self.seconds:.1f} s")


def load_item(root: Path, rel: str, settings: LabelSettings, resize: bool = True) -> dict:
    """Read, hash, decode and preprocess one source. Never raises for bad images: returns an error item.

    ``resize=True``: ``pixels`` is the official float32 network input (CPU, float64 OpenCV resize).
    ``resize=False``: ``pixels`` is the decoded uint8 RGB, resized later on the model's device
    (:func:`pseudodepth.preprocess.prepare_tensor`). ``size`` is the network (height, width) either way.
    With ``--confidence scales``, ``pixels2`` / ``size2`` are the same at the second input size
    (:func:`pseudodepth.confidence.second_input_size`; ``pixels2`` is None when ``resize=False``).
    ``bytes`` / ``mtime_ns``: the file's size and modification time (-1 when it cannot be read).
    """
    item = {"source": rel, "hash": "", "error": "", "height": 0, "width": 0, "pixels": None, "size": (0, 0),
            "pixels2": None, "size2": (0, 0), "bytes": -1, "mtime_ns": -1}
    try:
        path = safe_join(root, rel, follow_links=True)
        stat = path.stat()  # before reading: a file changed after this is caught by the next resume
        data = path.read_bytes()
    except (OSError, ValueError) as err:
        item["error"] = f"cannot read file: {err}"
        return item
    item["hash"] = hashlib.sha256(data).hexdigest()
    item["bytes"], item["mtime_ns"] = stat.st_size, stat.st_mtime_ns
    scales = settings.confidence == "scales"
    size2 = second_input_size(settings.input_size) if scales else None

    def net(h: int, w: int) -> tuple[int, int]:
        return network_size(h, w, settings.input_size, settings.keep_aspect)

    def net2(h: int, w: int) -> tuple[int, int]:
        return network_size(h, w, size2, settings.keep_aspect)

    try:
        reduce = settings.reduced_decode and settings.resize == "lower_bound"  # DA3 decodes in full
        # with scales, never decode below the larger (second) network size
        rgb, (h, w) = decode_rgb_reduced(data, rel, (net2 if scales else net) if reduce else None, settings.max_pixels)
    except ImageError as err:
        item["error"] = err.reason
        return item
    item["height"], item["width"] = h, w
    if settings.resize != "lower_bound":  # DA3: its own resize, always in the workers
        item["pixels"] = prepare(rgb, settings.input_size, settings.keep_aspect, settings.resize)
        item["size"] = tuple(item["pixels"].shape[1:])
        if scales:
            item["pixels2"] = prepare(rgb, size2, settings.keep_aspect, settings.resize)
            item["size2"] = tuple(item["pixels2"].shape[1:])
        return item
    item["size"] = net(h, w)
    if scales:
        item["size2"] = net2(h, w)
    if not resize:
        item["pixels"] = np.require(rgb, requirements="W")
        return item
    item["pixels"] = prepare(rgb, size=item["size"])
    if scales:
        item["pixels2"] = prepare(rgb, size=item["size2"])
    return item


def predict_batch(model, x: torch.Tensor, settings: LabelSettings,
                  x2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network-resolution (disparity, confidence or None) for a batch, as both engines label it.

    ``x2``: the same images at the second input size (``--confidence scales``, :mod:`pseudodepth.confidence`).
    """
    if settings.confidence == "flip":
        a, b = infer.forward(model, torch.cat([x, x.flip(-1)]), settings.precision).cpu().chunk(2)
        b = b.flip(-1)
        disparity = 0.5 * (a + b) if settings.tta == "flip" else a
        return disparity, agreement(a, b)
    disparity = infer.forward(model, x, settings.precision, settings.tta)
    if settings.confidence != "scales":
        return disparity.cpu(), None
    if x2 is None:
        raise ValueError("--confidence scales needs the images at the second input size (x2)")
    second = infer.forward(model, x2, settings.precision, settings.tta)
    second = upsample(second, tuple(disparity.shape[-2:]), infer.align_corners(model))
    return disparity.cpu(), agreement(disparity, second)


def confidence_path(label: str) -> str:
    """``labels/a/b.png`` -> ``confidence/a/b.png`` (a tree mirroring the labels)."""
    return "confidence/" + label.split("/", 1)[1]


def finish_item(store: LabelStore, item: dict, label: str, prediction: torch.Tensor | None,
                teacher: str, align_corners: bool, settings: LabelSettings | None = None,
                space: str = "disparity", confidence: torch.Tensor | None = None) -> dict:
    """Turn one processed item into a manifest row, writing its label (network-res prediction in) and
    its confidence map when given.

    ``space`` is what the teacher predicts (``"disparity"`` or metric ``"depth"``). With
    ``settings.align`` the prediction is aligned to the image's sparse metric depth and the label
    holds metres; an image whose alignment fails becomes a failed row with the reason. With
    ``settings.focal`` (DA3METRIC) the prediction becomes metres from the image's focal length
    (``scale = focal_net / 300`` in the row); an image without one becomes a failed row.
    """
    row = {"source": item["source"], "hash": item["hash"], "status": "failed", "error": item["error"],
           "height": item["height"], "width": item["width"], "label": "", "min": 0.0, "max": 0.0,
           "teacher": teacher, "invalid": 0, "confidence": "", "scale": None, "shift": None, "inliers": None,
           "bytes": None if item.get("bytes", -1) < 0 else int(item["bytes"]),
           "mtime_ns": None if item.get("mtime_ns", -1) < 0 else int(item["mtime_ns"])}
    if prediction is None:
        return row
    size = (item["height"], item["width"])
    focal = settings.focal if settings is not None else None
    if focal is not None:  # DA3METRIC: metres at the network size (DA3 predictions always arrive at it)
        try:
            fx, fy = focal.for_image(item["source"])
        except FocalError as err:
            row["error"] = f"metric scale: {err}"
            return row
        focal_net = network_focal(fx, fy, size, tuple(prediction.shape[-2:]))
        prediction, space = metres_from_disparity(prediction, focal_net), "depth"
        row.update(scale=focal_net / METRIC_FOCAL_SCALE, shift=0.0)
    full = upsample(prediction[None].float(), size, align_corners)[0].numpy()
    align = settings.align if settings is not None else None
    if align is not None:
        try:
            full, fit = align_to_sparse(full, item["source"], space, align)
        except AlignError as err:
            row["error"] = f"metric alignment: {err}"
            return row
        row.update(scale=fit.scale, shift=fit.shift, inliers=fit.n_inliers)
    if confidence is not None:  # written first: a row never names a confidence map that is not there
        row["confidence"] = confidence_path(label)
        store.write_confidence(row["confidence"], upsample(confidence[None].float(), size, align_corners)[0].numpy())
    metric = align is not None or space == "depth"
    lo, hi, invalid = store.write_label(label, full, "metric_depth" if metric else "disparity")
    row.update(status="ok", error="", label=label, min=lo, max=hi, invalid=invalid)
    return row


def store_meta(model_spec: str, model, settings: LabelSettings, images: Path) -> dict:
    """``store.json`` contents (besides the fingerprint): model SPEC, version, licence, settings, source folder."""
    meta = {"model": str(model_spec), "version": model_info(model).version, "licence": licence_of(model_spec),
            "settings": settings.as_dict(), "source_root": str(images),
            "labels": settings.label_space(model), "prediction": prediction_space(model)}
    if (scale := settings.metric_scale(model)) is not None:
        meta["metric_scale"] = scale
    if settings.confidence:
        meta["confidence"] = {"method": settings.confidence, "formula": CONFIDENCE_FORMULAS[settings.confidence]}
    return meta


def announce_licence(meta: dict) -> None:
    """One line on stderr when the teacher's weights are non-commercial."""
    if notice := non_commercial_notice(meta["model"], meta["licence"]):
        print(notice, file=sys.stderr)


def check_source(images: Path, row: dict) -> tuple[bool, dict | None]:
    """Whether a row's source file changed since the row was written, and the row with the file's current
    size and modification time when only those changed (to record, so the next run need not hash it again).

    Changed: its size or modification time differ from the row's (or the row predates those columns)
    and its sha256 differs from the row's ``hash``. A file that is gone or unreadable counts as
    unchanged (there is nothing to relabel it from)."""
    try:
        path = safe_join(images, row["source"], follow_links=True)
        stat = path.stat()
        if (row.get("bytes"), row.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            return False, None
        if hashlib.sha256(path.read_bytes()).hexdigest() != row["hash"]:
            return True, None
    except (OSError, ValueError):
        return False, None
    return False, {**row, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def plan(store: LabelStore, images: Path, teacher: str, meta: dict,
         overwrite: bool) -> tuple[list[str], dict, LabelReport]:
    """Open the store for this teacher and list the sources still to do: (todo, label path map, the report
    to fill, which counts the done and relabelled rows and names the non-image files left out).

    Sources are the files with an image extension (a corrupt one becomes a failed row; a ``README.md``
    is no input). Sources without a row are to do, and so are those whose file changed since their row
    was written (:func:`check_source`; their new row replaces the old one). The walk never enters the
    store itself nor any other folder pseudodepth wrote."""
    sources, others = list_images(images, exclude=(store.root,))
    store.open_for(teacher, meta, overwrite=overwrite)
    rows = {r["source"]: r for r in store.rows()}
    changed, refreshed = set(), []
    for s in sources:
        if s in rows:
            is_changed, refresh = check_source(images, rows[s])
            if is_changed:
                changed.add(s)
            elif refresh is not None:
                refreshed.append(refresh)
    store.append(refreshed)  # same bytes, new size/time recorded: not hashed again next time
    todo = [s for s in sources if s not in rows or s in changed]
    labels = label_paths(sorted(set(sources) | set(rows)))
    return todo, labels, LabelReport(skipped=len(sources) - len(todo), relabelled=len(changed), ignored=others)


class _Sources(Dataset):
    """The sources to label, one item each (:func:`load_item`). With ``model`` (``--forward-in workers``) the
    DataLoader asks for chunks of sources (``__getitems__``): the worker loads them, runs the forward pass
    on each group of equal network size and hands back network-resolution disparities (and confidences)
    instead of the inputs."""

    def __init__(self, root: Path, rels: list[str], settings: LabelSettings, resize: bool, model=None):
        self.root, self.rels, self.settings, self.resize, self.model = root, rels, settings, resize, model

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> dict:
        return load_item(self.root, self.rels[i], self.settings, self.resize)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        items = [self[i] for i in indices]
        groups: dict[tuple, list[dict]] = {}
        for item in items:
            if item["pixels"] is not None:
                groups.setdefault(batch_key(item), []).append(item)
        for group in groups.values():
            disparities, confidences, _ = run_batch(self.model, group, self.settings, on_device=False)
            for item, disparity, confidence in zip(group, disparities, confidences):
                item["pixels"] = item["pixels2"] = None
                item["disparity"], item["confidence"] = disparity, confidence
        return items


def batch_key(item: dict) -> tuple:
    """Items with equal keys share one forward pass: both network sizes (``--confidence scales`` has two)."""
    return tuple(item["size"]), tuple(item["size2"])


def _as_list(items: list[dict]) -> list[dict]:
    """DataLoader ``collate_fn`` for ``--forward-in workers``: a chunk stays a list of items."""
    return items


class _Writer(threading.Thread):
    """Labels off the critical path: a pool of threads upsamples, encodes and writes (OpenCV and torch release
    the GIL); this thread commits the rows in order. Errors are re-raised in the main thread."""

    def __init__(self, store: LabelStore, labels: dict, teacher: str, align_corners: bool, report: LabelReport,
                 progress, settings: LabelSettings, space: str, threads: int = 1):
        super().__init__(daemon=True)
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="label-writer")
        self.args = (store, labels, teacher, align_corners)
        self.settings, self.space = settings, space
        self.report, self.progress, self.error = report, progress, None

    def _finish(self, item: dict, disparity, confidence, done) -> dict:
        if done is not None:
            done.synchronize()  # the non-blocking device -> host copy of this batch has landed
        store, labels, teacher, align = self.args
        return finish_item(store, item, labels[item["source"]], disparity, teacher, align, self.settings, self.space,
                           confidence)

    def run(self) -> None:
        store = self.args[0]
        while (futures := self.q.get()) is not None:
            if self.error is not None:
                continue
            try:
                rows = [f.result() for f in futures]
                store.append(rows)
                self.report.count(rows)
                self.progress.update(len(rows))
            except BaseException as err:  # noqa: BLE001 - surfaced by put()/close()
                self.error = err

    def put(self, job: list, done=None) -> None:
        """Queue (item, disparity, confidence or None) triples; ``done`` is a CUDA event to wait for before
        reading the disparities."""
        if self.error is not None:
            raise self.error
        self.q.put([self.pool.submit(self._finish, it, d, c, done) for it, d, c in job])

    def close(self) -> None:
        self.q.put(None)
        self.join()
        self.pool.shutdown()
        if self.error is not None:
            raise self.error


def _to_device(array, device: torch.device) -> torch.Tensor:
    """Host array (the DataLoader hands tensors) -> tensor on ``device``: pinned memory + non-blocking copy on a GPU."""
    t = torch.as_tensor(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def run_batch(model, items: list[dict], settings: LabelSettings, on_device: bool, align_corners: bool = True):
    """One batch of equal network size(s) -> (disparities, confidences (None each without --confidence),
    CUDA event or None).

    Standard path: stacked CPU-prepared inputs, network-resolution disparities (the writer upsamples).
    ``on_device``: uint8 images go to the model's device, are resized and normalised there, and the
    disparities come back at source resolution by a non-blocking copy (wait for the event before use);
    with ``--confidence`` the disparities and confidences come back at network resolution (the
    confidence needs them on the CPU anyway) and the writer upsamples them.
    """
    device = next(model.parameters()).device
    if not on_device:
        x = _to_device(torch.stack([torch.as_tensor(it["pixels"]) for it in items]), device)
        x2 = None
        if settings.confidence == "scales":
            x2 = _to_device(torch.stack([torch.as_tensor(it["pixels2"]) for it in items]), device)
        disparity, confidence = predict_batch(model, x, settings, x2)
        return list(disparity), list(confidence) if confidence is not None else [None] * len(items), None
    size = items[0]["size"]
    rgb = [_to_device(it["pixels"], device) for it in items]
    x = torch.stack([prepare_tensor(im, size) for im in rgb])
    if settings.confidence:
        x2 = torch.stack([prepare_tensor(im, items[0]["size2"]) for im in rgb]) if settings.confidence == "scales" \
            else None
        disparity, confidence = predict_batch(model, x, settings, x2)
        return list(disparity), list(confidence), None
    out = infer.forward(model, x, settings.precision, settings.tta)
    full = []
    for it, d in zip(items, out):
        up = upsample(d[None], (it["height"], it["width"]), align_corners)[0]
        host = torch.empty(up.shape, dtype=up.dtype, pin_memory=device.type == "cuda")
        full.append(host.copy_(up, non_blocking=device.type == "cuda"))
    done = None
    if device.type == "cuda":
        done = torch.cuda.Event()
        done.record()
    return full, [None] * len(items), done


FORWARD_IN = ("main", "workers")


def check_forward_in(forward_in: str | None, model, workers: int, compile: bool, resize_on: str) -> str:
    """``forward_in`` resolved (None: the default for this model and these settings); an impossible choice
    fails before any work."""
    cpu = next(model.parameters()).device.type == "cpu"
    if forward_in is None:  # the workers can keep every core busy, one thread each
        enough = workers >= (os.cpu_count() or 1)
        return "workers" if cpu and enough and not compile and resize_on == "worker" else "main"
    if forward_in not in FORWARD_IN:
        raise ValueError(f"--forward-in must be one of {FORWARD_IN}, got {forward_in!r}")
    if forward_in == "workers" and (not cpu or workers < 1 or compile or resize_on != "worker"):
        raise ValueError("--forward-in workers needs a model on the CPU, --workers >= 1, no --compile and "
                         "--resize-on worker; use --forward-in main")
    return forward_in


def label_folder(model_spec: str, images: str | Path, out: str | Path, *, batch_size: int = 4, workers: int = 2,
                 settings: LabelSettings | None = None, overwrite: bool = False, device: str = "cpu",
                 model=None, progress: bool = True, version: str | None = None, compile: bool = False,
                 resize_on: str | None = None, writer_threads: int | None = None,
                 forward_in: str | None = None) -> LabelReport:
    """Pseudo-label every file under ``images`` into the label store ``out``; resumes if interrupted.

    ``resize_on``: ``"worker"`` (the official float64 resize in the decode workers; default on CPU) or
    ``"device"`` (uint8 images resized on the model's device, labels upsampled there; default on a GPU
    for V1/V2 teachers). DA3 teachers resize in the workers (their OpenCV area/cubic preprocessing has
    no device version): ``resize_on="device"`` with one is refused.
    ``compile``: ``torch.compile`` the model (one compilation per network size). ``writer_threads``:
    threads that upsample, encode and write labels (default: half the CPUs, at most 8).
    ``forward_in``: ``"workers"`` (each decode worker also runs the forward pass on its chunk of images, on
    one thread: the default for a model on the CPU when ``workers`` >= the number of CPUs) or ``"main"``
    (batches of equal network size in the main process, on every thread: the default otherwise, on a GPU,
    with ``compile`` and with ``resize_on="device"``). Same labels either way, up to the order of the sums
    in the forward pass. One thread per worker because GNU OpenMP cannot run a parallel region in a
    process forked from one that already ran one (the worker would wait for ever).
    """
    settings = settings or LabelSettings()
    infer.check_settings(settings.precision, settings.tta)
    if batch_size < 1 or workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    if resize_on not in (None, "worker", "device"):
        raise ValueError(f"resize_on must be 'worker' or 'device', got {resize_on!r}")
    if settings.align is not None:
        settings.align.check()
    if settings.focal is not None:
        settings.focal.check()
    images = Path(images).resolve()
    if settings.confidence not in (None, *CONFIDENCE_METHODS):
        raise ValueError(f"--confidence must be one of {CONFIDENCE_METHODS}, got {settings.confidence!r}")
    if settings.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {settings.max_pixels}")
    model = model if model is not None else load_model(model_spec, version=version, device=device,
                                                         max_depth=settings.max_depth)
    settings.check_teacher(model, model_spec)
    settings = settings.for_model(model)
    if resize_on == "device" and settings.resize != "lower_bound":
        raise ValueError(f"--resize-on device: {model_spec} is a Depth Anything 3 teacher, whose preprocessing "
                         "(OpenCV area/cubic resizes of the uint8 image) runs in the decode workers only; use "
                         "--resize-on worker (the default for DA3)")
    if resize_on is None:
        resize_on = "device" if torch.device(device).type == "cuda" and settings.resize == "lower_bound" else "worker"
    forward_in = check_forward_in(forward_in, model, workers, compile, resize_on)
    teacher = fingerprint(model, settings.as_dict())
    store = LabelStore(out)
    meta = store_meta(model_spec, model, settings, images)
    with store.writing():
        todo, labels, report = plan(store, images, teacher, meta, overwrite)
        announce_licence(meta)
        return _run(model, store, images, todo, labels, teacher, settings, batch_size, workers, progress,
                    report, compile, resize_on, writer_threads, forward_in)


def _run(model, store: LabelStore, images: Path, todo: list[str], labels: dict, teacher: str,
         settings: LabelSettings, batch_size: int, workers: int, progress: bool, report: LabelReport,
         compile: bool = False, resize_on: str = "worker", writer_threads: int | None = None,
         forward_in: str = "main") -> LabelReport:
    align = infer.align_corners(model)
    space = prediction_space(model)
    model = infer.fast_layout(model, settings.precision)
    if compile:
        model = torch.compile(model)
    on_device = resize_on == "device"  # label_folder refused it for DA3 (its own resize runs in the workers)
    in_workers = forward_in == "workers"
    bar = tqdm(total=len(todo), desc="label", unit="img", disable=not progress, dynamic_ncols=True)
    threads = writer_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
    writer = _Writer(store, labels, teacher, align, report, bar, settings, space, threads)
    writer.start()
    sources = _Sources(images, todo, settings, resize=not on_device, model=model if in_workers else None)
    chunks = {"batch_size": batch_size, "collate_fn": _as_list, "prefetch_factor": 2} if in_workers else \
        {"batch_size": None, "prefetch_factor": 4 if workers else None}
    loader = DataLoader(sources, num_workers=workers, persistent_workers=False, **chunks)
    buckets: dict[tuple[int, int], list[dict]] = {}
    start = time.perf_counter()

    def run_bucket(key):
        items = buckets.pop(key)
        disparities, confidences, event = run_batch(model, items, settings, on_device, align)
        writer.put(list(zip(items, disparities, confidences)), event)

    failed = True
    try:
        for item in loader:
            if in_workers:  # a chunk of items labelled there (or failed)
                writer.put([(it, it.pop("disparity", None), it.pop("confidence", None)) for it in item])
                continue
            if item["pixels"] is None:
                writer.put([(item, None, None)])
                continue
            key = batch_key(item)
            buckets.setdefault(key, []).append(item)
            if len(buckets[key]) >= batch_size:
                run_bucket(key)
            elif sum(map(len, buckets.values())) >= 4 * batch_size:  # many shapes: bound memory
                run_bucket(max(buckets, key=lambda k: len(buckets[k])))
        for key in list(buckets):
            run_bucket(key)
        failed = False
    finally:
        try:
            writer.close()
        finally:
            bar.close()
            store.finish(failed)
    report.seconds = time.perf_counter() - start
    return report
