#!/usr/bin/env bash
# Link the shared benchmark/training data and official weights into datasets/ and pretrained/official/.
# Nothing is copied and nothing here is ever committed (see .gitignore). Override the location with
# MTKD_SHARED=/path/to/shared. Exits 0 with a message when the shared folder is absent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${MTKD_SHARED:-$(cd "$root/.." && pwd)/shared}
if [ ! -d "$shared/data" ] || [ ! -d "$shared/weights" ]; then
  echo "link-shared: $shared has no data/ and weights/; data-dependent tests will be skipped."
  exit 0
fi
mkdir -p "$root/datasets" "$root/pretrained/official"
for set_dir in "$shared"/data/benchmark/* "$shared"/data/train/*; do
  [ -d "$set_dir" ] || continue
  ln -sfn "$set_dir" "$root/datasets/$(basename "$set_dir")"
done
for weight in "$shared"/weights/*; do
  [ -f "$weight" ] || continue
  ln -sfn "$weight" "$root/pretrained/official/$(basename "$weight")"
done
echo "link-shared: linked $(ls "$root/datasets" | grep -vc README) datasets and $(ls "$root/pretrained/official" | wc -l) weight files from $shared"
