#!/usr/bin/env bash
# Retrain the compact model for small boards (models/compact) from ../shared/data, export it and
# evaluate it on LFW people it never saw. One command; ≈ 45 min on 2 CPU cores when the dlib
# teacher's embeddings are not cached yet (≈ 18 min of that), ≈ 27 min when they are.
#
#   bash scripts/train-compact.sh            # writes out/compact/{run,model,eval}
#
# Environment: TWINLOCK_DATA (default ../shared/data), OUT (default out/compact),
# EPOCHS / STEPS / DISTILL / SIZE to change the schedule. It never writes models/compact:
# copy out/compact/model there once you like it.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=train-compact OUT_DEFAULT=out/compact
# shellcheck source=scripts/train-common.sh
source scripts/train-common.sh
rm -rf "$OUT/run" "$OUT/model" "$OUT/eval"
start=$(date +%s)
set -x
# 300 people with 2+ images and 300 with one, held out of training entirely (seeded).
.venv/bin/twinlock pairs --images "$LFW" --out "$OUT/holdout_pairs.txt" \
  --identities 300 --pairs 1000 --seed 0
.venv/bin/twinlock train --data "$LFW" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset" \
  --holdout-pairs "$OUT/holdout_pairs.txt" --architecture compact --loss cosface \
  --input-size "${SIZE:-64}" --distill-weight "${DISTILL:-50}" \
  --epochs "${EPOCHS:-20}" --steps-per-epoch "${STEPS:-200}" --batch-size 64 \
  --learning-rate 0.002 --val-fraction 0.1 --patience 20 --out "$OUT/run" > "$OUT/train.json"
.venv/bin/twinlock export "$OUT/run" --out "$OUT/model" --quantization mixed > "$OUT/export.json"
.venv/bin/twinlock evaluate --model "$OUT/model" --images "$LFW" --pairs "$OUT/holdout_pairs.txt" \
  --json "$OUT/eval/holdout.json"
set +x
echo "train-compact: done in $(( ($(date +%s) - start) / 60 )) min; model in $OUT/model"
