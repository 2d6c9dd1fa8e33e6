"""Pairing an HR image with its LR image: the mod-crop convention, and a clear error for real mismatches."""
from __future__ import annotations

import numpy as np


class PairSizeError(ValueError):
    """An LR/HR pair whose sizes do not match the scale."""


def match_gt_to_lq(image_gt: np.ndarray, image_lq: np.ndarray, scale: int, gt_path: str = '',
                   lq_path: str = '') -> np.ndarray:
    """GT cropped at the top-left to ``LQ size × scale``.

    Benchmark and training LR images are made from the HR image mod-cropped to a multiple of the scale
    (MATLAB ``modcrop``), while the HR files keep their full size (e.g. BSD 481×321): up to ``scale - 1``
    extra rows/columns are dropped, as BasicSR does at validation. A GT smaller than ``LQ × scale``, or larger
    by ``scale`` or more, is not the LR image's HR counterpart and raises :class:`PairSizeError`.
    """
    lq_height, lq_width = image_lq.shape[:2]
    gt_height, gt_width = image_gt.shape[:2]
    extra_height, extra_width = gt_height - lq_height * scale, gt_width - lq_width * scale
    if not (0 <= extra_height < scale and 0 <= extra_width < scale):
        raise PairSizeError(
            f'HR {gt_path or "image"} is {gt_width}x{gt_height} but its LR {lq_path or "image"} is '
            f'{lq_width}x{lq_height}: at scale {scale} the HR must be {lq_width * scale}x{lq_height * scale} (up to '
            f'{scale - 1} more pixels per side, which are cropped). Check the scale and the LR folder, or remake the LR '
            'with scripts/prepare_benchmark.py.')
    return image_gt[:lq_height * scale, :lq_width * scale]
