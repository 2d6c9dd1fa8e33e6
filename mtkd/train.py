"""Train a model from an option file: ``python mtkd/train.py -opt options/<file>.yml`` (BasicSR's command line).

Multi-GPU: ``torchrun --nproc-per-node N mtkd/train.py -opt ... --launcher pytorch``.
"""
import os.path as osp
import sys

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))

import mtkd  # noqa: E402,F401  (compat patches, registration)
from mtkd.config.cli import run_pipeline  # noqa: E402

if __name__ == '__main__':
    from basicsr.train import train_pipeline

    run_pipeline(train_pipeline, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))
