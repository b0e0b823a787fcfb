"""Multi-process execution with PyTorch's own engine: ``torchrun`` + ``torch.distributed``.

Every command runs unchanged as one process or under
``torchrun --nproc-per-node N [--nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint host:port]``.
:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group: ``nccl`` when the device is CUDA
(each process on ``cuda:LOCAL_RANK``), ``gloo`` on CPU. Without torchrun, or with a world size of 1,
no process group is made and every helper here is a no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import InputError

log = logging.getLogger(__name__)

#: How long a collective (barrier) waits for the slowest rank before failing, in minutes. Dataset
#: runs wait at the end for the rank with the longest last case, so this is generous; override
#: with the environment variable ``ADVSEG_DIST_TIMEOUT_MINUTES``.
DEFAULT_TIMEOUT_MINUTES = 360


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job; ``backend`` is None when there is no process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes shared summaries)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


SINGLE_PROCESS = DistributedContext(rank=0, world_size=1, local_rank=0, backend=None)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"Environment variable {name}={text!r} is not an integer.") from None


def _requested_device(device: torch.device | str) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N).") from None


def _timeout() -> timedelta:
    return timedelta(minutes=_env_int("ADVSEG_DIST_TIMEOUT_MINUTES", DEFAULT_TIMEOUT_MINUTES))


def init_distributed(device: torch.device | str = "auto") -> tuple[DistributedContext, torch.device]:
    """Join the torchrun process group if there is one; return the context and this rank's device.

    World size 1 or no torchrun environment: no process group, the device as requested
    (``auto`` = cuda if available, else cpu). Otherwise the backend is ``nccl`` for CUDA and
    ``gloo`` for CPU, and on CUDA every process uses ``cuda:LOCAL_RANK`` (an index given in
    ``device`` is replaced, since ranks must not share a GPU). Calling it again in a process
    whose group is already up returns the same context.
    """
    requested = _requested_device(device)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        ctx = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
        return ctx, (torch.device("cuda", local_rank) if requested.type == "cuda" else requested)
    if world_size <= 1:
        return SINGLE_PROCESS, requested
    if not dist.is_available():
        raise InputError("This PyTorch build has no torch.distributed, so it cannot run under torchrun.")
    if not 0 <= rank < world_size:
        raise InputError(f"Environment variable RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE).")
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {requested}: CUDA is not available on this machine.")
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()};"
                " use --nproc-per-node at most the number of GPUs."
            )
        rank_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(rank_device)
        backend = "nccl"
    else:
        rank_device = requested
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=_timeout())
    ctx = DistributedContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend
    )
    log.info(
        "rank %d of %d (local %d), backend %s, device %s",
        ctx.rank,
        ctx.world_size,
        local_rank,
        backend,
        rank_device,
    )
    return ctx, rank_device


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    if ctx.enabled and dist.is_initialized():
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group if this process made one."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shared_store(ctx: DistributedContext) -> dist.Store | None:
    """The process group's key-value store (the one torchrun's rendezvous made), or None alone.

    ``store.add(key, 1)`` on it is an atomic counter shared by all ranks on all nodes.
    """
    if not (ctx.enabled and dist.is_initialized()):
        return None
    return dist.distributed_c10d._get_default_store()
