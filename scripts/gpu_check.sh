#!/usr/bin/env bash
# One-shot check of mtkd on a CUDA GPU (issue 18; docs/performance.md, "The one-shot GPU check").
#
#   bash scripts/gpu_check.sh [--out DIR] [--budget SECONDS]    # one CUDA GPU, no internet: about 8 minutes
#   bash scripts/gpu_check.sh --dry [--out DIR]                  # CPU, tiny networks, seconds (make test runs it)
#
# When mtkd's dependencies do not import, they are installed (no index, no dependencies) into /tmp/mtkd_site from
# the wheels found in $MTKD_WHEELS, shared/wheels(/cp312), ../shared/wheels(/cp312) and .whl (all of them; BasicSR
# and the small packages are in shared/wheels; pydantic and pydantic-core are not, and go into .whl where the GPU
# machine lacks them: see docs/performance.md). Then mtkd/analysis/gpu_check.py writes gpu_check.md and gpu_check.json
# into --out (default results/gpu_check). Exit status: 0 when no step failed, 1 otherwise, 2 when it could not start.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
FIND='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
NEEDED=(basicsr pydantic pywt lmdb addict yapf platformdirs)
if ! "$PYTHON" -c "$FIND" "${NEEDED[@]}"; then
  wheels=()
  for folder in "${MTKD_WHEELS:-}" "$REPO/shared/wheels" "$REPO/shared/wheels/cp312" "$REPO/../shared/wheels" \
                "$REPO/../shared/wheels/cp312" "$REPO/.whl"; do
    if [ -n "$folder" ] && [ -d "$folder" ]; then
      for wheel in "$folder"/*.whl; do [ -e "$wheel" ] && wheels+=("$wheel"); done
    fi
  done
  if [ "${#wheels[@]}" -eq 0 ]; then
    echo "gpu_check: mtkd's dependencies do not import and no wheels were found (shared/wheels, ../shared/wheels," \
         ".whl, \$MTKD_WHEELS)" >&2
    exit 2
  fi
  SITE=/tmp/mtkd_site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "$FIND" "${NEEDED[@]}" || {
    echo "gpu_check: still missing a dependency after installing ${#wheels[@]} wheels (see the error above)" >&2
    exit 2
  }
fi
exec "$PYTHON" "$REPO/scripts/gpu_check.py" "$@"
