"""What every benchmark script shares: the machine line and writing its table."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> str:
    """One line naming the machine a table was measured on, with its load when the run began."""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu_model()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.2f} at the start")


def write_table(text: str, out: Path) -> None:
    """Print a result table and write it to ``out`` (bench/results/*.md; see bench/collect.py)."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.rstrip("\n") + "\n")
