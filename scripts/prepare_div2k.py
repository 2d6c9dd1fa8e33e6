"""Download and prepare DIV2K: HR archives (checksum-verified), MATLAB-bicubic LR X2/X3/X4, aligned sub-images.

Example: python scripts/prepare_div2k.py --root datasets/DIV2K --splits train valid --workers 2
Output (BasicSR's names): DIV2K_train_HR, DIV2K_train_HR_sub, DIV2K_train_LR_bicubic/X4{,_sub}, ...
Every convention is documented in mtkd/data/preparation.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtkd.data.preparation import (SUBIMAGE_CROP_SIZE, SUBIMAGE_STEP, SUBIMAGE_THRESH_SIZE,  # noqa: E402
                                   PreparationError, prepare_div2k)
from mtkd.weights.download import ChecksumError, DownloadError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default=os.path.join('datasets', 'DIV2K'), help='DIV2K folder')
    parser.add_argument('--splits', nargs='+', default=['train', 'valid'], choices=['train', 'valid'])
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], help='LR factors (2 3 4)')
    parser.add_argument('--skip-download', action='store_true',
                        help='use the DIV2K_<split>_HR folders already under --root')
    parser.add_argument('--archive-dir', default=None, help='where the zip archives go (default: --root)')
    parser.add_argument('--url', default=None, help='archive URL instead of the official one (one split only)')
    parser.add_argument('--sha256', default=None,
                        help='expected archive SHA-256 (official archives are verified without it)')
    parser.add_argument('--subimage-splits', nargs='*', default=['train'], choices=['train', 'valid'],
                        help='splits that also get sub-images (default: train)')
    parser.add_argument('--crop-size', type=int, default=SUBIMAGE_CROP_SIZE, help='HR sub-image size (480)')
    parser.add_argument('--step', type=int, default=SUBIMAGE_STEP, help='HR sub-image step (240)')
    parser.add_argument('--thresh-size', type=int, default=SUBIMAGE_THRESH_SIZE,
                        help='leftover above which a last, edge-flush crop is added (0)')
    parser.add_argument('--workers', type=int, default=1, help='processes (default 1)')
    parser.add_argument('--no-progress', action='store_true', help='hide progress bars')
    args = parser.parse_args(argv)
    try:
        counts = prepare_div2k(args.root, args.splits, args.scales, download=not args.skip_download,
                               archive_dir=args.archive_dir, url=args.url, sha256=args.sha256,
                               subimage_splits=args.subimage_splits, crop_size=args.crop_size, step=args.step,
                               thresh_size=args.thresh_size, workers=args.workers, progress=not args.no_progress)
    except (PreparationError, ChecksumError, DownloadError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    for split, count in counts.items():
        print(f'DIV2K {split}: LR x{",".join(map(str, args.scales))} written; {count} sub-images per folder')
    return 0


if __name__ == '__main__':
    sys.exit(main())
