"""LBNet: Lightweight Bimodal Network (symmetric CNN + recursive transformer), official state-dict layout.

Gao, Wang, Li, Li, Yu and Zeng, "Lightweight Bimodal Network for Single-Image Super-Resolution via Symmetric
CNN and Recursive Transformer", IJCAI 2022 (official code: wzx0826/LBNet, ``model/lbnet.py`` and
``util/rlutrans.py``; LBNet-T's attention as released in lizhangray/SRDTKD ``util/rlutrans_tiny.py``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.arch_util import (check_img_range, check_positive_ints, pixel_shuffle_upsampler,
                                  same_padding_conv, squeeze_excitation)

_LBNET = {'num_feat': 32, 'num_heads': 8, 'attention_reduction': 2}
_LBNET_T = {'num_feat': 18, 'num_heads': 6, 'attention_reduction': 1}

#: Constructor arguments that load each official checkpoint strictly, with its exact parameter count.
#: All work at ``img_range=255`` inside (EDSR-style code, ``rgb_range 255``); the arch takes RGB in [0, 1].
#: The DTKD students are LBNet x4 trained by the DTKD authors, whose forward multiplies [0, 1] input by 255.
LBNET_OFFICIAL_CHECKPOINTS = {
    'LBNet-X2.pt': {'kwargs': {**_LBNET, 'upscale': 2}, 'num_params': 731_264},
    'LBNet-X3.pt': {'kwargs': {**_LBNET, 'upscale': 3}, 'num_params': 735_599},
    'LBNet-T_X2.pt': {'kwargs': {**_LBNET_T, 'upscale': 2}, 'num_params': 404_633},
    'LBNet-T_X3.pt': {'kwargs': {**_LBNET_T, 'upscale': 3}, 'num_params': 407_078},
    'LBNet-T_X4.pt': {'kwargs': {**_LBNET_T, 'upscale': 4}, 'num_params': 410_501},
    'DTKD-LBNet.pth': {'kwargs': {**_LBNET, 'upscale': 4}, 'num_params': 741_668},
    'DTKD-LBNet-perceptual.pth': {'kwargs': {**_LBNET, 'upscale': 4}, 'num_params': 741_668},
}

#: DIV2K RGB mean used to initialise the mean-shift layers (EDSR convention), in units of ``img_range``.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

#: The efficient attention splits the token sequence into chunks of ``tokens // ATTENTION_CHUNKS`` tokens.
ATTENTION_CHUNKS = 16

#: Times each transformer block is applied in a row with the same weights (the "recursive" transformer).
TRANSFORMER_RECURSIONS = 3

# The transformer's tokens are the 3x3 neighbourhoods of every feature pixel (unfold with 'same' padding).
TOKEN_KERNEL = 3


def _mean_shift(num_channels: int, img_range: float, sign: int) -> nn.Conv2d:
    """EDSR's ``MeanShift`` (std 1): a 1x1 conv initialised to identity weights and bias ``sign*img_range*mean``.

    Deliberately a trainable conv: the official ``MeanShift`` sets ``requires_grad`` on the module, not on its
    parameters, so they were trained; the released checkpoints hold non-identity weights, and the published
    parameter counts include these 24 values.
    """
    shift = nn.Conv2d(num_channels, num_channels, 1, bias=True)
    with torch.no_grad():
        shift.weight.copy_(torch.eye(num_channels).view(num_channels, num_channels, 1, 1))
        shift.bias.copy_(sign * img_range * torch.tensor(DIV2K_RGB_MEAN))
    return shift


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (RCAN's CA layer) used in FRDAB and between the LFFM passes.

    Global average pool → 1x1 conv (``C → C/reduction``) + ReLU → 1x1 conv + sigmoid → channel weights.
    Input and output ``(B, C, H, W)``; keys ``conv_du.0`` and ``conv_du.2`` as in the official ``CALayer``.
    """

    def __init__(self, num_channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = squeeze_excitation(num_channels, reduction)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.conv_du(features.mean(dim=(2, 3), keepdim=True))


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention: channel mean and max → 7x7 conv (no bias) → sigmoid → pixel weights.

    Input and output ``(B, C, H, W)``; key ``conv1`` as in the official code.
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        statistics = torch.cat([features.mean(dim=1, keepdim=True), features.amax(dim=1, keepdim=True)], dim=1)
        return features * torch.sigmoid(self.conv1(statistics))


class FeatureRefinementDualAttentionBlock(nn.Module):
    """FRDAB: feature refinement dual-attention block (LBNet paper Sec. 3.1, Fig. 3).

    ``y1 = relu(c1 x)`` (1x1); two 3x3 branches ``y2 = relu(c2 y1)``, ``y3 = relu(c3 y1)`` of ``C/2`` channels;
    ``y4 = relu(c4 [y1, y2, y3])``; ``y5 = c5 y3`` (no activation); ``z = [y2, y5, y4]`` (``2C`` channels);
    output ``x + c6(CA(z) + SA(z))`` (``c6`` 1x1). Input and output ``(B, C, H, W)``; official keys ``c1``..``c6``,
    ``se``, ``sa``.
    """

    def __init__(self, num_feat: int):
        super().__init__()
        half = num_feat // 2
        self.c1 = same_padding_conv(num_feat, num_feat, 1)
        self.c2 = same_padding_conv(num_feat, half, 3)
        self.c3 = same_padding_conv(num_feat, half, 3)
        self.c4 = same_padding_conv(num_feat * 2, num_feat, 3)
        self.c5 = same_padding_conv(half, half, 3)
        self.c6 = same_padding_conv(num_feat * 2, num_feat, 1)
        self.se = ChannelAttention(num_feat * 2)
        self.sa = SpatialAttention()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        reduced = F.relu(self.c1(features))
        branch_a = F.relu(self.c2(reduced))
        branch_b = F.relu(self.c3(reduced))
        fused = F.relu(self.c4(torch.cat([reduced, branch_a, branch_b], dim=1)))
        refined = torch.cat([branch_a, self.c5(branch_b), fused], dim=1)
        return features + self.c6(self.se(refined) + self.sa(refined))


class LocalFeatureFusionModule(nn.Module):
    """LFFM: three densely connected FRDABs (LBNet paper Sec. 3.1, Fig. 2).

    ``o1 = b1(x)``, ``o2 = b2(c1[x, o1])``, ``o3 = b3(c2[x, o1, o2])``, output ``x + c3[x, o1, o2, o3]``; the 1x1
    fusions ``c1`` and ``c2`` are grouped convs (2 groups), ``c3`` is not, as in the official code.
    Input and output ``(B, C, H, W)``; official keys ``b1``..``b3``, ``c1``..``c3``.
    """

    def __init__(self, num_feat: int):
        super().__init__()
        self.b1 = FeatureRefinementDualAttentionBlock(num_feat)
        self.b2 = FeatureRefinementDualAttentionBlock(num_feat)
        self.b3 = FeatureRefinementDualAttentionBlock(num_feat)
        self.c1 = same_padding_conv(2 * num_feat, num_feat, 1, groups=2)
        self.c2 = same_padding_conv(3 * num_feat, num_feat, 1, groups=2)
        self.c3 = same_padding_conv(4 * num_feat, num_feat, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out1 = self.b1(features)
        out2 = self.b2(self.c1(torch.cat([features, out1], dim=1)))
        out3 = self.b3(self.c2(torch.cat([features, out1, out2], dim=1)))
        return features + self.c3(torch.cat([features, out1, out2, out3], dim=1))


class EfficientAttention(nn.Module):
    """Efficient multi-head self-attention of the ET (from ESRT; LBNet paper Sec. 3.2, Fig. 4), chunked.

    A linear layer (no bias) reduces the token dimension ``D`` by ``attention_reduction`` (2 in LBNet, 1 in
    LBNet-T), then q, k, v (one linear, no bias) with ``num_heads`` heads; the sequence of ``N`` tokens is cut
    into consecutive chunks of ``N // 16`` tokens (``torch.split``: 16 chunks, plus a shorter last one when 16
    does not divide ``N``) and attention runs within each chunk only; a linear layer with bias maps back to
    ``D``. As in the official code the logit scale is ``(D // num_heads) ** -0.5``, computed from the
    *unreduced* dimension (so LBNet's 18-dim heads use 1/6, not 1/sqrt(18)). No dropout (the official rate is 0).
    Input and output ``(B, N, D)``; needs ``N >= 16``. Official keys ``reduce``, ``qkv``, ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, attention_reduction: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        inner_dim = dim // attention_reduction
        self.reduce = nn.Linear(dim, inner_dim, bias=False)
        self.qkv = nn.Linear(inner_dim, inner_dim * 3, bias=False)
        self.proj = nn.Linear(inner_dim, dim, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.reduce(tokens)
        batch, num_tokens, channels = tokens.shape
        chunk = num_tokens // ATTENTION_CHUNKS
        if chunk < 1:
            raise ValueError(f'LBNet: the attention splits the tokens (one per low-resolution pixel) into '
                             f'{ATTENTION_CHUNKS} chunks and needs at least {ATTENTION_CHUNKS} tokens, got '
                             f'{num_tokens}. Feed a larger input.')
        # (3, B, heads, N, head_dim)
        query, key, value = self.qkv(tokens).reshape(batch, num_tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        # Full chunks are attended in one batched call (the chunk index becomes a batch dimension); the shorter
        # remainder chunk, when there is one, separately. Same result as the official loop over torch.split.
        num_full = num_tokens // chunk
        covered = num_full * chunk
        outputs = [self._attend_full_chunks(query[..., :covered, :], key[..., :covered, :],
                                            value[..., :covered, :], num_full, chunk)]
        if covered < num_tokens:
            outputs.append(F.scaled_dot_product_attention(query[..., covered:, :], key[..., covered:, :],
                                                          value[..., covered:, :], scale=self.scale))
        attended = torch.cat(outputs, dim=2)  # (B, heads, N, head_dim)
        return self.proj(attended.transpose(1, 2).reshape(batch, num_tokens, channels))

    def _attend_full_chunks(self, query, key, value, num_chunks: int, chunk: int) -> torch.Tensor:
        batch, heads, _, head_dim = query.shape
        # Chunks folded into the head dimension: SDPA's fused CPU kernel takes 4-D input only (a 5-D call falls
        # back to the unfused maths, which materialises every chunk's attention matrix at once).
        shape = (batch, heads * num_chunks, chunk, head_dim)
        attended = F.scaled_dot_product_attention(query.reshape(shape), key.reshape(shape), value.reshape(shape),
                                                  scale=self.scale)
        return attended.reshape(batch, heads, num_chunks * chunk, head_dim)


class TokenMlp(nn.Module):
    """The ET's feed-forward part: linear ``D → D/4``, ReLU, linear ``D/4 → D``. Official keys ``fc1``, ``fc2``."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 4)
        self.fc2 = nn.Linear(dim // 4, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(tokens)))


class EfficientTransformerBlock(nn.Module):
    """ET block (pre-norm): ``x + attention(LN(x))``, then ``+ mlp(LN(.))`` (LBNet paper Fig. 4).

    Input and output ``(B, N, D)``; official keys ``atten``, ``norm1``, ``mlp``, ``norm2``.
    """

    def __init__(self, dim: int, num_heads: int, attention_reduction: int):
        super().__init__()
        self.atten = EfficientAttention(dim, num_heads, attention_reduction)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = TokenMlp(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.atten(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


def _recursive_transformer(features: torch.Tensor, block: EfficientTransformerBlock) -> torch.Tensor:
    """Recursive transformer (paper Sec. 3.2): tokens are the 3x3 neighbourhoods of every pixel
    (``(B, C, H, W) → (B, H*W, 9C)``), the same block is applied ``TRANSFORMER_RECURSIONS`` times, and the tokens
    are folded back by *summing* the overlapping 3x3 contributions (``F.fold``, as the official
    ``reverse_patches``; not an average)."""
    height, width = features.shape[-2:]
    padding = TOKEN_KERNEL // 2
    tokens = F.unfold(features, TOKEN_KERNEL, padding=padding).transpose(1, 2)
    for _ in range(TRANSFORMER_RECURSIONS):
        tokens = block(tokens)
    return F.fold(tokens.transpose(1, 2), (height, width), TOKEN_KERNEL, padding=padding)


@ARCH_REGISTRY.register()
class LBNet(nn.Module):
    """LBNet super-resolution network (Gao et al., IJCAI 2022, Fig. 2), loading the official checkpoints.

    Mean shift → 3x3 conv (``head``) → symmetric CNN: LFFMs ``r1, r2, r3`` in a chain, then the same three
    modules again, each fed the previous output plus channel attention (``se1..se3``) of its first-pass
    output → 1x1 fusion (``c1``) of all six outputs → recursive transformer ``attention`` → 3x3 conv (``c2``)
    → recursive transformer ``attention2`` → 3x3 conv (``c3``) + long skip from ``head`` → 3x3 conv to
    ``3*upscale**2`` channels + pixel shuffle (``tail``) → inverse mean shift.

    The transformer attends within 16 chunks of the whole image's token sequence (one token per LR pixel), so
    the output depends on the full input size: tiling or cropping changes it, and inputs with fewer than 16
    pixels raise ``ValueError``. It is slow on CPU (seconds per benchmark image).

    Choices left open by the paper, taken from the official code: the mean-shift layers are trainable 1x1
    convs (see :func:`_mean_shift`); attention runs with ``F.scaled_dot_product_attention`` (same maths as
    the official explicit softmax, fused for speed and memory; outputs agree to float rounding).

    Args:
        num_in_ch, num_out_ch: image channels; must be 3 (the mean shift holds an RGB mean).
        num_feat: feature channels: 32 (LBNet) or 18 (LBNet-T). Even and at least 16 (FRDAB halves it, channel
            attention divides it by 16).
        num_heads: attention heads: 8 (LBNet) or 6 (LBNet-T).
        upscale: scale factor (official checkpoints for 2, 3, 4).
        img_range: the range the network works in internally: RGB input in [0, 1] is multiplied by it and the
            output divided by it; it also sets the mean-shift bias. 255 for every official checkpoint.
        attention_reduction: factor by which the attention's ``reduce`` layer shrinks the token dimension
            ``9*num_feat`` before q/k/v: 2 (LBNet) or 1 (LBNet-T, whose released weights have ``reduce`` square;
            the only structural difference from LBNet besides widths).

    State-dict keys are the official ones; see ``LBNET_OFFICIAL_CHECKPOINTS`` for the arguments of each file.
    Input ``(B, 3, H, W)`` in [0, 1] with ``H*W >= 16``; output ``(B, 3, upscale*H, upscale*W)``, nominally
    [0, 1] but not clamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 32, num_heads: int = 8,
                 upscale: int = 4, img_range: float = 255.0, attention_reduction: int = 2):
        super().__init__()
        check_positive_ints('LBNet', num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_heads=num_heads, upscale=upscale, attention_reduction=attention_reduction)
        if num_in_ch != 3 or num_out_ch != 3:
            raise ValueError(f'LBNet: num_in_ch and num_out_ch must be 3 (the mean shift subtracts an RGB mean), '
                             f'got {num_in_ch} and {num_out_ch}.')
        if num_feat % 2 or num_feat < 16:
            raise ValueError(f'LBNet: num_feat must be even and at least 16 (FRDAB splits it in halves, channel '
                             f'attention divides it by 16), got {num_feat}. Use 32 (LBNet) or 18 (LBNet-T).')
        token_dim = num_feat * TOKEN_KERNEL ** 2
        if token_dim % attention_reduction or (token_dim // attention_reduction) % num_heads:
            raise ValueError(f'LBNet: the attention width 9*num_feat/attention_reduction = '
                             f'{token_dim}/{attention_reduction} must be an integer divisible by num_heads '
                             f'({num_heads}). Use num_feat=32, num_heads=8, attention_reduction=2 (LBNet) or '
                             '18, 6, 1 (LBNet-T).')
        check_img_range('LBNet', img_range, '255 for the official weights')
        self.upscale = upscale
        self.img_range = float(img_range)

        self.sub_mean = _mean_shift(num_in_ch, self.img_range, sign=-1)
        self.head = same_padding_conv(num_in_ch, num_feat, 3)
        self.r1 = LocalFeatureFusionModule(num_feat)
        self.r2 = LocalFeatureFusionModule(num_feat)
        self.r3 = LocalFeatureFusionModule(num_feat)
        self.se1 = ChannelAttention(num_feat)
        self.se2 = ChannelAttention(num_feat)
        self.se3 = ChannelAttention(num_feat)
        self.attention = EfficientTransformerBlock(token_dim, num_heads, attention_reduction)
        self.attention2 = EfficientTransformerBlock(token_dim, num_heads, attention_reduction)
        self.c1 = same_padding_conv(6 * num_feat, num_feat, 1)
        self.c2 = same_padding_conv(num_feat, num_feat, 3)
        self.c3 = same_padding_conv(num_feat, num_feat, 3)
        self.tail = pixel_shuffle_upsampler(num_feat, num_out_ch, upscale)
        self.add_mean = _mean_shift(num_out_ch, self.img_range, sign=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height * width < ATTENTION_CHUNKS:
            raise ValueError(f'LBNet: input of {height}x{width} pixels is too small: the transformer splits the '
                             f'{height * width} pixel tokens into {ATTENTION_CHUNKS} chunks and needs at least '
                             f'{ATTENTION_CHUNKS} (e.g. 4x4). Feed a larger image or patch.')
        shallow = self.head(self.sub_mean(image * self.img_range))

        first_pass = []
        features = shallow
        for module in (self.r1, self.r2, self.r3):
            features = module(features)
            first_pass.append(features)
        second_pass = []
        for module, attention, earlier in zip((self.r1, self.r2, self.r3), (self.se1, self.se2, self.se3),
                                              first_pass):
            features = module(features + attention(earlier))
            second_pass.append(features)

        features = self.c1(torch.cat(first_pass + second_pass, dim=1))
        features = self.c2(_recursive_transformer(features, self.attention))
        features = self.c3(_recursive_transformer(features, self.attention2))
        return self.add_mean(self.tail(features + shallow)) / self.img_range
