#!/usr/bin/env bash
# The small-setting comparison of issue 4 (docs/mtkd_stage2.md, "Small setting: results"): the EDSR-32x6 student
# alone, with KD, AT, FAKD, DUKD, CrossKD (teacher RLFN), MTKD and the MTKD loss ablations v5/v6/v7, all from the
# same initialisation (seed 0), on the same data and iterations, then one table on Set5, Set14 and BSD100.
#
#   bash scripts/light_comparison.sh evaluate     # re-evaluate the committed students (pretrained/mtkd/), ~2 min
#   bash scripts/light_comparison.sh train        # train all nine (ITERS=1200: ~2 h on 2 CPU cores, JOBS=2 at once),
#                                                 # evaluate them and print the table
#   SEED=1 METHODS="alone at mtkd" bash scripts/light_comparison.sh train   # other seeds, some methods: the spread
#                                                 # (runs named ..._cpu1200_seed1; seed 0 keeps the plain names)
#   SEED=1 METHODS="alone at mtkd" bash scripts/light_comparison.sh score   # evaluate runs trained earlier
#   SEEDS="1 2" METHODS="alone at mtkd" bash scripts/light_comparison.sh spread   # mean±sd over seed 0 (the
#                                                 # committed students) and the trained SEEDS, one row per method
#   RECIPE=r2 METHODS="kd at fakd dukd crosskd" bash scripts/light_comparison.sh train   # the issue-19 recipes
#                                                 # (docs/baselines.md): runs named ..._cpu1200_r2, rows "[r2]", so
#                                                 # the committed students of the previous recipes stay apart
# The whole script is read before it runs (main), so editing it while a long training runs is safe.
# Needs `make link-shared` (data, official teacher weights) and `make prepare-train291` for training.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ITERS=${ITERS:-1200}
JOBS=${JOBS:-2}
SEED=${SEED:-0}
RECIPE=${RECIPE:-}
RUN=cpu$ITERS
[ "$SEED" = 0 ] || RUN=cpu${ITERS}_seed$SEED
[ -z "$RECIPE" ] || RUN=${RUN}_$RECIPE
# method -> training option file suffix ("" is MTKD itself)
methods=(alone kd at fakd dukd crosskd mtkd v5_l1 v6_dct v7_highfreq)
labels=("student alone" "KD (RLFN)" "AT (RLFN)" "FAKD (RLFN)" "DUKD (RLFN)" "CrossKD (RLFN, 1x1 adapter)"
        "MTKD (wavelet, I_MT)" "MTKD v5 (L1, I_MT)" "MTKD v6 (DCT, I_MT)" "MTKD v7 (high-freq. wavelet, I_MT)")
# training order: the slowest first, so the two job slots finish together
METHODS=${METHODS:-dukd fakd crosskd at mtkd kd alone v5_l1 v6_dct v7_highfreq}

suffix_of() {  # the option-file suffix of a method ("" for MTKD itself)
  if [ "$1" = mtkd ]; then echo ""; else echo "_$1"; fi
}

train_one() {  # $1: method
  local method=$1 suffix
  suffix=$(suffix_of "$method")
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" mtkd/train.py -opt "options/stage2_light_edsr32_x4$suffix.yml" \
    --force_yml "name=stage2_light_edsr32_x4${suffix}_$RUN" "manual_seed=$SEED" "train:total_iter=$ITERS" \
    "train:scheduler:milestones=[$((ITERS * 2 / 3)),$((ITERS * 5 / 6))]" val:val_freq=100000 \
    "logger:save_checkpoint_freq=$((ITERS / 2))" channels_last=true \
    > "/tmp/mtkd_light_${method}_$RUN.log" 2>&1 || { echo "training $method failed: see /tmp/mtkd_light_${method}_$RUN.log"; return 1; }
}

score() {  # $1: committed (the students under pretrained/mtkd/) or trained (experiments/..._$RUN); prints the table
  local which=$1 results=() i method suffix test_file out label overrides
  for i in "${!methods[@]}"; do
    method=${methods[$i]}
    [[ " $METHODS " == *" $method "* ]] || continue
    if [ "$which" = committed ] && [ ! -f "options/test_light_edsr32_x4_$method.yml" ]; then
      echo "skip $method: no committed student (options/test_light_edsr32_x4_$method.yml)"; continue
    fi
    suffix=$(suffix_of "$method")
    test_file=options/test_light_edsr32_x4_$method.yml
    overrides=()
    if [ "$which" = trained ]; then
      test_file=options/test_light_edsr32_x4_mtkd.yml  # the test files differ only in name and weights
      overrides=(--force_yml "path:pretrain_network_g=experiments/stage2_light_edsr32_x4${suffix}_$RUN/models/net_g_$ITERS.pth"
                 "name=test_light_edsr32_x4_${method}_$RUN")
      out=results/test_light_edsr32_x4_${method}_$RUN
    else
      out=results/test_light_edsr32_x4_$method
    fi
    "$PY" mtkd/test.py -opt "$test_file" "${overrides[@]}" \
      > "/tmp/mtkd_test_light_$method.log" 2>&1 || { echo "testing $method failed: see /tmp/mtkd_test_light_$method.log"; exit 1; }
    label=${labels[$i]}
    [ "$which" = committed ] || [ "$SEED" = 0 ] || label="$label, seed $SEED"
    [ "$which" = committed ] || [ -z "$RECIPE" ] || label="$label [$RECIPE]"
    results+=("$out=$label")
  done
  [ "${#results[@]}" -gt 0 ] || { echo "nothing to score for METHODS=\"$METHODS\""; return 0; }
  "$PY" scripts/make_table.py "${results[@]}" --digits 3
}

spread() {  # mean±sd per method over seed 0 (the committed student) and the trained SEEDS
  local results=() i method seed out
  for i in "${!methods[@]}"; do
    method=${methods[$i]}
    [[ " $METHODS " == *" $method "* ]] || continue
    if [ -n "$RECIPE" ]; then  # seed 0 of a recipe: its trained run (score mode wrote it), not the committed student
      out=results/test_light_edsr32_x4_${method}_cpu${ITERS}_$RECIPE
      [ -f "$out/metrics.json" ] || { echo "$out/metrics.json missing: run RECIPE=$RECIPE METHODS=$method $0 train" >&2; exit 1; }
      results+=("$out=${labels[$i]} [$RECIPE]")
    else
      if [ ! -f "results/test_light_edsr32_x4_$method/metrics.json" ]; then
        "$PY" mtkd/test.py -opt "options/test_light_edsr32_x4_$method.yml" > "/tmp/mtkd_test_light_$method.log" 2>&1 \
          || { echo "testing $method failed: see /tmp/mtkd_test_light_$method.log"; exit 1; }
      fi
      results+=("results/test_light_edsr32_x4_$method=${labels[$i]}")
    fi
    for seed in ${SEEDS:?set SEEDS, e.g. SEEDS=\"1 2\"}; do
      out=results/test_light_edsr32_x4_${method}_cpu${ITERS}_seed$seed${RECIPE:+_$RECIPE}
      [ -f "$out/metrics.json" ] || { echo "$out/metrics.json missing: run SEED=$seed METHODS=$method $0 train" >&2; exit 1; }
      results+=("$out=${labels[$i]}${RECIPE:+ [$RECIPE]}")
    done
  done
  "$PY" scripts/make_table.py "${results[@]}" --digits 3 --merge-runs
}

main() {
  local method
  for method in $METHODS; do
    [[ " ${methods[*]} " == *" $method "* ]] || { echo "unknown method '$method' in METHODS; known: ${methods[*]}" >&2; exit 2; }
  done
  export -f train_one suffix_of
  export PY ITERS SEED RUN RECIPE
  case "${1:-evaluate}" in
    train) printf '%s\n' $METHODS | xargs -P "$JOBS" -I{} bash -c 'train_one {}'; score trained ;;
    score) score trained ;;
    evaluate) score committed ;;
    spread) spread ;;
    *) echo "usage: $0 evaluate|train|score|spread" >&2; exit 2 ;;
  esac
}

main "$@"; exit
