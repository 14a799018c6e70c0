#!/usr/bin/env bash
# One GPU session's checks, run from the repository root: (1) NaviGen SFT then GRPO on Amazon
# (dataset_configs/runs/amazon-rl-cid2cid-gpu.yaml) and bench.rl_report with the held-out reward probe;
# (2) training and beam-search throughput of a ~300M-parameter random backbone in fp32 and bf16.
# The shared data must be at $DATA (default .gpu_data) and may come with prebuilt identifiers in $IDS.
# Extra arguments go to the main job (e.g. smaller --stage_settings for a smoke run); PROBE_USERS,
# TP_BACKBONE, TP_BATCHES and TP_USERS size the rest. Results land in $OUT.
set -euo pipefail
OUT=${OUT:-bench/results/gpu}
DATA=${DATA:-.gpu_data}
IDS=${IDS:-saved/identifiers}
PROBE_USERS=${PROBE_USERS:-2000}
TP_BATCHES=${TP_BATCHES:-20}
TP_USERS=${TP_USERS:-500}
# A ~300M-parameter Llama-shaped backbone with random weights: the cost of bigger models, not their quality.
TP_BACKBONE=${TP_BACKBONE:-"{'vocab_size': 2000, 'hidden_size': 1024, 'num_hidden_layers': 24, 'num_attention_heads': 16, 'num_key_value_heads': 8, 'intermediate_size': 3072, 'max_position_embeddings': 1024, 'tie_word_embeddings': True, 'seed': 2020}"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
common=(--dataset=amazon "--data_path=$DATA" "--identifiers_dir=$IDS")
config=dataset_configs/runs/amazon-rl-cid2cid-gpu.yaml

SECONDS=0
python run_recbole_navigen.py --model=NaviGen "${common[@]}" --config_files=$config "$@" >"$OUT/main_job.log" 2>&1 \
  || { tail -40 "$OUT/main_job.log"; exit 1; }
grep -E "test result|GRPO step" "$OUT/main_job.log" | cut -c1-400
echo "main job: ${SECONDS}s"
run=$(ls -td saved/NaviGen-amazon-*/ | head -1)
python -m bench.rl_report "--run=$run" "--probe_users=$PROBE_USERS" --window=50 --output="$OUT/rl_amazon_gpu.md" \
  --command="python run_recbole_navigen.py --model=NaviGen --dataset=amazon --data_path=... --config_files=$config (${SECONDS} s wall, with this report)"
cp "$run/rl/rl_log.csv" "$run/rl/rl_log.png" "$OUT/"
echo "main job and report: ${SECONDS}s"

python -m bench.throughput "${common[@]}" --models=NaviGen@precision=fp32,NaviGen@precision=bf16 \
  --finetune=full "--train_batches=$TP_BATCHES" "--eval_users=$TP_USERS" "--tiny_backbone=$TP_BACKBONE" \
  --output="$OUT/throughput_precision_gpu.md" 2>&1 | grep -v "^Loading\|it/s" | tail -12
echo "all: ${SECONDS}s"
