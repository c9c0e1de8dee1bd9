#!/usr/bin/env bash
# The small boards' tower (issue 14): the compact tower (64 px, width 32: 0.61 M parameters,
# 0.90 MB mixed) distilled ONLINE from the imported dlib tower, which runs frozen in every
# training step on the same augmented view (mixup, strong crops, flips, lighting). The student
# starts from an exported compact model (--init-from), by default the cosface + offline
# distillation recipe of scripts/train-compact.sh, which this script runs first when
# out/compact/model is missing. Views: LFW (without the held-out people of the pairs file
# below), ORL, Extended Yale B and the frames of the real video; validation identities (the same
# split as train-compact's: --val-fraction 0.1, seed 0) are left out of the views.
#
#   bash scripts/train-student.sh            # starts out/student/run, or resumes it
#   INIT=models/compact bash scripts/train-student.sh   # start from another exported model
#
# Rerunning resumes the run from its last finished epoch (each epoch of STEPS x 64 views ends
# with a checkpoint); then it exports out/student/model (mixed), evaluates it on the held-out
# people, pair by pair and at the door, and writes its door thresholds. At about 90 views/s on
# 2 CPU cores (nice 19) an epoch takes about 70 s and the whole schedule about an hour.
# Environment: TWINLOCK_DATA (default ../shared/data), OUT (default out/student), INIT,
# EPOCHS (default 50), STEPS (default 100), LR (default 1e-3).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=train-student OUT_DEFAULT=out/student
# shellcheck source=scripts/train-common.sh
source scripts/train-common.sh
VIDEO="$DATA/face_recognition_examples/short_hamilton_clip.mp4"
[ -e "$VIDEO" ] || { echo "$NAME: $VIDEO not found (set TWINLOCK_DATA)" >&2; exit 2; }
if [ -z "${INIT:-}" ]; then
  INIT=out/compact/model
  [ -f "$INIT/model.json" ] || bash scripts/train-compact.sh
fi
set -x
if [ -f "$OUT/run/state.json" ]; then
  nice -n 19 .venv/bin/twinlock train --resume "$OUT/run" > "$OUT/train.json"
else
  # The held-out people: 300 with 2+ images and 300 with one (591 distinct), never trained on.
  [ -f "$OUT/holdout_pairs.txt" ] || .venv/bin/twinlock pairs --images "$LFW" \
    --out "$OUT/holdout_pairs.txt" --identities 300 --pairs 1000 --seed 0
  rm -rf "$OUT/run"
  nice -n 19 .venv/bin/twinlock train \
    --data "$LFW" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset" \
    --unlabelled "$VIDEO" --holdout-pairs "$OUT/holdout_pairs.txt" \
    --architecture compact --loss distill --teacher dlib-resnet --init-from "$INIT" \
    --mixup 0.5 --epochs "${EPOCHS:-50}" --steps-per-epoch "${STEPS:-100}" --batch-size 64 \
    --learning-rate "${LR:-1e-3}" --weight-decay 1e-4 --val-fraction 0.1 --patience 1000 \
    --out "$OUT/run" > "$OUT/train.json"
fi
.venv/bin/twinlock export "$OUT/run" --out "$OUT/model" --quantization mixed > "$OUT/export.json"
.venv/bin/twinlock evaluate --model "$OUT/model" --images "$LFW" --pairs "$OUT/holdout_pairs.txt" \
  --json "$OUT/eval/holdout.json"
# At the door (held-out people as households, the real clip); writes the door thresholds.
.venv/bin/twinlock evaluate --door --model "$OUT/model" --images "$LFW" \
  --pairs "$OUT/holdout_pairs.txt" --examples "$DATA/face_recognition_examples" \
  --json "$OUT/eval/door/door.json" --write-thresholds
set +x
echo "train-student: model in $OUT/model (copy it to models/compact once it beats it)"
