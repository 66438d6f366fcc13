"""The ranks of one job under ``torchrun``: device, process group and the few collectives training and
generation use. One process is a world of one: every collective is then a no-op that returns its argument, so
each loop is written once for both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .errors import SciencegenError

__all__ = ["Ranks", "pick_device"]


def pick_device(name: str, local_rank: int | None, key: str,
                error: type[Exception] = SciencegenError) -> torch.device:
    """The device a config key names: ``auto`` (CUDA if available) | ``cpu`` | ``cuda`` | ``cuda:N``.

    ``auto`` and a bare ``cuda`` take this process's ``LOCAL_RANK`` under ``torchrun``; ``key`` (e.g.
    ``generate.device``) names the option in the one-line ``error`` raised when CUDA is asked for but absent.
    """
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda", local_rank or 0) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{key}={name} but CUDA is not available (use {key}=cpu or auto)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank or 0)
    return dev


class Ranks:
    """Rank, world size and the collectives of a job (no-ops in one process).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the default process group is created (NCCL on GPUs, gloo on CPUs)
    unless one exists already; :meth:`close` destroys only a group created here.

    Parameters
    ----------
    device
        This rank's device (:func:`pick_device`); a CUDA device becomes the current one.
    enabled
        ``False``: a world of one even under ``torchrun`` (every rank then works alone).
    error
        The error class of the one-line message when ``torch.distributed`` is missing.
    """

    def __init__(self, device: torch.device, *, enabled: bool = True, error: type[Exception] = SciencegenError):
        import torch.distributed as dist

        self.dist = dist
        self.created = False
        self.device = device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if enabled and dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        elif enabled and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_available():
                raise error("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.created = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        nccl = self.world > 1 and dist.get_backend() == "nccl"
        self.comm_device = self.device if nccl else torch.device("cpu")
        # votes run on CPU tensors (gloo) so that they never wait for the GPU stream
        self.ctrl_group: Any = None
        if nccl:
            try:
                self.ctrl_group = dist.new_group(backend="gloo")
            except Exception:  # no gloo in this build: vote over NCCL (a GPU sync per vote)
                self.ctrl_group = None

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the one that writes)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            self.dist.barrier()

    def sum(self, values: Sequence[float] | torch.Tensor) -> list[float]:
        """Element-wise sum over the ranks (float64)."""
        t = torch.as_tensor(values, dtype=torch.float64).to(self.comm_device)
        if self.world > 1:
            self.dist.all_reduce(t)
        return t.cpu().tolist()

    def max(self, value: float) -> float:
        """The largest of the ranks' ``value``."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())

    def agree(self, code: int) -> int:
        """The largest of the ranks' ``code`` (every rank must call it at the same point of the loop)."""
        if self.world == 1:
            return code
        if self.ctrl_group is not None:
            t = torch.tensor([code], dtype=torch.int64)
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.ctrl_group)
        else:
            t = torch.tensor([code], dtype=torch.int64, device=self.comm_device)
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if self.world == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.created and self.dist.is_initialized():
            self.dist.destroy_process_group()
