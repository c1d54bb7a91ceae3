"""Pseudo-labelling with Ray Data: the same label store as :mod:`pseudodepth.label`, on many machines.

Pipeline (one Ray Data dataset, streamed)::

    from_items(todo)        the sources still to do (resume: done rows of unchanged sources are skipped by
                            ``label.plan``)
    map(_LoadSource)        CPU tasks: read -> sha256 -> decode -> official resize + normalise (``label.load_item``)
    map_batches(_Teacher)   actor pool, one model per actor (one GPU each where the cluster has GPUs):
                            bucket the batch by network size (no padding) -> ``infer.forward`` ->
                            upsample + 16-bit PNG + atomic write (``label.finish_item``) -> manifest rows
    driver                  commits the rows to the journal (``LabelStore.append``) as they arrive,
                            then ``LabelStore.consolidate``

Both engines call the same ``load_item`` / ``forward`` / ``finish_item``, so they write the same labels.

Crash safety is the store's: a label is renamed into place before its row is committed, and only the
driver commits rows. A killed actor is restarted by Ray (``max_restarts``) and its batch retried
(``max_task_retries``): its labels are rewritten atomically with the same values and its rows are
committed once. A batch still failing after its retries stops the run with one line
(:class:`RayRunError`); re-running the same command (or calling :func:`label_folder_ray` again in the
same Ray) resumes, as it does when the whole run dies. Each run's actors are named in a namespace of
the run's own and killed when the run ends (:class:`_RunActors`), whatever still refers to them.

Cluster use: workers read the images and write the labels themselves, so the image folder and the
store must be on a filesystem every node mounts at the same path (NFS, Lustre, a FUSE bucket mount),
and the model SPEC must be a preset or a path every node can read. Each actor checks that its model
has the driver's teacher fingerprint, so a node with other weights fails the run instead of mixing labels.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import infer
from .label import (LabelReport, LabelSettings, announce_licence, finish_item, load_item, plan, predict_batch,
                    store_meta)
from .models import fingerprint, load_model, prediction_space
from .store import LabelStore, StoreError

# A killed actor is always restarted (-1: as often as needed, Ray Data's own default): Ray Data's actor pool
# never replaces an actor that is dead for good, so with bounded restarts a run whose actors died that often
# would wait forever for them. What is bounded is the batch: retried on a restarted actor up to
# MAX_BATCH_RETRIES times, then the run stops with one line (and re-running the command resumes), so that a
# batch that kills every actor it reaches (e.g. out of memory) ends the run instead of looping forever.
MAX_ACTOR_RESTARTS = -1
MAX_BATCH_RETRIES = 3

# Each run's actors are named in the Ray namespace ACTOR_NAMESPACE_PREFIX + a random id (see _RunActors).
ACTOR_NAMESPACE_PREFIX = "pseudodepth-label-"

# Test hook: if this environment variable names an existing file, the first actor batch that removes it
# kills its own process after writing its labels (as a crashed or pre-empted worker would).
CRASH_MARKER_ENV = "PSEUDODEPTH_RAY_CRASH_MARKER"


class _LoadSource:
    """Ray Data ``map`` function: one source path -> a loaded item with its pixels (and with ``--confidence
    scales`` its second-size pixels) as raw float32 bytes."""

    def __init__(self, root: Path, settings: LabelSettings):
        self.root, self.settings = root, settings

    def __call__(self, row: dict) -> dict:
        item = load_item(self.root, row["source"], self.settings)
        item.pop("size"), item.pop("size2")
        # bytes + shape travel through Arrow blocks for every image size and for failed items alike
        for key, shape in (("pixels", "shape"), ("pixels2", "shape2")):
            pixels = item.pop(key)
            item[key] = b"" if pixels is None else pixels.tobytes()
            item[shape] = [0, 0, 0] if pixels is None else list(pixels.shape)
        return item


class _Teacher:
    """Ray Data actor: one model, batched forward per network size, labels written, manifest rows out."""

    def __init__(self, model_spec: str, settings: LabelSettings, store_root: str, labels: dict[str, str],
                 teacher: str, version: str | None = None):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(model_spec, version=version, device=self.device, max_depth=settings.max_depth)
        self.space = prediction_space(self.model)
        self.settings, self.labels, self.teacher = settings, labels, teacher
        self.store = LabelStore(store_root)
        self.align = infer.align_corners(self.model)
        if (got := fingerprint(self.model, settings.as_dict())) != teacher:
            raise RuntimeError(f"model {model_spec!r} on this Ray node has teacher fingerprint {got}, but the driver's "
                               f"has {teacher}; give every node the same weights (a shared path or a preset)")
        infer.fast_layout(self.model, settings.precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        items = [{k: batch[k][i] for k in batch} for i in range(len(batch["source"]))]
        disparities: list[torch.Tensor | None] = [None] * len(items)
        confidences: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
        for i, it in enumerate(items):
            if len(it["pixels"]):
                key = (tuple(int(s) for s in it["shape"]), tuple(int(s) for s in it["shape2"]))
                groups.setdefault(key, []).append(i)
        for (shape, shape2), index in groups.items():  # equal network sizes only: no padding artefacts
            x = torch.from_numpy(np.stack([np.frombuffer(items[i]["pixels"], np.float32).reshape(shape)
                                           for i in index]))
            x2 = None
            if self.settings.confidence == "scales":
                x2 = torch.from_numpy(np.stack([np.frombuffer(items[i]["pixels2"], np.float32).reshape(shape2)
                                                for i in index]))
            out, conf = predict_batch(self.model, x, self.settings, x2)
            for j, i in enumerate(index):
                disparities[i] = out[j]
                confidences[i] = conf[j] if conf is not None else None
        rows = []
        for it, d, c in zip(items, disparities, confidences):
            item = {"source": str(it["source"]), "hash": str(it["hash"]), "error": str(it["error"]),
                    "height": int(it["height"]), "width": int(it["width"]), "bytes": int(it["bytes"]),
                    "mtime_ns": int(it["mtime_ns"])}
            rows.append(_to_columns(finish_item(self.store, item, self.labels[item["source"]], d, self.teacher,
                                                self.align, self.settings, self.space, c)))
        _maybe_crash()
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def _to_columns(row: dict) -> dict:
    """A manifest row with typed values only (Arrow blocks of Ray batches): no alignment -> NaN / -1,
    unknown file size / time -> -1."""
    return {**row, "scale": math.nan if row["scale"] is None else row["scale"],
            "shift": math.nan if row["shift"] is None else row["shift"],
            **{k: -1 if row[k] is None else row[k] for k in ("inliers", "bytes", "mtime_ns")}}


def _from_columns(row: dict) -> dict:
    """Inverse of :func:`_to_columns`."""
    return {**row, "scale": None if math.isnan(row["scale"]) else row["scale"],
            "shift": None if math.isnan(row["shift"]) else row["shift"],
            **{k: None if row[k] < 0 else row[k] for k in ("inliers", "bytes", "mtime_ns")}}


def _maybe_crash() -> None:
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker:
        return
    try:
        os.unlink(marker)  # only one process can remove it: exactly one crash per marker
    except FileNotFoundError:
        return
    os._exit(1)


class _RunActors:
    """The actors of one run: Ray Data's ``ray_remote_args_fn`` gives each a name of its own in a namespace of the
    run's own (a restarted actor keeps its name); :meth:`kill` ends every actor of the run still alive.

    Ray Data lets go of a run's actors by dropping its references to them, not by killing them, and Ray restarts
    an actor that died (:data:`MAX_ACTOR_RESTARTS`) as long as any handle to it is alive. A stopped run's handles
    can outlive it anywhere in the caller's process: Ray's exception traceback reaches them (its frames hold
    the pool's task callbacks), and a logging handler that keeps records, such as pytest's log capture, keeps
    that exception with the record's ``exc_info``. Such an actor, restarted and idle, kept its CPU or GPU and
    the next run in the same Ray waited for ever for it (issue 12). Killing the run's actors by name when the
    run ends does not depend on who still holds what."""

    def __init__(self):
        self.namespace = ACTOR_NAMESPACE_PREFIX + uuid.uuid4().hex

    def __call__(self) -> dict:
        """Remote arguments for one new actor (called by Ray Data in this process before it creates each one)."""
        return {"name": f"teacher-{uuid.uuid4().hex[:12]}", "namespace": self.namespace}

    def kill(self) -> int:
        """Kill (no restart) every actor of this run that is not dead yet; returns how many were asked to die."""
        import ray

        killed = 0
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != self.namespace:
                continue
            try:
                ray.kill(ray.get_actor(entry["name"], namespace=self.namespace), no_restart=True)
                killed += 1
            except ValueError:  # died meanwhile
                pass
        return killed


class RayRunError(RuntimeError):
    """A Ray label run that stopped (a batch failed after its retries, an actor error). One line, says what to do."""


def _ray_failure(err: BaseException, committed: int) -> RayRunError:
    """The one line for a Ray run that failed: what failed (Ray's first line, or the actor's own exception),
    what was kept, and the command to run again."""
    cause = getattr(err, "cause", None)  # RayTaskError: the exception raised inside the actor or task
    what = cause if isinstance(cause, BaseException) else err
    text = next((ln.strip() for ln in str(what).splitlines() if ln.strip()), "")
    return RayRunError(f"the Ray run stopped: {type(what).__name__}: {text} (a batch is retried "
                       f"{MAX_BATCH_RETRIES} time(s) on a restarted actor before the run stops); the {committed} "
                       "label(s) committed in this run are kept: run the same command again to continue (if a batch "
                       "kills its actor every time, e.g. out of memory, lower --batch-size)")


class ClusterError(RuntimeError):
    """A Ray cluster that cannot be used: unreachable, or refusing this process's token. One line, says what to do."""


AUTH_HELP = ("export RAY_AUTH_MODE=token and give this process the cluster's token: copy the head node's "
             "~/.ray/auth_token (`ray get-auth-token` on the head prints it) to ~/.ray/auth_token here, or set "
             "RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN=TOKEN")


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not HOST:PORT; give the head node's address and the --port "
                           "of its `ray start --head` (e.g. 10.0.0.1:6379)")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (Ray's C++ client logs each refused attempt there) for a short probe."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_cluster(address: str, timeout: float = 5.0) -> None:
    """Fail at once, in one line, if the Ray cluster at ``address`` is unreachable or refuses our token.

    ``ray.init(address=...)`` would otherwise retry for ~20 s (40 s when nothing listens) and end in a
    traceback. Token authentication is Ray's own (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); Ray never sends a token to an explicit address
    unless ``RAY_AUTH_MODE=token`` is set, so neither do we.
    """
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"no Ray cluster answers at {host}:{port} ({err.strerror or err}); start one with "
                           f"`ray start --head --port={port}` on {host}, or pass the right --address") from None
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():
            GcsClient(address=f"{host}:{port}").internal_kv_get(b"pseudodepth-probe", None, timeout=timeout)
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE", "")
        why = ("refused this process's token" if mode.lower() == "token"
               else "requires token authentication (RAY_AUTH_MODE is not 'token' here)")
        raise ClusterError(f"the Ray cluster at {host}:{port} {why}; {AUTH_HELP}") from None
    except Exception as err:  # noqa: BLE001 - anything else: not a Ray head at that port
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"{host}:{port} does not answer as a Ray head node ({line}); pass the --port of "
                           "`ray start --head` as --address HOST:PORT") from None


def connect(address: str | None = None) -> None:
    """Use the running Ray, connect to the cluster at ``address``, or start a local Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    if address:
        check_cluster(address)
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)


def _actor_resources(num_actors: int | None) -> tuple[int, dict]:
    """(actor count, per-actor resources): one GPU per actor where the cluster has GPUs, else CPU actors
    that share the CPUs, one CPU left for the read/decode tasks."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if gpus:
        n = num_actors or gpus
        if n > gpus:
            raise ValueError(f"--actors {n} needs {n} GPUs but the Ray cluster has {gpus}; use --actors {gpus} or fewer")
        return n, {"num_gpus": 1}
    n = num_actors or 1
    if n > max(1, cpus - 1):
        raise ValueError(f"--actors {n} CPU actors cannot run on a Ray cluster of {cpus} CPUs (one is kept for "
                         f"decoding); use --actors {max(1, cpus - 1)} or fewer")
    return n, {"num_cpus": max(1, (cpus - 1) // n)}


def label_folder_ray(model_spec: str, images: str | Path, out: str | Path, *, batch_size: int = 4,
                     settings: LabelSettings | None = None, overwrite: bool = False, address: str | None = None,
                     num_actors: int | None = None, progress: bool = True, version: str | None = None) -> LabelReport:
    """Pseudo-label every file under ``images`` into the label store ``out`` with Ray Data; resumable.

    ``address`` connects to a running cluster (``HOST:6379``); without it a local Ray is started (or
    the one already initialised in this process reused). ``num_actors`` model replicas run the
    network (default: one per GPU, else one). On a cluster, ``images`` and ``out`` must be on a
    shared filesystem mounted at the same path on every node.
    """
    settings = settings or LabelSettings()
    infer.check_settings(settings.precision, settings.tta)
    if batch_size < 1 or (num_actors is not None and num_actors < 1):
        raise ValueError("--batch-size and --actors must be >= 1")
    images, out = Path(images).resolve(), Path(out).resolve()
    if address:
        import ray

        if not ray.is_initialized():
            check_cluster(address)  # before any work: an unreachable or unauthorised cluster fails at once
    if settings.align is not None:
        settings.align.check()
    if settings.focal is not None:
        settings.focal.check()
    # the driver's copy only fixes the teacher fingerprint
    model = load_model(model_spec, version=version, max_depth=settings.max_depth)
    settings.check_teacher(model, model_spec)
    settings = settings.for_model(model)
    teacher = fingerprint(model, settings.as_dict())
    store = LabelStore(out)
    meta = store_meta(model_spec, model, settings, images)
    del model
    with store.writing():
        todo, labels, report = plan(store, images, teacher, meta, overwrite)
        announce_licence(meta)
        return _run_ray(model_spec, store, images, out, todo, labels, teacher, settings, batch_size, address,
                        num_actors, progress, version, report)


def _run_ray(model_spec, store: LabelStore, images: Path, out: Path, todo: list[str], labels: dict, teacher: str,
             settings: LabelSettings, batch_size: int, address: str | None, num_actors: int | None, progress: bool,
             version: str | None, report: LabelReport) -> LabelReport:
    import ray

    start = time.perf_counter()
    if not todo:
        store.consolidate()
        return report
    connect(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our one bar below counts committed rows
    n_actors, resources = _actor_resources(num_actors)
    ds = ray.data.from_items([{"source": s} for s in todo])
    ds = ds.map(_LoadSource(images, settings))
    actors = _RunActors()
    with warnings.catch_warnings():
        # Ray 2.60 has no named map_batches parameter for actor fault tolerance nor for per-actor remote
        # arguments yet; the remote-args spellings still work and are what its own docs show, so their
        # deprecation notices are muted here.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(
            _Teacher, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=n_actors),
            batch_format="numpy",
            fn_constructor_kwargs={"model_spec": str(model_spec), "settings": settings, "store_root": str(out),
                                   "labels": {s: labels[s] for s in todo}, "teacher": teacher,
                                   "version": version},
            ray_remote_args_fn=actors,
            max_restarts=MAX_ACTOR_RESTARTS, max_task_retries=MAX_BATCH_RETRIES, **resources,
        )
    committed: set[str] = set()
    bar = tqdm(total=len(todo), desc="label (ray)", unit="img", disable=not progress, dynamic_ncols=True)
    failed, failure = True, None
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = [_from_columns(r) for r in block.to_pylist()
                    if r["source"] not in committed]  # never commit a row twice
            store.append(rows)
            committed.update(r["source"] for r in rows)
            report.count(rows)
            bar.update(len(rows))
        failed = False
    except StoreError as err:  # an actor's write error arrives wrapped in Ray's multi-line RayTaskError
        cause = getattr(err, "cause", err)
        failure = cause if isinstance(cause, StoreError) else StoreError(str(err).splitlines()[-1])
    except ray.exceptions.RayError as err:  # a dead actor whose batch ran out of retries, an error in an actor
        failure = _ray_failure(err, len(committed))
    finally:
        bar.close()
        try:
            store.finish(failed)
        finally:
            actors.kill()  # however the run ended (done, stopped, interrupted): its CPUs / GPUs are free now
    if failure is not None:
        raise failure  # outside the except clauses: one line, no Ray exception chained as its context
    report.seconds = time.perf_counter() - start
    return report
