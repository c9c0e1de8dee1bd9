#!/usr/bin/env bash
# Training demo: set up, train a twin network on LFW people (never on the people of the LFW
# pairs file), export it as an int8 TFLite model and evaluate it with the LFW pairs protocol.
# Environment: TWINLOCK_DATA (default ../shared/data), DEMO_OUT (default out/demo),
# DEMO_EPOCHS / DEMO_STEPS to make it longer or shorter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
DATA=${TWINLOCK_DATA:-../shared/data}
OUT=${DEMO_OUT:-out/demo}
LFW="$DATA/lfw/lfw-deepfunneled"
PAIRS="$DATA/lfw/pairsDevTrain.txt"
for need in "$LFW" "$PAIRS" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset"; do
  [ -e "$need" ] || { echo "demo: $need not found (set TWINLOCK_DATA)" >&2; exit 2; }
done
rm -rf "$OUT"; mkdir -p "$OUT"
set -x
.venv/bin/twinlock train --data "$LFW" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset" \
  --holdout-pairs "$PAIRS" --architecture compact --loss cosface \
  --epochs "${DEMO_EPOCHS:-6}" --steps-per-epoch "${DEMO_STEPS:-150}" --batch-size 64 \
  --learning-rate 0.002 --out "$OUT/run" > "$OUT/train.json"
.venv/bin/twinlock export "$OUT/run" --out "$OUT/model" > "$OUT/export.json"
.venv/bin/twinlock evaluate --model "$OUT/model" --images "$LFW" --pairs "$PAIRS" \
  --json "$OUT/eval/lfw_pairs.json"
