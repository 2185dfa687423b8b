"""Data-parallel training across processes (``torchrun``), on GPUs (NCCL) or CPUs (gloo).

``torchrun --nproc_per_node N -m eqcryo.cli.main train PARTICLES -o RUN ...`` runs N copies of
the same training. What makes N processes equal to one process with the same global batch:

- **the batch**: the global batch of step k is the one a single process would take (the seeded
  order of :mod:`.batches`); rank r trains on its r-th contiguous slice (``batch_size`` must be a
  multiple of N). Counters (step, position, images) stay global, so a checkpoint resumes under
  any process count;
- **the gradient**: :class:`~torch.nn.parallel.DistributedDataParallel` averages the ranks'
  gradients, i.e. the gradient of the global batch's mean loss;
- **batch normalisation** over the global batch: PyTorch's ``SyncBatchNorm`` on GPUs, and
  :class:`GlobalBatchNorm` (the same statistics through a differentiable all-reduce) on CPUs,
  where ``SyncBatchNorm`` refuses to run;
- **the decisions** (evaluate, checkpoint, refine, stop, Ctrl-C) are rank 0's, broadcast every
  step, since each process has its own clock;
- **one writer**: rank 0 evaluates and writes the run folder; the refinement runs on rank 0 and
  its targets and map are broadcast.

The batch-level uniform-view prior (``view_prior``) is computed per rank: with it, N processes are
close to, not equal to, one process.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..data.errors import InputError

__all__ = ["Distributed", "exit_distributed", "init_distributed", "GlobalBatchNorm", "sync_batch_norm"]


@dataclass
class Distributed:
    """This process's place: ``rank`` of ``world`` processes (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def agree(self, flags: list[bool]) -> list[bool]:
        """Rank 0's ``flags`` on every rank."""
        if not self.active:
            return flags
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.broadcast(t, 0)
        return [bool(x) for x in t.tolist()]

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` set to rank 0's values (in place) on every rank."""
        if self.active:
            dist.broadcast(t.data if isinstance(t, nn.Parameter) else t, 0)
        return t

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shutdown(self) -> None:
        """Wait until every rank is done. The process group is not destroyed: destroying gloo's
        (explicitly, or when DDP's reducer is freed at exit) can deadlock against a gloo worker
        thread waiting for the GIL; the process leaves through ``os._exit`` instead
        (:func:`exit_distributed`), and the operating system closes its connections."""
        if self.active and dist.is_initialized():
            dist.barrier()


def exit_distributed(rc: int) -> None:
    """Under torchrun: flush the output and end this process at once, without the teardown that
    can deadlock (:meth:`Distributed.shutdown`). A no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def init_distributed(device: str) -> tuple[Distributed, str]:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT); returns (this process's place, its device). Without those
    variables: one process, ``device`` unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.cuda.device_count() <= local:
            raise InputError(f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s)")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, device), device


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation with statistics over the batches of all processes (CPU, gloo).

    Training: per-channel sums of x and the count, then of (x − mean)², are all-reduced
    (differentiably: ``torch.distributed.nn.functional.all_reduce``), so each rank normalises by the
    global batch's mean and (biased) variance and the backward pass sees the global statistics' dependence on
    every rank's inputs, as a single process with the whole batch would. Running statistics are
    updated with the unbiased variance, as ``BatchNorm``. Evaluation: the running statistics.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as _all_reduce

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            with warnings.catch_warnings():  # deprecated in favour of a private module; still differentiable
                warnings.simplefilter("ignore", FutureWarning)
                return _all_reduce(t)

        dims = [0] + list(range(2, x.dim()))
        C = x.shape[1]
        n_local = x.numel() // C
        shape = [1, C] + [1] * (x.dim() - 2)
        s = all_reduce(torch.cat([x.sum(dims), x.new_full((1,), float(n_local))]))
        n = s[-1]
        mean = s[:C] / n
        # two passes (not E[x²] − mean²): float32 keeps the variance's digits when |mean| >> std
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_var is not None
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batch_norm(model: nn.Module, device: str) -> nn.Module:
    """Every BatchNorm of ``model`` with global-batch statistics (SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere), parameters and running statistics kept."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            ref = next(child.buffers(), None)
            g = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                device=None if ref is None else ref.device,
                                dtype=child.weight.dtype if child.affine else None)
            g.load_state_dict(child.state_dict())
            setattr(model, name, g)
        else:
            sync_batch_norm(child, device)
    return model
