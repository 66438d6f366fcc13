"""Stopping and resuming safely: RNG states, the ranks' stop vote, disk faults of the run directory.

* :func:`rng_state` / :func:`set_rng_state`: what a checkpoint records so a resumed run draws the same numbers.
* :data:`SIGNAL_CODE`, :data:`FAULT`: the codes of the per-step vote of the ranks (the largest wins).
* :class:`DiskFault`, :func:`check_run_dir`, :func:`fault_error`: a run directory that cannot be written
  stops the job with one line naming the file and the checkpoint that stays usable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainError, os_error_line
from .distributed import Distributed

__all__ = ["FAULT", "SIGNAL_CODE", "SIGNAL_NAME", "DiskFault", "check_run_dir", "fault_error",
           "ignore_stop_signals", "rng_state", "set_rng_state"]

#: codes of the per-step vote of the ranks (the largest wins): go on (0), a signal (stop at this step), a disk fault
SIGNAL_CODE = {"SIGINT": 1, "SIGTERM": 2}
SIGNAL_NAME = {v: k for k, v in SIGNAL_CODE.items()}
FAULT = 3


class DiskFault(TrainError):
    """The run directory cannot be written (disk full, read-only, quota): an operating-system fault (exit 1)."""

    exit_code = 1


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch, NumPy, Python (and CUDA on a GPU) random states of this process."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: Ctrl-C and SLURM signal the whole process group, and the main
    process stops at a safe point and then shuts its workers down (a worker killed first would fail the loader)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check_run_dir(run_dir: Path, dist: Distributed) -> None:
    """Stop before any work when rank 0 cannot write the run directory (read-only, full, no permission).

    Raises
    ------
    DiskFault
        On every rank, with rank 0's one-line reason.
    """
    line = None
    if dist.main:
        probe = run_dir / f".write-test-{os.getpid()}"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"0")
                f.flush()
            probe.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                probe.unlink()
            if exc.errno is None:
                raise
            line = os_error_line(OSError(exc.errno, exc.strerror, os.fspath(run_dir)))
    line = dist.broadcast(line)
    if line is not None:
        raise DiskFault(f"{line}; nothing was trained: the run directory must be writable (checkpoints, "
                        "metrics.csv): fix it or choose another (hydra.run.dir=... or run_dir=...)")


def fault_error(fault: OSError | None, *, step: int, run_dir: Path, checkpoint: Path | None,
                saved_step: int) -> DiskFault:
    """The one-line error of a failed write of rank 0, naming the file and the checkpoint that stays usable.

    Parameters
    ----------
    fault
        Rank 0's error (``None`` on the other ranks: rank 0 prints the details).
    step
        The step training stopped at.
    run_dir
        The run directory.
    checkpoint, saved_step
        The last complete checkpoint (``None``: none yet) and its step.
    """
    if fault is None:
        return DiskFault(f"training stopped at step {step}: rank 0 could not write to {run_dir} "
                         "(see its message); rerun the same command to resume from the last checkpoint")
    if checkpoint is not None:
        kept = f"the last complete checkpoint, step {saved_step} ({checkpoint}), stays usable"
    else:
        kept = "no checkpoint was written yet"
    fix = "once there is room" if fault.errno in (errno.ENOSPC, errno.EDQUOT) else "once it can be written"
    return DiskFault(f"{os_error_line(fault)}; training stopped at step {step}; {kept}: rerun the same "
                     f"command {fix} to resume")
