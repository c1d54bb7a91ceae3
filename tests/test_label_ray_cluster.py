"""The README's cluster recipe, for real: ``ray start --head`` + a second node joined with ``ray start --address``
on this machine (loopback), token authentication on, ``pseudodepth label --engine ray --address`` against it.

Each node is a ``ray start --block`` process in a session of its own (1 CPU each, its own temp folder and
ports), so the finalizer stops exactly this cluster: every process of those two sessions, by id. (``ray stop``
would stop every Ray on the machine, including other test sessions' Rays.)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from pseudodepth.imageio import read_png16
from pseudodepth.label import label_folder
from pseudodepth.store import LabelStore

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RAY = Path(sys.executable).with_name("ray")
ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_pids(leaders: list[int]) -> list[int]:
    """Every live process whose session is one of ``leaders`` (the ``ray start`` processes we started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in leaders and fields[0] != "Z":  # fields: state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


def _stop(leaders: list[int], grace: float = 10.0) -> None:
    """``ray stop`` for our sessions only: SIGTERM every process at once, SIGKILL what is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(leaders):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while _session_pids(leaders) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _session_pids(leaders):
            return


def _node_args(tmp: Path, name: str) -> list[str]:
    agent, grpc, runtime_env, metrics, dashboard = _free_ports(5)
    return ["--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={tmp / name}", "--block",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            f"--dashboard-port={dashboard}"]


def _wait_until_started(proc: subprocess.Popen, log: Path, timeout: float = 360.0) -> None:
    """Wait for ``ray start``'s "Ray runtime started." line (printed once the node has joined the cluster)."""
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"`ray start` did not start within {timeout:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_cluster(request):
    """(address, env of a process holding the token): a 2-node token-authenticated cluster on loopback."""
    tmp = Path(tempfile.mkdtemp(prefix="pdray-"))  # short: Ray's socket paths live under it
    (tmp / "token").write_text(uuid.uuid4().hex)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp / "token"), HOME=str(tmp),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT / "src"),
               RAY_raylet_start_wait_time_s="300")  # a loaded shared machine starts nodes slowly
    leaders: list[int] = []

    def start(args: list[str], log: str) -> None:
        with open(tmp / log, "w") as f:
            p = subprocess.Popen([str(RAY), "start", "--log-style=record", *args], env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        leaders.append(p.pid)
        _wait_until_started(p, tmp / log)

    def finalize() -> None:
        _stop(leaders)
        shutil.rmtree(tmp, ignore_errors=True)

    request.addfinalizer(finalize)
    port = _free_ports(1)[0]
    address = f"127.0.0.1:{port}"
    start(["--head", f"--port={port}", "--include-dashboard=false", *_node_args(tmp, "head")], "head.log")
    start([f"--address={address}", *_node_args(tmp, "node2")], "node2.log")
    yield address, env, tmp


def _label_cli(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pseudodepth.cli", "label", "--model", "da-v2-tiny", *args],
                       env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=500)
    return r, time.monotonic() - t0


def _photos(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir()
    from PIL import Image

    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + 14 * (i % 2), 60, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return folder


def test_label_on_a_two_node_cluster_with_token_auth(tmp_path, ray_cluster, tiny_model):
    address, env, _ = ray_cluster
    imgs = _photos(tmp_path / "imgs")
    r, _ = _label_cli(env, "--engine", "ray", "--address", address, "--images", str(imgs),
                      "--out", str(tmp_path / "ray"), "--batch-size", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "labelled 5 ok, 1 failed" in r.stdout
    label_folder("da-v2-tiny", imgs, tmp_path / "local", workers=0, model=tiny_model, progress=False)
    ray_rows, local_rows = LabelStore(tmp_path / "ray").rows(), LabelStore(tmp_path / "local").rows()
    assert [(a["source"], a["status"], a["teacher"]) for a in ray_rows] == \
           [(b["source"], b["status"], b["teacher"]) for b in local_rows]
    for a, b in zip(ray_rows, local_rows):
        if a["status"] == "ok":
            assert a["min"] == pytest.approx(b["min"], rel=1e-5, abs=1e-6)
            assert a["max"] == pytest.approx(b["max"], rel=1e-5, abs=1e-6)
            qa = read_png16(tmp_path / "ray" / a["label"]).astype(int)
            qb = read_png16(tmp_path / "local" / b["label"]).astype(int)
            assert np.abs(qa - qb).max() <= 1


@pytest.mark.parametrize("token", [None, "wrong"])
def test_unauthorised_driver_fails_at_once_in_one_line(tmp_path, ray_cluster, token):
    address, env, tmp = ray_cluster
    env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    if token:
        (tmp_path / "tok").write_text(token)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "tok"))
    imgs = _photos(tmp_path / "imgs")
    r, _ = _label_cli(env, "--engine", "ray", "--address", address, "--images", str(imgs),
                      "--out", str(tmp_path / "s"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"pseudodepth label: error: the Ray cluster at {address} ")
    assert ("refused this process's token" if token else "requires token authentication") in lines[0]
    assert "RAY_AUTH_MODE=token" in lines[0] and "~/.ray/auth_token" in lines[0]
    # no retry loop: Ray's client logs every refused attempt (once a second, for 20 s) on stderr
    assert not (tmp_path / "s").exists(), "nothing written before the cluster check"


def test_unreachable_cluster_fails_at_once_in_one_line(tmp_path):
    port = _free_ports(1)[0]  # nothing listens there
    imgs = _photos(tmp_path / "imgs")
    r, _ = _label_cli({**os.environ, "PYTHONPATH": str(ROOT / "src")}, "--engine", "ray", "--address",
                      f"127.0.0.1:{port}", "--images", str(imgs), "--out", str(tmp_path / "s"))
    assert "Timed out" not in r.stderr  # Ray alone waits 40 s here, then a traceback
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"pseudodepth label: error: no Ray cluster answers at 127.0.0.1:{port} (Connection refused); start one "
        f"with `ray start --head --port={port}` on 127.0.0.1, or pass the right --address"]
    assert not (tmp_path / "s").exists()
