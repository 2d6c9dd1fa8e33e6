"""Parameter counts of the networks the option files build, from each arch's published structure (not from code).

Each formula adds up the convolutions, linear layers and norms of the paper's (or official code's) description;
:func:`expected_parameters` returns the count for a ``network_g`` block, or None for an arch it does not know.
For the official lightweight archs (IMDN, RLFN, PAN, LBNet) the option files use the released configurations,
whose counts are those of the released files (the element counts of ../shared's checkpoints, also the papers'
rounded 694K/544K/272K/742K...), checked against the files themselves in tests/test_arch_*.py.
"""
from __future__ import annotations

import math


def conv(in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> int:
    return in_channels * out_channels * kernel * kernel + (out_channels if bias else 0)


def linear(in_features: int, out_features: int) -> int:
    return in_features * out_features + out_features


def layer_norm(features: int) -> int:
    return 2 * features


def pixel_shuffle_upsampler(num_feat: int, scale: int) -> int:
    """EDSR/RCAN/SwinIR ``Upsample``: log2(s) stages of conv ``F → 4F`` for powers of 2, one ``F → 9F`` for 3."""
    if scale & (scale - 1) == 0:
        return int(math.log2(scale)) * conv(num_feat, 4 * num_feat, 3)
    assert scale == 3
    return conv(num_feat, 9 * num_feat, 3)


def edsr(num_feat, num_block, upscale, num_in_ch=3, num_out_ch=3, **_) -> int:
    """EDSR (Lim et al., CVPR-W 2017, Fig. 3): head conv, residual blocks of two 3x3 convs (no BN), body conv,
    upsampler, tail conv."""
    return (conv(num_in_ch, num_feat, 3) + num_block * 2 * conv(num_feat, num_feat, 3) + conv(num_feat, num_feat, 3)
            + pixel_shuffle_upsampler(num_feat, upscale) + conv(num_feat, num_out_ch, 3))


def rcan(num_feat, num_group, num_block, upscale, squeeze_factor=16, num_in_ch=3, num_out_ch=3, **_) -> int:
    """RCAN (Zhang et al., ECCV 2018, Fig. 2-4): residual groups of RCABs (two 3x3 convs + channel attention
    1x1 ``C → C/r → C``) and a group conv; body conv; upsampler; tail conv."""
    reduced = num_feat // squeeze_factor
    rcab = 2 * conv(num_feat, num_feat, 3) + conv(num_feat, reduced, 1) + conv(reduced, num_feat, 1)
    group = num_block * rcab + conv(num_feat, num_feat, 3)
    return (conv(num_in_ch, num_feat, 3) + num_group * group + conv(num_feat, num_feat, 3)
            + pixel_shuffle_upsampler(num_feat, upscale) + conv(num_feat, num_out_ch, 3))


def swin_block(dim: int, heads: int, window: int, mlp_ratio: float) -> int:
    """One Swin transformer block (Liu et al., ICCV 2021): LN, window attention (qkv, proj, relative-position bias
    table of (2 Ws - 1)^2 entries per head), LN, MLP ``C → rC → C``."""
    hidden = int(dim * mlp_ratio)
    attention = linear(dim, 3 * dim) + linear(dim, dim) + (2 * window - 1) ** 2 * heads
    return layer_norm(dim) + attention + layer_norm(dim) + linear(dim, hidden) + linear(hidden, dim)


def swinir(embed_dim, depths, num_heads, window_size, mlp_ratio, upscale, upsampler, in_chans=3,
           resi_connection='1conv', **_) -> int:
    """SwinIR (Liang et al., ICCV-W 2021, Fig. 2): conv_first, patch-embedding LN, RSTBs (Swin blocks + 3x3 conv),
    final LN, conv_after_body, then 'pixelshuffledirect' (one conv to 3 s^2) or 'pixelshuffle' (conv to 64,
    upsampler at 64, conv_last)."""
    assert resi_connection == '1conv'
    total = conv(in_chans, embed_dim, 3) + layer_norm(embed_dim)
    for depth, heads in zip(depths, num_heads):
        total += depth * swin_block(embed_dim, heads, window_size, mlp_ratio) + conv(embed_dim, embed_dim, 3)
    total += layer_norm(embed_dim) + conv(embed_dim, embed_dim, 3)
    if upsampler == 'pixelshuffledirect':
        return total + conv(embed_dim, 3 * upscale ** 2, 3)
    assert upsampler == 'pixelshuffle'
    return total + conv(embed_dim, 64, 3) + pixel_shuffle_upsampler(64, upscale) + conv(64, 3, 3)


def dctswin(num_teachers, num_feat, num_block, num_layer, window_size, num_heads, mlp_ratio, upscale,
            num_out_ch=3, block_conv=True, block_type='dctswin', teacher_weights=False, **_) -> int:
    """DCTSwin (MTKD, Jiang et al., ECCV 2024, Fig. 2; docs/dctswin.md): conv on the pixel-unshuffled teacher
    outputs, blocks of pre-norm layers (window attention over DCT tokens, or a token MLP for 'mixer'), a block conv,
    conv_after_body, a one-conv sub-pixel head (plus the teacher-weight head when asked)."""
    tokens = window_size ** 2
    if block_type == 'mixer':
        attention = 4 * num_feat ** 2 + 4 * num_feat + (2 * window_size - 1) ** 2 * num_heads
        hidden = max(1, round((attention - tokens) / (2 * tokens + 1)))  # the same budget as the attention
        mixing = linear(tokens, hidden) + linear(hidden, tokens)
    else:
        mixing = linear(num_feat, 3 * num_feat) + linear(num_feat, num_feat) + (2 * window_size - 1) ** 2 * num_heads
    hidden = int(num_feat * mlp_ratio)
    layer = 2 * layer_norm(num_feat) + mixing + linear(num_feat, hidden) + linear(hidden, num_feat)
    block = num_layer * layer + (conv(num_feat, num_feat, 3) if block_conv else 0)
    total = (conv(num_teachers * num_out_ch * upscale ** 2, num_feat, 3) + num_block * block
             + conv(num_feat, num_feat, 3) + conv(num_feat, num_out_ch * upscale ** 2, 3))
    if teacher_weights:
        total += conv(num_feat, num_teachers * upscale ** 2, 3)
    return total


def edgesrn(num_feat=64, num_block=10, num_grow_ch=32, upscale=4, num_in_ch=3, num_out_ch=3, **_) -> int:
    """EdgeSRN = ESRGAN's RRDB network (Wang et al., ECCV-W 2018): RDBs of five dense 3x3 convs, three per RRDB,
    trunk conv, a 3x3 conv per nearest x2 stage, HR conv, last conv."""
    rdb = sum(conv(num_feat + index * num_grow_ch, num_grow_ch, 3) for index in range(4))
    rdb += conv(num_feat + 4 * num_grow_ch, num_feat, 3)
    stages = int(math.log2(upscale))
    return (conv(num_in_ch, num_feat, 3) + num_block * 3 * rdb + (2 + stages) * conv(num_feat, num_feat, 3)
            + conv(num_feat, num_out_ch, 3))


def rfdn(num_feat, num_block, upscale, num_in_ch=3, num_out_ch=3, **_) -> int:
    """RFDN (Liu et al., ECCV-W 2020, Fig. 3-4): RFDBs of three (1x1 distil, 3x3 refine) steps, a 3x3 step, a 1x1
    fusion and ESA (1x1 to C/4, 1x1, strided 3x3, three 3x3, 1x1 back); 1x1 fusion of all blocks, 3x3 conv,
    sub-pixel head."""
    distilled, reduced = num_feat // 2, num_feat // 4
    esa = (conv(num_feat, reduced, 1) + conv(reduced, reduced, 1) + 4 * conv(reduced, reduced, 3)
           + conv(reduced, num_feat, 1))
    block = (3 * (conv(num_feat, distilled, 1) + conv(num_feat, num_feat, 3)) + conv(num_feat, distilled, 3)
             + conv(4 * distilled, num_feat, 1) + esa)
    return (conv(num_in_ch, num_feat, 3) + num_block * block + conv(num_block * num_feat, num_feat, 1)
            + conv(num_feat, num_feat, 3) + conv(num_feat, num_out_ch * upscale ** 2, 3))


#: Released configurations: ``(type, sorted (argument, value) that decide the count)`` → the released file's count.
RELEASED = {
    ('IMDN', (('num_block', 6), ('num_feat', 64), ('upscale', 2))): 694_404,
    ('IMDN', (('num_block', 6), ('num_feat', 64), ('upscale', 3))): 703_059,
    ('IMDN', (('num_block', 6), ('num_feat', 64), ('upscale', 4))): 715_176,
    ('RLFN', (('num_block', 6), ('num_feat', 52), ('upscale', 4))): 543_740,
    ('RLFN', (('num_block', 6), ('num_feat', 52), ('upscale', 2))): 526_856,
    ('RLFN', (('num_block', 6), ('num_feat', 48), ('upscale', 4))): 470_208,
    ('RLFN', (('num_block', 6), ('num_feat', 48), ('upscale', 2))): 454_620,
    ('RLFN', (('num_block', 4), ('num_feat', 46), ('num_mid_feat', 48), ('upscale', 4))): 317_218,
    ('PAN', (('num_block', 16), ('num_feat', 40), ('unf_feat', 24), ('upscale', 2))): 261_403,
    ('PAN', (('num_block', 16), ('num_feat', 40), ('unf_feat', 24), ('upscale', 3))): 261_403,
    ('PAN', (('num_block', 16), ('num_feat', 40), ('unf_feat', 24), ('upscale', 4))): 272_419,
    ('LBNet', (('num_feat', 32), ('num_heads', 8), ('upscale', 2))): 731_264,
    ('LBNet', (('num_feat', 32), ('num_heads', 8), ('upscale', 3))): 735_599,
    ('LBNet', (('num_feat', 32), ('num_heads', 8), ('upscale', 4))): 741_668,
    ('LBNet', (('attention_reduction', 1), ('num_feat', 18), ('num_heads', 6), ('upscale', 2))): 404_633,
    ('LBNet', (('attention_reduction', 1), ('num_feat', 18), ('num_heads', 6), ('upscale', 3))): 407_078,
    ('LBNet', (('attention_reduction', 1), ('num_feat', 18), ('num_heads', 6), ('upscale', 4))): 410_501,
}
#: Arguments that do not change a count.
_NEUTRAL = {'type', 'img_range', 'rgb_mean', 'res_scale', 'num_in_ch', 'num_out_ch', 'img_size', 'in_chans',
            'global_residual'}
FORMULAS = {'EDSR': edsr, 'RCAN': rcan, 'SwinIR': swinir, 'DCTSwin': dctswin, 'EdgeSRN': edgesrn, 'RFDN': rfdn}


def expected_parameters(network: dict) -> int | None:
    """The parameter count of a ``network_g``-style block, or None when neither a formula nor a release covers it."""
    arguments = {key: value for key, value in network.items() if key != 'type'}
    if network['type'] in FORMULAS:
        return FORMULAS[network['type']](**arguments)
    key = (network['type'], tuple(sorted((k, v) for k, v in arguments.items() if k not in _NEUTRAL)))
    return RELEASED.get(key)
