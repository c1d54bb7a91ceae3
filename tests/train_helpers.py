"""Tiny generated datasets and configs for the training tests (real PNG files on disk)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pseudodepth.synth import write_domain

TINY_TRAIN = {"steps": 4, "batch_size": 2, "crop_size": 42, "workers": 0, "log_every": 1, "save_every": 1000}


def labeled_folder(root: Path, count: int = 4, size: tuple[int, int] = (42, 42), seed0: int = 0) -> Path:
    """``root/images/*.png`` + ``root/depth/*.png`` (16-bit mm) of generated indoor scenes."""
    write_domain(root, "source", count, seed0, size)
    return root


def write_config(path: Path, mode: str = "teacher", train: dict | None = None, **sections) -> Path:
    """A config YAML at ``path``: a da-v2-tiny model on ``labeled/`` next to it, with ``sections`` merged in."""
    data = {
        "mode": mode,
        "model": {"init": "da-v2-tiny"},
        "data": {"labeled": [{"type": "folder", "root": "labeled"}]},
        "optim": {"encoder_lr": 1e-4, "decoder_lr_mult": 10, "schedule": "constant"},
        "train": {**TINY_TRAIN, "out": "run", **(train or {})},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def one_thread_env() -> dict[str, str]:
    """Environment for training subprocesses: one intra-op thread (the tiny model is far faster on one
    core than on two shared ones)."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
