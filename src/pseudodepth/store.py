"""The label store: pseudo-labels on disk, with a manifest that makes every run resumable.

Layout (DESIGN.md section 3)::

    STORE/store.json          teacher fingerprint, model SPEC, settings, source folder
    STORE/manifest.parquet    one row per source image (see ``MANIFEST_SCHEMA``)
    STORE/manifest.journal    rows committed since the last consolidation (JSON lines)
    STORE/label.lock          held (``flock``) by the process writing the store: its pid and host
    STORE/labels/<rel>.png    16-bit PNG: min-max normalised disparity, 0/65535 = row min/max
                              (rows with ``invalid`` > 0: 0 = invalid pixel, 1..65535 = min..max)
    STORE/confidence/<rel>.png  with ``label --confidence``: 16-bit confidence, q / 65535 in [0, 1]
                              (:mod:`pseudodepth.confidence`)
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

Misuse: one writer at a time (:meth:`LabelStore.writing` takes an ``flock`` on ``label.lock``; the
kernel drops it when the process dies, so a crashed run never leaves the store stuck). Any OS error
while writing (full disk, permissions) becomes a one-line :class:`StoreWriteError`; what was written
before it stays valid, and the same command continues once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
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
    ("invalid", pa.int64()),  # pixels without a label (non-finite teacher output, sky): PNG value 0
    ("confidence", pa.string()),  # confidence map path relative to STORE ("" without --confidence)
    ("scale", pa.float64()),  # metric alignment (label --align-to): y ~ scale * prediction + shift, else null
    ("shift", pa.float64()),
    ("inliers", pa.int32()),  # sparse points the alignment kept (null without alignment)
    ("bytes", pa.int64()),  # source file size and modification time when it was read (null: unreadable, or
    ("mtime_ns", pa.int64()),  # a store written before these columns); `label` relabels a changed source
])
ROW_DEFAULTS = {"invalid": 0, "confidence": "", "scale": None, "shift": None, "inliers": None, "bytes": None,
                "mtime_ns": None}  # columns added later: rows of older stores get these
LABEL_SPACES = ("disparity", "metric_depth")
PNG_MAX = 65535
LOCK_NAME = "label.lock"


class StoreError(RuntimeError):
    """A label store that cannot be used as asked (e.g. made by another teacher)."""


class StoreBusyError(StoreError):
    """Another live process is writing the store."""


class StoreWriteError(StoreError):
    """An OS error (full disk, permissions, ...) while writing the store; nothing half-written remains."""


def write_error(err: OSError, path: str | os.PathLike) -> StoreWriteError:
    """The one-line error for an OS error while writing ``path``: what, where, what to do."""
    what = os.strerror(err.errno) if err.errno else str(err)
    fix = "free disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
    return StoreWriteError(f"cannot write {path}: {what} [errno {err.errno}]; {fix} and run the same command "
                           "again: labels written so far are kept and the run continues where it stopped")


def encode_label(disparity: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """float disparity -> (uint16 map, min, max, invalid pixel count).

    Without non-finite pixels: ``q = round((d - min) / (max - min) * 65535)`` (a constant map encodes
    as all zeros with ``min == max``). With ``n > 0`` non-finite pixels (no label there: NaN/inf teacher
    output, sky) those pixels get ``q = 0`` and the others ``q = 1 + round((d - min) / (max - min) * 65534)``.
    """
    d = np.asarray(disparity)
    if d.size and d.dtype.kind == "f":  # the common case, all finite: fewer passes over a multi-megapixel map
        lo, hi = float(d.min()), float(d.max())  # min / max are exact in any float width; NaN / inf show here
        if math.isfinite(lo) and math.isfinite(hi):
            if hi <= lo:
                return np.zeros(d.shape, np.uint16), lo, hi, 0
            q = d.astype(np.float64)  # a copy: the caller's array is never modified
            q -= lo
            q *= PNG_MAX / (hi - lo)
            np.rint(q, out=q)
            np.clip(q, 0, PNG_MAX, out=q)
            return q.astype(np.uint16), lo, hi, 0
    d = np.asarray(d, dtype=np.float64)
    finite = np.isfinite(d)
    invalid = int(finite.size - np.count_nonzero(finite))
    if not finite.any():
        return np.zeros(d.shape, np.uint16), 0.0, 0.0, invalid
    lo, hi = float(d[finite].min()), float(d[finite].max())
    if invalid == 0:
        if hi <= lo:
            return np.zeros(d.shape, np.uint16), lo, hi, 0
        q = (d - lo) * (PNG_MAX / (hi - lo))
        return np.clip(np.rint(q), 0, PNG_MAX).astype(np.uint16), lo, hi, 0
    scaled = (d - lo) * ((PNG_MAX - 1) / (hi - lo)) if hi > lo else np.zeros(d.shape)
    q = np.where(finite, 1 + np.clip(np.rint(np.where(finite, scaled, 0)), 0, PNG_MAX - 1), 0)
    return q.astype(np.uint16), lo, hi, invalid


def decode_label(q: np.ndarray, lo: float, hi: float, invalid: int = 0) -> np.ndarray:
    """Inverse of :func:`encode_label` as float32: ``d = min + q / 65535 * (max - min)``, or with
    ``invalid`` > 0: NaN where ``q == 0``, ``d = min + (q - 1) / 65534 * (max - min)`` elsewhere."""
    q = q.astype(np.float64)
    if not invalid:
        return (lo + q * ((hi - lo) / PNG_MAX)).astype(np.float32)
    return np.where(q > 0, lo + (q - 1) * ((hi - lo) / (PNG_MAX - 1)), np.nan).astype(np.float32)


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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if overwrite and old:
                self.manifest_path.unlink(missing_ok=True)
                self.journal_path.unlink(missing_ok=True)
            atomic_write_bytes(self.meta_path, json.dumps({**meta, "teacher": teacher}, indent=2,
                                                          sort_keys=True).encode())
        except OSError as err:
            raise write_error(err, self.meta_path) from None

    @contextlib.contextmanager
    def writing(self):
        """Hold the store's write lock for the ``with`` block; refuse at once if a live process holds it.

        ``flock`` on ``STORE/label.lock``: the kernel releases it when the holder exits or is killed,
        so a crashed run never leaves the store locked. The file records the holder's pid and host.
        """
        lock_path = self.root / LOCK_NAME
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise write_error(err, lock_path) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                raise StoreBusyError(f"{self.root} is being written by {holder}; wait for it to finish "
                                     "(or stop it), then run the same command again") from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
            except OSError:
                pass  # the lock itself is held; the note naming the holder is a courtesy
            yield
        finally:
            os.close(fd)  # releases the flock
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
                merged[row["source"]] = row
        for row in self._journal_rows():
            merged[row["source"]] = row
        out = [{**merged[k], **{c: d if merged[k].get(c) is None else merged[k][c] for c, d in ROW_DEFAULTS.items()}}
               for k in sorted(merged)]
        return [r for r in out if status is None or r["status"] == status]

    def append(self, rows: list[dict]) -> None:
        """Commit rows: one JSON line each, flushed and fsynced before returning.

        A torn last line (a killed run) is cut off first, and a failed write is cut back, so the
        journal only ever holds whole rows.
        """
        if not rows:
            return
        data = b"".join(json.dumps(_check_row(r), sort_keys=True).encode() + b"\n" for r in rows)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.journal_path, "a+b") as f:
                size = _whole_lines(f)
                try:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(size)
                    raise
        except OSError as err:
            raise write_error(err, self.journal_path) from None

    def finish(self, failed: bool = False) -> None:
        """End a labelling run: :meth:`consolidate`; when the run is already ``failed``, a consolidation
        error is not raised over the first error (the journal keeps every committed row)."""
        try:
            self.consolidate()
        except StoreError:
            if not failed:
                raise

    def consolidate(self) -> int:
        """Fold the journal into ``manifest.parquet`` (atomic rename), then drop the journal."""
        rows = self.rows()
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        tmp = self.manifest_path.with_name(".manifest.parquet.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, self.manifest_path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise write_error(err, self.manifest_path) from None
        self.journal_path.unlink(missing_ok=True)
        return len(rows)

    # ------------------------------------------------------------ labels

    def write_label(self, label: str, values: np.ndarray, space: str = "disparity") -> tuple[float, float, int]:
        """Encode and atomically write one label (disparity, or metres for ``space="metric_depth"``);
        returns the (min, max, invalid) to store in its row."""
        if space == "metric_depth":
            q, lo, hi = encode_metric_label(values)
            invalid = int((q == 0).sum())
        else:
            q, lo, hi, invalid = encode_label(values)
        path = safe_join(self.root, label)
        try:
            atomic_write_bytes(path, encode_png(q))
        except OSError as err:
            raise write_error(err, path) from None
        return lo, hi, invalid

    def write_confidence(self, path: str, confidence: np.ndarray) -> None:
        """Atomically write one confidence map (16-bit PNG, :func:`pseudodepth.confidence.encode`)."""
        from .confidence import encode

        full = safe_join(self.root, path)
        try:
            atomic_write_bytes(full, encode_png(encode(confidence)))
        except OSError as err:
            raise write_error(err, full) from None

    def read_confidence(self, row: dict) -> np.ndarray:
        """The confidence map of an ``ok`` row (float32 in [0, 1], source resolution)."""
        from .confidence import decode

        if not row.get("confidence"):
            raise StoreError(f"{self.root}: row {row['source']!r} has no confidence map; label the store with "
                             "`pseudodepth label --confidence flip|scales` (with --overwrite) first")
        return decode(read_png16(safe_join(self.root, row["confidence"])))

    def label_path(self, row: dict) -> Path:
        """Absolute path of a row's label (refuses manifest paths that escape the store)."""
        return safe_join(self.root, row["label"])

    def read_label(self, row: dict) -> np.ndarray:
        """The stored label of an ``ok`` row (float32, source resolution): disparity, or metres (0 = invalid)
        in a metric store (:attr:`label_space`)."""
        if row["status"] != "ok":
            raise StoreError(f"{self.root}: row {row['source']!r} has status {row['status']}: {row['error']}")
        q = read_png16(self.label_path(row))
        if self.label_space == "metric_depth":
            return decode_metric_label(q, row["min"], row["max"])
        return decode_label(q, row["min"], row["max"], row.get("invalid") or 0)

    def read_disparity(self, row: dict) -> np.ndarray:
        """The stored relative disparity of an ``ok`` row; refuses a metric store (use :meth:`read_label`)."""
        if self.label_space != "disparity":
            raise StoreError(f"{self.root} holds metric depth labels, not disparity; read them with read_label")
        return self.read_label(row)

    def source_path(self, row: dict) -> Path:
        """Absolute path of a row's source image (refuses manifest paths that escape the source folder;
        links the user placed in the image folder are followed)."""
        return safe_join(self.source_root, row["source"], follow_links=True)


def _whole_lines(f) -> int:
    """Cut a torn last line off an open journal; returns its (new) size."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    f.seek(max(0, size - 65536))
    tail = f.read()
    if tail.endswith(b"\n"):
        return size
    cut = tail.rfind(b"\n")
    if cut < 0 and size > len(tail):  # a torn line longer than 64 KiB: find its start the slow way
        f.seek(0)
        whole = f.read()
        new = whole.rfind(b"\n") + 1
    else:
        new = size - len(tail) + cut + 1
    f.truncate(new)
    f.seek(new)
    return new


def _check_row(row: dict) -> dict:
    row = {**ROW_DEFAULTS, **row}  # rows written before the columns existed
    missing = set(MANIFEST_SCHEMA.names) - set(row)
    if missing:
        raise ValueError(f"manifest row for {row.get('source')!r} lacks {sorted(missing)}")
    return {k: row[k] for k in MANIFEST_SCHEMA.names}
