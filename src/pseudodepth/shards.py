"""WebDataset tar shards of a label store, and a streaming training dataset that reads them.

Export (:func:`export_shards`, ``pseudodepth shards STORE --out DIR``)::

    DIR/shard-000000.tar   per ok manifest row, three consecutive members sharing one key:
                           KEY.jpg        the source image: its own bytes for an upright RGB/gray JPEG,
                                          else the decoded upright image re-encoded at JPEG quality 95
                           KEY.depth.png  the 16-bit label PNG, byte for byte
                           KEY.confidence.png  the row's 16-bit confidence map, byte for byte (only
                                          from a store labelled with ``--confidence``)
                           KEY.json       {source, hash, min, max, height, width, teacher, invalid}
    DIR/index.json         {"format", "teacher", "model", "licence", "store", "total", "confidence",
                            "shards": [{"name", "count"}, ...]}   (confidence: the store's method,
                                          e.g. "flip", when every sample carries a map, else null)

Keys hold no dots (WebDataset splits the member name at the first dot): ``000042_sub_dir_name``,
the sample's position in the export then its sanitised source path. Shards are written to a
temporary name and renamed; ``index.json`` is written last, so a reader never sees a partial export.

Reading (:class:`ShardDataset`): an ``IterableDataset`` yielding the same training dicts as
:class:`pseudodepth.data.DepthDataset` over the same store's ``label_store`` source (resize shorter
side, random crop, flip, min-max target, optional ImageNet normalisation: the data package's code,
called, not copied). Sample number ``i`` of the export gets the crop/flip draw of sample ``i`` of the
label-store dataset, so with a seed, JPEG sources give identical tensors through either path.
``min_confidence`` (training config ``loss.confidence.min``) makes pixels whose confidence map is
below it invalid, as the label-store source does.

Splitting, each epoch: the shard list is permuted with ``default_rng([seed, epoch])`` (seed 0 when
the dataset has none; the same on every process), rank ``r`` of ``R`` takes shards ``r, r + R, ...`` and DataLoader worker ``w`` of
``W`` takes every ``W``-th of those. Every sample is therefore read exactly once per epoch across all
ranks and workers, whatever the counts. When the shard count is not a multiple of ``R * W``, ranks
(and workers) get unequal sample counts: under DDP give every rank the same number of steps (export
``R * W * k`` shards, or cap steps per epoch at the smallest rank's :meth:`ShardDataset.full_batches`,
as ``pseudodepth train`` does). A rank without any shard is an error: export with a smaller ``--max-count``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from .data.dataset import DepthDataset
from .data.sources import DepthSource, Sample
from .confidence import decode
from .imageio import ImageError, decode_rgb, safe_join
from .store import LabelStore, StoreError, decode_label

SHARD_NAME = "shard-{:06d}.tar"
INDEX_NAME = "index.json"
INDEX_FORMAT = "pseudodepth-shards/1"
JSON_FIELDS = ("source", "hash", "min", "max", "height", "width", "teacher", "invalid")
JPEG_QUALITY = 95


class ShardError(RuntimeError):
    """A shard export or shard set that cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------- export
def sample_key(position: int, source: str) -> str:
    """``000042_sub_dir_name``: the export position, then the source path without extension, every
    character outside ``[A-Za-z0-9_-]`` replaced by ``_``. Unique (the position) and dot-free."""
    stem = os.path.splitext(source)[0]
    return f"{position:06d}_" + re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def source_jpeg(data: bytes, name: str) -> bytes:
    """JPEG bytes of a source image: ``data`` itself for an RGB/gray JPEG without EXIF rotation,
    otherwise the upright 8-bit RGB decode (:func:`pseudodepth.imageio.decode_rgb`) at quality 95."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            upright = img.getexif().get(0x0112, 1) == 1
            if img.format == "JPEG" and img.mode in ("RGB", "L") and upright:
                return data
    except Exception:  # noqa: BLE001 - decode_rgb below gives the one-line reason
        pass
    buf = io.BytesIO()
    Image.fromarray(decode_rgb(data, name)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: identical exports are identical
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                _add_member(tar, name, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sample_members(store: LabelStore, row: dict, key: str) -> list[tuple[str, bytes]]:
    path = store.source_path(row)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ShardError(f"{path}: cannot read the source of manifest row {row['source']!r} ({err.strerror}); "
                         "restore the image folder recorded in store.json") from None
    if hashlib.sha256(data).hexdigest() != row["hash"]:
        raise ShardError(f"{path}: changed since it was labelled (sha256 differs from the manifest); restore "
                         "the original file, or relabel the store with `pseudodepth label --overwrite`")
    try:
        image = source_jpeg(data, str(path))
    except ImageError as err:
        raise ShardError(f"{err}; it was labelled ok, so the file changed: restore it or relabel") from None
    try:
        label = store.label_path(row).read_bytes()
    except ValueError as err:
        raise ShardError(f"{store.manifest_path}: row {row['source']!r}: {err}") from None
    except OSError as err:
        raise ShardError(f"{store.root}: cannot read the label of row {row['source']!r} ({err.strerror}); "
                         "relabel it with `pseudodepth label`") from None
    members = [(f"{key}.jpg", image), (f"{key}.depth.png", label)]
    if row.get("confidence"):
        try:
            members.append((f"{key}.confidence.png", safe_join(store.root, row["confidence"]).read_bytes()))
        except ValueError as err:
            raise ShardError(f"{store.manifest_path}: row {row['source']!r}: {err}") from None
        except OSError as err:
            raise ShardError(f"{store.root}: cannot read the confidence map of row {row['source']!r} "
                             f"({err.strerror}); relabel it with `pseudodepth label`") from None
    meta = {k: row[k] for k in JSON_FIELDS}
    return members + [(f"{key}.json", json.dumps(meta, sort_keys=True).encode())]


def export_shards(store_root: str | os.PathLike, out_dir: str | os.PathLike, max_count: int = 1000) -> list[Path]:
    """Write every ``ok`` row of a label store as WebDataset shards of at most ``max_count`` samples.

    Samples are in manifest order (sorted source paths). Returns the shard paths; ``out_dir/index.json``
    lists them with their sample counts. Existing shards of the same names are replaced.
    """
    if max_count < 1:
        raise ValueError(f"--max-count must be >= 1, got {max_count}")
    store = LabelStore(store_root)
    if store.label_space != "disparity":
        raise StoreError(f"{store.root} holds metric depth labels; shard export supports relative (disparity) "
                         "stores only: train from the store itself ({type: label_store, root: ...})")
    rows = store.rows(status="ok")
    if not rows:
        raise StoreError(f"{store.root}: no 'ok' rows to export; run `pseudodepth label --out {store.root}` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], []
    for number, first in enumerate(range(0, len(rows), max_count)):
        chunk = rows[first:first + max_count]
        members = [m for i, row in enumerate(chunk, start=first)
                   for m in _sample_members(store, row, sample_key(i, row["source"]))]
        path = out / SHARD_NAME.format(number)
        _write_shard(path, members)
        shards.append(path)
        counts.append(len(chunk))
    meta = store.meta()
    confidence = (meta.get("confidence") or {}).get("method") if all(r.get("confidence") for r in rows) else None
    index = {"format": INDEX_FORMAT, "teacher": meta.get("teacher", ""), "model": meta.get("model", ""),
             "licence": meta.get("licence", "unknown"), "store": str(store.root.resolve()),
             "total": len(rows), "confidence": confidence,
             "shards": [{"name": p.name, "count": c} for p, c in zip(shards, counts)]}
    tmp = out / f".tmp-{INDEX_NAME}"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / INDEX_NAME)
    return shards


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardSet:
    """Shard paths with their sample counts and the export position of each shard's first sample.

    ``confidence``: True / False when the index says whether every sample carries a confidence map,
    None when unknown (an explicit list of tar files)."""

    paths: tuple[Path, ...]
    counts: tuple[int, ...]
    confidence: bool | None = None

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum((0,) + self.counts[:-1]))

    @property
    def total(self) -> int:
        return sum(self.counts)


def read_index(index: str | os.PathLike) -> ShardSet:
    """Load ``index.json`` (or the folder holding it); shard names resolve relative to its folder."""
    path = Path(index)
    path = path / INDEX_NAME if path.is_dir() else path
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ShardError(f"{path}: cannot read the shard index ({err}); run `pseudodepth shards STORE --out DIR` "
                         "and pass DIR/index.json") from None
    if meta.get("format") != INDEX_FORMAT or not meta.get("shards"):
        raise ShardError(f"{path}: not a {INDEX_FORMAT} index with shards; re-export with `pseudodepth shards`")
    try:
        paths = tuple(safe_join(path.parent, s["name"]) for s in meta["shards"])
    except (ValueError, KeyError, TypeError) as err:
        raise ShardError(f"{path}: bad shard entry ({err}); re-export with `pseudodepth shards`") from None
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise ShardError(f"{path}: shard file(s) missing: {', '.join(missing[:3])}; copy the whole export folder")
    return ShardSet(paths, tuple(int(s["count"]) for s in meta["shards"]), bool(meta.get("confidence")))


def count_samples(shard: str | os.PathLike) -> int:
    """Number of samples (distinct keys) in one tar shard (reads headers only)."""
    with tarfile.open(shard) as tar:
        return len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()})


def shard_set(index_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> ShardSet:
    """An index file / export folder, or an explicit list of tar paths (their counts read from the tars)."""
    if isinstance(index_or_paths, (str, os.PathLike)):
        return read_index(index_or_paths)
    paths = tuple(Path(p) for p in index_or_paths)
    if not paths:
        raise ShardError("no shard paths given; pass DIR/index.json or a list of .tar files")
    return ShardSet(paths, tuple(count_samples(p) for p in paths))


def assign_shards(n_shards: int, rank: int, world_size: int, worker: int, num_workers: int,
                  epoch: int = 0, seed: int = 0) -> list[int]:
    """Shard numbers read by ``worker`` of ``rank`` this epoch (see the module docstring for the rule)."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, got rank {rank}/{world_size}, "
                         f"worker {worker}/{num_workers}")
    order = np.random.default_rng([seed, epoch]).permutation(n_shards)
    return [int(s) for s in order[rank::world_size][worker::num_workers]]


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of one tar shard, in file order."""
    key, group = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = member.name.partition(".")
            if k != key and group:
                yield key, group
                group = {}
            key, group[ext] = k, tar.extractfile(member).read()
    if group:
        yield key, group


def decode_sample(key: str, group: Mapping[str, bytes], shard: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """One shard sample -> ``(rgb uint8 H x W x 3, disparity float32 H x W, json row)``."""
    if missing := {"jpg", "depth.png", "json"} - set(group):
        raise ShardError(f"{shard}: sample {key!r} lacks {sorted(missing)}; re-export the shard")
    row = json.loads(group["json"])
    rgb = decode_rgb(group["jpg"], f"{shard}:{key}.jpg")
    q = cv2.imdecode(np.frombuffer(group["depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint16 or q.shape != rgb.shape[:2]:
        raise ShardError(f"{shard}: {key}.depth.png is not a 16-bit label of the image's size "
                         f"{rgb.shape[:2]}; re-export the shard")
    return rgb, decode_label(q, row["min"], row["max"], row.get("invalid") or 0), row


def decode_confidence(key: str, group: Mapping[str, bytes], shard: Path, shape: tuple[int, int]) -> np.ndarray:
    """A sample's confidence map (float32 in [0, 1], ``shape``), :func:`pseudodepth.confidence.decode`."""
    if "confidence.png" not in group:
        raise ShardError(f"{shard}: sample {key!r} has no confidence map but loss.confidence.min is set; export "
                         "a store labelled with `pseudodepth label --confidence flip|scales`, or drop loss.confidence")
    q = cv2.imdecode(np.frombuffer(group["confidence.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint16 or q.shape != tuple(shape):
        raise ShardError(f"{shard}: {key}.confidence.png is not a 16-bit map of the image's size {tuple(shape)}; "
                         "re-export the shard")
    return decode(q)


def _decoded_image(sample: Sample) -> np.ndarray:
    return sample.row["rgb"]


def _decoded_disparity(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    disparity = sample.row["disparity"]
    valid = sample.row.get("valid")  # confidence >= min_confidence; DepthSource.load masks non-finite and negative
    return disparity, np.ones(disparity.shape, bool) if valid is None else valid


class ShardDataset(IterableDataset):
    """Training samples streamed from shards, split across DDP ranks and DataLoader workers.

    Yields :class:`pseudodepth.data.DepthDataset` training dicts (``image``, ``target``, ``valid``,
    ``kind="pseudo"``, ``path`` = the source path relative to the labelled folder). ``min_confidence``:
    pixels whose confidence map is below it are invalid (refused for an export without maps). ``rank`` and
    ``world_size`` default to the ``torch.distributed`` process group (one process without one).
    Call :meth:`set_epoch` each epoch (``pseudodepth.data.set_epoch`` does) and use non-persistent
    workers so the epoch reaches them.
    """

    def __init__(self, index_or_paths: str | os.PathLike | Sequence[str | os.PathLike], crop_size: int = 518,
                 normalize: bool = True, flip_p: float = 0.5, seed: int | None = None, shuffle_shards: bool = True,
                 rank: int | None = None, world_size: int | None = None, min_confidence: float | None = None):
        super().__init__()
        self.shards = shard_set(index_or_paths)
        self.min_confidence = min_confidence
        if min_confidence is not None and self.shards.confidence is False:
            raise ShardError(f"{self.shards.paths[0].parent}: the shards carry no confidence maps but "
                             "loss.confidence.min is set; export a store labelled with `pseudodepth label "
                             "--confidence flip|scales`, or drop loss.confidence")
        self.crop_size, self.normalize, self.flip_p, self.seed = crop_size, normalize, flip_p, seed
        self.shuffle_shards = shuffle_shards
        initialised = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.epoch = 0
        n = len(self.shards.paths)
        if n < self.world_size:
            raise ShardError(f"{n} shard(s) cannot feed {self.world_size} ranks; export with a smaller --max-count "
                             f"(at most {max(1, self.shards.total // self.world_size)} samples per shard)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shards_for(self, worker: int, num_workers: int, rank: int | None = None) -> list[int]:
        rank = self.rank if rank is None else rank
        if not self.shuffle_shards:
            order = list(range(len(self.shards.paths)))
            return order[rank::self.world_size][worker::num_workers]
        return assign_shards(len(self.shards.paths), rank, self.world_size, worker, num_workers,
                             self.epoch, self.seed or 0)

    def __len__(self) -> int:
        """Samples this rank reads this epoch (all its workers together)."""
        return sum(self.shards.counts[s] for s in self._shards_for(0, 1))

    def full_batches(self, batch_size: int, num_workers: int = 0, rank: int | None = None) -> int:
        """Batches a ``DataLoader(self, batch_size, num_workers=num_workers, drop_last=True)`` yields this
        epoch on ``rank`` (default this process's): each worker batches its own shards, so this is
        ``sum_w floor(samples_w / batch_size)``, which can be less than ``floor(len(self) / batch_size)``."""
        workers = max(1, num_workers)
        return sum(sum(self.shards.counts[s] for s in self._shards_for(w, workers, rank)) // batch_size
                   for w in range(workers))

    def _sample_dataset(self) -> DepthDataset:
        # The data package's DepthDataset does the transforms; its source holds only the sample in hand,
        # keyed by the sample's export position so the seeded crop/flip draw is the label-store dataset's.
        source = DepthSource("shards", {}, _decoded_disparity, read_image=_decoded_image, kind="pseudo",
                             min_depth=0.0)
        dataset = DepthDataset(source, train=True, crop_size=self.crop_size, normalize=self.normalize,
                               flip_p=self.flip_p, seed=self.seed)
        dataset.set_epoch(self.epoch)
        return dataset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        dataset = self._sample_dataset()
        for s in self._shards_for(worker, num_workers):
            path, offset = self.shards.paths[s], self.shards.offsets[s]
            for position, (key, group) in enumerate(iter_shard(path)):
                rgb, disparity, row = decode_sample(key, group, path)
                index = offset + position
                decoded = {"rgb": rgb, "disparity": disparity}
                if self.min_confidence is not None:
                    decoded["valid"] = decode_confidence(key, group, path, disparity.shape) >= self.min_confidence
                dataset.source.samples[index] = Sample(Path(row["source"]), row=decoded)
                try:
                    yield dataset[index]
                finally:
                    del dataset.source.samples[index]


def shard_dataset(index: str | os.PathLike | Sequence[str | os.PathLike], **kwargs: Any) -> ShardDataset:
    """Config entry point: ``{"type": "shards", "index": "path/index.json"}`` -> :class:`ShardDataset`.

    ``kwargs`` are :class:`ShardDataset` arguments (``crop_size``, ``normalize``, ``flip_p``, ``seed``, ...).
    """
    return ShardDataset(index, **kwargs)


def make_shard_dataset(spec: Mapping[str, Any], base_dir: str | os.PathLike | None = None,
                       **dataset_kwargs: Any) -> ShardDataset:
    """Build a shard dataset from a train-config entry, like ``pseudodepth.data.make_source`` builds a source.

    ``spec`` is ``{"type": "shards", "index": PATH}`` (PATH relative to ``base_dir`` when given);
    ``dataset_kwargs`` are what the training loop passes to every dataset (``crop_size``, ``seed``, ...).
    """
    arguments = dict(spec)
    if arguments.pop("type", None) != "shards" or "index" not in arguments:
        raise ValueError(f"a shard source is {{'type': 'shards', 'index': 'DIR/index.json'}}, got {dict(spec)!r}")
    index = Path(arguments.pop("index"))
    if base_dir is not None and not index.is_absolute():
        index = Path(base_dir) / index
    if unknown := set(arguments) - {"shuffle_shards", "flip_p", "min_confidence"}:
        raise ValueError(f"shard source: unknown key(s) {sorted(unknown)}; "
                         "allowed: type, index, shuffle_shards, flip_p, min_confidence")
    return ShardDataset(index, **{**dataset_kwargs, **arguments})


__all__ = ["ShardDataset", "ShardError", "ShardSet", "assign_shards", "decode_confidence", "decode_sample",
           "export_shards", "iter_shard", "make_shard_dataset", "read_index", "sample_key", "shard_dataset",
           "shard_set", "source_jpeg"]
