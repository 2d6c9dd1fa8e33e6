"""Test a model from an option file: ``python mtkd/test.py -opt options/test_<model>_x<s>.yml``.

Writes images (``val.save_img``), the log, and ``results/<name>/metrics.json`` (per dataset: the mean of
each metric and the per-image values).
"""
import os.path as osp
import sys

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))

import mtkd  # noqa: E402,F401  (compat patches, registration)
from mtkd.config.cli import run_pipeline  # noqa: E402

if __name__ == '__main__':
    from basicsr.test import test_pipeline

    run_pipeline(test_pipeline, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))
