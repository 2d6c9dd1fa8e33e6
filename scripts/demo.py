#!/usr/bin/env python
"""The demo (`make demo`): the whole MTKD pipeline on embedded data, a few minutes on a CPU.

    python scripts/demo.py              # full demo: committed teachers, stage 1, stage 2, student alone, table, figure
    python scripts/demo.py --quick      # the students at a fifth of their iterations (what the test runs)
    DEMO_TRAIN_TEACHERS=1 make demo     # also retrain the three teachers (their committed weights otherwise)
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
from mtkd.tools.demo import DemoError, export_teachers, run_demo  # noqa: E402
from mtkd.tools.demo_data import DemoDataError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', default=os.environ.get('DEMO_QUICK', '') not in ('', '0'),
                        help='the students at a fifth of their iterations, stage 1 whole (also: DEMO_QUICK=1)')
    parser.add_argument('--root', default=REPO_ROOT,
                        help='folder for datasets/, experiments/ and results/ (default: the repository)')
    parser.add_argument('--in-process', action='store_true',
                        help='run the stages in this process instead of one mtkd/train.py / mtkd/test.py each')
    parser.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS of each stage (subprocesses)')
    parser.add_argument('--train-teachers', action='store_true',
                        default=os.environ.get('DEMO_TRAIN_TEACHERS', '') not in ('', '0'),
                        help='train the three teachers from scratch instead of using their committed weights in '
                        'pretrained/demo/ (also: DEMO_TRAIN_TEACHERS=1; 3000 iterations each: tens of minutes on '
                        'a CPU)')
    parser.add_argument('--export-teachers', action='store_true',
                        help='after --train-teachers: copy the trained teachers to pretrained/demo/ and write their '
                        'sha256 into options/demo/*.yml (how the committed weights were made)')
    args = parser.parse_args(argv)
    if args.export_teachers and not args.train_teachers:
        parser.error('--export-teachers needs --train-teachers (or DEMO_TRAIN_TEACHERS=1)')
    try:
        run_demo(args.root, quick=args.quick, mode='in-process' if args.in_process else 'subprocess',
                 threads=args.threads, train_teachers=args.train_teachers)
        if args.export_teachers:
            export_teachers(args.root)
    except (DemoError, DemoDataError) as error:
        print(f'demo failed: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
