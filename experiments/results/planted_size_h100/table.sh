#!/bin/bash
# Issue 10: planted recovery table (relaxation x order at defaults, effect 0.05) + branch_size variants.
# Usage: bash .gpu/table.sh OUT PAR BUDGET_S   (jobs from ${JOBS:-.gpu/table_jobs.txt}, in priority order)
out=$1; par=${2:-16}; budget=${3:-420}
mkdir -p $out/runs
pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .gpu/whl/* > $out/pip.log 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DIFFORA_GLUE_DIR=$PWD/.gpu/glue
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
common="device=cuda logger=none precision=bf16 group_by_length=true model.name_or_path=$PWD/.gpu/model model.head_modules=[classifier] retrain.export_adapter=false hydra.mode=RUN experiment=planted_search"
run() { name=$1; shift; s=$(date +%s); timeout 400 python3 experiments/run.py $common hydra.run.dir=$out/runs/$name "$@" > $out/runs/$name.log 2>&1 || echo "$name FAILED" >> $out/failed.txt; echo "$name $(( $(date +%s) - s ))" >> $out/walls.txt; }
export -f run; export out common
start=$(date +%s)
timeout $budget bash -c "cat ${JOBS:-.gpu/table_jobs.txt} | xargs -P $par -L 1 bash -c 'run \"\$@\"' _"
echo "wall $(( $(date +%s) - start )) s; finished $(ls $out/runs/*/metrics.json 2>/dev/null | wc -l) of $(wc -l < ${JOBS:-.gpu/table_jobs.txt})"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
cp ${JOBS:-.gpu/table_jobs.txt} $out/jobs.txt
cd $out/runs && tar czf $out/runs.tgz */metrics.json */selection.json */dam_trajectory.json 2>/dev/null; cd - > /dev/null
tail -4 $(ls $out/runs/*.log | head -1)
cat $out/failed.txt 2>/dev/null | head
