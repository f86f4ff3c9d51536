#!/bin/bash
# Issue 10: explore α-step variants on the planted task (seeds 0-2), then the recovery table with the best one on
# fresh seeds (10-12). Usage: bash .gpu/dam.sh OUT PAR EXPLORE_S TABLE_S
out=$1; par=${2:-16}; explore_s=${3:-200}; table_s=${4:-300}
mkdir -p $out/runs
pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .gpu/whl/* > $out/pip.log 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DIFFORA_GLUE_DIR=$PWD/.gpu/glue
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
common="device=cuda logger=none model.name_or_path=$PWD/.gpu/model model.head_modules=[classifier] retrain.export_adapter=false hydra.mode=RUN experiment=planted_search"
run() { name=$1; shift; timeout 300 python3 experiments/run.py $common hydra.run.dir=$out/runs/$name "$@" > $out/runs/$name.log 2>&1 || echo "$name FAILED" >> $out/failed.txt; }
export -f run; export out common
start=$(date +%s)
run warm seed=0 bilevel.steps=2 retrain.steps=1 criterion.record=[dam]
echo "warm $(( $(date +%s) - start )) s"
j=$out/explore_jobs.txt; : > $j
for v in "A0" "A1 bilevel.alpha_optimizer.lr=1e-3" "A2 bilevel.alpha_optimizer.lr=3e-3" \
         "A3 bilevel.alpha_optimizer.lr=1e-3 bilevel.warmup_steps=20" "A4 bilevel.dropout=null" "A5 bilevel.steps=300" \
         "A6 bilevel.alpha_optimizer.name=shared_adam bilevel.alpha_optimizer.lr=3e-3"; do
  set -- $v; tag=$1; shift
  for s in 0 1 2; do for p in random grid; do echo "${tag}_${p}_s$s $* task.pattern=$p seed=$s" >> $j; done; done
done
start=$(date +%s)
timeout $explore_s bash -c "cat $j | xargs -P $par -L 1 bash -c 'run \"\$@\"' _"
echo "explore wall $(( $(date +%s) - start )) s; finished $(ls $out/runs/A*/metrics.json 2>/dev/null | wc -l) of $(wc -l < $j)"
python3 .gpu/summarize.py $out/runs > $out/explore.txt; cat $out/explore.txt
best=$(python3 .gpu/summarize.py $out/runs --best A0 A1 A2 A3 A6)
echo "best: [$best]"
t=$out/table_jobs.txt; : > $t
for spec in "first_order sigmoid" "first_order softmax" "first_order gumbel" "first_order hard_concrete" \
            "second_order sigmoid" "second_order softmax" "second_order gumbel" "second_order hard_concrete"; do
  set -- $spec
  for s in 10 11 12; do for p in random grid; do echo "T_$1_$2_${p}_s$s $best bilevel=$1 relaxation=$2 task.pattern=$p seed=$s" >> $t; done; done
done
for e in 0.05 0.2; do for s in 10 11 12; do for p in random grid; do
  echo "C_effect${e}_${p}_s$s $best task.effect=$e task.pattern=$p seed=$s" >> $t; done; done; done
start=$(date +%s)
timeout $table_s bash -c "cat $t | xargs -P $par -L 1 bash -c 'run \"\$@\"' _"
echo "table wall $(( $(date +%s) - start )) s; finished $(ls $out/runs/[TC]*/metrics.json 2>/dev/null | wc -l) of $(wc -l < $t)"
python3 .gpu/summarize.py $out/runs > $out/all.txt; cat $out/all.txt
(cd $out/runs && tar czf $out/runs.tgz */metrics.json */selection.json */.hydra/config.yaml */dam_trajectory.json 2>/dev/null)
tail -5 $out/failed.txt 2>/dev/null
