#!/usr/bin/env bash
# Re-measure the README's reproduction table: every official model with weights in pretrained/official/,
# through the normal entry point, then one Markdown table per scale from the metrics.json files.
# Usage: bash scripts/reproduce_official.sh [option-name ...]   (default: all below; ~30 min on 2 CPU cores)
# The body is one { ... } block, read whole before it runs, so editing this file while it runs is safe.
{
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(test_imdn_x4 test_rlfn_x4 test_rlfn_s_x4 test_pan_x4 test_rfdn_aim_x4
          test_published_dtkd_rfdn_x4 test_published_dtkd_rfdn_perceptual_x4
          test_published_dtkd_lbnet_x4 test_published_dtkd_lbnet_perceptual_x4
          test_imdn_x2 test_imdn_x3 test_pan_x2 test_pan_x3 test_rlfn_x2 test_rlfn_s_x2
          test_lbnet_x2 test_lbnet_x3 test_lbnet_t_x2 test_lbnet_t_x3 test_lbnet_t_x4)
fi
for name in "${models[@]}"; do
  echo "== $name"
  "$PY" mtkd/test.py -opt "options/$name.yml" > "/tmp/mtkd_$name.log" 2>&1 || { echo "failed: see /tmp/mtkd_$name.log"; exit 1; }
done
for scale in 2 3 4; do
  results=()
  for name in "${models[@]}"; do
    case "$name" in *_x$scale) [ -f "results/$name/metrics.json" ] && results+=("results/$name");; esac
  done
  [ ${#results[@]} -gt 0 ] && { echo; echo "x$scale"; "$PY" scripts/make_table.py "${results[@]}" --digits 3; }
done
exit
}
