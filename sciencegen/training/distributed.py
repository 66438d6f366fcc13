"""The ranks of a training job: device, process group (under ``torchrun``) and the few collectives it uses.

One process is a world of one: every collective is then a no-op that returns its argument, so the training
loop is written once for both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import TrainError

__all__ = ["Distributed"]


class Distributed:
    """Rank, world size, device and the collectives of the trainer (no-ops in one process).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the default process group is created (NCCL on GPUs, gloo on
    CPUs) unless one exists already; :meth:`close` destroys only a group created here.

    Parameters
    ----------
    device_opt
        ``train.device``: ``auto`` (CUDA if available) | ``cpu`` | ``cuda`` | ``cuda:N``.

    Raises
    ------
    TrainError
        CUDA asked for but not available, or ``WORLD_SIZE > 1`` without ``torch.distributed``.
    """

    def __init__(self, device_opt: str):
        import torch.distributed as dist

        self.dist = dist
        self.created = False
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device_opt = str(device_opt or "auto")
        use_cuda = torch.cuda.is_available() if device_opt == "auto" else device_opt.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise TrainError(f"train.device={device_opt} but CUDA is not available (use train.device=cpu)")
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_available():
                raise TrainError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self.created = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        if use_cuda:
            self.device = torch.device(device_opt if ":" in device_opt else f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        nccl = self.world > 1 and dist.get_backend() == "nccl"
        self.comm_device = self.device if nccl else torch.device("cpu")
        # the per-step stop/fault vote runs on CPU tensors (gloo) so that it never waits for the GPU stream
        self.ctrl_group: Any = None
        if nccl:
            try:
                self.ctrl_group = dist.new_group(backend="gloo")
            except Exception:  # no gloo in this build: vote over NCCL (a GPU sync per step)
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
