"""DTKD's image-entropy routing: which teacher each training patch (or window) learns from.

Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025): smooth
content is distilled from the fidelity teacher, textured content from the perceptual teacher, decided by the
Shannon entropy of the ground truth's gray-level histogram (:func:`mtkd.transforms.entropy.image_entropy`; the
released helper splits a batch per image at a threshold). The router returns the perceptual teacher's share
``p`` in [0, 1] per pixel, ``(B, 1, H, W)``; the fidelity teacher gets ``1 - p``.

Modes: ``'hard'`` ``p = [H > threshold]`` (the helper: ``H <= threshold`` goes to the fidelity side);
``'soft'`` ``p = sigmoid((H - threshold) / temperature)``; ``'off'`` ``p = 0.5`` everywhere (both teachers on
every pixel, the ablation without routing). ``window_size``: the entropy of each ``ws x ws`` window of the GT
patch instead of the whole patch (the patch must be a multiple of it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mtkd.transforms.entropy import image_entropy

ROUTING_MODES = ('hard', 'soft', 'off')


class EntropyRouter:
    """``gt (B, 3, H, W)`` in [0, 1] → perceptual-teacher share ``(B, 1, H, W)`` (no gradient)."""

    def __init__(self, threshold: float, mode: str = 'hard', temperature: float = 0.25,
                 window_size: int | None = None):
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing mode '{mode}' is unknown; choose one of {', '.join(ROUTING_MODES)}")
        if temperature <= 0:
            raise ValueError(f'routing temperature must be > 0, got {temperature}')
        self.threshold = threshold
        self.mode = mode
        self.temperature = temperature
        self.window_size = window_size

    def entropy_map(self, gt: torch.Tensor) -> torch.Tensor:
        """Entropy in bits, ``(B, 1, H, W)``: constant per patch, or per window."""
        batch, _, height, width = gt.shape
        entropy = image_entropy(gt, self.window_size).to(gt.device, gt.dtype)
        if self.window_size is None:
            return entropy.view(batch, 1, 1, 1).expand(batch, 1, height, width)
        return F.interpolate(entropy.unsqueeze(1), scale_factor=self.window_size, mode='nearest')

    def __call__(self, gt: torch.Tensor) -> torch.Tensor:
        if self.mode == 'off':
            return gt.new_full((gt.shape[0], 1) + tuple(gt.shape[2:]), 0.5)
        entropy = self.entropy_map(gt)
        if self.mode == 'hard':
            return (entropy > self.threshold).to(gt.dtype)
        return torch.sigmoid((entropy - self.threshold) / self.temperature)
