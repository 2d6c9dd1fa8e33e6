"""EdgeSRN: DTKD's perceptual teacher, an RRDB network trained GAN-free with edge-enhanced learning.

Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025), Sec. on
EdgeSRN: the network is ESRGAN's RRDB trunk (Wang et al., ECCV-W 2018); what makes it a "good" perceptual
teacher is its training (L1 + an edge loss + optionally a VGG perceptual loss, no discriminator; see
``options/dtkd_edgesrn_x4.yml`` and :class:`mtkd.losses.edge_loss.EdgeLoss`), not its layers.

The released network (lizhangray/MTKDSR ``Model/EdgeSRN.py``): 64 features, growth 32, 10 RRDB blocks, two
nearest-neighbour x2 upsampling stages, RGB in and out in [0, 1]. Its forward evaluates the trunk twice and
discards the first result; here it runs once (same output, half the trunk cost). Parameter names are the
released ones (``conv_first``, ``RRDB_trunk.i.RDBj.convk``, ``trunk_conv``, ``upconv1/2``, ``HRconv``,
``conv_last``), so the authors' ``EdgeSRN_x4.pth`` loads strictly. Scales 2 (one upsampling stage) and 4 (two,
the released network) are supported. ``img_range`` scales the input before the network and back after, as in
the other archs (1.0 for the released network).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY

RESIDUAL_SCALE = 0.2


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output ``x + 0.2 * conv5(...)`` (ESRGAN's RDB)."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        for index in range(1, 5):
            setattr(self, f'conv{index}', nn.Conv2d(num_feat + (index - 1) * num_grow_ch, num_grow_ch, 3, 1, 1))
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dense = [features]
        for index in range(1, 5):
            dense.append(self.lrelu(getattr(self, f'conv{index}')(torch.cat(dense, dim=1))))
        return features + RESIDUAL_SCALE * self.conv5(torch.cat(dense, dim=1))


class RRDB(nn.Module):
    """Residual in residual dense block: three RDBs and a scaled skip."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.RDB1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.RDB2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.RDB3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + RESIDUAL_SCALE * self.RDB3(self.RDB2(self.RDB1(features)))


@ARCH_REGISTRY.register()
class EdgeSRN(nn.Module):
    """RRDB super-resolution network, ``(B, 3, H, W)`` → ``(B, 3, sH, sW)``, RGB in ``[0, img_range]``."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 10,
                 num_grow_ch: int = 32, upscale: int = 4, img_range: float = 1.0):
        super().__init__()
        if upscale not in (2, 4):
            raise ValueError(f'EdgeSRN upsamples by nearest x2 stages: upscale must be 2 or 4, got {upscale}')
        self.upscale = upscale
        self.img_range = img_range
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.trunk_conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upconv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        if upscale == 4:
            self.upconv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.HRconv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.conv_first(image * self.img_range)
        features = features + self.trunk_conv(self.RRDB_trunk(features))
        features = self.lrelu(self.upconv1(F.interpolate(features, scale_factor=2, mode='nearest')))
        if self.upscale == 4:
            features = self.lrelu(self.upconv2(F.interpolate(features, scale_factor=2, mode='nearest')))
        return self.conv_last(self.lrelu(self.HRconv(features))) / self.img_range
