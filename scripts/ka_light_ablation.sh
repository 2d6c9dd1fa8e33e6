#!/usr/bin/env bash
# The stage-1 ablations of issue 3 at one budget (docs/mtkd_stage1.md, "Ablations at one budget"): in the light
# setting (IMDN, RLFN, PAN, RFDN_AIM; 291 images; teacher cache), the paper's aggregator and its variants v4 (no DCT),
# v3 (mixer), v1 (two teachers: IMDN, RLFN), v2 (one teacher: RLFN), and beyond the paper the global residual, each
# trained ITERS iterations (lr 2e-4 halved at 2/3 and 5/6 of ITERS) from seed 0, then scored on Set5, Set14 and
# BSD100 with each one's teachers and their plain average, as one table (scripts/make_table.py).
#
#   bash scripts/ka_light_ablation.sh train       # trains all six (ITERS=1200: 15-40 min each on one CPU core,
#                                                 # JOBS=2 at once), evaluates them and prints the table
#   bash scripts/ka_light_ablation.sh evaluate    # evaluates runs already under experiments/ and prints the table
#   VARIANTS="base no_dct" bash scripts/ka_light_ablation.sh train   # a subset
# Needs `make link-shared` (data, official teacher weights) and `make prepare-train291`.
# The body is one { ... } block, read whole before it runs, so editing this file during a long training is safe.
{
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ITERS=${ITERS:-1200}
JOBS=${JOBS:-2}
VARIANTS=${VARIANTS:-base no_dct mixer two_teachers one_teacher global_residual}
mode=${1:-evaluate}

option_file() {  # $1: variant -> its training option file
  if [ "$1" = base ]; then echo options/stage1_ka_light_x4.yml; else echo "options/stage1_ka_light_x4_$1.yml"; fi
}
run_name() { echo "stage1_ka_light_x4_$1_cpu$ITERS"; }

train_one() {  # $1: variant
  local variant=$1
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" mtkd/train.py -opt "$(option_file "$variant")" \
    --force_yml "name=$(run_name "$variant")" "train:total_iter=$ITERS" \
    "train:scheduler:milestones=[$((ITERS * 2 / 3)),$((ITERS * 5 / 6))]" "val:val_freq=$((ITERS / 3))" \
    "logger:save_checkpoint_freq=$((ITERS / 3))" \
    > "/tmp/mtkd_ka_$variant.log" 2>&1 || { echo "training $variant failed: see /tmp/mtkd_ka_$variant.log"; return 1; }
}
export -f train_one option_file run_name
export PY ITERS

case "$mode" in
  train) printf '%s\n' $VARIANTS | xargs -P "$JOBS" -I{} bash -c 'train_one {}' ;;
  evaluate) ;;
  *) echo "usage: $0 evaluate|train" >&2; exit 2 ;;
esac

# Each variant is scored with options/test_ka_light_x4.yml, its teachers and network_g taken from its training file.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
for variant in $VARIANTS; do
  weights=experiments/$(run_name "$variant")/models/net_g_$ITERS.pth
  if [ ! -f "$weights" ]; then echo "skip $variant: $weights not found (train it first)"; continue; fi
  name=test_ka_light_x4_${variant}_cpu$ITERS
  "$PY" - "$(option_file "$variant")" "$weights" "$name" "$tmp/$name.yml" <<'EOF'
import sys

import yaml

train_file, weights, name, output = sys.argv[1:]
with open(train_file, encoding='utf-8') as handle:
    train = yaml.safe_load(handle)
with open('options/test_ka_light_x4.yml', encoding='utf-8') as handle:
    test = yaml.safe_load(handle)
test.update(name=name, teachers=train['teachers'], network_g=train['network_g'])
test['path']['pretrain_network_g'] = weights
with open(output, 'w', encoding='utf-8') as handle:
    yaml.safe_dump(test, handle, sort_keys=False)
EOF
  "$PY" mtkd/test.py -opt "$tmp/$name.yml" > "/tmp/mtkd_test_ka_$variant.log" 2>&1 \
    || { echo "testing $variant failed: see /tmp/mtkd_test_ka_$variant.log"; exit 1; }
  rows+=("results/$name=$variant")
done
[ ${#rows[@]} -gt 0 ] || { echo "nothing to evaluate"; exit 1; }
"$PY" scripts/make_table.py "${rows[@]}" --digits 3
# The teachers and their plain average on the same images (recorded by every test run; base has all four teachers).
if [ -f "results/test_ka_light_x4_base_cpu$ITERS/metrics.json" ]; then
  "$PY" scripts/make_table.py "results/test_ka_light_x4_base_cpu$ITERS=base" --with-other-outputs --digits 3
fi
exit
}
