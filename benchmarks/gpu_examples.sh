#!/usr/bin/env bash
# The paper's regularisation sweep (Fig. 4) and accuracy table (Table 2, three non-pretrained models) on a
# lent GPU machine: python -m examples.run ... --accelerator gpu. Output under $OUT (or /tmp/gpu_examples).
set -u
OUT=${OUT:-/tmp/gpu_examples}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 250 python3 -m examples.run regularization --accelerator gpu --max-steps 2000 --out "$OUT/regularization" 2>&1 | grep -v -i warn | tail -25
timeout 200 python3 -m examples.run accuracy --accelerator gpu --models transformer lstm cnn --out "$OUT/accuracy" 2>&1 | grep -v -i warn | tail -25
