"""Pad an image batch to a multiple of a window size for inference, and crop the SR result back.

Window-attention networks (SwinIR, DCTSwin) need H and W divisible by their window. SwinIR's official
test script (``main_test_swinir.py``) pads at the bottom/right with the image's mirror image *including* the
edge row (``cat([x, flip(x)])``, i.e. symmetric padding); BasicSR's ``SwinIRModel`` uses ``reflect``
(edge excluded), which shifts the published numbers slightly. ``symmetric`` is the default here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_MODES = ('symmetric', 'reflect', 'replicate')


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str = 'symmetric') -> tuple[torch.Tensor, int, int]:
    """Pad ``(B, C, H, W)`` at the bottom and right so H and W are multiples of ``multiple``.

    Returns the padded batch and the padding added to H and W.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode '{mode}' is not one of {PAD_MODES}")
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images, 0, 0
    if mode != 'symmetric':
        return F.pad(images, (0, pad_w, 0, pad_h), mode=mode), pad_h, pad_w
    if pad_h > height or pad_w > width:
        raise ValueError(f'cannot pad {height}x{width} symmetrically by {pad_h}x{pad_w}: image smaller than the pad')
    padded = torch.cat([images, images.flip(-2)[..., :pad_h, :]], dim=-2)
    padded = torch.cat([padded, padded.flip(-1)[..., :pad_w]], dim=-1)
    return padded, pad_h, pad_w


def crop_padding(output: torch.Tensor, pad_h: int, pad_w: int, scale: int) -> torch.Tensor:
    """Remove the SR image of the padding: ``scale`` output pixels per padded input pixel."""
    height, width = output.shape[-2:]
    return output[..., :height - pad_h * scale, :width - pad_w * scale]


def run_padded(network, images: torch.Tensor, multiple: int | None, scale: int,
               mode: str = 'symmetric') -> torch.Tensor:
    """``network(images)`` on a batch padded to ``multiple`` (when set), cropped back to ``scale`` × input."""
    if not multiple or multiple <= 1:
        return network(images)
    padded, pad_h, pad_w = pad_to_multiple(images, multiple, mode)
    return crop_padding(network(padded), pad_h, pad_w, scale)
