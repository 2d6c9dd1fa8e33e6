"""Make a benchmark set's MATLAB-bicubic LR images: <out-dir>/<name>/{HR, LR_bicubic/X<s>} from a folder of HR.

Example: python scripts/prepare_benchmark.py --hr-dir ~/Urban100_HR --out-dir datasets --name Urban100
The layout and every convention are documented in mtkd/data/preparation.py (prepare_benchmark).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtkd.data.preparation import PreparationError, prepare_benchmark  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr-dir', required=True, help='folder of HR images (png/jpg/bmp/tif)')
    parser.add_argument('--out-dir', default='datasets', help='parent folder of the set (default: datasets)')
    parser.add_argument('--name', required=True, help='set name, e.g. Set5: outputs go to <out-dir>/<name>')
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], help='downscaling factors (2 3 4)')
    parser.add_argument('--workers', type=int, default=1, help='processes (default 1)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    args = parser.parse_args(argv)
    try:
        set_root = prepare_benchmark(args.hr_dir, args.out_dir, args.name, args.scales, workers=args.workers,
                                     progress=not args.no_progress)
    except PreparationError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(f'wrote {set_root}: HR and LR_bicubic/X{{{",".join(map(str, args.scales))}}}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
