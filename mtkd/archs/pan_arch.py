"""PAN: Pixel Attention Network, with the official checkpoints' state-dict layout.

Zhao, Kong, He, Qiao and Dong, "Efficient Image Super-Resolution Using Pixel Attention", ECCV Workshops
(AIM 2020) (official code: zhaohengyuan1/PAN, ``codes/models/archs/PAN_arch.py`` class ``PAN``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.arch_util import check_img_range, check_positive_ints

#: Constructor arguments that load each official checkpoint strictly, with its exact parameter count.
#: The official PAN works on RGB in [0, 1], so ``img_range`` stays 1.
PAN_OFFICIAL_CHECKPOINTS = {
    'PANx2_DF2K.pth': {'kwargs': {'num_feat': 40, 'unf_feat': 24, 'num_block': 16, 'upscale': 2},
                       'num_params': 261_403},
    'PANx3_DF2K.pth': {'kwargs': {'num_feat': 40, 'unf_feat': 24, 'num_block': 16, 'upscale': 3},
                       'num_params': 261_403},
    'PANx4_DF2K.pth': {'kwargs': {'num_feat': 40, 'unf_feat': 24, 'num_block': 16, 'upscale': 4},
                       'num_params': 272_419},
}

#: Scale factors the official upsampler is defined for (x2/x3: one stage, x4: two x2 stages).
SUPPORTED_SCALES = (2, 3, 4)

# Slope of every leaky ReLU in the official code.
LEAKY_SLOPE = 0.2


def _leaky_relu(features: torch.Tensor) -> torch.Tensor:
    # Not in place (the official code is): a forward hook that taps a conv output for distillation must not
    # see it overwritten by the activation that follows.
    return F.leaky_relu(features, LEAKY_SLOPE)


class PixelAttention(nn.Module):
    """Pixel attention (PA), PAN paper Sec. 3.1 and Eq. (1): ``x * sigmoid(conv1x1(x))``.

    One attention value per channel and pixel (a 3-D map), unlike channel (1-D) or spatial (2-D) attention.
    Input and output ``(B, C, H, W)``; state-dict key ``conv`` as in the official ``PA`` class.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(num_channels, num_channels, 1, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * torch.sigmoid(self.conv(features))


class PixelAttentionConv(nn.Module):
    """PA convolution of the SCPA's attention branch (paper Fig. 2(c)).

    ``k4(k3(x) * sigmoid(k2(x)))``: ``k2`` a 1x1 conv with bias makes the pixel-attention map, ``k3`` and ``k4``
    are 3x3 convs without bias. Input and output ``(B, C, H, W)``; keys ``k2``, ``k3``, ``k4`` as official.
    """

    def __init__(self, num_channels: int, kernel_size: int = 3):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.k2 = nn.Conv2d(num_channels, num_channels, 1, bias=True)
        self.k3 = nn.Conv2d(num_channels, num_channels, kernel_size, padding=padding, bias=False)
        self.k4 = nn.Conv2d(num_channels, num_channels, kernel_size, padding=padding, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(features) * torch.sigmoid(self.k2(features)))


class SelfCalibratedPixelAttentionBlock(nn.Module):
    """SCPA: self-calibrated convolution with pixel attention (paper Sec. 3.2, Fig. 2(b)).

    Two 1x1 convs (no bias) + leaky ReLU(0.2) split the ``C`` channels into two ``C/2`` branches: a plain 3x3
    conv (``k1``, no bias) and a :class:`PixelAttentionConv`; each is followed by leaky ReLU(0.2), the two are
    concatenated, fused by a 1x1 conv (no bias) and added to the input. Input and output ``(B, C, H, W)``.
    State-dict keys (``conv1_a``, ``conv1_b``, ``k1.0``, ``PAConv``, ``conv3``) are the official ones.
    """

    def __init__(self, num_feat: int, reduction: int = 2):
        super().__init__()
        branch_channels = num_feat // reduction
        self.conv1_a = nn.Conv2d(num_feat, branch_channels, 1, bias=False)
        self.conv1_b = nn.Conv2d(num_feat, branch_channels, 1, bias=False)
        # A one-element Sequential only because the official key is ``k1.0.weight``.
        self.k1 = nn.Sequential(nn.Conv2d(branch_channels, branch_channels, 3, padding=1, bias=False))
        self.PAConv = PixelAttentionConv(branch_channels)
        self.conv3 = nn.Conv2d(branch_channels * reduction, num_feat, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        plain = _leaky_relu(self.k1(_leaky_relu(self.conv1_a(features))))
        attended = _leaky_relu(self.PAConv(_leaky_relu(self.conv1_b(features))))
        return self.conv3(torch.cat([plain, attended], dim=1)) + features


def _upsampling_stage(features: torch.Tensor, factor: int, upconv: nn.Module, attention: nn.Module,
                      hr_conv: nn.Module) -> torch.Tensor:
    """One U-PA stage (paper Fig. 2(d)): nearest ×factor, 3x3 conv, pixel attention + leaky ReLU, 3x3 conv +
    leaky ReLU. A function over the network's layers, not a module, so the official flat key names
    (``upconv1``, ``att1``, ``HRconv1``, ...) stay."""
    features = upconv(F.interpolate(features, scale_factor=factor, mode='nearest'))
    features = _leaky_relu(attention(features))
    return _leaky_relu(hr_conv(features))


@ARCH_REGISTRY.register()
class PAN(nn.Module):
    """PAN super-resolution network (Zhao et al., ECCV-W AIM 2020, Fig. 2(a)), loading the official checkpoints.

    3x3 conv → ``num_block`` SCPA blocks → 3x3 conv (``trunk_conv``) + long skip → upsampling with pixel
    attention (U-PA) → 3x3 conv to ``num_out_ch`` channels, plus the bilinearly upsampled input (global residual).
    The U-PA path follows the official code and differs by scale: x2 and x3 use one stage (nearest ×2 or ×3),
    x4 uses two nearest ×2 stages (keys ``upconv2``, ``att2``, ``HRconv2`` exist only for x4). The bilinear
    global residual is ``F.interpolate(..., mode='bilinear', align_corners=False)`` as in the official code.

    Args:
        num_in_ch, num_out_ch: image channels (3, RGB, for the official checkpoints). The global residual adds
            the upsampled input to the output, so they must be equal.
        num_feat: trunk feature channels (40 in the paper).
        unf_feat: channels of the upsampling path (24 in the paper).
        num_block: number of SCPA blocks (16 in the paper).
        upscale: 2, 3 or 4 (the scales the official upsampler is defined for).
        img_range: the range the network works in internally: the input (RGB in [0, 1]) is multiplied by it
            and the output divided by it. Default 1.0 is the official PAN range (the official code has no
            mean shift); at [0, 255] the official weights give ~7 dB.

    State-dict keys are the official ones (``conv_first``, ``SCPA_trunk.<i>``, ``trunk_conv``, ``upconv1``,
    ``att1``, ``HRconv1``, [``upconv2``, ``att2``, ``HRconv2``], ``conv_last``); see ``PAN_OFFICIAL_CHECKPOINTS``.
    Input ``(B, num_in_ch, H, W)`` in [0, 1]; output ``(B, num_out_ch, upscale*H, upscale*W)``, nominally
    [0, 1] but not clamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 40, unf_feat: int = 24,
                 num_block: int = 16, upscale: int = 4, img_range: float = 1.0):
        super().__init__()
        check_positive_ints('PAN', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, unf_feat=unf_feat,
                            num_block=num_block, upscale=upscale)
        if upscale not in SUPPORTED_SCALES:
            raise ValueError(f'PAN: upscale must be one of {SUPPORTED_SCALES} (the official upsampling path is '
                             f'defined only for these), got {upscale}.')
        if num_in_ch != num_out_ch:
            raise ValueError(f'PAN: num_in_ch ({num_in_ch}) must equal num_out_ch ({num_out_ch}): the output '
                             'adds the bilinearly upsampled input.')
        if num_feat % 2:
            raise ValueError(f'PAN: num_feat must be even (each SCPA splits it into two halves), got {num_feat}. '
                             'The paper uses 40.')
        check_img_range('PAN', img_range, '1.0 for the official weights')
        self.upscale = upscale
        self.img_range = float(img_range)

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, padding=1, bias=True)
        self.SCPA_trunk = nn.Sequential(*[SelfCalibratedPixelAttentionBlock(num_feat) for _ in range(num_block)])
        self.trunk_conv = nn.Conv2d(num_feat, num_feat, 3, padding=1, bias=True)

        self.upconv1 = nn.Conv2d(num_feat, unf_feat, 3, padding=1, bias=True)
        self.att1 = PixelAttention(unf_feat)
        self.HRconv1 = nn.Conv2d(unf_feat, unf_feat, 3, padding=1, bias=True)
        if upscale == 4:
            self.upconv2 = nn.Conv2d(unf_feat, unf_feat, 3, padding=1, bias=True)
            self.att2 = PixelAttention(unf_feat)
            self.HRconv2 = nn.Conv2d(unf_feat, unf_feat, 3, padding=1, bias=True)
        self.conv_last = nn.Conv2d(unf_feat, num_out_ch, 3, padding=1, bias=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image * self.img_range
        shallow = self.conv_first(image)
        features = shallow + self.trunk_conv(self.SCPA_trunk(shallow))
        if self.upscale == 4:
            features = _upsampling_stage(features, 2, self.upconv1, self.att1, self.HRconv1)
            features = _upsampling_stage(features, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            features = _upsampling_stage(features, self.upscale, self.upconv1, self.att1, self.HRconv1)
        upsampled_input = F.interpolate(image, scale_factor=self.upscale, mode='bilinear', align_corners=False)
        return (self.conv_last(features) + upsampled_input) / self.img_range
