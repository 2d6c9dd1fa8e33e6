"""DTKD's image-entropy routing: which teacher each training patch (or window) learns from.

Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025): smooth
content is distilled from the fidelity teacher, textured content from the perceptual teacher, decided by the
Shannon entropy of a gray-level histogram (:func:`mtkd.transforms.entropy.image_entropy`; the released helper
``get_entropy_batch`` splits a batch per image at a threshold). The router returns the perceptual teacher's share
``p`` in [0, 1] per pixel, ``(B, 1, H, W)``; the fidelity teacher gets ``1 - p``.

Modes: ``'hard'`` ``p = [H > threshold]``: an entropy equal to the threshold goes to the fidelity side, as the
helper's ``H <= threshold`` goes to its "min" sub-batch; ``'soft'`` ``p = sigmoid((H - threshold) / temperature)``
(0.5 at the threshold); ``'off'`` ``p = 0.5`` everywhere (both teachers on every pixel, the ablation without
routing). ``window_size``: the entropy of each ``w x w`` window of the image instead of the whole image (the
image must be a multiple of it).

Choices the helper does not fix (docs/dtkd.md, "Image-entropy routing"): the image the entropy is computed on
(the caller passes it; ``DualTeacherModel`` passes the GT patch), which side goes to which teacher (low entropy
to the fidelity teacher), and how routed losses are normalised (per batch or per sub-batch: the losses'
``normalize``). A ``w x w`` window holds ``w²`` pixels, so its entropy is at most ``log2(min(w², 256))`` bits
(:func:`max_entropy`, 6 bits at w = 8): a threshold at or above that bound would send no window to the
perceptual teacher, and the router refuses it. Thresholds calibrated on whole patches do not transfer to windows:
``DualTeacherModel`` takes a separate ``window_threshold`` (docs/dtkd.md has medians per window size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtkd.transforms.entropy import NUM_LEVELS, image_entropy

ROUTING_MODES = ('hard', 'soft', 'off')


def max_entropy(num_pixels: int) -> float:
    """The largest entropy (bits) a 256-level histogram of ``num_pixels`` pixels can have: ``log2(min(n, 256))``."""
    return math.log2(min(num_pixels, NUM_LEVELS))


class EntropyRouter:
    """``image (B, 3, H, W)`` in [0, 1] → perceptual-teacher share ``(B, 1, H, W)`` (no gradient).

    ``threshold`` is in bits and applies to what is measured: the whole image, or each ``window_size`` window.
    With ``window_size``, a threshold of ``log2(min(window_size², 256))`` bits or more cannot be exceeded by any
    window and is refused (``ValueError``), unless the mode is ``'off'``.
    """

    def __init__(self, threshold: float, mode: str = 'hard', temperature: float = 0.25,
                 window_size: int | None = None):
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing mode '{mode}' is unknown; choose one of {', '.join(ROUTING_MODES)}")
        if temperature <= 0:
            raise ValueError(f'routing temperature must be > 0, got {temperature}')
        if window_size is not None and mode != 'off' and threshold >= max_entropy(window_size ** 2):
            raise ValueError(f'routing threshold {threshold} bits cannot be exceeded by a {window_size}x{window_size} '
                             f'window (at most log2({min(window_size ** 2, NUM_LEVELS)}) = '
                             f'{max_entropy(window_size ** 2):g} bits): no window would reach the perceptual '
                             'teacher. Use a threshold calibrated for this window size (docs/dtkd.md) or no window.')
        self.threshold = threshold
        self.mode = mode
        self.temperature = temperature
        self.window_size = window_size

    def entropy_map(self, images: torch.Tensor) -> torch.Tensor:
        """Entropy in bits, ``(B, 1, H, W)``: constant per image, or per window."""
        batch, _, height, width = images.shape
        entropy = image_entropy(images, self.window_size).to(images.device, images.dtype)
        if self.window_size is None:
            return entropy.view(batch, 1, 1, 1).expand(batch, 1, height, width)
        return F.interpolate(entropy.unsqueeze(1), scale_factor=self.window_size, mode='nearest')

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == 'off':
            return images.new_full((images.shape[0], 1) + tuple(images.shape[2:]), 0.5)
        entropy = self.entropy_map(images)
        if self.mode == 'hard':
            return (entropy > self.threshold).to(images.dtype)
        return torch.sigmoid((entropy - self.threshold) / self.temperature)
