"""Keeping modules that live outside the DDP wrapper in sync across processes.

Auxiliary heads (``config.heads``) have their own weights (user tables, MLPs, attention layers) beside the
generative model. Accelerate wraps only the model in DistributedDataParallel, so without help each process would
update its copy of the heads with its own gradient and the copies would drift apart. Two collectives fix that: the
heads start from rank 0's weights, and their gradients are averaged before every optimizer step, which is what DDP
does for the model's parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every process (no-op without a process group)."""
    if not _distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(tensor.data, src=src)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over all processes (no-op without a process group).

    One flat all-reduce instead of one per tensor. A parameter without a gradient on some process (a head component
    that a batch's task mix did not use) counts as a zero gradient there; every process must take part in the same
    collective with the same sizes, so such parameters get a zero (then averaged) gradient everywhere.
    """
    if not _distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n
