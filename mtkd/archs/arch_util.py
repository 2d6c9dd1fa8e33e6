"""Layers and argument checks shared by several arch files (IMDN, RFDN, RLFN, PAN, LBNet).

Only what is the same computation, with the same state-dict key names, in every arch that uses it lives here;
arch-specific layers stay in their ``*_arch.py`` files. This module registers nothing: the name does not end in
``_arch``, so :mod:`mtkd.archs` does not import it as an arch.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

#: Smallest input height and width that the enhanced spatial attention (ESA) of RFDN and RLFN accepts: its
#: stride-2 3x3 conv (no padding) then 7x7 max pool with stride 3 leave nothing to pool below 15 pixels.
ESA_MIN_INPUT_SIZE = 15


def check_positive_ints(arch_name: str, **values) -> None:
    """Raise ``ValueError`` naming the arch and the argument for the first value that is not a positive ``int``.

    ``bool`` is refused although Python counts it as an ``int`` (``upscale=True`` is a mistake, not 1).
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{arch_name}: {name} must be a positive integer, got {value!r}.')


def check_img_range(arch_name: str, img_range, hint: str) -> None:
    """Raise ``ValueError`` unless ``img_range > 0``; ``hint`` says which value the released weights need."""
    if not img_range > 0:
        raise ValueError(f'{arch_name}: img_range must be positive ({hint}), got {img_range!r}.')


def check_esa_input_size(arch_name: str, image: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``image`` ``(B, C, H, W)`` is smaller than :data:`ESA_MIN_INPUT_SIZE` on a side."""
    if min(image.shape[-2:]) < ESA_MIN_INPUT_SIZE:
        raise ValueError(f'{arch_name}: input height and width must be at least {ESA_MIN_INPUT_SIZE} pixels (its '
                         f'spatial attention pools 7x7 windows of half-size features), got {tuple(image.shape)}. '
                         'Use larger patches or pad the input.')


def same_padding_conv(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> nn.Conv2d:
    """Convolution with bias and 'same' zero padding (odd kernels), the default layer of IMDN, RFDN, RLFN, LBNet."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=True)


def pixel_shuffle_upsampler(num_feat: int, num_out_ch: int, upscale: int) -> nn.Sequential:
    """Sub-pixel upsampler: 3x3 conv to ``num_out_ch * upscale**2`` channels + pixel shuffle, no activation.

    Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional
    Neural Network", CVPR 2016, as the last stage of IMDN, RFDN, RLFN and LBNet. Keys ``0.weight``, ``0.bias``
    (the official ``upsampler.0`` / ``tail.0``). Input ``(B, num_feat, H, W)``; output
    ``(B, num_out_ch, upscale*H, upscale*W)``.
    """
    return nn.Sequential(same_padding_conv(num_feat, num_out_ch * upscale ** 2, 3), nn.PixelShuffle(upscale))


def squeeze_excitation(num_channels: int, reduction: int) -> nn.Sequential:
    """Squeeze-and-excitation weights from a per-channel statistic: 1x1 conv ``C → C/reduction`` + ReLU, 1x1 conv
    back to ``C`` + sigmoid (Hu et al., CVPR 2018; RCAN's ``CALayer``, Zhang et al., ECCV 2018).

    The statistic is the caller's: the spatial mean (LBNet's channel attention) or mean plus standard deviation
    (IMDN's contrast-aware attention). Keys ``0`` and ``2`` (the official ``conv_du.0`` / ``conv_du.2``).
    Input and output ``(B, C, 1, 1)``, output in (0, 1).
    """
    return nn.Sequential(
        nn.Conv2d(num_channels, num_channels // reduction, 1, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(num_channels // reduction, num_channels, 1, bias=True),
        nn.Sigmoid(),
    )


class DistillationBlockChain(nn.Module):
    """The network around the blocks of IMDN and RFDN, which share it layer for layer and key for key.

    Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation Network", ACM MM 2019,
    Fig. 2; Liu et al., "Residual Feature Distillation Network for Lightweight Image Super-Resolution", ECCV-W
    2020, Fig. 2a (RFDN keeps IMDN's network and replaces the block). Shallow 3x3 conv (``fea_conv``) →
    ``num_block`` blocks in a chain, named ``<block_prefix>1``..``<block_prefix><n>`` → concatenation of every
    block's output, 1x1 conv + leaky ReLU (``c``) → 3x3 conv (``LR_conv``) + long skip from the shallow features
    → :func:`pixel_shuffle_upsampler` (``upsampler``). The input is multiplied by ``img_range`` and the output
    divided by it. Not registered: the registered subclasses check their arguments and pick the block.

    Input ``(B, num_in_ch, H, W)`` in [0, 1]; output ``(B, num_out_ch, upscale*H, upscale*W)``, nominally
    [0, 1] but not clamped.
    """

    def __init__(self, num_in_ch: int, num_out_ch: int, num_feat: int, num_block: int, upscale: int,
                 img_range: float, block_prefix: str, make_block: Callable[[int], nn.Module], leaky_slope: float):
        super().__init__()
        self.upscale = upscale
        self.img_range = float(img_range)
        self.num_block = num_block

        self.fea_conv = same_padding_conv(num_in_ch, num_feat, 3)
        # Attribute names <prefix>1..<prefix><n> are the official state-dict keys.
        self.block_names = [f'{block_prefix}{index}' for index in range(1, num_block + 1)]
        for name in self.block_names:
            self.add_module(name, make_block(num_feat))
        self.c = nn.Sequential(nn.Conv2d(num_feat * num_block, num_feat, 1, bias=True),
                               nn.LeakyReLU(leaky_slope, inplace=True))
        self.LR_conv = same_padding_conv(num_feat, num_feat, 3)
        self.upsampler = pixel_shuffle_upsampler(num_feat, num_out_ch, upscale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        shallow = self.fea_conv(image * self.img_range)
        block_outputs = []
        features = shallow
        for name in self.block_names:
            features = getattr(self, name)(features)
            block_outputs.append(features)
        fused = self.LR_conv(self.c(torch.cat(block_outputs, dim=1))) + shallow
        return self.upsampler(fused) / self.img_range
