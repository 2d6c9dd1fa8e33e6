"""DCT-domain L1 distillation loss: the DCT-loss ablation of MTKD (Table 5).

Registered into BasicSR's ``LOSS_REGISTRY`` as ``DCTDistillLoss``. Choices and sources: ``docs/losses.md``.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from mtkd.transforms.dct import dct_matrix

__all__ = ['DCTDistillLoss']

_REDUCTIONS = ('mean', 'sum')
_NORMS = ('ortho', 'backward')
_REMAINDERS = ('replicate', 'crop')


def _dct_matrix(size: int, norm: str, like: torch.Tensor) -> torch.Tensor:
    """DCT-II matrix (rows = frequencies) in scipy's ``norm='ortho'`` or ``norm='backward'`` scaling, on ``like``'s
    device and dtype, made once per size, norm, device and dtype (not copied from the host at every call)."""
    if torch.compiler.is_compiling():
        return _make_dct_matrix(size, norm, like.device, like.dtype)
    return _cached_dct_matrix(size, norm, like.device, like.dtype)


def _make_dct_matrix(size: int, norm: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        matrix = dct_matrix(size, dtype=torch.float64)
        if norm == 'backward':
            # scipy's unnormalised DCT-II, 2 * sum_i x[i] cos(pi (2 i + 1) k / (2 n)): the orthonormal rows times
            # sqrt(2 n), and the DC row once more times sqrt(2).
            matrix = matrix * math.sqrt(2.0 * size)
            matrix[0] *= math.sqrt(2.0)
        return matrix.to(dtype=dtype, device=device)


_cached_dct_matrix = functools.lru_cache(maxsize=None)(_make_dct_matrix)


@LOSS_REGISTRY.register()
class DCTDistillLoss(nn.Module):
    """L1 distance between the 2-D DCT-II coefficients of a prediction and a target image.

    The DCT-domain distillation loss of MTKD's loss ablation (Jiang, Feng, Zhang and Bull, "MTKD: Multi-Teacher
    Knowledge Distillation for Image Super-Resolution", ECCV 2024, Table 5), which cites the DCT loss of
    Tomosada, Kudo, Fujisawa and Ikehara ("GAN-Based Image Deblurring Using DCT Loss With Customized
    Datasets", IEEE Access, 2021). Tomosada et al.'s exact definition could not be checked here, so two
    documented forms are offered::

        block_size = 8 (default)    mean over 8x8 blocks, channels and images of |D (P - T) D^T|
        block_size = None           mean over channels and images of |D_H (P - T) D_W^T| (whole image)

    where ``D`` is the DCT-II matrix in scipy's ``norm`` (``'ortho'``: orthonormal, the coefficients have the
    pixels' scale; ``'backward'``: scipy's and ``torch_dct``'s unnormalised ``2 sum x cos``). The default is
    the natural JPEG-style form (blockwise, orthonormal, like MTKD's own DCTSwin windows).
    ``block_size=None, norm='backward'`` equals the DCT loss of the official MTKD code (``dctLoss``:
    ``torch_dct.dct_2d`` of the whole image, then BasicSR's L1 mean), the likeliest form of the paper's
    ablation; its coefficients are about ``2 sqrt(H W)`` times the orthonormal ones, which changes its
    balance against the ``α·L1`` ground-truth term.

    Choices:

    * The DCT is linear: the transform of ``pred - target`` is taken once. The target is detached.
    * Sizes not divisible by ``block_size``: ``remainder='replicate'`` pads the last partial blocks by
      repeating the last row/column (JPEG's convention; every pixel counts), ``'crop'`` leaves them out.
      Training patches (multiples of 8) need neither.
    * Colour images: every channel is transformed separately (no YCbCr conversion).

    Args:
        loss_weight: multiplies the loss.
        block_size: side of the square DCT blocks, or ``None`` for one DCT of the whole image.
        norm: ``'ortho'`` or ``'backward'`` (scipy's names).
        remainder: ``'replicate'`` or ``'crop'`` for the partial blocks at the bottom and right edges.
        reduction: ``'mean'`` or ``'sum'`` over all coefficients.

    Shapes: ``pred`` and ``target`` ``(B, C, H, W)`` (any ``(..., H, W)``), same shape, images in ``[0, 1]``.
    Returns a scalar.
    """

    def __init__(self, loss_weight: float = 1.0, block_size: int | None = 8, norm: str = 'ortho',
                 remainder: str = 'replicate', reduction: str = 'mean'):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"DCTDistillLoss: reduction must be 'mean' or 'sum', got {reduction!r}.")
        if norm not in _NORMS:
            raise ValueError(f"DCTDistillLoss: norm must be 'ortho' (orthonormal) or 'backward' (scipy's "
                             f'unnormalised DCT-II, as torch_dct), got {norm!r}.')
        if remainder not in _REMAINDERS:
            raise ValueError(f"DCTDistillLoss: remainder must be 'replicate' or 'crop', got {remainder!r}.")
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                       or block_size < 1):
            raise ValueError(f'DCTDistillLoss: block_size must be a positive integer (8 for JPEG-style blocks) or '
                             f'null for one DCT of the whole image, got {block_size!r}.')
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise TypeError(f'DCTDistillLoss: loss_weight must be a number, got {loss_weight!r}.')
        self.loss_weight = float(loss_weight)
        self.block_size = block_size
        self.norm = norm
        self.remainder = remainder
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, block_size={self.block_size}, norm={self.norm!r}, '
                f'remainder={self.remainder!r}, reduction={self.reduction!r}')

    def coefficients(self, image: torch.Tensor) -> torch.Tensor:
        """DCT coefficients of ``(..., H, W)``: ``(..., H, W)`` for the whole image, else
        ``(..., H/b, W/b, b, b)`` blocks (after replicating or cropping the partial ones)."""
        if image.dim() < 2 or not image.is_floating_point():
            raise ValueError(f'DCTDistillLoss: expected a floating-point tensor of shape (..., H, W), got '
                             f'{image.dtype} {tuple(image.shape)}.')
        height, width = image.shape[-2:]
        if self.block_size is None:
            rows = _dct_matrix(height, self.norm, image)
            columns = _dct_matrix(width, self.norm, image)
            return rows @ image @ columns.transpose(0, 1)
        block = self.block_size
        leading = image.shape[:-2]
        planes = image.reshape(-1, 1, height, width)
        if self.remainder == 'crop':
            height, width = height // block * block, width // block * block
            if height == 0 or width == 0:
                raise ValueError(f'DCTDistillLoss: an image of {tuple(image.shape[-2:])} has no whole '
                                 f'{block}x{block} block; use remainder: replicate or a smaller block_size.')
            planes = planes[..., :height, :width]
        else:
            pad_height, pad_width = -height % block, -width % block
            if pad_height or pad_width:
                planes = F.pad(planes, (0, pad_width, 0, pad_height), mode='replicate')
                height, width = height + pad_height, width + pad_width
        blocks = planes.reshape(-1, height // block, block, width // block, block).transpose(2, 3)
        matrix = _dct_matrix(block, self.norm, image)
        coefficients = matrix @ blocks @ matrix.transpose(0, 1)
        return coefficients.reshape(*leading, height // block, width // block, block, block)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f'DCTDistillLoss: pred and target must have the same shape, got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}.')
        difference = self.coefficients(pred - target.detach()).abs()
        total = difference.mean() if self.reduction == 'mean' else difference.sum()
        return self.loss_weight * total
