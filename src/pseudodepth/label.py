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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import infer
from .align import AlignError, AlignSettings, align_to_sparse
from .imageio import ImageError, decode_rgb, list_files, safe_join
from .models import fingerprint, load_model, model_info, prediction_space
from .preprocess import prepare, upsample
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

    def as_dict(self) -> dict:
        out = {"input_size": self.input_size, "precision": self.precision, "tta": self.tta,
               "keep_aspect": self.keep_aspect}
        if self.max_depth is not None:
            out["max_depth"] = self.max_depth
        if self.align is not None:
            out["align"] = self.align.as_dict()
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


def load_item(root: Path, rel: str, settings: LabelSettings) -> dict:
    """Read, hash, decode and preprocess one source. Never raises for bad images: returns an error item."""
    item = {"source": rel, "hash": "", "error": "", "height": 0, "width": 0, "pixels": None}
    try:
        data = safe_join(root, rel).read_bytes()
    except (OSError, ValueError) as err:
        item["error"] = f"cannot read file: {err}"
        return item
    item["hash"] = hashlib.sha256(data).hexdigest()
    try:
        rgb = decode_rgb(data, rel)
    except ImageError as err:
        item["error"] = err.reason
        return item
    item["height"], item["width"] = rgb.shape[:2]
    item["pixels"] = prepare(rgb, settings.input_size, settings.keep_aspect)
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
    def __init__(self, root: Path, rels: list[str], settings: LabelSettings):
        self.root, self.rels, self.settings = root, rels, settings

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> dict:
        return load_item(self.root, self.rels[i], self.settings)


class _Writer(threading.Thread):
    """Background writer: upsample, encode, write, commit rows. Errors are re-raised in the main thread."""

    def __init__(self, store: LabelStore, labels: dict, teacher: str, align_corners: bool, report: LabelReport,
                 progress, settings: LabelSettings, space: str):
        super().__init__(daemon=True)
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.args = (store, labels, teacher, align_corners)
        self.settings, self.space = settings, space
        self.report, self.progress, self.error = report, progress, None

    def run(self) -> None:
        store, labels, teacher, align = self.args
        while (job := self.q.get()) is not None:
            if self.error is not None:
                continue
            try:
                rows = [finish_item(store, it, labels[it["source"]], d, teacher, align, self.settings, self.space)
                        for it, d in job]
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
                 model=None, progress: bool = True) -> LabelReport:
    """Pseudo-label every file under ``images`` into the label store ``out``; resumes if interrupted."""
    settings = settings or LabelSettings()
    infer.check_settings(settings.precision, settings.tta)
    if batch_size < 1 or workers < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    if settings.align is not None:
        settings.align.check()
    images = Path(images).resolve()
    model = model if model is not None else load_model(model_spec, device=device, max_depth=settings.max_depth)
    teacher = fingerprint(model, settings.as_dict())
    store = LabelStore(out)
    todo, labels, done = plan(store, images, teacher, store_meta(model_spec, settings, images, model), overwrite)
    report = LabelReport(skipped=done)
    align = model_info(model).version == "v2"
    bar = tqdm(total=len(todo), desc="label", unit="img", disable=not progress, dynamic_ncols=True)
    writer = _Writer(store, labels, teacher, align, report, bar, settings, prediction_space(model))
    writer.start()
    loader = DataLoader(_Sources(images, todo, settings), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    buckets: dict[tuple[int, int], list[dict]] = {}
    start = time.perf_counter()

    def run_bucket(key):
        items = buckets.pop(key)
        x = torch.from_numpy(np.stack([it["pixels"] for it in items]))
        out_batch = infer.forward(model, x, settings.precision, settings.tta).cpu()
        writer.put(list(zip(items, out_batch)))

    try:
        for item in loader:
            if item["pixels"] is None:
                writer.put([(item, None)])
                continue
            key = tuple(item["pixels"].shape[1:])
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
