#!/usr/bin/env python
"""Pre-compute every teacher's SR output of the training LR images of an option file (mtkd.teacher_cache).

    python scripts/build_teacher_cache.py -opt options/<stage-1 file>.yml [--device cuda] [--tile-size 256]

Uses the file's ``scale``, ``teachers:`` and ``datasets.train`` (``dataroot_gt``, ``dataroot_lq``,
``filename_tmpl``, ``meta_info_file``, ``teacher_cache_root``, default ``datasets/teacher_cache``); relative
paths are taken from the repository root. An interrupted build resumes; a finished one is reused. Prints the
cache folder (``teacher_cache_dir``) at the end.
"""
import argparse
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
import yaml  # noqa: E402

import mtkd  # noqa: E402,F401  (compat patches and arch registration)
from mtkd.teacher_cache import BACKENDS, DEFAULT_TILE_OVERLAP, build_cache_from_options  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='option file with teachers: and datasets: train:')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='where the teachers run (default: cuda when available)')
    parser.add_argument('--backend', choices=BACKENDS, default='npy', help='npy files (default) or one LMDB')
    parser.add_argument('--tile-size', type=int, default=None,
                        help='run on overlapping LR tiles of this size when an image side exceeds it (default: '
                        'whole images; exact only for purely local conv teachers)')
    parser.add_argument('--tile-overlap', type=int, default=DEFAULT_TILE_OVERLAP, help='LR pixels of tile context')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)

    with open(args.opt, encoding='utf-8') as handle:
        options = yaml.safe_load(handle)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    cache, report = build_cache_from_options(options, root=REPO_ROOT, device=args.device, backend=args.backend,
                                             tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                                             progress=not args.no_progress, logger=logging.getLogger('mtkd'))
    print(f'{report.computed} images computed, {report.reused} reused in {report.seconds:.1f} s')
    inside = os.path.commonpath([os.path.abspath(cache.path), REPO_ROOT]) == REPO_ROOT
    print(f'teacher_cache_dir: {os.path.relpath(cache.path, REPO_ROOT) if inside else os.path.abspath(cache.path)}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
