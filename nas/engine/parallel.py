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
logs. Under SLURM with several tasks per job (Hydra's submitit launcher with ``tasks_per_node=N``, or ``srun``),
SLURM's own variables describe the group instead (:func:`slurm_environment`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nas.errors import ConfigError

Batch = Mapping[str, torch.Tensor]


def per_token(key: str, value: torch.Tensor, width: int) -> bool:
    """A (B, width) tensor with one entry per token: inputs, masks and a completion task's integer labels; a
    vector regression target (float labels) is one entry per example, whatever its size."""
    return value.dim() == 2 and value.shape[1] == width and (key != "labels" or not value.is_floating_point())


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
                part = {k: v[:, :width] if per_token(k, v, batch["attention_mask"].shape[1]) else v
                        for k, v in part.items()}
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


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,09],cpu1`` → ``gpu03``; ``a,b`` → ``a``."""
    head = nodelist.strip()
    depth = 0
    for i, char in enumerate(head):  # the first comma outside brackets ends the first entry
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            head = head[:i]
            break
    prefix, bracket, ranges = head.partition("[")
    if not bracket:
        return prefix
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def slurm_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables for a SLURM job step of several tasks, where torchrun did not set them.

    RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the first host of
    SLURM_JOB_NODELIST, MASTER_PORT = 20000 + SLURM_JOB_ID mod 10000 (one port per job, the same on every task).
    Empty when torchrun's RANK is set, when this is not SLURM, or when the job step has one task; variables the
    user set (MASTER_ADDR, MASTER_PORT) are kept.
    """
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in environ:
        return {}
    missing = [k for k in ("SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID") if k not in environ]
    if missing:
        raise ConfigError(f"a SLURM job step of {environ['SLURM_NTASKS']} tasks without {', '.join(missing)}: "
                          f"launch the tasks with srun (or the submitit launcher), or run one task per job")
    mapped = {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
              "LOCAL_RANK": environ["SLURM_LOCALID"],
              "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(environ["SLURM_JOB_NODELIST"]),
              "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + int(environ["SLURM_JOB_ID"]) % 10000)}
    return mapped


def from_environment(grad_accum: int = 1, device: str = "cpu", expected: int | None = None) -> Parallel:
    """The process group torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or a SLURM job step of several tasks
    (:func:`slurm_environment`) describes, initialized once; one process otherwise. On CUDA each process takes the
    GPU of its local rank. ``expected`` (config ``processes``): the number of processes the run was planned for;
    a different launch is refused."""
    os.environ.update(slurm_environment(os.environ))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if grad_accum < 1:
        raise ConfigError(f"grad_accum={grad_accum} must be a positive number of micro-batches per step")
    if expected is not None and expected != world:
        raise ConfigError(f"processes={expected} but {world} process(es) were launched; start it with torchrun "
                          f"--standalone --nproc_per_node={expected} experiments/run.py ... (on SLURM: "
                          f"hydra.launcher.tasks_per_node={expected}), or set processes=null")
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
