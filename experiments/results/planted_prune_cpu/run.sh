#!/bin/bash
# One planted search of this folder, on 2 CPU cores, from the repository root:
#   bash experiments/results/planted_prune_cpu/run.sh TAG PATTERN SEED [overrides...]
# writes experiments/results/planted_prune_cpu/runs/TAG_PATTERN_sSEED (skipped when its metrics.json exists).
# The runs here, one at a time:
#   D   (defaults):                 run.sh D   {grid,random} {0,1,2}
#   p2  (pruning by the DAM):       run.sh p2  {grid,random} {0,1,2} bilevel.prune_stages=2
#   PP  (pruning by removal):       run.sh PP  {grid,random} 0 bilevel.prune_stages=2 criterion=perturbation
#   E05, E2 (planting strength):    run.sh E05 {grid,random} {0,1,2} task.effect=0.05   (E2: task.effect=0.2)
#   WD05 (w weight decay, at 0.05): run.sh WD05 {grid,random} {0,1,2} task.effect=0.05 bilevel.w_optimizer.weight_decay=1.0
tag=$1; pattern=$2; seed=$3; shift 3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
out=experiments/results/planted_prune_cpu/runs/${tag}_${pattern}_s${seed}
[ -f "$out/metrics.json" ] && exit 0
python experiments/run.py experiment=planted_search task.pattern="$pattern" seed="$seed" precision=bf16 \
  group_by_length=true logger=none hydra.run.dir="$out" "$@"
