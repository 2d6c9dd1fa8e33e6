"""Image entropy (Shannon, bits) of gray-level histograms, per image or per window, in torch.

DTKD's image-entropy routing (Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge
Distillation", KBS 2025) decides per patch which teacher to learn from. The released helper
(lizhangray/SRDTKD, ``Utils/utils.py: get_entropy_batch``) quantises each image to uint8 (clamp to [0, 1],
``x * 255``, round), converts it to gray with OpenCV and takes ``H = -sum p log2 p`` over the 256-bin
histogram. It passes RGB arrays to ``COLOR_BGR2GRAY``, which swaps the red and blue weights; here the gray
level is BT.601 luma of RGB (``0.299 R + 0.587 G + 0.114 B``) in OpenCV's own fixed-point arithmetic, so it
equals ``cv2.cvtColor(bgr, COLOR_BGR2GRAY)`` bit for bit.

``image_entropy`` is vectorised (one ``bincount`` for the whole batch) and has no gradient (a histogram has
none). Input ``(B, 3, H, W)`` RGB in [0, 1]; output ``(B,)`` or, with ``window_size``, ``(B, H // ws, W // ws)``
(H and W must be multiples of ``window_size``). Pure torch: imports nothing of mtkd. No host synchronisation:
the gray weights are made once per device, and the histogram is a fixed-size ``index_add_`` (``bincount`` reads
the largest value back to the host on CUDA to size its output).
"""
from __future__ import annotations

import functools

import torch

# OpenCV 4.x uint8 BGR2GRAY: (R*9798 + G*19235 + B*3735 + 2**14) >> 15: 0.299/0.587/0.114 in 15-bit fixed point.
GRAY_FIXED_POINT = (9798, 19235, 3735)
GRAY_SHIFT = 15
NUM_LEVELS = 256


def gray_levels(images: torch.Tensor) -> torch.Tensor:
    """uint8-like gray levels ``(B, H, W)`` (int64 in 0..255) of RGB images in [0, 1], as OpenCV computes them."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'expected RGB images (B, 3, H, W), got {tuple(images.shape)}')
    quantized = (images.detach().float().clamp(0, 1) * 255).round().long()
    weights = _gray_weights(images.device)
    return ((quantized * weights).sum(dim=1) + (1 << (GRAY_SHIFT - 1))) >> GRAY_SHIFT


def _gray_weights(device: torch.device) -> torch.Tensor:
    """OpenCV's fixed-point gray weights ``(1, 3, 1, 1)`` int64 on ``device``, made once per device."""
    if torch.compiler.is_compiling():
        return _make_gray_weights(device)
    return _cached_gray_weights(device)


def _make_gray_weights(device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.tensor(GRAY_FIXED_POINT, dtype=torch.int64).view(1, 3, 1, 1).to(device)


_cached_gray_weights = functools.lru_cache(maxsize=None)(_make_gray_weights)


def image_entropy(images: torch.Tensor, window_size: int | None = None) -> torch.Tensor:
    """Shannon entropy in bits of the 256-bin gray histogram of each image, or of each window."""
    levels = gray_levels(images)
    batch, height, width = levels.shape
    if window_size is None:
        groups = levels.reshape(batch, -1)
    else:
        if height % window_size or width % window_size:
            raise ValueError(f'image size {height}x{width} is not a multiple of the entropy window {window_size}')
        rows, cols = height // window_size, width // window_size
        groups = (levels.reshape(batch, rows, window_size, cols, window_size).permute(0, 1, 3, 2, 4)
                  .reshape(batch * rows * cols, -1))
    num_groups, group_size = groups.shape
    offsets = torch.arange(num_groups, device=groups.device).unsqueeze(1) * NUM_LEVELS
    flat = (groups + offsets).reshape(-1)
    counts = torch.zeros(num_groups * NUM_LEVELS, dtype=torch.int64, device=groups.device)
    counts.index_add_(0, flat, torch.ones_like(flat))  # levels are 0..255 by construction: the size is known
    probabilities = counts.reshape(num_groups, NUM_LEVELS).double() / group_size
    terms = torch.where(probabilities > 0, -probabilities * torch.log2(probabilities.clamp_min(1e-300)),
                        torch.zeros_like(probabilities))
    entropy = terms.sum(dim=1).float()
    return entropy if window_size is None else entropy.reshape(batch, rows, cols)
