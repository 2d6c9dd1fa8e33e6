#!/usr/bin/env python
"""The demo (`make demo`): the whole MTKD pipeline on embedded data, a few minutes on a CPU.

    python scripts/demo.py              # full demo: three teachers, stage 1, stage 2, student alone, table, figure
    python scripts/demo.py --quick      # a few iterations per training: checks the chain (~1-2 minutes)
    DEMO_QUICK=1 make demo              # the same through make

Each stage is an option file under options/demo/, run with mtkd/train.py or mtkd/test.py (commands printed).
Writes datasets/demo (kept), experiments/demo_*, results/demo_* and results/demo/{table.md,comparison.png,logs/};
the previous demo run's folders are deleted first. See docs/demo.md.
"""
import argparse
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches, before basicsr)
from mtkd.demo import DemoError, run_demo  # noqa: E402
from mtkd.demo_data import DemoDataError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', default=os.environ.get('DEMO_QUICK', '') not in ('', '0'),
                        help='a handful of iterations per training (also: DEMO_QUICK=1)')
    parser.add_argument('--root', default=REPO_ROOT,
                        help='folder for datasets/, experiments/ and results/ (default: the repository)')
    parser.add_argument('--in-process', action='store_true',
                        help='run the stages in this process instead of one mtkd/train.py / mtkd/test.py each')
    parser.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS of each stage (subprocesses)')
    args = parser.parse_args(argv)
    try:
        run_demo(args.root, quick=args.quick, mode='in-process' if args.in_process else 'subprocess',
                 threads=args.threads)
    except (DemoError, DemoDataError) as error:
        print(f'demo failed: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
