"""Global batches split over processes and micro-batches (nas/engine/parallel.py): the same gradients, steps and
selection as one process taking whole batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_run
from test_determinism import TOKENIZER, synthetic_data
from test_methods import tiny_backbone

from nas.engine.data import TaskData
from nas.engine.logger import NullLogger
from nas.engine.parallel import Parallel, first_host, slurm_environment
from nas.engine.training import finetune, make_loader
from nas.errors import ConfigError
from nas.search.loop import SearchSettings, search
from objectives import get_task
from search_spaces import build_search_space

NO_DROPOUT = ["space.dropout=0", "model.dropout=0"]


def batch(n: int = 10) -> dict[str, torch.Tensor]:
    return next(iter(make_loader(synthetic_data(n), TOKENIZER, n, False, 0)))


def test_micro_batches_cover_the_global_batch_once_with_weights_summing_to_one() -> None:
    whole = batch(10)
    seen, weights = [], 0.0
    for rank in range(2):
        for part, weight in Parallel(rank=rank, world=2, grad_accum=2).micro_batches(whole):
            seen += part["labels"].tolist()
            weights += weight
            width = part["input_ids"].shape[1]
            assert bool(part["attention_mask"][:, -1].any()) and width <= whole["input_ids"].shape[1]
    assert seen == whole["labels"].tolist() and weights == pytest.approx(1.0)


def test_accumulated_gradients_equal_the_whole_batch_gradient() -> None:
    backbone = tiny_backbone()
    model = backbone.model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    whole = batch(10)

    def loss(part: dict) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            model(**{k: v for k, v in part.items() if k != "labels"}).logits, part["labels"])

    reference, value = Parallel().grads(loss, whole, params)
    split, split_value = Parallel(grad_accum=3).grads(loss, whole, params)
    assert split_value == pytest.approx(value, rel=1e-6)
    for a, b in zip(split, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_batch_that_does_not_split_evenly_is_refused() -> None:
    with pytest.raises(ConfigError, match="retrain.batch_size=30 does not split into 2 process\\(es\\) × "
                                          "grad_accum=4 .* divisible by 8"):
        Parallel(rank=0, world=2, grad_accum=4).check(30, "retrain.batch_size")


def test_a_launch_with_fewer_processes_than_planned_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.engine.parallel import from_environment

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="processes=2 but 1 process\\(es\\) were launched; start it with torchrun "
                                          "--standalone --nproc_per_node=2"):
        from_environment(1, "cpu", expected=2)
    assert from_environment(2, "cpu", expected=1) == Parallel(grad_accum=2)


@pytest.mark.parametrize(("nodelist", "host"), [("gpu07", "gpu07"), ("gpu[03-05,09],cpu1", "gpu03"),
                                                ("a1,b[1-2]", "a1"), ("node[12]", "node12")])
def test_the_first_host_of_a_slurm_node_list(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


SLURM_TASK = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-04]",
              "SLURM_JOB_ID": "123456"}


def test_a_slurm_job_step_of_several_tasks_describes_the_process_group() -> None:
    assert slurm_environment(SLURM_TASK) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                                             "MASTER_ADDR": "gpu03", "MASTER_PORT": "23456"}
    assert slurm_environment({**SLURM_TASK, "MASTER_PORT": "2999"})["MASTER_PORT"] == "2999"  # the user's own
    assert slurm_environment({**SLURM_TASK, "RANK": "0"}) == {}  # torchrun inside the job decides
    assert slurm_environment({**SLURM_TASK, "SLURM_NTASKS": "1"}) == {}  # one task: one process
    with pytest.raises(ConfigError, match="without SLURM_LOCALID, SLURM_JOB_ID: launch the tasks with srun"):
        slurm_environment({k: v for k, v in SLURM_TASK.items() if k not in ("SLURM_LOCALID", "SLURM_JOB_ID")})


@pytest.mark.slow
def test_two_slurm_tasks_form_one_process_group_on_gloo() -> None:
    """Two processes that see only SLURM's task variables (as srun or submitit start them) all-reduce together."""
    script = ("import torch, torch.distributed as dist\n"
              "from nas.engine.parallel import from_environment\n"
              "p = from_environment(1, 'cpu', expected=2)\n"
              "t = torch.tensor([float(p.rank + 1)]); dist.all_reduce(t)\n"
              "print(p.rank, p.world, float(t)); dist.destroy_process_group()\n")
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    port = str(29500 + os.getpid() % 1000)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1],
                              env={**base, **SLURM_TASK, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
                                   "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port, "OMP_NUM_THREADS": "1"})
             for rank in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(out.split()[:3] for out, _ in outputs) == [["0", "2", "3.0"], ["1", "2", "3.0"]]


@pytest.mark.parametrize("hypergradient", ["first_order", "second_order"])
def test_search_with_accumulation_selects_what_whole_batches_select(hypergradient: str) -> None:
    """grad_accum=4 runs 4 micro-batches per α- and w-step and ends with the same DAM (no dropout)."""
    outcomes = []
    for accum in (1, 4):
        cfg = compose_run(["debug=smoke", "bilevel.steps=5", "bilevel.batch_size=8", "logger=none",
                           "bilevel.alpha_optimizer.lr=0.05", f"bilevel.hypergradient={hypergradient}",
                           "criterion.record=[dam]", "precision=fp32", *NO_DROPOUT])  # an identity of fp32 sums
        torch.manual_seed(0)
        backbone = tiny_backbone()
        space = build_search_space(backbone.model, "bert")
        data = TaskData(get_task("sst2"), synthetic_data(), synthetic_data(16, seed=1))
        outcomes.append(search(SearchSettings.from_config(cfg), backbone, space, data, NullLogger(),
                               parallel=Parallel(grad_accum=accum)).scores)
    assert max(abs(outcomes[0][k] - outcomes[1][k]) for k in outcomes[0]) < 1e-5
    assert len(set(outcomes[0].values())) > 1


def test_training_with_accumulation_takes_the_same_steps() -> None:
    weights = []
    for accum in (1, 2):
        backbone = tiny_backbone()
        for module in backbone.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        params = [p for p in backbone.model.parameters() if p.requires_grad]
        loader = make_loader(synthetic_data(32), TOKENIZER, 8, True, seed=0)
        finetune(backbone.model, params, loader, get_task("sst2"), 4, 1e-3, 0.0, 0.0, 1.0, "cpu", NullLogger(),
                 parallel=Parallel(grad_accum=accum))
        weights.append(torch.cat([p.detach().flatten() for p in params]))
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_processes_on_gloo_select_what_one_process_selects(tmp_path: Path, tiny_encoder: Path) -> None:
    """torchrun with 2 CPU processes against 1 process, the same global batches: DAM within 1e-4, the same
    selection and dev metrics; only rank 0 writes into the run dir. (The tiny encoder: the agreement is arithmetic.)"""
    common = ["task=mrpc", "debug=smoke", "logger=none", "retrain.export_adapter=false", "bilevel.steps=4",
              "retrain.steps=4", "criterion.record=[dam]", "threads=1", f"model.name_or_path={tiny_encoder}",
              *NO_DROPOUT]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    run = str(Path(__file__).resolve().parents[1] / "experiments" / "run.py")
    one = subprocess.run([sys.executable, run, *common, f"hydra.run.dir={tmp_path / 'one'}"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", run,
                          *common, f"hydra.run.dir={tmp_path / 'two'}"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    selections = [json.loads((tmp_path / name / "selection.json").read_text()) for name in ("one", "two")]
    assert selections[0]["selected"] == selections[1]["selected"]
    assert max(abs(selections[0]["dam"][k] - v) for k, v in selections[1]["dam"].items()) < 1e-4
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    assert metrics[0]["metrics"] == pytest.approx(metrics[1]["metrics"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
