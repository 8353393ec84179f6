"""Scale-out with torchrun: DistributedDataParallel over NCCL (GPU) or gloo (CPU).

Run ``torchrun --nproc_per_node N --no-python cips-deploy train ...``: torchrun sets
RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process. Every rank
draws its own data and latents; gradients are averaged by DDP, so the replicas stay
identical, which each checkpoint verifies with a parameter fingerprint.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from cips_deploy.errors import CipsError


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module wrapped in DDP when distributed, else itself."""
        if not self.enabled:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)

    def autocast(self):
        """bf16 mixed precision on CUDA; full precision elsewhere."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def mean(self, tensor: Tensor) -> Tensor:
        """The mean of ``tensor`` over all ranks."""
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (so that all ranks stop together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_fingerprint(self, *modules: nn.Module) -> list[str]:
        """Every rank's fingerprint of the modules' parameters (a float64 weighted sum)."""
        with torch.no_grad():
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for module in modules:
                for index, parameter in enumerate(module.parameters()):
                    total += parameter.double().sum() * (index + 1)
        if not self.enabled:
            return [f"{total.item():.12e}"]
        values = [torch.zeros_like(total) for _ in range(self.world_size)]
        dist.all_gather(values, total)
        return [f"{value.item():.12e}" for value in values]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            # Every rank reaches the end before any tears the group down: a rank that left
            # early closed its gloo connections under the other's feet, which aborted it at exit.
            dist.barrier()
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> Distributed:
    """Join the torchrun process group if there is one, and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CipsError("--device cuda was asked for, but torch sees no CUDA device.")
        chosen = torch.device("cuda", local_rank if world_size > 1 else torch.device(device).index or 0)
        torch.cuda.set_device(chosen)
    elif device == "cpu":
        chosen = torch.device("cpu")
    else:
        raise CipsError(f"Unknown device {device!r}; use auto, cpu or cuda.")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)
