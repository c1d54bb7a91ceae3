"""Pseudo-labelling an image folder into a label store (the local engine).

Pipeline, so that the model never waits::

    DataLoader workers (processes): read bytes -> sha256 -> decode -> official resize + normalise
    main thread:  bucket by network size (no padding) -> batched forward (fp32 / bf16 / fp16, flip TTA)
    writer thread: upsample to source size -> 16-bit PNG -> atomic write -> journal row

Resumable: sources with a row (ok or failed) are skipped; a killed run loses at most the batch in
flight, never a committed row. The Ray engine (:mod:`pseudodepth.label_ray`) reuses
:func:`load_item`, :func:`plan` and :func:`finish_item` so both engines write identical labels.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import infer
from .align import AlignError, AlignSettings, align_to_sparse
from .imageio import ImageError, decode_rgb_reduced, list_files, safe_join
from .models import fingerprint, load_model, model_info, prediction_space
from .preprocess import network_size, prepare, prepare_tensor, upsample
from .store import LabelStore, label_paths


@dataclass
class LabelSettings:
    """Everything that changes label values: part of the teacher fingerprint.

    ``max_depth`` loads the teacher as a metric model with that range (``--max-depth``); ``align``
    makes metric labels from a relative teacher and sparse metric depth (``--align-to``,
    :mod:`pseudodepth.align`). Both are left out of the fingerprint when unset, so stores written
    before they existed keep their fingerprint.
    """

    input_size: int = 518
    precision: str = "fp32"
    tta: str | None = None
    keep_aspect: bool = True
    max_depth: float | None = None
    align: AlignSettings | None = None
    reduced_decode: bool = False  # JPEGs decoded at 1/2, 1/4 or 1/8 scale while >= the network size

    def as_dict(self) -> dict:
        out = {"input_size": self.input_size, "precision": self.precision, "tta": self.tta,
               "keep_aspect": self.keep_aspect}
        if self.max_depth is not None:
            out["max_depth"] = self.max_depth
        if self.align is not None:
            out["align"] = self.align.as_dict()
        if self.reduced_decode:  # only when on, so that stores labelled before it existed keep their fingerprint
            out["reduced_decode"] = True
        return out

    def label_space(self, model) -> str:
        """What the store will hold: ``"metric_depth"`` for a metric teacher or with ``align``, else ``"disparity"``."""
        return "metric_depth" if self.align is not None or prediction_space(model) == "depth" else "disparity"


def store_meta(model_spec: str, settings: LabelSettings, images: Path, model) -> dict:
    """``store.json`` of a labelling run (both engines)."""
    return {"model": str(model_spec), "settings": settings.as_dict(), "source_root": str(images),
            "labels": settings.label_space(model), "prediction": prediction_space(model)}


@dataclass
class LabelReport:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"labelled {self.ok} ok, {self.failed} failed, {self.skipped} already done; "
                f"{self.images_per_second:.2f} images/s over {self.seconds:.1f} s")


def load_item(root: Path, rel: str, settings: LabelSettings, resize: bool = True) -> dict:
    """Read, hash, decode and preprocess one source. Never raises for bad images: returns an error item.

    ``resize=True``: ``pixels`` is the official float32 network input (CPU, float64 OpenCV resize).
    ``resize=False``: ``pixels`` is the decoded uint8 RGB, resized later on the model's device
    (:func:`pseudodepth.preprocess.prepare_tensor`). ``size`` is the network (height, width) either way.
    """
    item = {"source": rel, "hash": "", "error": "", "height": 0, "width": 0, "pixels": None, "size": (0, 0)}
    try:
        data = safe_join(root, rel).read_bytes()
    except (OSError, ValueError) as err:
        item["error"] = f"cannot read file: {err}"
        return item
    item["hash"] = hashlib.sha256(data).hexdigest()

    def net(h: int, w: int) -> tuple[int, int]:
        return network_size(h, w, settings.input_size, settings.keep_aspect)

    try:
        rgb, (h, w) = decode_rgb_reduced(data, rel, net if settings.reduced_decode else None)
    except ImageError as err:
        item["error"] = err.reason
        return item
    item["height"], item["width"], item["size"] = h, w, net(h, w)
    item["pixels"] = prepare(rgb, size=item["size"]) if resize else np.require(rgb, requirements="W")
    return item


def finish_item(store: LabelStore, item: dict, label: str, prediction: torch.Tensor | None,
                teacher: str, align_corners: bool, settings: LabelSettings | None = None,
                space: str = "disparity") -> dict:
    """Turn one processed item into a manifest row, writing its label (network-res prediction in).

    ``space`` is what the teacher predicts (``"disparity"`` or metric ``"depth"``). With
    ``settings.align`` the prediction is aligned to the image's sparse metric depth and the label
    holds metres; an image whose alignment fails becomes a failed row with the reason.
    """
    row = {"source": item["source"], "hash": item["hash"], "status": "failed", "error": item["error"],
           "height": item["height"], "width": item["width"], "label": "", "min": 0.0, "max": 0.0,
           "teacher": teacher, "scale": None, "shift": None, "inliers": None}
    if prediction is None:
        return row
    full = upsample(prediction[None].float(), (item["height"], item["width"]), align_corners)[0].numpy()
    align = settings.align if settings is not None else None
    if align is not None:
        try:
            full, fit = align_to_sparse(full, item["source"], space, align)
        except AlignError as err:
            row["error"] = f"metric alignment: {err}"
            return row
        row.update(scale=fit.scale, shift=fit.shift, inliers=fit.n_inliers)
    metric = align is not None or space == "depth"
    lo, hi = store.write_label(label, full, "metric_depth" if metric else "disparity")
    row.update(status="ok", error="", label=label, min=lo, max=hi)
    return row


def plan(store: LabelStore, images: Path, teacher: str, meta: dict, overwrite: bool) -> tuple[list[str], dict, int]:
    """Open the store for this teacher and list the sources still to do: (todo, label path map, done count)."""
    sources = list_files(images)
    store.open_for(teacher, meta, overwrite=overwrite)
    done = {r["source"] for r in store.rows()}
    todo = [s for s in sources if s not in done]
    labels = label_paths(sorted(set(sources) | done))
    return todo, labels, len(sources) - len(todo)


class _Sources(Dataset):
    def __init__(self, root: Path, rels: list[str], settings: LabelSettings, resize: bool):
        self.root, self.rels, self.settings, self.resize = root, rels, settings, resize

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> dict:
        return load_item(self.root, self.rels[i], self.settings, self.resize)


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

    def _finish(self, item: dict, disparity, done) -> dict:
        if done is not None:
            done.synchronize()  # the non-blocking device -> host copy of this batch has landed
        store, labels, teacher, align = self.args
        return finish_item(store, item, labels[item["source"]], disparity, teacher, align, self.settings, self.space)

    def run(self) -> None:
        store = self.args[0]
        while (futures := self.q.get()) is not None:
            if self.error is not None:
                continue
            try:
                rows = [f.result() for f in futures]
                store.append(rows)
                for r in rows:
                    if r["status"] == "ok":
                        self.report.ok += 1
                    else:
                        self.report.failed += 1
                        self.report.failures.append(f"{r['source']}: {r['error']}")
                self.progress.update(len(rows))
            except BaseException as err:  # noqa: BLE001 - surfaced by put()/close()
                self.error = err

    def put(self, job: list, done=None) -> None:
        """Queue (item, disparity) pairs; ``done`` is a CUDA event to wait for before reading the disparities."""
        if self.error is not None:
            raise self.error
        self.q.put([self.pool.submit(self._finish, it, d, done) for it, d in job])

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
    """One batch of equal network size -> (disparities, CUDA event or None).

    Standard path: stacked CPU-prepared inputs, network-resolution disparities (the writer upsamples).
    ``on_device``: uint8 images go to the model's device, are resized and normalised there, and the
    disparities come back at source resolution by a non-blocking copy (wait for the event before use).
    """
    device = next(model.parameters()).device
    if not on_device:
        x = _to_device(torch.stack([torch.as_tensor(it["pixels"]) for it in items]), device)
        return list(infer.forward(model, x, settings.precision, settings.tta).cpu()), None
    size = items[0]["size"]
    x = torch.stack([prepare_tensor(_to_device(it["pixels"], device), size) for it in items])
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
    return full, done


def label_folder(model_spec: str, images: str | Path, out: str | Path, *, batch_size: int = 4, workers: int = 2,
                 settings: LabelSettings | None = None, overwrite: bool = False, device: str = "cpu",
                 model=None, progress: bool = True, compile: bool = False, resize_on: str | None = None,
                 writer_threads: int | None = None) -> LabelReport:
    """Pseudo-label every file under ``images`` into the label store ``out``; resumes if interrupted.

    ``resize_on``: ``"worker"`` (the official float64 resize in the decode workers; default on CPU) or
    ``"device"`` (uint8 images resized on the model's device, labels upsampled there; default on a GPU).
    ``compile``: ``torch.compile`` the model (one compilation per network size). ``writer_threads``:
    threads that upsample, encode and write labels (default: half the CPUs, at most 8).
    """
    settings = settings or LabelSettings()
    infer.check_settings(settings.precision, settings.tta)
    if batch_size < 1 or workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    resize_on = resize_on or ("device" if torch.device(device).type == "cuda" else "worker")
    if resize_on not in ("worker", "device"):
        raise ValueError(f"resize_on must be 'worker' or 'device', got {resize_on!r}")
    if settings.align is not None:
        settings.align.check()
    images = Path(images).resolve()
    model = model if model is not None else load_model(model_spec, device=device, max_depth=settings.max_depth)
    teacher = fingerprint(model, settings.as_dict())
    store = LabelStore(out)
    todo, labels, done = plan(store, images, teacher, store_meta(model_spec, settings, images, model), overwrite)
    report = LabelReport(skipped=done)
    align = model_info(model).version == "v2"
    space = prediction_space(model)
    if compile:
        model = torch.compile(model)
    on_device = resize_on == "device"
    bar = tqdm(total=len(todo), desc="label", unit="img", disable=not progress, dynamic_ncols=True)
    threads = writer_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
    writer = _Writer(store, labels, teacher, align, report, bar, settings, space, threads)
    writer.start()
    loader = DataLoader(_Sources(images, todo, settings, resize=not on_device), batch_size=None,
                        num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False)
    buckets: dict[tuple[int, int], list[dict]] = {}
    start = time.perf_counter()

    def run_bucket(key):
        items = buckets.pop(key)
        disparities, event = run_batch(model, items, settings, on_device, align)
        writer.put(list(zip(items, disparities)), event)

    try:
        for item in loader:
            if item["pixels"] is None:
                writer.put([(item, None)])
                continue
            key = tuple(item["size"])
            buckets.setdefault(key, []).append(item)
            if len(buckets[key]) >= batch_size:
                run_bucket(key)
            elif sum(map(len, buckets.values())) >= 4 * batch_size:  # many shapes: bound memory
                run_bucket(max(buckets, key=lambda k: len(buckets[k])))
        for key in list(buckets):
            run_bucket(key)
    finally:
        writer.close()
        bar.close()
        store.consolidate()
    report.seconds = time.perf_counter() - start
    return report
