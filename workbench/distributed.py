"""Multi-process data parallelism for the training loop, launched by ``torchrun``.

The EP estimators write ``.grad`` outside autograd, so DDP's backward hooks never fire; instead
each process computes the gradient of the mean cost over its slice of the global batch, and
:meth:`Dist.average` all-reduces the gradients (one flat buffer) and divides by the number of
processes: with equal slices that is exactly the gradient of the global-batch mean, up to float
reduction order. Backend: ``nccl`` on CUDA, ``gloo`` on CPU; multi-node runs use torchrun's
rendezvous unchanged (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` …).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as tdist

__all__ = ["Dist", "setup", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@dataclass
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (1 and 0 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def average(self, tensors: Sequence[torch.Tensor]) -> None:
        """In place: every tensor becomes its mean over the processes (one all-reduce)."""
        self.sum(tensors, scale=1.0 / self.world)

    def sum(self, tensors: Sequence[torch.Tensor], scale: float = 1.0) -> None:
        """In place: every tensor becomes ``scale ×`` its sum over the processes."""
        if not self.active or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        tdist.all_reduce(flat)
        flat *= scale
        at = 0
        for t in tensors:
            t.copy_(flat[at:at + t.numel()].view_as(t))
            at += t.numel()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one (``WORLD_SIZE > 1``); return it and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    owns = not tdist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, owns), device
