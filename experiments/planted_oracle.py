"""Is the planted set identifiable at the search's budget? Fit LoRA on fixed module sets and compare.

Builds the planted task exactly as ``experiment=planted_search`` composes it (``--pattern`` and any run overrides
after the options), then trains LoRA (rank 8,
AdamW 1e-3, batch 32, no dropout, the search's w-step) on each module set for ``--steps`` steps from the same start
and prints the train loss (mean of the last 20 steps) and the dev agreement (mean per-output Pearson r); the
head is drawn with ``--seed`` as in a run, so the sets of one call share one teacher:
- ``S``: the planted set, which can fit the teacher exactly;
- ``S with swaps``: S with modules replaced by ``--swap a:b`` pairs (names after ``bert.encoder.layer.``), e.g. the
  modules a search selected instead;
- ``all``: every candidate (the supernet's capacity); ``none``: the untouched student.
If a swapped set fits as well as S, no criterion can tell them apart from this data at this budget.

    python experiments/planted_oracle.py --pattern grid --swap 3.output.dense:2.output.dense \
        --swap 5.output.dense:4.intermediate.dense
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from nas.adapters.operators import inject_adapters  # noqa: E402
from nas.config import CONF_DIR, register_configs  # noqa: E402
from nas.engine.backbone import load_backbone  # noqa: E402
from nas.engine.completions import model_inputs  # noqa: E402
from nas.engine.data import prepare_planted_data  # noqa: E402
from nas.engine.outputs import seed_everything  # noqa: E402
from nas.engine.pipeline import planted_spec  # noqa: E402
from nas.engine.precision import autocast  # noqa: E402
from nas.engine.training import forever, loss_for, make_loader  # noqa: E402
from nas.search.loop import dropout_set  # noqa: E402
from objectives.planted import agreement, model_outputs  # noqa: E402
from search_spaces import build_search_space  # noqa: E402

PREFIX = "bert.encoder.layer."


def fit(model: torch.nn.Module, head: list[str], names: list[str], data, tokenizer, steps: int, lr: float, seed: int,
        precision: str) -> tuple[float, float]:
    """Train LoRA on ``names`` (plus the head) of a copy of ``model``; (train loss of the last 20 steps, dev r)."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    adapters = inject_adapters(model, names, "lora", 8, 16.0, 0.0)
    params = [p for a in adapters.values() for p in a.branch.parameters()] + [model.get_parameter(n) for n in head]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss_fn = loss_for(data.task)
    batches = forever(make_loader(data.train, tokenizer, 32, True, seed, group_by_length=True))
    losses = []
    model.train()
    with dropout_set(model, 0.0):
        for _ in range(steps):
            batch = next(batches)
            with autocast("cpu", precision):
                loss = loss_fn(model(**model_inputs(batch)), batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
    teacher = torch.tensor(data.dev["labels"])
    r = agreement(model_outputs(model, data.dev, tokenizer, "cpu"), teacher, "regression")
    tail = losses[-20:]
    return sum(tail) / max(len(tail), 1), r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="random", choices=["random", "grid"])
    parser.add_argument("--swap", action="append", default=[], help="a:b replaces planted a by b (repeatable)")
    parser.add_argument("overrides", nargs="*", help="more run overrides for the planted task, e.g. task.effect=0.2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):  # the planted task exactly as a run composes it
        cfg = compose("run", overrides=["experiment=planted_search", f"task.pattern={args.pattern}",
                                        f"seed={args.seed}", *args.overrides])
    spec = planted_spec(cfg.task)
    seed_everything(args.seed)  # the new head is drawn from torch's generator, as in a run
    backbone = load_backbone(cfg.model.name_or_path, spec.outputs, cfg.model.head_modules)
    model = backbone.model
    space = build_search_space(model, cfg.space.preset)
    data, truth = prepare_planted_data(spec, model, backbone.head_names, backbone.tokenizer, space,
                                       cfg.task.data_dir, cfg.task.max_length, "cpu", cfg.paths.cache_dir, cfg.seed,
                                       cfg.task.max_train_samples, cfg.task.max_eval_samples)
    swaps = dict(pair.split(":") for pair in args.swap)
    unknown = [n for n in (*swaps, *swaps.values()) if PREFIX + n not in space.names]
    if unknown:
        raise SystemExit(f"--swap names {unknown} are not candidates; use names after {PREFIX!r}, e.g. 3.output.dense")
    swapped = [PREFIX + swaps.get(n.removeprefix(PREFIX), n.removeprefix(PREFIX)) for n in truth.modules]
    sets = {"S": truth.modules, **({"S with swaps": swapped} if swaps else {}), "all": list(space.names)}
    rows = {"none": {"loss": None, "dev_r": truth.base_agreement}}
    print(f"none: dev r {truth.base_agreement:.4f}", flush=True)
    for label, names in sets.items():
        loss, r = fit(model, backbone.head_names, names, data, backbone.tokenizer, args.steps, args.lr, args.seed,
                      args.precision)
        rows[label] = {"loss": loss, "dev_r": r, "modules": [n.removeprefix(PREFIX) for n in names]}
        print(f"{label}: train loss {loss:.4f}, dev r {r:.4f}  ({len(names)} modules)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"pattern": args.pattern, "steps": args.steps, "swaps": swaps, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
