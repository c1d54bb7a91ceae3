"""The stages of a teacher -> pseudo-labels -> student run, shared by ``pseudodepth adapt`` and ``pseudodepth demo``.

Each stage is the single commands' code plus what a resumable run needs::

    label    label_images    label.label_folder into a label store; stops the run when no image could be labelled
    train    train_run       train.train; a finished run of the same config is reused, an interrupted one
                             continues from its newest checkpoint, anything else is trained from scratch
    eval     evaluate_sets   evaluate.evaluate on every set: {model: {set: metrics}}; finished sets reused on request

:class:`Stages` announces the numbered stages on stderr and times them; :func:`cpu_seconds` is what
``run.json`` records next to the wall time.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig
from .evaluate import evaluate
from .label import LabelReport, LabelSettings, label_folder
from .checkpoints import latest_checkpoint
from .train import train


class Stages:
    """Announces numbered stages on stderr and records each one's wall time in ``seconds``."""

    def __init__(self, total: int, progress: bool = True) -> None:
        self.total, self.progress, self.done = total, progress, 0
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    def say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def __call__(self, name: str, what: str):
        self.done += 1
        self.say(f"[{self.done}/{self.total}] {name}: {what}")
        tic = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tic
        self.say(f"[{self.done}/{self.total}] {name}: done in {time.perf_counter() - tic:.1f} s "
                 f"(total {time.perf_counter() - self.start:.0f} s)")


def cpu_seconds() -> float:
    """CPU time of this process and its finished child processes (render and data-loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- label


def label_images(teacher: str, images: Path, store: Path, settings: LabelSettings, *, batch_size: int,
                 workers: int, overwrite: bool = False, model=None, device: str = "cpu",
                 progress: bool = True) -> LabelReport:
    """Label the images of ``images`` into the label store ``store`` (:func:`pseudodepth.label.label_folder`:
    rows already committed are kept); raises when not one image could be labelled."""
    report = label_folder(str(teacher), images, store, batch_size=batch_size, workers=workers, settings=settings,
                          overwrite=overwrite, device=device, model=model, progress=progress)
    if report.ok + report.skipped == 0:
        raise RuntimeError(f"{images}: no image could be labelled into {store} ({'; '.join(report.failures[:3])}); "
                           "give a folder of images")
    return report


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class Trained:
    """A model a stage produced: its folder, whether it was trained in this run (False: reused), and what
    happened (``trained``, ``resumed from step_000040``, ``finished earlier: skipped``)."""

    final: Path
    fresh: bool
    what: str = field(default="", compare=False)


def finished_run(out_dir: Path, config_yaml: str) -> Path | None:
    """``out_dir/final`` when ``out_dir`` holds a finished training run of exactly ``config_yaml``."""
    final, meta = out_dir / "final", out_dir / "final" / "pseudodepth.json"  # written last by save_checkpoint
    saved = out_dir / "config.yaml"
    if meta.is_file() and saved.is_file() and saved.read_text() == config_yaml:
        return final
    return None


def train_run(config: TrainConfig, resume: bool = False) -> Trained:
    """Train ``config`` into ``config.out_dir``.

    Without ``resume`` an earlier run in the folder is removed and training starts from scratch. With
    ``resume`` a finished run of the same configuration is reused as it is (``fresh=False``), and an
    interrupted one (same configuration, a checkpoint saved: periodically, or at Ctrl-C) continues from
    its newest checkpoint instead of starting again; a run of another configuration is replaced."""
    config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if resume and (final := finished_run(config.out_dir, config_yaml)):
        return Trained(final, fresh=False, what="finished earlier: skipped")
    saved = config.out_dir / "config.yaml"
    checkpoint = latest_checkpoint(config.out_dir)
    if resume and checkpoint is not None and saved.is_file() and saved.read_text() == config_yaml:
        return Trained(train(config, resume=True), fresh=True, what=f"resumed from {checkpoint.name}")
    shutil.rmtree(config.out_dir, ignore_errors=True)
    return Trained(train(config), fresh=True, what="trained")


# --------------------------------------------------------------------------- eval


def evaluate_sets(models: dict[str, Any], sets: dict[str, str], input_size: int, out: Path | None,
                  progress: bool = True, reuse: bool = False) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """``({model: {set: metrics}}, reused set names)`` for the DATA specs ``sets`` (name -> spec), each
    evaluated with the zero-shot protocol into ``out/<name>/`` (no files with ``out=None``).

    ``reuse``: a set whose ``out/<name>/metrics.json`` (written last, atomically) already holds every model is
    read back instead of evaluated again."""
    metrics: dict[str, dict[str, dict]] = {name: {} for name in models}
    reused = []
    for name, spec in sets.items():
        folder = None if out is None else out / name
        done = None if folder is None else folder / "metrics.json"
        earlier = json.loads(done.read_text()).get("models", {}) if reuse and done and done.is_file() else {}
        if earlier and all(model in earlier for model in models):
            scores = {m: {k: float(v) if isinstance(v, str) else v for k, v in earlier[m].items()} for m in models}
            reused.append(name)
        else:
            scores = evaluate(models, spec, input_size=input_size, progress=progress, out_dir=folder)
        for model in models:
            metrics[model][name] = scores[model]
    return metrics, reused
