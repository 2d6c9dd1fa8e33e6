#!/usr/bin/env python
"""Pre-compute every teacher's SR output of the training LR images of an option file (mtkd.teachers.cache).

    python scripts/build_teacher_cache.py -opt options/<stage-1 file>.yml [--device cuda] [--tile-size 256]
    python scripts/build_teacher_cache.py -opt options/<stage-2 file>.yml --content aggregate     # I_MT
    torchrun --nproc-per-node 4 scripts/build_teacher_cache.py -opt <file>    # each GPU builds its share

Uses the file's ``scale``, ``teachers:`` and ``datasets.train`` (``dataroot_gt``, ``dataroot_lq``,
``filename_tmpl``, ``meta_info_file``, ``teacher_cache_root``, default ``datasets/teacher_cache``); relative
paths are taken from the repository root. An interrupted build resumes; a finished one is reused, and a truncated
output file is recomputed alone. A cache whose teachers' code has changed since it was built is refused
(``--accept-stale`` keeps it and records the new behaviour). Prints the cache folder (``teacher_cache_dir``) at
the end. ``--content aggregate`` builds MTKD stage 2's ``I_MT`` cache (the teachers followed by the file's
``aggregator:``; the default is the training set's ``teacher_cache_content``). Under torchrun every process takes
the GPU of its local rank and computes every N-th image, then they wait for each other once (at most
``dist_params.timeout`` seconds, default 1800) and the cache is marked complete. Teachers run in IEEE fp32.
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
from mtkd.teachers.cache import BACKENDS, DEFAULT_TILE_OVERLAP, build_cache_from_options  # noqa: E402
from mtkd.training import distributed  # noqa: E402


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
    parser.add_argument('--content', choices=('teachers', 'aggregate'), default=None,
                        help="'teachers': each teacher's output; 'aggregate': I_MT (teachers + the file's aggregator, "
                        'MTKD stage 2). Default: datasets.train.teacher_cache_content of the file, else teachers')
    parser.add_argument('--accept-stale', action='store_true',
                        help='keep outputs stored by teachers whose code has changed since (their probe output '
                        'differs: mtkd.teachers.cache.behaviour_fingerprint), and record the current behaviour; '
                        'without it such a cache is refused. Rebuilding instead: delete the cache folder')
    args = parser.parse_args(argv)

    with open(args.opt, encoding='utf-8') as handle:
        options = yaml.safe_load(handle)
    content = args.content or ((options.get('datasets') or {}).get('train') or {}).get('teacher_cache_content') \
        or 'teachers'
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:  # torchrun: one process per GPU, each builds its share
        distributed.init_process_group('pytorch', options.get('dist_params'))
    rank, world = distributed.rank_and_world()
    logging.basicConfig(level=logging.INFO, format=f'%(levelname)s{f" [rank {rank}]" if world > 1 else ""}: '
                        '%(message)s')
    cache, report = build_cache_from_options(options, root=REPO_ROOT, device=args.device, backend=args.backend,
                                             tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                                             progress=not args.no_progress, logger=logging.getLogger('mtkd'),
                                             accept_stale=args.accept_stale, content=content)
    share = f' (process {rank + 1} of {world})' if world > 1 else ''
    print(f'{report.computed} images computed, {report.reused} reused in {report.seconds:.1f} s{share}')
    if world > 1:
        torch.distributed.destroy_process_group()
    if rank:
        return 0
    inside = os.path.commonpath([os.path.abspath(cache.path), REPO_ROOT]) == REPO_ROOT
    print(f'teacher_cache_dir: {os.path.relpath(cache.path, REPO_ROOT) if inside else os.path.abspath(cache.path)}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
