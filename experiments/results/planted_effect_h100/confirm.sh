#!/bin/bash
# Issue 10: the old α-step defaults (A0) against the chosen ones at 300 steps, on the fresh seeds 10-12. Usage: bash .gpu/confirm.sh OUT WAVE_S
out=$1; wave_s=${2:-150}
mkdir -p $out/runs
pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .gpu/whl/* > $out/pip.log 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DIFFORA_GLUE_DIR=$PWD/.gpu/glue
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
common="device=cuda logger=none model.name_or_path=$PWD/.gpu/model model.head_modules=[classifier] retrain.export_adapter=false hydra.mode=RUN experiment=planted_search"
run() { name=$1; shift; timeout 200 python3 experiments/run.py $common hydra.run.dir=$out/runs/$name "$@" > $out/runs/$name.log 2>&1 || echo "$name FAILED" >> $out/failed.txt; }
export -f run; export out common
j=$out/jobs.txt; : > $j
for s in 10 11 12; do for p in random grid; do
  echo "B0_${p}_s$s bilevel.alpha_optimizer.lr=3e-4 bilevel.warmup_steps=0 task.pattern=$p seed=$s" >> $j
  echo "B1_${p}_s$s bilevel.alpha_optimizer.lr=1e-3 bilevel.warmup_steps=20 bilevel.steps=300 task.pattern=$p seed=$s" >> $j
done; done
start=$(date +%s)
timeout $wave_s bash -c "cat $j | xargs -P 12 -L 1 bash -c 'run \"\$@\"' _"
echo "wave wall $(( $(date +%s) - start )) s; finished $(ls $out/runs/*/metrics.json 2>/dev/null | wc -l) of 12"
cp $j $out/explore_jobs.txt
python3 .gpu/summarize.py $out/runs
(cd $out/runs && tar czf $out/runs.tgz */metrics.json */selection.json 2>/dev/null)
