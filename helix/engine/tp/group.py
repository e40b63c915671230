"""A tensor-parallel process group: `torch.distributed` over one host, NCCL on GPUs, gloo on CPU.

One process per rank; each calls `init_group` once (it sets up torch's default process group of that
process) and `destroy_group` when done. The rendezvous goes through a `TCPStore` owned by rank 0.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

STORE_PREFIX = "helix_tp_pg"


@dataclass(frozen=True, slots=True)
class TPGroup:
    """This process's rank in a group of `world` ranks, and the collectives a stage needs."""

    rank: int
    world: int
    device: torch.device

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` over the ranks, in place."""
        dist.all_reduce(tensor)

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` [..., n] concatenated in rank order: [..., world * n]."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=-1)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        dist.broadcast(tensor, src)

    def min_int(self, value: int) -> int:
        """The smallest `value` over the ranks."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def barrier(self) -> None:
        dist.barrier()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_group(store: dist.Store, rank: int, world: int, device: torch.device, timeout_s: float) -> TPGroup:
    """Join the group (blocks until all `world` ranks joined or `timeout_s` passed)."""
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group (one rank per process)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device),
        store=dist.PrefixStore(STORE_PREFIX, store),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return TPGroup(rank, world, device)


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
