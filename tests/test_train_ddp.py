"""``torchrun --nproc_per_node=2`` on CPU (gloo): ranks end with identical weights, read different samples,
and the result is that of one process training on both ranks' batches together."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pseudodepth.config import load_config
from pseudodepth.label import label_folder
from pseudodepth.models import load_model
from pseudodepth.synth import write_domain
from pseudodepth.train import train

from train_helpers import labeled_folder, one_thread_env, write_config


def test_torchrun_two_ranks_equal_one_process(tmp_path: Path) -> None:
    labeled_folder(tmp_path / "labeled", count=6)
    write_domain(tmp_path / "unlabeled", "target", 12, 100, (42, 42), with_depth=False)
    label_folder("da-v2-tiny", tmp_path / "unlabeled" / "images", tmp_path / "labels", workers=0, progress=False)
    # No per-rank randomness (perturbations, CutMix partners) and a per-image loss: two ranks with batch 3
    # (1 labeled + 2 unlabeled each) average the gradients of the same 6 images as one process with batch 6
    # (2 + 4) - rank r reads positions r, r + 2, ... of the same epoch order. Feature alignment runs
    # (frozen encoder outside DDP) but stays 0: the student never leaves the 0.85 margin in 3 steps.
    path = write_config(tmp_path / "c.yaml", mode="student", train={"steps": 3, "batch_size": 3,
                                                                    "debug_dump_weights": True},
                        data={"unlabeled": [{"type": "label_store", "root": "labels"}]},
                        augment={"strong": False, "cutmix_p": 0.0}, feature_alignment={"enabled": True})
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pseudodepth.train", str(path)],
                         env=one_thread_env(), capture_output=True, text=True, timeout=420)
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

    torch.set_num_threads(1)
    single = train(load_config(path, {"train": {"batch_size": 6, "out": str(tmp_path / "single")}}))
    single_seen = (tmp_path / "single" / "rank0_samples.txt").read_text().split()
    assert sorted(single_seen) == sorted(seen[0] + seen[1])  # the same images
    # The same losses at every step (step 2 and 3 follow the updates) ...
    ddp_log, single_log = read_log(out), read_log(tmp_path / "single")
    assert len(ddp_log) == len(single_log) == 3
    for a, b in zip(ddp_log, single_log):
        for key in ("loss", "labeled_ssi", "labeled_gm", "unlabeled_ssi", "unlabeled_gm", "dropped_share"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), (a["step"], key)
    # ... and the same final model. Not bit for bit: Adam turns float noise in gradients that are 0 in
    # exact arithmetic (the SSI loss ignores a global shift, e.g. of the last bias) into +-lr steps.
    x = torch.rand(2, 3, 42, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = load_model(out / "final")(pixel_values=x).predicted_depth
        b = load_model(single)(pixel_values=x).predicted_depth
        start = load_model("da-v2-tiny")(pixel_values=x).predicted_depth
    assert float((a - b).norm() / (b - start).norm()) < 0.1  # far closer than the 3 steps moved the output


def read_log(out: Path) -> list[dict]:
    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))
