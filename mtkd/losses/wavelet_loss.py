"""MTKD's wavelet distillation loss (all subbands) and its high-frequency-only ablation (wavelet KD).

Registered into BasicSR's ``LOSS_REGISTRY`` as ``WaveletDistillLoss``. The transform is
:mod:`mtkd.transforms.dwt`, which equals PyWavelets' ``wavedec2``. Choices and sources: ``docs/losses.md``.
"""
from __future__ import annotations

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from mtkd.transforms.dwt import MODES, wavedec2, wavelet_filters

__all__ = ['WaveletDistillLoss']

_REDUCTIONS = ('mean', 'sum')
_SUBBANDS = ('all', 'high')


@LOSS_REGISTRY.register()
class WaveletDistillLoss(nn.Module):
    """Mean of the L1 distances between the wavelet subbands of a prediction and a target image.

    ``subbands='all'`` is MTKD's distillation loss (Jiang, Feng, Zhang and Bull, "MTKD: Multi-Teacher Knowledge
    Distillation for Image Super-Resolution", ECCV 2024, Sec. 3.2, Eqs. 2-4)::

        L_dis(I_stu, I_MT) = 1 / (3K + 1) * sum over the 3K + 1 subbands b of mean |b(I_stu) - b(I_MT)|

    with the ``K = levels``-level 2-D DWT (:func:`mtkd.transforms.dwt.wavedec2`): the three detail subbands
    (LH, HL, HH) of every level and the approximation (LL) of the last level, each an L1 mean, equally
    weighted. The student's total loss adds ``α·L1(I_stu, I_GT)`` (α = 0.1): BasicSR's ``L1Loss`` with
    ``loss_weight: 0.1``, a separate option block.

    ``subbands='high'`` is the ablation with the high-frequency subbands only (MTKD Table 5, after Zhang et al.,
    "Wavelet Knowledge Distillation: Towards Efficient Image-to-Image Translation", CVPR 2022, Sec. 3): the
    3K detail subbands of all K levels, equally weighted, the LL band left out::

        L_high = 1 / (3K) * sum over the 3K detail subbands b of mean |b(pred) - b(target)|

    Zhang et al.'s code sums one L1 mean per level (each over that level's three equal-sized detail bands),
    so it equals ``K * L_high``; identical for K = 1 (``loss_weight: K`` reproduces it for K > 1).

    Choices left open by the papers:

    * The DWT is linear, so the transform of ``pred - target`` is taken once (equal to the difference of the
      two transforms up to rounding, at half the cost).
    * The target is detached: it is a teacher's output or the ground truth, never something to train.
    * ``mode`` is PyWavelets' boundary extension; the default ``'symmetric'`` is PyWavelets' default. Both
      official codes use ``pytorch_wavelets`` with ``mode='zero'``; for Haar on even sizes (every training
      patch) no extension is used, so every mode gives the same loss. Odd sizes follow PyWavelets
      (``floor((N + F - 1) / 2)`` coefficients per axis).
    * ``reduction='sum'`` replaces each subband's mean by its sum (the 1/(3K+1) weighting stays);
      ``'none'`` is refused because the subbands have different shapes.

    Args:
        loss_weight: multiplies the loss.
        wavelet: PyWavelets discrete wavelet name (``'haar'``, the paper's; ``'db2'``, ``'sym4'``, ...).
        levels: K, decomposition levels (MTKD: 1).
        subbands: ``'all'`` (MTKD) or ``'high'`` (detail subbands only, wavelet KD).
        mode: boundary extension, one of :data:`mtkd.transforms.dwt.MODES`.
        reduction: ``'mean'`` or ``'sum'`` over each subband's coefficients.

    Shapes: ``pred`` and ``target`` ``(B, C, H, W)`` (any ``(..., H, W)``), same shape, images in ``[0, 1]``.
    Returns a scalar.
    """

    def __init__(self, loss_weight: float = 1.0, wavelet: str = 'haar', levels: int = 1, subbands: str = 'all',
                 mode: str = 'symmetric', reduction: str = 'mean'):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"WaveletDistillLoss: reduction must be 'mean' or 'sum', got {reduction!r} ('none' is "
                             f'not available: subbands of different levels have different shapes).')
        if subbands not in _SUBBANDS:
            raise ValueError(f"WaveletDistillLoss: subbands must be 'all' (MTKD: LL and every detail subband) or "
                             f"'high' (detail subbands only, wavelet KD), got {subbands!r}.")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f'WaveletDistillLoss: levels must be a positive integer (K, decomposition levels; '
                             f'MTKD uses 1), got {levels!r}.')
        if mode not in MODES:
            raise ValueError(f"WaveletDistillLoss: mode must be one of {', '.join(MODES)}, got {mode!r}.")
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise TypeError(f'WaveletDistillLoss: loss_weight must be a number, got {loss_weight!r}.')
        wavelet_filters(wavelet)  # fails now, naming the wavelet, rather than at the first training step
        self.loss_weight = float(loss_weight)
        self.wavelet = wavelet
        self.levels = levels
        self.subbands = subbands
        self.mode = mode
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, wavelet={self.wavelet!r}, levels={self.levels}, '
                f'subbands={self.subbands!r}, mode={self.mode!r}, reduction={self.reduction!r}')

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f'WaveletDistillLoss: pred and target must have the same shape, got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}.')
        coefficients = wavedec2(pred - target.detach(), self.wavelet, self.levels, self.mode)
        bands = [band for details in coefficients[1:] for band in details]
        if self.subbands == 'all':
            bands.insert(0, coefficients[0])
        reduce = torch.mean if self.reduction == 'mean' else torch.sum
        total = torch.stack([reduce(band.abs()) for band in bands]).sum()
        return self.loss_weight * total / len(bands)
