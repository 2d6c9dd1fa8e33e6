"""RFDN: Residual Feature Distillation Network, with the official checkpoints' state-dict layout.

Liu, Tang and Wu, "Residual Feature Distillation Network for Lightweight Image Super-Resolution",
ECCV 2020 Workshops (AIM 2020 efficient SR challenge winner; official code: njulj/RFDN, ``RFDN.py`` and
``block.py``). The DTKD / MTKDSR students (lizhangray/SRDTKD, lizhangray/MTKDSR) are the same network with
64 feature channels and RGB in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.arch_util import (DistillationBlockChain, check_esa_input_size, check_img_range,
                                  check_positive_ints, same_padding_conv)

#: Constructor arguments that load each released checkpoint strictly, with its exact parameter count.
#: ``img_range``: RFDN_AIM.pth was trained on RGB in [0, 255]; the DTKD/MTKDSR students on [0, 1].
RFDN_OFFICIAL_CHECKPOINTS = {
    'RFDN_AIM.pth': {'kwargs': {'num_feat': 50, 'num_block': 4, 'upscale': 4, 'img_range': 255.},
                     'num_params': 433_448},
    'DTKD-RFDN.pth': {'kwargs': {'num_feat': 64, 'num_block': 4, 'upscale': 4, 'img_range': 1.},
                      'num_params': 704_560},
    'DTKD-RFDN-perceptual.pth': {'kwargs': {'num_feat': 64, 'num_block': 4, 'upscale': 4, 'img_range': 1.},
                                 'num_params': 704_560},
    # The MTKDSR README does not state the range; [0, 1] is its training code's range (assumed, as in the
    # shared README).
    'MTKDSR_RFDN_x4.pth': {'kwargs': {'num_feat': 64, 'num_block': 4, 'upscale': 4, 'img_range': 1.},
                           'num_params': 704_560},
}

# Slope of every leaky ReLU in the official code (``activation('lrelu', neg_slope=0.05)``).
LEAKY_SLOPE = 0.05


class EnhancedSpatialAttention(nn.Module):
    """Enhanced spatial attention (ESA) as used by RFDN (RFDN paper Fig. 3; ESA from RFANet, Liu et al. CVPR 2020).

    1x1 conv to ``C // 4`` channels → stride-2 3x3 conv (no padding) → 7x7 max pool, stride 3 →
    3x3 conv (``conv_max``) + ReLU → 3x3 conv + ReLU → 3x3 conv → bilinear upsampling to the input size
    (align_corners=False) → add the 1x1 ``conv_f`` of the first reduced features → 1x1 conv to ``C`` → sigmoid
    mask that multiplies the input.
    Input and output ``(B, C, H, W)`` with ``H, W >= 15``.
    """

    def __init__(self, num_feat: int):
        super().__init__()
        reduced = num_feat // 4
        self.conv1 = nn.Conv2d(num_feat, reduced, 1)
        self.conv_f = nn.Conv2d(reduced, reduced, 1)
        self.conv_max = nn.Conv2d(reduced, reduced, 3, padding=1)
        self.conv2 = nn.Conv2d(reduced, reduced, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(reduced, reduced, 3, padding=1)
        self.conv3_ = nn.Conv2d(reduced, reduced, 3, padding=1)
        self.conv4 = nn.Conv2d(reduced, num_feat, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(features)
        pooled = F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3)
        context = F.relu(self.conv_max(pooled))
        context = self.conv3_(F.relu(self.conv3(context)))
        context = F.interpolate(context, size=features.shape[2:], mode='bilinear', align_corners=False)
        mask = torch.sigmoid(self.conv4(context + self.conv_f(reduced)))
        return features * mask


class ResidualFeatureDistillationBlock(nn.Module):
    """RFDB: feature distillation with 1x1 distillation convs and shallow residual 3x3 blocks (paper Fig. 2c).

    Three steps, each: a 1x1 conv + leaky ReLU(0.05) distils ``C // 2`` channels, and a 3x3 conv whose output
    is added to its input (shallow residual block, SRB) then leaky ReLU refines all ``C`` channels; a last 3x3
    conv + leaky ReLU gives ``C // 2`` channels. The four ``C // 2`` parts are concatenated, fused by a 1x1 conv
    to ``C`` and weighted by enhanced spatial attention. As in the official code, the block has no outer skip
    connection.
    Input and output ``(B, C, H, W)``.
    """

    def __init__(self, num_feat: int):
        super().__init__()
        distilled = num_feat // 2
        self.c1_d = same_padding_conv(num_feat, distilled, 1)
        self.c1_r = same_padding_conv(num_feat, num_feat, 3)
        self.c2_d = same_padding_conv(num_feat, distilled, 1)
        self.c2_r = same_padding_conv(num_feat, num_feat, 3)
        self.c3_d = same_padding_conv(num_feat, distilled, 1)
        self.c3_r = same_padding_conv(num_feat, num_feat, 3)
        self.c4 = same_padding_conv(num_feat, distilled, 3)
        self.c5 = same_padding_conv(distilled * 4, num_feat, 1)
        self.esa = EnhancedSpatialAttention(num_feat)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        distilled = []
        refined = features
        for distill_conv, refine_conv in ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r)):
            distilled.append(F.leaky_relu(distill_conv(refined), LEAKY_SLOPE))
            refined = F.leaky_relu(refine_conv(refined) + refined, LEAKY_SLOPE)
        distilled.append(F.leaky_relu(self.c4(refined), LEAKY_SLOPE))
        return self.esa(self.c5(torch.cat(distilled, dim=1)))


@ARCH_REGISTRY.register()
class RFDN(DistillationBlockChain):
    """RFDN super-resolution network (Liu et al., ECCV-W 2020, Fig. 2a), loading the official checkpoints.

    Shallow 3x3 conv → ``num_block`` RFDBs in a chain → concatenation of every block's output, 1x1 conv +
    leaky ReLU(0.05) → 3x3 conv + long skip from the shallow features → 3x3 conv to
    ``num_out_ch * upscale**2`` channels + pixel shuffle (no activation, no clamp): IMDN's network with
    another block, shared as :class:`mtkd.archs.arch_util.DistillationBlockChain`.

    Args:
        num_in_ch, num_out_ch: image channels (3, RGB, for the released checkpoints).
        num_feat: feature channels: 50 for RFDN (AIM 2020, the official default), 64 for the DTKD/MTKDSR
            students. The attention works on ``num_feat // 4`` channels and each distillation conv gives
            ``num_feat // 2`` (floor division, as the official code: 12 and 25 for 50).
        num_block: number of RFDBs (4 in the paper and every released file).
        upscale: scale factor (the released files are x4; the official class hard-codes 4, here any positive
            integer builds).
        img_range: the range the network works in internally. The input is RGB in [0, 1] whatever this value;
            forward multiplies it by ``img_range`` and divides the output by it, so the output is in [0, 1]
            too. Default 1.0 (no magic). Set 255. for ``RFDN_AIM.pth`` (trained on [0, 255]); the DTKD and
            MTKDSR students use 1. See ``RFDN_OFFICIAL_CHECKPOINTS``.

    State-dict keys are the official ones (``fea_conv``, ``B1``..``B<n>``, ``c.0``, ``LR_conv``,
    ``upsampler.0``). Input ``(B, num_in_ch, H, W)`` in [0, 1] with ``H, W >= 15`` (the spatial attention
    pools a 7x7 window of half-resolution features); output ``(B, num_out_ch, upscale*H, upscale*W)``,
    nominally [0, 1] but not clamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 50, num_block: int = 4,
                 upscale: int = 4, img_range: float = 1.0):
        check_positive_ints('RFDN', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_block=num_block, upscale=upscale)
        if num_feat < 4:
            raise ValueError(f'RFDN: num_feat must be at least 4 (the attention works on num_feat // 4 channels), '
                             f'got {num_feat}. Released checkpoints use 50 (RFDN_AIM) or 64 (DTKD students).')
        check_img_range('RFDN', img_range, '255. for RFDN_AIM.pth, 1. for the DTKD students')
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, img_range, block_prefix='B',
                         make_block=ResidualFeatureDistillationBlock, leaky_slope=LEAKY_SLOPE)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_esa_input_size('RFDN', image)
        return super().forward(image)
