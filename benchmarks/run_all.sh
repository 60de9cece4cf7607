#!/usr/bin/env bash
# Every job of the CPU benchmark, in the order they were run for benchmarks/RESULTS.md.
# Run from the repository root with the project's venv active:  bash benchmarks/run_all.sh [stage]
# Stages may run side by side (each job is its own process; the report uses CPU seconds).
set -euo pipefail
export PYTHONWARNINGS=ignore
B="python benchmarks/bench_estimator.py"
stage="${1:-all}"

baseline() {  # $1 = model, $2 = sentence: the authors' loop, 5,000 steps, all layers in one process
  $B baseline --model "$1" --sentences "$2" --steps 5000 --tag baseline_$1_s$2
}

baseline_per_layer() {  # $1 = model, $2 = sentence, $3 = layers: one process per layer, side by side
  for l in $(seq 0 $(($3 - 1))); do
    $B baseline --model "$1" --sentences "$2" --layers $l --steps 5000 --tag baseline_$1_s$2_l$l &
  done
  wait
}

reference() {  # $1 = model: long runs on sentences 0 and 2 (normalisation from all 32), two seeds
  for s in 0 1; do
    $B estimate --model "$1" --rows 0,2 --steps 150 --samples 4 --lr 0.05 --seed $s --tag ref_$1_s$s
  done
}

grid() {  # $1 = model: quality of cheap settings on sentences 0 and 2
  for cfg in 0:2 0:4 0:8 5:2 5:4 10:2 10:4 20:4 10:8; do
    st=${cfg%%:*}; sa=${cfg##*:}
    $B estimate --model "$1" --rows 0,2 --steps $st --samples $sa --tag grid_$1_st${st}_sa${sa}
  done
}

timing() {  # $1 = model: all 32 sentences, all layers
  for cfg in 0:2 0:4 0:8 5:4 10:4; do
    st=${cfg%%:*}; sa=${cfg##*:}
    $B estimate --model "$1" --steps $st --samples $sa --tag time_$1_st${st}_sa${sa} \
      --save-result /tmp/infoflow_bench_$1_st${st}_sa${sa}.pt
  done
  $B floor --model "$1" --samples 4 --tag floor_$1_sa4
  $B captum --model "$1" --tag captum_$1
}

warm() {  # a few hundred training steps, then cold vs warm on the fine-tuned weights
  W=/tmp/infoflow_bench_finetuned.pt
  $B finetune --model minilm --steps 200 --tag finetune_minilm --out $W
  $B estimate --model minilm --weights $W --rows 0,2 --steps 150 --samples 4 --lr 0.05 --seed 0 --tag ref_ft_minilm_s0
  for cfg in 0:2 0:4 5:4 10:4; do
    st=${cfg%%:*}; sa=${cfg##*:}
    $B estimate --model minilm --weights $W --rows 0,2 --steps $st --samples $sa --tag ftcold_minilm_st${st}_sa${sa}
  done
  while [ ! -f /tmp/infoflow_bench_minilm_st10_sa4.pt ]; do sleep 10; done  # written by `timing minilm`
  for cfg in "0:4:0:2" "0:4:0:4" "10:4:0:4" "10:4:1:4" "10:4:2:4"; do  # init steps:samples, warm steps:samples
    is=$(echo $cfg | cut -d: -f1); ia=$(echo $cfg | cut -d: -f2); ws=$(echo $cfg | cut -d: -f3); wa=$(echo $cfg | cut -d: -f4)
    $B estimate --model minilm --weights $W --steps $ws --samples $wa --init /tmp/infoflow_bench_minilm_st${is}_sa${ia}.pt \
      --tag ftwarm_minilm_from_st${is}_sa${ia}_st${ws}_sa${wa}
  done
}

bert_extra() {  # closer to the reference: more steps, lower lr (the random BERT is nearly linear)
  $B estimate --model bert4x256 --rows 0,2 --steps 50 --samples 4 --lr 0.05 --tag grid_bert4x256_st50_sa4_lr0.05
  $B estimate --model bert4x256 --rows 0,2 --steps 30 --samples 8 --lr 0.03 --tag grid_bert4x256_st30_sa8_lr0.03
}

baseline_short() {  # $1 = model, $2 = sentence, $3 = layer: timing only, 300 steps (cost is linear in steps)
  $B baseline --model "$1" --sentences "$2" --layers "$3" --steps 300 --tag tbaseline_$1_s$2_l$3_steps300
}

warm_light() {  # what fitted the shared machine: shorter reference, warm starts from the closed-form result
  W=/tmp/infoflow_bench_finetuned.pt
  [ -f $W ] || $B finetune --model minilm --steps 200 --tag finetune_minilm --out $W
  $B estimate --model minilm --weights $W --rows 0,2 --steps 80 --samples 4 --lr 0.05 --seed 0 --tag ref_ft_minilm_s0
  for cfg in 0:4 5:4; do
    st=${cfg%%:*}; sa=${cfg##*:}
    $B estimate --model minilm --weights $W --rows 0,2 --steps $st --samples $sa --tag ftcold_minilm_st${st}_sa${sa}
  done
  for ws in 0 2; do
    $B estimate --model minilm --weights $W --steps $ws --samples 4 --init /tmp/infoflow_bench_minilm_st0_sa4.pt \
      --tag ftwarm_minilm_from_st0_sa4_st${ws}_sa4
  done
  for ws in 0 1; do  # from the 5-step result (needs `timing_light minilm` first)
    $B estimate --model minilm --weights $W --steps $ws --samples 4 --init /tmp/infoflow_bench_minilm_st5_sa4.pt \
      --tag ftwarm_minilm_from_st5_sa4_st${ws}_sa4
  done
}

timing_light() {  # $1 = model: what fitted the shared machine (the floor's chunk = the estimator's auto chunk)
  for cfg in 0:2 0:4 0:8 5:4; do
    st=${cfg%%:*}; sa=${cfg##*:}
    $B estimate --model "$1" --steps $st --samples $sa --tag time_$1_st${st}_sa${sa} \
      --save-result /tmp/infoflow_bench_$1_st${st}_sa${sa}.pt
  done
  $B floor --model "$1" --samples 4 --chunk 492 --reps 1 --tag floor_$1_sa4   # 492 = the estimator's auto chunk
  $B captum --model "$1" --n 8 --tag captum_$1_n8   # 8 of the 32 sentences; x4 for 32
}

bert_timing() {  # what was run for the random BERT (its auto chunk holds all 512 copies)
  for cfg in 0:4 20:4; do
    st=${cfg%%:*}; sa=${cfg##*:}
    $B estimate --model bert4x256 --steps $st --samples $sa --tag time_bert4x256_st${st}_sa${sa}
  done
  $B floor --model bert4x256 --samples 4 --chunk 512 --reps 1 --tag floor_bert4x256_sa4
}

case "$stage" in
  baseline) baseline "$2" "$3" ;;          # e.g. bash benchmarks/run_all.sh baseline bert4x256 0
  baseline_per_layer) baseline_per_layer "$2" "$3" "$4" ;;  # e.g. ... baseline_per_layer minilm 0 6
  quality) reference "$2"; grid "$2" ;;    # e.g. bash benchmarks/run_all.sh quality minilm
  timing) timing "$2" ;;
  warm) warm ;;
  timing_light) timing_light "$2" ;;
  bert_timing) bert_timing ;;
  warm_light) warm_light ;;
  bert_extra) bert_extra ;;
  baseline_short) baseline_short "$2" "$3" "$4" ;;
  report) python benchmarks/bench_estimator.py report ;;
  all)
    baseline_per_layer minilm 0 6; baseline bert4x256 0
    for m in minilm bert4x256; do reference $m; grid $m; timing $m; done
    warm
    python benchmarks/bench_estimator.py report ;;
esac
