"""RLFN: Residual Local Feature Network, with the official checkpoints' state-dict layout.

Kong, Li, Xu, Li, Zhou and Zhang, "Residual Local Feature Network for Efficient Super-Resolution",
CVPR 2022 Workshops (NTIRE 2022 efficient SR challenge; official code: bytedance/RLFN, ``model/rlfn.py``,
``model/rlfn_s.py``, ``model/rlfn_ntire.py`` and ``model/block.py``). RLFN, RLFN-S and the pruned NTIRE
challenge model are one class here with different arguments.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.arch_util import (check_esa_input_size, check_img_range, check_positive_ints, pixel_shuffle_upsampler,
                                  same_padding_conv)

#: Constructor arguments that load each official checkpoint strictly, with its exact parameter count.
#: Every official RLFN file was trained on RGB in [0, 255] (``test_demo.py`` multiplies by 255), hence
#: ``img_range=255.``.
RLFN_OFFICIAL_CHECKPOINTS = {
    'rlfn_x4.pth': {'kwargs': {'num_feat': 52, 'num_block': 6, 'upscale': 4, 'img_range': 255.},
                    'num_params': 543_740},
    'rlfn_x2.pth': {'kwargs': {'num_feat': 52, 'num_block': 6, 'upscale': 2, 'img_range': 255.},
                    'num_params': 526_856},
    'rlfn_s_x4.pth': {'kwargs': {'num_feat': 48, 'num_block': 6, 'upscale': 4, 'img_range': 255.},
                      'num_params': 470_208},
    'rlfn_s_x2.pth': {'kwargs': {'num_feat': 48, 'num_block': 6, 'upscale': 2, 'img_range': 255.},
                      'num_params': 454_620},
    # NTIRE 2022 challenge model (``RLFN_Prune``): 46 channels, 48 inside each block, 4 blocks.
    'rlfn_ntire_x4.pth': {'kwargs': {'num_feat': 46, 'num_mid_feat': 48, 'num_block': 4, 'upscale': 4,
                                     'img_range': 255.},
                          'num_params': 317_218},
}

# Slope of every leaky ReLU in the official code (``activation('lrelu', neg_slope=0.05)``).
LEAKY_SLOPE = 0.05


class LightSpatialAttention(nn.Module):
    """RLFN's reduced enhanced spatial attention (RLFN paper Sec. 3.1, Fig. 2; ESA of Liu et al., CVPR 2020).

    RLFN drops ESA's ``conv_max`` and ``conv3_`` and the ReLUs between the pooled convs: 1x1 conv to
    ``esa_channels`` → stride-2 3x3 conv (no padding) → 7x7 max pool, stride 3 → one 3x3 conv → bilinear
    upsampling to the input size (align_corners=False) → add the 1x1 ``conv_f`` of the reduced features → 1x1
    conv back to ``C`` → sigmoid mask that multiplies the input. Input and output ``(B, C, H, W)``, ``H, W >= 15``.
    """

    def __init__(self, num_feat: int, esa_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, esa_channels, 1)
        self.conv_f = nn.Conv2d(esa_channels, esa_channels, 1)
        self.conv2 = nn.Conv2d(esa_channels, esa_channels, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(esa_channels, esa_channels, 3, padding=1)
        self.conv4 = nn.Conv2d(esa_channels, num_feat, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(features)
        context = self.conv3(F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3))
        context = F.interpolate(context, size=features.shape[2:], mode='bilinear', align_corners=False)
        mask = torch.sigmoid(self.conv4(context + self.conv_f(reduced)))
        return features * mask


class ResidualLocalFeatureBlock(nn.Module):
    """RLFB: three 3x3 conv + leaky ReLU(0.05) layers with a local skip, 1x1 conv, spatial attention (Fig. 2).

    The first two convs map to ``num_mid_feat`` channels (``num_feat`` except in the NTIRE model), the third
    back to ``num_feat``; the skip adds the block input before the 1x1 conv. Input and output ``(B, C, H, W)``.
    """

    def __init__(self, num_feat: int, num_mid_feat: int, esa_channels: int):
        super().__init__()
        self.c1_r = same_padding_conv(num_feat, num_mid_feat, 3)
        self.c2_r = same_padding_conv(num_mid_feat, num_mid_feat, 3)
        self.c3_r = same_padding_conv(num_mid_feat, num_feat, 3)
        self.c5 = same_padding_conv(num_feat, num_feat, 1)
        self.esa = LightSpatialAttention(num_feat, esa_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        local = features
        for conv in (self.c1_r, self.c2_r, self.c3_r):
            local = F.leaky_relu(conv(local), LEAKY_SLOPE)
        return self.esa(self.c5(local + features))


@ARCH_REGISTRY.register()
class RLFN(nn.Module):
    """RLFN super-resolution network (Kong et al., CVPR-W 2022, Fig. 2), loading the official checkpoints.

    Shallow 3x3 conv → ``num_block`` RLFBs in a chain → 3x3 conv on the last block's output + long skip from
    the shallow features → 3x3 conv to ``num_out_ch * upscale**2`` channels + pixel shuffle (no activation, no
    clamp).

    Args:
        num_in_ch, num_out_ch: image channels (3, RGB, for the official checkpoints).
        num_feat: feature channels: 52 for RLFN (default), 48 for RLFN-S, 46 for the NTIRE 2022 model.
        num_block: number of RLFBs: 6 for RLFN and RLFN-S (default), 4 for the NTIRE 2022 model.
        upscale: scale factor; official checkpoints exist for 2 and 4.
        img_range: the range the network works in internally. The input is RGB in [0, 1] whatever this value;
            forward multiplies it by ``img_range`` and divides the output by it, so the output is in [0, 1]
            too. Default 1.0 (no magic); every official RLFN checkpoint needs 255. (they were trained on
            [0, 255]; with 1.0 they still give plausible images on some inputs, a silent failure).
        num_mid_feat: channels inside each block (its first two convs); ``None`` (default) means ``num_feat``.
            The NTIRE 2022 model uses 48 with ``num_feat=46``.
        esa_channels: channels of the spatial attention branch (16 in every official model).

    State-dict keys are the official ones (``conv_1``, ``block_1``..``block_<n>``, ``conv_2``,
    ``upsampler.0``); see ``RLFN_OFFICIAL_CHECKPOINTS`` for the arguments of each released file.
    Input ``(B, num_in_ch, H, W)`` in [0, 1] with ``H, W >= 15`` (the attention pools 7x7 windows of
    half-resolution features); output ``(B, num_out_ch, upscale*H, upscale*W)``, nominally [0, 1], not clamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 52, num_block: int = 6,
                 upscale: int = 4, img_range: float = 1.0, num_mid_feat: int | None = None,
                 esa_channels: int = 16):
        super().__init__()
        if num_mid_feat is None:
            num_mid_feat = num_feat
        check_positive_ints('RLFN', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_block=num_block, upscale=upscale, num_mid_feat=num_mid_feat,
                            esa_channels=esa_channels)
        check_img_range('RLFN', img_range, '255. for the official checkpoints')
        self.upscale = upscale
        self.img_range = float(img_range)
        self.num_block = num_block

        self.conv_1 = same_padding_conv(num_in_ch, num_feat, 3)
        # Attribute names block_1..block_<n> are the official state-dict keys.
        self.block_names = [f'block_{index}' for index in range(1, num_block + 1)]
        for name in self.block_names:
            self.add_module(name, ResidualLocalFeatureBlock(num_feat, num_mid_feat, esa_channels))
        self.conv_2 = same_padding_conv(num_feat, num_feat, 3)
        self.upsampler = pixel_shuffle_upsampler(num_feat, num_out_ch, upscale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_esa_input_size('RLFN', image)
        shallow = self.conv_1(image * self.img_range)
        features = shallow
        for name in self.block_names:
            features = getattr(self, name)(features)
        return self.upsampler(self.conv_2(features) + shallow) / self.img_range
