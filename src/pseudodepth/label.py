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
import queue
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import infer
from .confidence import METHODS as CONFIDENCE_METHODS
from .confidence import FORMULA as CONFIDENCE_FORMULA
from .confidence import agreement
from .imageio import DEFAULT_MAX_PIXELS, ImageError, decode_rgb, list_files, safe_join
from .licences import licence_of, non_commercial_notice
from .models import fingerprint, load_model, model_info
from .preprocess import DEFAULT_INPUT_SIZE, prepare, upsample
from .store import LabelStore, StoreError, label_paths


@dataclass
class LabelSettings:
    """Everything that changes label values (part of the teacher fingerprint), and ``max_pixels``:
    images above it become failed rows without being decoded (it changes no label value)."""

    input_size: int | None = None  # None: the model's own (518; DA3: 504)
    precision: str = "fp32"
    tta: str | None = None
    keep_aspect: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: str = "lower_bound"  # set from the model by :func:`for_model`
    confidence: str | None = None  # "flip": a confidence map per label (:mod:`pseudodepth.confidence`)

    def as_dict(self) -> dict:
        out = {"input_size": self.input_size, "precision": self.precision, "tta": self.tta,
               "keep_aspect": self.keep_aspect, "resize": self.resize}
        return {**out, "confidence": self.confidence} if self.confidence else out

    def for_model(self, model) -> LabelSettings:
        """These settings with the model's preprocessing and default input size filled in."""
        resize = infer.resize_method(model)
        return replace(self, resize=resize, input_size=self.input_size or DEFAULT_INPUT_SIZE[resize])


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


def load_item(root: Path, rel: str, settings: LabelSettings) -> dict:
    """Read, hash, decode and preprocess one source. Never raises for bad images: returns an error item."""
    item = {"source": rel, "hash": "", "error": "", "height": 0, "width": 0, "pixels": None}
    try:
        data = safe_join(root, rel, follow_links=True).read_bytes()
    except (OSError, ValueError) as err:
        item["error"] = f"cannot read file: {err}"
        return item
    item["hash"] = hashlib.sha256(data).hexdigest()
    try:
        rgb = decode_rgb(data, rel, settings.max_pixels)
    except ImageError as err:
        item["error"] = err.reason
        return item
    item["height"], item["width"] = rgb.shape[:2]
    item["pixels"] = prepare(rgb, settings.input_size, settings.keep_aspect, settings.resize)
    return item


def predict_batch(model, x: torch.Tensor, settings: LabelSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network-resolution (disparity, confidence or None) for a batch, as both engines label it."""
    if settings.confidence != "flip":
        return infer.forward(model, x, settings.precision, settings.tta).cpu(), None
    a, b = infer.forward(model, torch.cat([x, x.flip(-1)]), settings.precision).cpu().chunk(2)
    b = b.flip(-1)
    disparity = 0.5 * (a + b) if settings.tta == "flip" else a
    return disparity, agreement(a, b)


def confidence_path(label: str) -> str:
    """``labels/a/b.png`` -> ``confidence/a/b.png`` (a tree mirroring the labels)."""
    return "confidence/" + label.split("/", 1)[1]


def finish_item(store: LabelStore, item: dict, label: str, disparity: torch.Tensor | None,
                teacher: str, align_corners: bool, confidence: torch.Tensor | None = None) -> dict:
    """Turn one processed item into a manifest row, writing its label (network-res disparity in) and
    its confidence map when given."""
    row = {"source": item["source"], "hash": item["hash"], "status": "failed", "error": item["error"],
           "height": item["height"], "width": item["width"], "label": "", "min": 0.0, "max": 0.0,
           "teacher": teacher, "invalid": 0, "confidence": ""}
    if disparity is None:
        return row
    size = (item["height"], item["width"])
    if confidence is not None:  # written first: a row never names a confidence map that is not there
        row["confidence"] = confidence_path(label)
        store.write_confidence(row["confidence"], upsample(confidence[None].float(), size, align_corners)[0].numpy())
    full = upsample(disparity[None].float(), size, align_corners)[0].numpy()
    lo, hi, invalid = store.write_label(label, full)
    row.update(status="ok", error="", label=label, min=lo, max=hi, invalid=invalid)
    return row


def store_meta(model_spec: str, model, settings: LabelSettings, images: Path) -> dict:
    """``store.json`` contents (besides the fingerprint): model SPEC, version, licence, settings, source folder."""
    meta = {"model": str(model_spec), "version": model_info(model).version, "licence": licence_of(model_spec),
            "settings": settings.as_dict(), "source_root": str(images)}
    if settings.confidence:
        meta["confidence"] = {"method": settings.confidence, "formula": CONFIDENCE_FORMULA}
    return meta


def announce_licence(meta: dict) -> None:
    """One line on stderr when the teacher's weights are non-commercial."""
    if notice := non_commercial_notice(meta["model"], meta["licence"]):
        print(notice, file=sys.stderr)


def plan(store: LabelStore, images: Path, teacher: str, meta: dict, overwrite: bool) -> tuple[list[str], dict, int]:
    """Open the store for this teacher and list the sources still to do: (todo, label path map, done count).

    The walk never enters the store itself nor any other folder pseudodepth wrote."""
    sources = list_files(images, exclude=(store.root,))
    store.open_for(teacher, meta, overwrite=overwrite)
    done = {r["source"] for r in store.rows()}
    todo = [s for s in sources if s not in done]
    labels = label_paths(sorted(set(sources) | done))
    return todo, labels, len(sources) - len(todo)


class _Sources(Dataset):
    def __init__(self, root: Path, rels: list[str], settings: LabelSettings):
        self.root, self.rels, self.settings = root, rels, settings

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> dict:
        return load_item(self.root, self.rels[i], self.settings)


class _Writer(threading.Thread):
    """Background writer: upsample, encode, write, commit rows. Errors are re-raised in the main thread."""

    def __init__(self, store: LabelStore, labels: dict, teacher: str, align_corners: bool, report: LabelReport,
                 progress):
        super().__init__(daemon=True)
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.args = (store, labels, teacher, align_corners)
        self.report, self.progress, self.error = report, progress, None

    def run(self) -> None:
        store, labels, teacher, align = self.args
        while (job := self.q.get()) is not None:
            if self.error is not None:
                continue
            try:
                rows = [finish_item(store, it, labels[it["source"]], d, teacher, align, c) for it, d, c in job]
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

    def put(self, job: list) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(job)

    def close(self) -> None:
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def label_folder(model_spec: str, images: str | Path, out: str | Path, *, batch_size: int = 4, workers: int = 2,
                 settings: LabelSettings | None = None, overwrite: bool = False, device: str = "cpu",
                 model=None, progress: bool = True, version: str | None = None) -> LabelReport:
    """Pseudo-label every file under ``images`` into the label store ``out``; resumes if interrupted."""
    settings = settings or LabelSettings()
    infer.check_settings(settings.precision, settings.tta)
    if batch_size < 1 or workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    images = Path(images).resolve()
    if settings.confidence not in (None, *CONFIDENCE_METHODS):
        raise ValueError(f"--confidence must be one of {CONFIDENCE_METHODS}, got {settings.confidence!r}")
    if settings.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {settings.max_pixels}")
    model = model if model is not None else load_model(model_spec, version=version, device=device)
    settings = settings.for_model(model)
    teacher = fingerprint(model, settings.as_dict())
    store = LabelStore(out)
    meta = store_meta(model_spec, model, settings, images)
    with store.writing():
        todo, labels, done = plan(store, images, teacher, meta, overwrite)
        announce_licence(meta)
        return _run(model, store, images, todo, labels, teacher, settings, batch_size, workers, progress,
                    LabelReport(skipped=done))


def _run(model, store: LabelStore, images: Path, todo: list[str], labels: dict, teacher: str,
         settings: LabelSettings, batch_size: int, workers: int, progress: bool, report: LabelReport) -> LabelReport:
    align = infer.align_corners(model)
    bar = tqdm(total=len(todo), desc="label", unit="img", disable=not progress, dynamic_ncols=True)
    writer = _Writer(store, labels, teacher, align, report, bar)
    writer.start()
    loader = DataLoader(_Sources(images, todo, settings), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    buckets: dict[tuple[int, int], list[dict]] = {}
    start = time.perf_counter()

    def run_bucket(key):
        items = buckets.pop(key)
        x = torch.from_numpy(np.stack([it["pixels"] for it in items]))
        out_batch, confidence = predict_batch(model, x, settings)
        writer.put(list(zip(items, out_batch, confidence if confidence is not None else [None] * len(items))))

    failed = True
    try:
        for item in loader:
            if item["pixels"] is None:
                writer.put([(item, None, None)])
                continue
            key = tuple(item["pixels"].shape[1:])
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
            try:
                store.consolidate()
            except StoreError:
                if not failed:
                    raise  # else the first error is the one to report; the journal keeps every row
    report.seconds = time.perf_counter() - start
    return report
