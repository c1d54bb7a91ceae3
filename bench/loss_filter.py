"""Cost of the Depth Anything V2 top-loss filter in the pseudo-label loss step (CPU).

Forward + backward of the loss (ssi + 2 * gradient matching) on random B x 518 x 518 maps
(pred requires grad, ~90% valid pixels), side by side:

  (a) unfiltered        ``labeled_loss``
  (b) drop_top_losses   ``pseudo_label_loss(drop_ratio=0.1)`` (exact per-image selection)
  (c) torch.quantile    the same ``pseudo_label_loss`` with a per-image ``torch.quantile``
                        filter swapped in for ``drop_top_losses`` (the obvious implementation)

Goal: the filter adds <= 10% to the loss step. The variants alternate within each timing
round, so load from other processes hits them alike; wall time and this process's CPU time
are both reported. Prints markdown tables and writes them to ``bench/results/loss_filter.md``.

    python bench/loss_filter.py --sizes 8,64 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from common import (  # bench/common.py (scripts run as `python bench/NAME.py`)
    cpu_model,
    write_table,
)

from pseudodepth import losses

SIDE = 518
DEFAULT_OUT = Path(__file__).parent / "results" / "loss_filter.md"
UNFILTERED, KTH, QUANTILE = "(a) unfiltered (ssi + gm)", "(b) drop_top_losses", "(c) torch.quantile reference"


@torch.no_grad()
def quantile_filter(loss_map: torch.Tensor, valid: torch.Tensor, ratio: float = 0.1, *_unused) -> torch.Tensor:
    """Reference filter: per image ``keep = valid & (L < torch.quantile(L[valid], 1 - ratio))``."""
    keep = torch.zeros_like(valid)
    for b in range(loss_map.shape[0]):
        values = loss_map[b][valid[b]]
        if values.numel():
            keep[b] = valid[b] & (loss_map[b] < torch.quantile(values, 1 - ratio))
    return keep


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Per step: (median wall ms, median process CPU ms) over ``repeats`` rounds after one warm-up."""
    for step in steps.values():
        step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
    return {name: (1000 * statistics.median(wall[name]), 1000 * statistics.median(cpu[name])) for name in steps}


def bench_batch(batch: int, repeats: int, ratio: float) -> tuple[dict, dict]:
    """Loss-step and filter-alone timings for one batch size."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(batch, SIDE, SIDE, generator=g).requires_grad_(True)
    target = torch.rand(batch, SIDE, SIDE, generator=g)
    valid = torch.rand(batch, SIDE, SIDE, generator=g) < 0.9

    def loss_step(loss_fn: Callable[[], tuple[torch.Tensor, dict]]) -> Callable[[], None]:
        def step() -> None:
            pred.grad = None
            loss_fn()[0].backward()

        return step

    def with_quantile_filter() -> tuple[torch.Tensor, dict]:
        with mock.patch.object(losses, "drop_top_losses", quantile_filter):
            return losses.pseudo_label_loss(pred, target, valid, drop_ratio=ratio)

    # the two filters must agree before their timings mean anything
    kth, quantile = losses.pseudo_label_loss(pred, target, valid, ratio)[0], with_quantile_filter()[0]
    assert torch.allclose(kth, quantile, rtol=1e-4), (kth.item(), quantile.item())

    steps = interleaved_medians(
        {
            UNFILTERED: loss_step(lambda: losses.labeled_loss(pred, target, valid)),
            KTH: loss_step(lambda: losses.pseudo_label_loss(pred, target, valid, ratio)),
            QUANTILE: loss_step(with_quantile_filter),
        },
        repeats,
    )
    loss_map = losses.affine_invariant_loss(pred.detach(), target, valid, reduction="none")
    filters = interleaved_medians(
        {
            KTH: lambda: losses.drop_top_losses(loss_map, valid, ratio),
            QUANTILE: lambda: quantile_filter(loss_map, valid, ratio),
        },
        repeats,
    )
    return steps, filters


def table(sizes: list[int], repeats: int, ratio: float) -> list[str]:
    lines = [
        "| batch | variant | wall ms / step | overhead (wall) | CPU ms / step | overhead (CPU) | filter alone, wall ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch in sizes:
        steps, filters = bench_batch(batch, repeats, ratio)
        base_wall, base_cpu = steps[UNFILTERED]
        for name, (wall, cpu) in steps.items():
            over_wall = "-" if name == UNFILTERED else f"{100 * (wall / base_wall - 1):+.1f}%"
            over_cpu = "-" if name == UNFILTERED else f"{100 * (cpu / base_cpu - 1):+.1f}%"
            alone = f"{filters[name][0]:.1f}" if name in filters else "-"
            lines.append(f"| {batch} | {name} | {wall:.1f} | {over_wall} | {cpu:.1f} | {over_cpu} | {alone} |")
        print("\n".join(lines[-3:]), flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,64", help="comma-separated batch sizes (maps are B x 518 x 518)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--ratio", type=float, default=0.1, help="share of top losses dropped")
    parser.add_argument("--threads", default="2", help="comma-separated torch.set_num_threads values, one table each")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file for the tables")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    command = "python bench/loss_filter.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    report = [
        f"### Top-loss filter overhead in the pseudo-label loss step ({SIDE} x {SIDE}, ratio {args.ratio})",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        f"- command: `{command}`",
        f"- median of {args.repeats} rounds after one warm-up, the variants alternating within each round; "
        "CPU = this process's CPU time; random pred (requires grad), random target, ~90% valid pixels "
        "(random per pixel); loss = ssi + 2 * gm (4 scales)",
    ]
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        load_before = os.getloadavg()[0]
        lines = table(sizes, args.repeats, args.ratio)
        report += [
            "",
            f"torch.set_num_threads({threads}); load average (1 min) before / after: "
            f"{load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
            "",
            *lines,
        ]
    write_table("\n".join(report), args.out)


if __name__ == "__main__":
    main()
