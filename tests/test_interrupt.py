"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends long commands with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from pseudodepth.interrupt import Interrupted, command_line, interrupt_line
from pseudodepth.store import LabelStore
from pseudodepth.checkpoints import TRAINER_STATE, latest_checkpoint

from train_helpers import labeled_folder, one_thread_env, write_config

CLI = [sys.executable, "-m", "pseudodepth.cli"]


def ctrl_c_when(cmd: list[str], ready, timeout: float = 600.0) -> tuple[int, str]:
    """Start ``cmd`` in its own session, SIGINT its process group once ``ready()``; returns (exit code, stderr)."""
    # SIGINT back to its default in the child: a test run started in the background (nohup, `&`) inherits an
    # ignored SIGINT, and Python then installs no KeyboardInterrupt handler (as a shell's background job).
    proc = subprocess.Popen(cmd, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd} ended before the interrupt: {proc.communicate()[1][-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd}: not ready after {timeout} s")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "KeyboardInterrupt" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


def logged_steps(log: Path) -> int:
    try:
        return max(0, len(log.read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_ctrl_c_in_train_saves_a_checkpoint_and_says_how_to_continue(tmp_path: Path) -> None:
    labeled_folder(tmp_path / "labeled", count=4)
    config = write_config(tmp_path / "c.yaml", train={"steps": 100000, "save_every": 100000, "workers": 1})
    run = tmp_path / "run"
    code, err = ctrl_c_when([*CLI, "train", str(config)], lambda: logged_steps(run / "log.csv") >= 3)
    line = last_line(err)
    assert code == 130
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None and (checkpoint / TRAINER_STATE).is_file()
    step = int(checkpoint.name.split("_")[1])
    assert step >= 3  # the steps since the start are kept although save_every was never reached
    assert json.loads((checkpoint / "pseudodepth.json").read_text())["step"] == step
    assert line.startswith(f"pseudodepth train: interrupted: saved the checkpoint {checkpoint} after step {step} of 100000")
    assert line.endswith(f"continue with: {command_line(['train', str(config), '--resume'])}")


def test_ctrl_c_in_label_keeps_committed_labels(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "labels"
    cmd = [*CLI, "label", "--model", "da-v2-tiny", "--images", str(photos), "--out", str(out), "--workers", "1",
           "--batch-size", "1", "--input-size", "70"]
    journal = out / "manifest.journal"
    code, err = ctrl_c_when(cmd, lambda: journal.is_file() and journal.read_text().count("\n") >= 2)
    line = last_line(err)
    assert code == 130
    rows = LabelStore(out).rows()
    assert 2 <= len(rows) < 20 and all((out / r["label"]).is_file() for r in rows if r["status"] == "ok")
    assert line == (f"pseudodepth label: interrupted: {len(rows)} images are labelled and committed in {out} (a label "
                    f"in flight is dropped, never half-written); the same command continues: {command_line(cmd[3:])}")


def test_interrupt_lines_of_the_other_commands(tmp_path: Path) -> None:
    demo = Namespace(command="demo", out="demo_out")
    assert interrupt_line(demo, ["demo", "--out", "demo_out"], KeyboardInterrupt()).endswith(
        "continue with: pseudodepth demo --out demo_out --resume")
    assert interrupt_line(Namespace(command="eval"), ["eval", "--model", "a b"], KeyboardInterrupt()).endswith(
        "run again: pseudodepth eval --model 'a b'")
    adapt = Namespace(command="adapt")
    assert interrupt_line(adapt, ["adapt", "--out", "r"], Interrupted("labels kept in r/labels")) == (
        "interrupted: labels kept in r/labels; the same command continues: pseudodepth adapt --out r")
    train_args = Namespace(command="train", config=str(tmp_path / "missing.yaml"), out=None)
    assert interrupt_line(train_args, ["train", "x.yaml"], KeyboardInterrupt()).startswith(
        "interrupted before the first checkpoint: nothing saved")


@pytest.mark.parametrize("argv,add,expected", [
    (["train", "c.yaml"], "--resume", "pseudodepth train c.yaml --resume"),
    (["train", "c.yaml", "--resume"], "--resume", "pseudodepth train c.yaml --resume"),
    (["label", "--images", "my photos"], None, "pseudodepth label --images 'my photos'"),
])
def test_command_line(argv: list[str], add: str | None, expected: str) -> None:
    assert command_line(argv, add=add) == expected
