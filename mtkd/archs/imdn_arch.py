"""IMDN: Information Multi-distillation Network, with the official checkpoints' state-dict layout.

Hui, Gao, Yang and Wang, "Lightweight Image Super-Resolution with Information Multi-distillation Network",
ACM Multimedia 2019 (official code: Zheng222/IMDN, ``model/architecture.py`` class ``IMDN``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.arch_util import (DistillationBlockChain, check_img_range, check_positive_ints, same_padding_conv,
                                  squeeze_excitation)

#: Constructor arguments that load each official checkpoint strictly, with its exact parameter count.
#: The official IMDN works on RGB in [0, 1], so ``img_range`` stays 1.
IMDN_OFFICIAL_CHECKPOINTS = {
    'IMDN_x2.pth': {'kwargs': {'num_feat': 64, 'num_block': 6, 'upscale': 2}, 'num_params': 694_404},
    'IMDN_x3.pth': {'kwargs': {'num_feat': 64, 'num_block': 6, 'upscale': 3}, 'num_params': 703_059},
    'IMDN_x4.pth': {'kwargs': {'num_feat': 64, 'num_block': 6, 'upscale': 4}, 'num_params': 715_176},
}

# Slope of every leaky ReLU in the official code (``activation('lrelu', neg_slope=0.05)``).
LEAKY_SLOPE = 0.05


class ContrastAwareChannelAttention(nn.Module):
    """Contrast-aware channel attention (CCA layer), IMDN paper Sec. 3.2 and Fig. 3.

    The channel statistic is contrast (per-channel standard deviation over space, population form) plus the
    per-channel mean; a 1x1 squeeze/excite pair with reduction 16 turns it into sigmoid channel weights.
    Input and output ``(B, C, H, W)``; state-dict keys ``conv_du.0`` and ``conv_du.2`` as in the official code.
    """

    def __init__(self, num_channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = squeeze_excitation(num_channels, reduction)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mean = features.mean(dim=(2, 3), keepdim=True)
        contrast = (features - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return features * self.conv_du(contrast + mean)


class InformationMultiDistillationBlock(nn.Module):
    """IMDB: progressive refinement that keeps a quarter of the channels at each of 4 steps (paper Fig. 2).

    Steps 1-3: 3x3 conv + leaky ReLU(0.05) on the remaining channels, split into ``C/4`` distilled and
    ``3C/4`` remaining channels; step 4: 3x3 conv to ``C/4`` channels (no activation). The four distilled parts
    are concatenated, weighted by contrast-aware channel attention, fused by a 1x1 conv and added to the input.
    Input and output ``(B, C, H, W)``.
    """

    def __init__(self, num_feat: int, distillation_rate: float = 0.25):
        super().__init__()
        self.distilled_channels = int(num_feat * distillation_rate)
        self.remaining_channels = num_feat - self.distilled_channels
        self.c1 = same_padding_conv(num_feat, num_feat, 3)
        self.c2 = same_padding_conv(self.remaining_channels, num_feat, 3)
        self.c3 = same_padding_conv(self.remaining_channels, num_feat, 3)
        self.c4 = same_padding_conv(self.remaining_channels, self.distilled_channels, 3)
        self.c5 = same_padding_conv(self.distilled_channels * 4, num_feat, 1)
        self.cca = ContrastAwareChannelAttention(self.distilled_channels * 4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        split = (self.distilled_channels, self.remaining_channels)
        distilled = []
        remaining = features
        for conv in (self.c1, self.c2, self.c3):
            kept, remaining = torch.split(F.leaky_relu(conv(remaining), LEAKY_SLOPE), split, dim=1)
            distilled.append(kept)
        distilled.append(self.c4(remaining))
        return self.c5(self.cca(torch.cat(distilled, dim=1))) + features


@ARCH_REGISTRY.register()
class IMDN(DistillationBlockChain):
    """IMDN super-resolution network (Hui et al., ACM MM 2019, Fig. 2), loading the official checkpoints.

    Shallow 3x3 conv → ``num_block`` IMDBs in a chain → concatenation of every block's output, 1x1 conv +
    leaky ReLU(0.05) → 3x3 conv + long skip from the shallow features → 3x3 conv to
    ``num_out_ch * upscale**2`` channels + pixel shuffle (no activation, no clamp). This network around the
    blocks is :class:`mtkd.archs.arch_util.DistillationBlockChain`, shared with RFDN.

    Args:
        num_in_ch, num_out_ch: image channels (3, RGB, for the official checkpoints).
        num_feat: feature channels (64 in the paper).
        num_block: number of IMDBs (6 in the paper).
        upscale: scale factor; any positive integer builds, official checkpoints exist for 2, 3 and 4.
        img_range: the range the network works in internally: the input (RGB in [0, 1]) is multiplied by it
            and the output divided by it. Default 1.0 is the official IMDN range; the argument exists for the
            uniform arch vocabulary (IMDN's official weights need no other value).

    State-dict keys are the official ones (``fea_conv``, ``IMDB1``..``IMDB<n>``, ``c.0``, ``LR_conv``,
    ``upsampler.0``); see ``IMDN_OFFICIAL_CHECKPOINTS`` for the arguments of each released file.
    Input ``(B, num_in_ch, H, W)`` in [0, 1]; output ``(B, num_out_ch, upscale*H, upscale*W)``, nominally
    [0, 1] but not clamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 6,
                 upscale: int = 4, img_range: float = 1.0):
        check_positive_ints('IMDN', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_block=num_block, upscale=upscale)
        if num_feat % 4 or num_feat < 16:
            # The IMDB distils num_feat/4 channels per step and its attention squeezes num_feat channels by 16.
            raise ValueError(f'IMDN: num_feat must be a multiple of 4 and at least 16 (the channel attention '
                             f'divides num_feat by 16), got {num_feat}. The paper uses 64.')
        check_img_range('IMDN', img_range, '1.0 for the official weights')
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, img_range, block_prefix='IMDB',
                         make_block=InformationMultiDistillationBlock, leaky_slope=LEAKY_SLOPE)
