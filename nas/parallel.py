"""Data parallelism over processes and gradient accumulation, with global batch sizes.

Every batch size in the config is the *global* batch. Every process builds the same loaders with the same
seeds, so all ranks see the same global batches in the same order; rank r takes its contiguous share of each
global batch, and splits that share into ``grad_accum`` micro-batches. A micro-batch c of n_c examples out of
the global batch's n contributes  (n_c / n) · mean-loss(c)  to the loss, so that summing the micro-batch
gradients over micro-batches and ranks (an all-reduce) gives exactly the gradient of the global batch's mean
loss — with any number of processes and any accumulation, up to the order of floating-point sums. The
search's hypergradients compute every gradient through :meth:`Parallel.grads` (w- and DAM gradients alike,
first and second order), and the training loop reduces its gradients the same way, so every rank takes the
same optimizer steps and ends with the same weights, DAM and selection.

Launch with ``torchrun --standalone --nproc_per_node=N experiments/run.py ...``: the process group is set up
from torchrun's environment (gloo on CPU, NCCL on CUDA, one GPU per local rank); only rank 0 writes files and
logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nas.errors import ConfigError

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Parallel:
    """This process's place: its rank among ``world`` processes, and the micro-batches per optimizer step."""

    rank: int = 0
    world: int = 1
    grad_accum: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, batch_size: int, key: str) -> None:
        """A global batch must split into world × grad_accum non-empty micro-batches."""
        parts = self.world * self.grad_accum
        if batch_size % parts:
            raise ConfigError(f"{key}={batch_size} does not split into {self.world} process(es) × grad_accum="
                              f"{self.grad_accum} equal micro-batches; choose a batch size divisible by {parts}")

    def micro_batches(self, batch: Batch) -> Iterator[tuple[Batch, float]]:
        """This rank's micro-batches of the global ``batch``, each with its weight n_c / n; trailing columns that
        are padding in every row of a micro-batch are cut (right padding)."""
        if self.world == 1 and self.grad_accum == 1:  # the whole batch, as it is
            yield batch, 1.0
            return
        total = len(next(iter(batch.values())))
        share = torch.arange(total).tensor_split(self.world)[self.rank]
        for index in share.tensor_split(self.grad_accum):
            if len(index) == 0:
                continue
            part = {k: v[index[0]:index[-1] + 1] for k, v in batch.items()}
            if "attention_mask" in part:
                width = int(part["attention_mask"].sum(dim=0).nonzero().max()) + 1
                part = {k: v[:, :width] if k != "labels" and v.dim() == 2
                        and v.shape[1] == batch["attention_mask"].shape[1] else v for k, v in part.items()}
            yield part, len(index) / total

    def all_reduce_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum ``tensors`` over the ranks, in place (nothing with one process)."""
        if self.world == 1:
            return
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def sum_scalar(self, value: float, device: torch.device | str) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor)

    def grads(self, loss_fn: Callable[[Batch], torch.Tensor], batch: Batch,
              inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
        """∂/∂inputs of the global batch's mean loss, and that loss: micro-batch gradients of the weighted
        losses, summed here and over the ranks. Inputs the loss does not reach get zeros."""
        totals = [torch.zeros_like(x) for x in inputs]
        value: torch.Tensor | float = 0.0  # summed on the loss's device: one host sync per call
        for part, weight in self.micro_batches(batch):
            loss = loss_fn(part) * weight
            grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
            for total, grad in zip(totals, grads, strict=True):
                if grad is not None:
                    total += grad
            value = value + loss.detach()
        self.all_reduce_(totals)
        return totals, self.sum_scalar(float(value), totals[0].device if totals else "cpu")


SINGLE = Parallel()


def from_environment(grad_accum: int = 1, device: str = "cpu", expected: int | None = None) -> Parallel:
    """The process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), initialized once; one process
    otherwise. On CUDA each process takes the GPU of its local rank. ``expected`` (config ``processes``): the
    number of processes the run was planned for; a different launch is refused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if grad_accum < 1:
        raise ConfigError(f"grad_accum={grad_accum} must be a positive number of micro-batches per step")
    if expected is not None and expected != world:
        raise ConfigError(f"processes={expected} but {world} process(es) were launched; start it with torchrun "
                          f"--standalone --nproc_per_node={expected} experiments/run.py ..., or set processes=null")
    if world == 1:
        return Parallel(grad_accum=grad_accum)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Parallel(rank=dist.get_rank(), world=dist.get_world_size(), grad_accum=grad_accum)


def broadcast_object(value: object, parallel: Parallel) -> object:
    """Rank 0's ``value`` on every rank."""
    if parallel.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
