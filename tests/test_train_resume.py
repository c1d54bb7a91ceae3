"""A run killed with SIGKILL after a checkpoint and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pseudodepth.config import load_config
from pseudodepth.label import label_folder
from pseudodepth.models import load_model
from pseudodepth.synth import write_domain
from pseudodepth.train import train

from train_helpers import labeled_folder, one_thread_env, write_config

STEPS, SAVE_EVERY = 40, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    # Student mode: the random crops, flips, perturbations and CutMix boxes must all replay.
    labeled_folder(tmp_path / "labeled", count=3, size=(42, 56))
    write_domain(tmp_path / "unlabeled", "target", 4, 100, (42, 56), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    path = write_config(tmp_path / "c.yaml", mode="student",
                        train={"steps": STEPS, "batch_size": 3, "save_every": SAVE_EVERY, "log_every": 2},
                        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
                        optim={"schedule": "poly", "warmup_steps": 3}, feature_alignment={"enabled": True})

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pseudodepth.train", str(path), "--out", str(killed)],
                            env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "checkpoints" / f"step_{SAVE_EVERY:06d}"
    deadline = time.monotonic() + 120
    while not first.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert first.is_dir(), err.decode()[-2000:]
    if (killed / "final").exists():
        pytest.fail("the run finished before it could be killed; raise STEPS")

    resumed = train(load_config(path, {"train": {"out": str(killed)}}), resume=True)
    reference = train(load_config(path, {"train": {"out": str(tmp_path / "reference")}}))

    a, b = load_model(resumed).state_dict(), load_model(reference).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    with (killed / "log.csv").open(newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == list(range(2, STEPS + 1, 2))  # rows after the checkpoint were replaced, none doubled
