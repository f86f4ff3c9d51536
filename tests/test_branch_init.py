"""LoRA branches that start on their input's main directions (nas/search/branch_init.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BERT, compose_run
from test_search_options import run_search
from transformers import BertConfig, BertForSequenceClassification

from nas.errors import ConfigError
from nas.search.branch_init import align_to_activations
from nas.search.relaxation import build_relaxation
from nas.search.supernet import SuperNet
from nas.validation import validate_run_config
from search_spaces import build_search_space


def tiny_supernet() -> SuperNet:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **TINY_BERT)).eval()
    space = build_search_space(model, "bert")
    return SuperNet(model, space, build_relaxation("sigmoid", 0.0, 1e-3), ["classifier.weight", "classifier.bias"],
                    rank=4)


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 90, (4, 9))
    mask = torch.ones_like(ids)
    mask[2:, 6:] = 0  # padding that must not count
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4)}


def test_the_first_query_starts_on_the_top_eigenvectors_of_its_input_at_its_norm_and_the_function_is_kept() -> None:
    net, data = tiny_supernet(), batch()
    name = "bert.encoder.layer.0.attention.self.query"
    old_a = net.adapters[name].branch.lora_A.detach().clone()
    with torch.no_grad():
        before = net(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        x = net.model.bert.embeddings(input_ids=data["input_ids"])[data["attention_mask"].bool()].double()
    shares = align_to_activations(net, [data])
    a = net.adapters[name].branch.lora_A.detach().double()
    values, vectors = torch.linalg.eigh(x.T @ x / x.shape[0])
    top = vectors[:, -4:].flip(-1).T
    assert torch.allclose((a @ top.T).abs() / a.norm(dim=1, keepdim=True), torch.eye(4, dtype=torch.float64),
                          atol=1e-4)  # row i is ± the i-th eigenvector
    assert float(a.norm()) == pytest.approx(float(old_a.norm()), rel=1e-5)
    assert shares[name] == pytest.approx(float(values[-4:].sum() / values.sum()), rel=1e-6)
    with torch.no_grad():
        after = net(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    assert torch.equal(before, after)  # B = 0: the supernet's function at step 0 is unchanged
    hidden = net.model.config.hidden_size
    assert set(shares) == set(net.adapters) and all(4 / hidden < s <= 1.0 + 1e-9 for s in shares.values())


def test_aligning_refuses_no_batches() -> None:
    with pytest.raises(ValueError, match="criterion.batches"):
        align_to_activations(tiny_supernet(), [])


def test_a_search_with_aligned_branches_runs_and_the_config_is_checked() -> None:
    _, space, outcome = run_search(["bilevel.branch_init=activations"])
    assert set(outcome.scores) == set(space.names) and outcome.trajectory[-1]["dam"] != outcome.trajectory[0]["dam"]
    with pytest.raises(ConfigError, match="space.operator=lora or bilevel.branch_init=kaiming"):
        validate_run_config(compose_run(["bilevel.branch_init=activations", "space.operator=prolora"]))
    with pytest.raises(ConfigError, match="branch_init='eva' is not known; use kaiming"):
        validate_run_config(compose_run(["bilevel.branch_init=eva"]))
