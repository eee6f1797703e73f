"""Multi-process data parallelism for the training loop, launched by ``torchrun`` or Slurm.

The EP estimators write ``.grad`` outside autograd, so DDP's backward hooks never fire; instead
each process computes the gradient of the mean cost over its slice of the global batch, and
:meth:`Dist.average` all-reduces the gradients (one flat buffer) and divides by the number of
processes: with equal slices that is exactly the gradient of the global-batch mean, up to float
reduction order. Backend: ``nccl`` on CUDA, ``gloo`` on CPU; multi-node runs use torchrun's
rendezvous unchanged (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` …).

Under Slurm (``srun`` with several tasks, or a submitit job with ``tasks_per_node`` / ``nodes``)
the same variables are derived from Slurm's (:func:`slurm_rendezvous`): ``RANK`` =
``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``, ``LOCAL_RANK`` = ``SLURM_LOCALID``, the
master the first host of ``SLURM_JOB_NODELIST`` and its port derived from the job id.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as tdist

__all__ = ["Dist", "setup", "resolve_device", "slurm_rendezvous", "process_rank"]

#: the master port of a Slurm job's rendezvous: this base plus the job id modulo the span
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (``node[03-05,7],gpu1`` → ``node03``), by
    ``scontrol show hostnames`` where it exists, else by reading the list's first group."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^,\[]+)(?:\[([^-,\]]+))?", nodelist)
    return m.group(1) + (m.group(2) or "") if m else nodelist


def slurm_rendezvous(env=None) -> Optional[dict]:
    """torch.distributed's variables for a task of a Slurm step with more than one task
    (``srun``: ``SLURM_STEP_ID`` set, ``SLURM_NTASKS`` > 1), else None. Variables already set
    (a torchrun inside a Slurm job) win."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or "SLURM_STEP_ID" not in env or int(env.get("SLURM_NTASKS", "1")) < 2:
        return None
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": first_host(env.get("SLURM_STEP_NODELIST")
                                      or env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            "MASTER_PORT": str(SLURM_PORT_BASE + job % SLURM_PORT_SPAN)}


def process_rank() -> int:
    """This process's rank in its multi-process job (torchrun or Slurm), 0 when alone."""
    slurm = slurm_rendezvous()
    return int((slurm or os.environ).get("RANK", "0"))


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
    """Join the torchrun or Slurm job if there is one (``WORLD_SIZE > 1``, or a Slurm step of
    several tasks); return it and the device."""
    slurm = slurm_rendezvous()
    if slurm is not None:
        os.environ.update(slurm)
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
