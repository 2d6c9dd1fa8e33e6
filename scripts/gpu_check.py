#!/usr/bin/env python
"""The one-shot GPU check (mtkd.analysis.gpu_check): ``bash scripts/gpu_check.sh`` installs what is missing, then runs
this.

    python scripts/gpu_check.py [--out results/gpu_check] [--budget 510]     # one CUDA GPU
    python scripts/gpu_check.py --dry [--full]                               # CPU: the same steps, tiny
"""
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches, registration, IEEE fp32)
from mtkd.analysis.gpu_check import main  # noqa: E402

if __name__ == '__main__':
    raise SystemExit(main())
