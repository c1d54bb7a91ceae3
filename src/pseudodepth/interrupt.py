"""Ctrl-C in a long command: finish cleanly, keep what was done, and say in one line how to continue.

- :class:`DeferredInterrupt`: inside it the first SIGINT only sets ``requested``; the training loop
  checks it after each optimiser step, saves a checkpoint and raises :class:`Interrupted` (so no
  step since the last periodic checkpoint is lost and no half-updated weights are written). A second
  Ctrl-C interrupts at once.
- :class:`Interrupted`: a ``KeyboardInterrupt`` that says what was saved.
- :func:`interrupt_line`: the one line the CLI prints instead of a traceback: what was saved and the
  command that continues.
"""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the interrupted code saved its state: ``saved`` says what and where."""

    def __init__(self, saved: str) -> None:
        super().__init__(saved)
        self.saved = saved


class DeferredInterrupt:
    """Context manager: the first SIGINT sets :attr:`requested` instead of raising; a second one raises.

    Only the main thread can own a signal handler; elsewhere (and with ``enabled=False``) it does nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


def command_line(argv: list[str], prog: str = "pseudodepth", add: str | None = None) -> str:
    """The command as typed (``prog`` + ``argv``), with flag ``add`` appended unless present."""
    args = list(argv) + ([add] if add and add not in argv else [])
    return shlex.join([prog, *args])


def _train_out(args) -> Path | None:
    from .config import load_config

    try:
        out = load_config(args.config, check_paths=False).out_dir
    except Exception:  # noqa: BLE001 - a message about the interrupt must not fail
        return None
    return Path(args.out).resolve() if getattr(args, "out", None) else out


def interrupt_line(args, argv: list[str], err: KeyboardInterrupt, prog: str = "pseudodepth") -> str:
    """What was saved and how to continue, for the command in ``args`` (parsed from ``argv``)."""
    command = getattr(args, "command", None) or "train"
    again = command_line(argv, prog)
    if command == "train":
        resume = command_line(argv, prog, add="--resume")
        if isinstance(err, Interrupted):
            return f"interrupted: {err.saved}; continue with: {resume}"
        from .checkpoints import latest_checkpoint

        out = _train_out(args)
        latest = latest_checkpoint(out) if out is not None else None
        if latest is None:
            return f"interrupted before the first checkpoint: nothing saved; start again with: {again}"
        return f"interrupted: the newest checkpoint is {latest}; continue with: {resume}"
    if isinstance(err, Interrupted):
        return f"interrupted: {err.saved}; the same command continues: {again}"
    if command == "label":
        from .store import LabelStore

        try:
            rows = LabelStore(args.out).rows()
        except Exception:  # noqa: BLE001
            rows = []
        return (f"interrupted: {len(rows)} images are labelled and committed in {args.out} (a label in flight is "
                f"dropped, never half-written); the same command continues: {again}")
    if command == "demo":
        return (f"interrupted: the data, finished models and label stores in {args.out} are kept; continue with: "
                f"{command_line(argv, prog, add='--resume')}")
    if command == "adapt":
        return f"interrupted before the first stage: nothing to keep yet; the same command starts again: {again}"
    if command == "eval":
        return f"interrupted: nothing written (metrics are written at the end); run again: {again}"
    return "interrupted"


def ignore_in_worker(_worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: a worker ignores SIGINT, so Ctrl-C (sent to the whole process group)
    stops only the main process, which finishes its step; a worker killed by it would end the run with an
    EOFError instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
