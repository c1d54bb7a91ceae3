"""The label store: pseudo-labels on disk, with a manifest that makes every run resumable.

Layout (DESIGN.md section 3)::

    STORE/store.json          teacher fingerprint, model SPEC, settings, source folder
    STORE/manifest.parquet    one row per source image (see ``MANIFEST_SCHEMA``)
    STORE/manifest.journal    rows committed since the last consolidation (JSON lines)
    STORE/labels/<rel>.png    16-bit PNG: min-max normalised disparity, 0/65535 = row min/max
                              (metric stores: log depth, 1/65535 = row min/max in metres, 0 = invalid)

Two kinds of store (``store.json`` key ``labels``): ``"disparity"`` (a relative teacher's output, the
default) and ``"metric_depth"`` (metres: a metric teacher's output, or a relative one aligned to sparse
metric depth by ``label --align-to``, whose rows also hold the fitted ``scale``, ``shift`` and
``inliers``). Metric labels are quantised in log depth, so the relative step is the same at every
depth: ``ln(max / min) / 65534`` (7.7e-5 for 0.5..80 m).

Crash safety: a label is written to a temporary name and renamed; its row is appended to the
journal (flushed, fsynced) only after the rename. A run killed at any point therefore leaves no
half-written label and no row without its label. Readers merge ``manifest.parquet`` with the
journal; :meth:`LabelStore.consolidate` folds the journal into the parquet file (atomically).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .imageio import atomic_write_bytes, encode_png, read_png16, safe_join

MANIFEST_SCHEMA = pa.schema([
    ("source", pa.string()),  # source path relative to the image folder (POSIX)
    ("hash", pa.string()),  # sha256 of the source file's bytes
    ("status", pa.string()),  # "ok" | "failed"
    ("error", pa.string()),  # one-line reason for failed rows, "" otherwise
    ("height", pa.int32()),  # source image size (after EXIF orientation)
    ("width", pa.int32()),
    ("label", pa.string()),  # label path relative to STORE ("" for failed rows)
    ("min", pa.float64()),  # disparity mapped to PNG value 0
    ("max", pa.float64()),  # disparity mapped to PNG value 65535
    ("teacher", pa.string()),  # teacher fingerprint (weights + settings)
    ("scale", pa.float64()),  # metric alignment (label --align-to): y ~ scale * prediction + shift, else null
    ("shift", pa.float64()),
    ("inliers", pa.int32()),  # sparse points the alignment kept (null without alignment)
])
OPTIONAL_COLUMNS = ("scale", "shift", "inliers")  # absent in stores written before metric labels
LABEL_SPACES = ("disparity", "metric_depth")
PNG_MAX = 65535


class StoreError(RuntimeError):
    """A label store that cannot be used as asked (e.g. made by another teacher)."""


def encode_label(disparity: np.ndarray) -> tuple[np.ndarray, float, float]:
    """float disparity -> (uint16 map, min, max) with ``q = round((d - min) / (max - min) * 65535)``.

    Non-finite values are mapped to 0. A constant map encodes as all zeros with ``min == max``.
    """
    d = np.asarray(disparity, dtype=np.float64)
    finite = np.isfinite(d)
    if not finite.any():
        return np.zeros(d.shape, np.uint16), 0.0, 0.0
    lo, hi = float(d[finite].min()), float(d[finite].max())
    if hi <= lo:
        return np.zeros(d.shape, np.uint16), lo, hi
    q = np.where(finite, (d - lo) * (PNG_MAX / (hi - lo)), 0.0)
    return np.clip(np.rint(q), 0, PNG_MAX).astype(np.uint16), lo, hi


def decode_label(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`encode_label`: ``d = min + q / 65535 * (max - min)`` as float32."""
    return (lo + q.astype(np.float64) * ((hi - lo) / PNG_MAX)).astype(np.float32)


def encode_metric_label(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """metric depth (metres, <= 0 or non-finite = invalid) -> (uint16 map, min, max), quantised in log depth.

    ``q = 1 + round((ln z - ln min) / (ln max - ln min) * 65534)`` on valid pixels, 0 on invalid ones; a
    map with one depth value encodes as 1 with ``min == max``.
    """
    z = np.asarray(depth, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(z) & (z > 0)
    if not valid.any():
        return np.zeros(z.shape, np.uint16), 0.0, 0.0
    lo, hi = float(z[valid].min()), float(z[valid].max())
    q = np.zeros(z.shape, np.float64)
    if hi > lo:
        q[valid] = (np.log(z[valid]) - np.log(lo)) * ((PNG_MAX - 1) / (np.log(hi) - np.log(lo)))
    out = np.where(valid, 1 + np.clip(np.rint(q), 0, PNG_MAX - 1), 0)
    return out.astype(np.uint16), lo, hi


def decode_metric_label(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`encode_metric_label`: metres as float32, 0 where ``q == 0`` (invalid)."""
    q = q.astype(np.float64)
    if hi > lo:
        z = np.exp(np.log(lo) + (q - 1) * ((np.log(hi) - np.log(lo)) / (PNG_MAX - 1)))
    else:
        z = np.full(q.shape, lo)
    return np.where(q > 0, z, 0.0).astype(np.float32)


def label_paths(sources: list[str]) -> dict[str, str]:
    """Label path (relative to STORE) of each source: ``labels/<source with .png suffix>``.

    Sources that share a stem in one folder (``a.jpg`` and ``a.png``) keep their extension
    (``labels/a.jpg.png``) so no two sources share a label.
    """
    stems = Counter(str(PurePosixPath(s).with_suffix("")) for s in sources)
    out = {}
    for s in sources:
        p = PurePosixPath(s)
        name = p.with_suffix(".png") if stems[str(p.with_suffix(""))] == 1 else PurePosixPath(f"{s}.png")
        out[s] = f"labels/{name}"
    return out


class LabelStore:
    """A folder of pseudo-labels and its manifest. Cheap to open; rows are read lazily."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.parquet"
        self.journal_path = self.root / "manifest.journal"
        self.meta_path = self.root / "store.json"

    # ------------------------------------------------------------ metadata

    def meta(self) -> dict:
        """Contents of ``store.json`` ({} for a new store)."""
        if not self.meta_path.is_file():
            return {}
        return json.loads(self.meta_path.read_text())

    def open_for(self, teacher: str, meta: dict, overwrite: bool = False) -> None:
        """Prepare the store for a run by ``teacher``; refuse another teacher's store unless ``overwrite``.

        ``overwrite`` drops every existing row (labels are overwritten as they are relabelled).
        """
        old = self.meta()
        if old and old.get("teacher") != teacher and not overwrite:
            raise StoreError(
                f"{self.root} holds labels from teacher {old.get('teacher')} ({old.get('model')}), "
                f"not {teacher} ({meta.get('model')}); use another --out, or --overwrite to relabel everything"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        if overwrite and old:
            self.manifest_path.unlink(missing_ok=True)
            self.journal_path.unlink(missing_ok=True)
        atomic_write_bytes(self.meta_path, json.dumps({**meta, "teacher": teacher}, indent=2, sort_keys=True).encode())

    @property
    def label_space(self) -> str:
        """``"disparity"`` (relative labels) or ``"metric_depth"`` (metres)."""
        return self.meta().get("labels", "disparity")

    @property
    def source_root(self) -> Path:
        root = self.meta().get("source_root")
        if not root:
            raise StoreError(f"{self.meta_path}: no source_root recorded; was this store written by `pseudodepth label`?")
        return Path(root)

    # ------------------------------------------------------------ rows

    def _journal_rows(self) -> list[dict]:
        if not self.journal_path.is_file():
            return []
        rows = []
        with open(self.journal_path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn last line of a killed run: that row was never committed
                rows.append(json.loads(line))
        return rows

    def rows(self, status: str | None = None) -> list[dict]:
        """All rows (the latest per source), sorted by source path; optionally only one status."""
        merged: dict[str, dict] = {}
        if self.manifest_path.is_file():
            for row in pq.read_table(self.manifest_path).to_pylist():
                merged[row["source"]] = {**{k: None for k in OPTIONAL_COLUMNS}, **row}
        for row in self._journal_rows():
            merged[row["source"]] = {**{k: None for k in OPTIONAL_COLUMNS}, **row}
        out = [merged[k] for k in sorted(merged)]
        return [r for r in out if status is None or r["status"] == status]

    def append(self, rows: list[dict]) -> None:
        """Commit rows: one JSON line each, flushed and fsynced before returning."""
        if not rows:
            return
        data = b"".join(json.dumps(_check_row(r), sort_keys=True).encode() + b"\n" for r in rows)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.journal_path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def consolidate(self) -> int:
        """Fold the journal into ``manifest.parquet`` (atomic rename), then drop the journal."""
        rows = self.rows()
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        tmp = self.manifest_path.with_name(".manifest.parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.manifest_path)
        self.journal_path.unlink(missing_ok=True)
        return len(rows)

    # ------------------------------------------------------------ labels

    def write_label(self, label: str, values: np.ndarray, space: str = "disparity") -> tuple[float, float]:
        """Encode and atomically write one label (disparity, or metres for ``space="metric_depth"``);
        returns the (min, max) to store in its row."""
        q, lo, hi = encode_metric_label(values) if space == "metric_depth" else encode_label(values)
        atomic_write_bytes(safe_join(self.root, label), encode_png(q))
        return lo, hi

    def read_label(self, row: dict) -> np.ndarray:
        """The stored label of an ``ok`` row (float32, source resolution): disparity, or metres (0 = invalid)
        in a metric store (:attr:`label_space`)."""
        if row["status"] != "ok":
            raise StoreError(f"{self.root}: row {row['source']!r} has status {row['status']}: {row['error']}")
        q = read_png16(safe_join(self.root, row["label"]))
        if self.label_space == "metric_depth":
            return decode_metric_label(q, row["min"], row["max"])
        return decode_label(q, row["min"], row["max"])

    def read_disparity(self, row: dict) -> np.ndarray:
        """The stored relative disparity of an ``ok`` row; refuses a metric store (use :meth:`read_label`)."""
        if self.label_space != "disparity":
            raise StoreError(f"{self.root} holds metric depth labels, not disparity; read them with read_label")
        return self.read_label(row)

    def source_path(self, row: dict) -> Path:
        """Absolute path of a row's source image (refuses manifest paths that escape the source folder)."""
        return safe_join(self.source_root, row["source"])


def _check_row(row: dict) -> dict:
    row = {**{k: None for k in OPTIONAL_COLUMNS}, **row}
    missing = set(MANIFEST_SCHEMA.names) - set(row)
    if missing:
        raise ValueError(f"manifest row for {row.get('source')!r} lacks {sorted(missing)}")
    return {k: row[k] for k in MANIFEST_SCHEMA.names}
