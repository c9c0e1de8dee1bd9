#!/usr/bin/env bash
# The long recipe for the small boards' tower (issue 14): a compact student (112 px, width 32:
# 0.61 M parameters, 0.69 MB int8) distilled ONLINE from the imported dlib tower, which runs
# frozen in every training step on the same augmented view (mixup, strong crops, flips,
# lighting). Views: LFW (without the held-out people of the pairs file below), ORL, Extended
# Yale B and the frames of the real video; validation identities are left out of the views.
#
#   bash scripts/train-student.sh            # starts out/student/run, or resumes it
#
# Rerunning resumes the run from its last finished epoch (each epoch of STEPS x 64 views ends
# with a checkpoint). At about 30 views/s on 2 busy CPU cores (nice 19) an epoch takes about
# 9 min and the whole schedule (EPOCHS x STEPS x 64 views) days; the learning curve
# (python -m twinlock.trainer.evaluation.learning_curve) measures a checkpoint on the held-out
# people at any time. Environment: TWINLOCK_DATA (default ../shared/data), OUT (default
# out/student), EPOCHS (default 300), STEPS (default 250), SIZE (default 112), WIDTH (32).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=train-student OUT_DEFAULT=out/student
# shellcheck source=scripts/train-common.sh
source scripts/train-common.sh
VIDEO="$DATA/face_recognition_examples/short_hamilton_clip.mp4"
[ -e "$VIDEO" ] || { echo "$NAME: $VIDEO not found (set TWINLOCK_DATA)" >&2; exit 2; }
set -x
if [ -f "$OUT/run/state.json" ]; then
  exec nice -n 19 .venv/bin/twinlock train --resume "$OUT/run"
fi
# The held-out people: 300 with 2+ images and 300 with one (591 distinct), never trained on.
[ -f "$OUT/holdout_pairs.txt" ] || .venv/bin/twinlock pairs --images "$LFW" \
  --out "$OUT/holdout_pairs.txt" --identities 300 --pairs 1000 --seed 0
rm -rf "$OUT/run"
exec nice -n 19 .venv/bin/twinlock train \
  --data "$LFW" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset" \
  --unlabelled "$VIDEO" --holdout-pairs "$OUT/holdout_pairs.txt" \
  --architecture compact --loss distill --teacher dlib-resnet \
  --input-size "${SIZE:-112}" --width "${WIDTH:-32}" --mixup 0.5 \
  --epochs "${EPOCHS:-300}" --steps-per-epoch "${STEPS:-250}" --batch-size 64 \
  --learning-rate 0.002 --weight-decay 1e-4 --val-fraction 0.05 --patience 1000 \
  --out "$OUT/run"
