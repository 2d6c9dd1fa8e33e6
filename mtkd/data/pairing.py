"""Pairing an HR image with its LR image: the mod-crop convention, and a clear error for real mismatches."""
from __future__ import annotations

import numpy as np

from mtkd.utils.errors import MtkdError


class PairSizeError(MtkdError, ValueError):
    """An LR/HR pair whose sizes do not match the scale."""


def pair_size_problem(gt_size: tuple[int, int], lq_size: tuple[int, int], scale: int, gt_path: str = '',
                      lq_path: str = '') -> str | None:
    """Why an HR of ``gt_size`` ``(height, width)`` is not the HR of an LR of ``lq_size`` at ``scale``, or None.

    The mod-crop convention: benchmark and training LR images are made from the HR image cropped to a multiple
    of the scale (MATLAB ``modcrop``) while the HR files keep their full size (e.g. BSD 481×321), so the HR may
    exceed ``LR × scale`` by up to ``scale - 1`` rows/columns, never by more, and never fall short.
    """
    (gt_height, gt_width), (lq_height, lq_width) = gt_size, lq_size
    extra_height, extra_width = gt_height - lq_height * scale, gt_width - lq_width * scale
    if 0 <= extra_height < scale and 0 <= extra_width < scale:
        return None
    return (f'HR {gt_path or "image"} is {gt_width}x{gt_height} but its LR {lq_path or "image"} is '
            f'{lq_width}x{lq_height}: at scale {scale} the HR must be {lq_width * scale}x{lq_height * scale} (up to '
            f'{scale - 1} more pixels per side, which are cropped). Check the scale and the LR folder, or remake the '
            'LR with scripts/prepare_benchmark.py.')


def match_gt_to_lq(image_gt: np.ndarray, image_lq: np.ndarray, scale: int, gt_path: str = '',
                   lq_path: str = '') -> np.ndarray:
    """GT cropped at the top-left to ``LQ size × scale`` (the mod-crop convention of :func:`pair_size_problem`,
    as BasicSR does at validation). A GT that is not the LR image's HR counterpart raises :class:`PairSizeError`.
    """
    lq_height, lq_width = image_lq.shape[:2]
    problem = pair_size_problem(image_gt.shape[:2], image_lq.shape[:2], scale, gt_path, lq_path)
    if problem:
        raise PairSizeError(problem)
    return image_gt[:lq_height * scale, :lq_width * scale]
