"""Training checkpoints: ``OUT/checkpoints/step_XXXXXX/``, each a model SPEC (a complete Hugging Face folder,
:func:`pseudodepth.models.save_checkpoint`) plus ``trainer.pt``: the optimiser state, the random generators'
states and the step, as plain tensors and dicts (read with ``torch.load(weights_only=True)``).

A checkpoint is written into ``step_XXXXXX.tmp`` and renamed, so a killed run leaves either a whole
checkpoint or none; :func:`latest_checkpoint` is where ``train --resume`` (and ``adapt``, ``demo --resume``)
continue. The data order is a function of the seed and the step, so the step is all the data state there is.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .models import load_model, save_checkpoint

if TYPE_CHECKING:
    from .config import TrainConfig

CHECKPOINT_PREFIX = "step_"
TRAINER_STATE = "trainer.pt"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (one with ``trainer.pt``; half-written ones are temp folders)."""
    folders = sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}[0-9]*"))
    complete = [f for f in folders if (f / TRAINER_STATE).is_file() and not f.name.endswith(".tmp")]
    return complete[-1] if complete else None


def save_training_state(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        config: TrainConfig) -> Path:
    """Write ``checkpoints/step_XXXXXX/`` atomically: the model SPEC and ``trainer.pt`` (plain tensors/dicts)."""
    final = checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp, {"step": step, "mode": config.mode, "config": str(out / "config.yaml")})
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "step": step,
        "seed": config.train.seed,
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "numpy_pos": numpy_state["state"]["pos"]},
        # The data order is a function of (seed, step): the step is the data-order state.
        "data": {"next_step": step, "seed": config.train.seed},
    }
    torch.save(state, tmp / TRAINER_STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_training_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights, optimiser and RNG state from a checkpoint folder; returns the next step."""
    state = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)
    model.load_state_dict(load_model(folder).state_dict())
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate((3, tuple(state["rng"]["python"]), None))
    np.random.set_state({"bit_generator": "MT19937", "state": {
        "key": state["rng"]["numpy_key"].numpy().astype(np.uint32), "pos": int(state["rng"]["numpy_pos"])},
        "has_gauss": 0, "gauss": 0.0})
    return int(state["step"])
