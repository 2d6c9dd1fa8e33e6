#!/usr/bin/env python
"""Make the demo's embedded data set (no download): fixed crops of photos bundled with scikit-image, MATLAB-bicubic
LR at x2, in BasicSR's benchmark layout under <root>/datasets/demo/{train,val}/{HR,LR_bicubic/X2}.

    python scripts/make_demo_data.py            # skips when datasets/demo is already complete
    python scripts/make_demo_data.py --force    # rebuild

See mtkd/tools/demo_data.py for the photos, the crops and the choice of x2.
"""
import argparse
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

from mtkd.tools.demo_data import DemoDataError, prepare_demo_data, split_names  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default=REPO_ROOT, help='folder that gets datasets/demo (default: the repository)')
    parser.add_argument('--force', action='store_true', help='rebuild even when the data is complete')
    args = parser.parse_args(argv)
    try:
        data_dir, built = prepare_demo_data(args.root, force=args.force)
    except DemoDataError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{data_dir}: {"made" if built else "already complete, nothing to do"} '
          f'({len(split_names(data_dir, "train"))} training images, {len(split_names(data_dir, "val"))} validation '
          f'images: {", ".join(split_names(data_dir, "val"))})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
