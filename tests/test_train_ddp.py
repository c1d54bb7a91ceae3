"""``torchrun --nproc_per_node=2`` on CPU (gloo): ranks end with identical weights and read different samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from pseudodepth.label import label_folder
from pseudodepth.models import load_model
from pseudodepth.synth import write_domain

from train_helpers import labeled_folder, one_thread_env, write_config


def test_torchrun_two_ranks(tmp_path: Path) -> None:
    labeled_folder(tmp_path / "labeled", count=6)
    write_domain(tmp_path / "unlabeled", "target", 12, 100, (42, 42), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    path = write_config(tmp_path / "c.yaml", mode="student", train={"steps": 3, "batch_size": 3,
                                                                    "debug_dump_weights": True},
                        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
                        feature_alignment={"enabled": True})
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pseudodepth.train", str(path)],
                         env=one_thread_env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "run"
    weights = [torch.load(out / f"rank{r}_weights.pt", weights_only=True) for r in range(2)]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)
    saved = load_model(out / "final").state_dict()
    torch.testing.assert_close(saved, weights[0])
    initial = load_model("da-v2-tiny").backbone.state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in load_model(out / "final").backbone.state_dict().items())

    seen = [(out / f"rank{r}_samples.txt").read_text().split() for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 3 * 3  # 3 steps x (1 labeled + 2 unlabeled) per rank
    assert not set(seen[0]) & set(seen[1]), seen  # 3 steps fit in one epoch (6 labeled, 12 unlabeled): disjoint shards
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 3  # rank 0 alone writes the log
