#!/usr/bin/env bash
# Rebuild the default model (models/default) from the face-recognition-models wheel and
# ../shared/data: dlib's public-domain ResNet imported into our twin (our reader of its .dat
# file), the L1 + sigmoid head fitted on our training people, temperature-scaled and calibrated
# on validation people, exported with the parity gate, then evaluated on LFW people it never
# saw, pair by pair and as a door. One command; about 15 min on 2 CPU cores.
#
#   bash scripts/train-default.sh            # writes out/default/{run,model,eval,door}
#
# Environment: TWINLOCK_DATA (default ../shared/data), OUT (default out/default),
# QUANT (default int8; or mixed / float32), EPOCHS (default 0: head only; N > 0 fine-tunes the
# tower, kept only if validation AUC improves). It never writes models/default: copy
# out/default/model there once you like it.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=train-default OUT_DEFAULT=out/default
# shellcheck source=scripts/train-common.sh
source scripts/train-common.sh
rm -rf "$OUT/run" "$OUT/model" "$OUT/eval" "$OUT/door"
start=$(date +%s)
set -x
# 300 people with 2+ images and 300 with one, held out of training and calibration (seeded).
.venv/bin/twinlock pairs --images "$LFW" --out "$OUT/holdout_pairs.txt" \
  --identities 300 --pairs 1000 --seed 0
.venv/bin/twinlock train --data "$LFW" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset" \
  --holdout-pairs "$OUT/holdout_pairs.txt" --architecture dlib-resnet --unit-embeddings off \
  --loss cosface --epochs "${EPOCHS:-0}" --learning-rate 1e-5 --batch-size 32 \
  --val-fraction 0.1 --out "$OUT/run" > "$OUT/train.json"
.venv/bin/twinlock export "$OUT/run" --out "$OUT/model" --quantization "${QUANT:-int8}" \
  > "$OUT/export.json"
.venv/bin/twinlock evaluate --model "$OUT/model" --images "$LFW" --pairs "$OUT/holdout_pairs.txt" \
  --json "$OUT/eval/holdout.json"
# door-level thresholds (and the one-resident ladder) into model.json, measured on the same
# held-out people; the figures and plots go to $OUT/door
.venv/bin/twinlock evaluate --door --model "$OUT/model" --images "$LFW" \
  --pairs "$OUT/holdout_pairs.txt" --examples "$DATA/face_recognition_examples" \
  --json "$OUT/door/door.json" --write-thresholds > /dev/null
set +x
echo "train-default: done in $(( ($(date +%s) - start) / 60 )) min; model in $OUT/model"
