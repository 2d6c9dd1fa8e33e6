"""DCTSwin: MTKD's knowledge-aggregation network, window self-attention over DCT coefficients.

Jiang, Feng, Zhang and Bull, "MTKD: Multi-Teacher Knowledge Distillation for Image Super-Resolution", ECCV 2024
(stage 1, knowledge aggregation; official code YuxuanJJ/MTKD, ``basicsr/archs/DCTSwin_arch.py``). N frozen
teachers super-resolve the LR image; their outputs, concatenated on the channel axis, are fused by this network,
trained with L1 to the ground truth. Built like SwinIR (Liang et al., ICCV-W 2021) at LR size: each layer takes
Swin windows (Liu et al., ICCV 2021), moves every window and channel to the 2-D DCT domain, attends over the
window's frequency tokens, and comes back with the inverse DCT.

``docs/dctswin.md`` lists every choice the paper leaves open and every difference with the official code.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.arch_util import check_positive_ints
from mtkd.transforms.dct import dct_matrix

#: ``'dctswin'``: the paper's layer; ``'swin'``: the same layer without DCT/IDCT (the paper's ablation v4),
#: pixel-token attention with Swin's shifted-window mask; ``'mixer'``: MLP-Mixer token mixing inside the
#: windows (ablation v3; Tolstikhin et al., NeurIPS 2021).
BLOCK_TYPES = ('dctswin', 'swin', 'mixer')


def partition_windows(features: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` → ``(B, num_windows, window_size**2, C)``; windows in raster order, tokens row-major.

    H and W must be multiples of ``window_size``.
    """
    batch, height, width, channels = features.shape
    rows, cols = height // window_size, width // window_size
    windows = features.reshape(batch, rows, window_size, cols, window_size, channels)
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows * cols, window_size * window_size, channels)


def merge_windows(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: ``(B, num_windows, window_size**2, C)`` → ``(B, H, W, C)``."""
    batch, _, _, channels = windows.shape
    rows, cols = height // window_size, width // window_size
    features = windows.reshape(batch, rows, cols, window_size, window_size, channels)
    return features.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def shifted_window_padding(window_size: int) -> tuple[int, int]:
    """Zero padding (before, after) that puts Swin's shifted window grid on a padded map.

    Swin's cyclic shift by ``-s`` (``s = window_size // 2``) starts the windows at ``s``; padding
    ``window_size - s`` before and ``s`` after gives the same grid with no window wrapping around.
    """
    shift = window_size // 2
    return window_size - shift, shift


def _init_transformer_weights(module: nn.Module) -> None:
    """Swin's initialisation: linear weights truncated normal (std 0.02) with zero bias, LayerNorm 1 and 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v``, by SDPA on GPUs and by plain matrix products on the CPU.

    The bias carries the learned relative-position table, so it needs a gradient; on the CPU SDPA then falls back
    to its math kernel with a "safe softmax" that checks for fully masked rows (``all``/``where``/``isneginf``),
    which costs about a fifth of a DCTSwin training step. The explicit form is the same formula without those
    checks; no row here is fully masked (the padding mask leaves every window at least one valid key).
    """
    if query.is_cuda:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-2, -1) + bias
    return scores.softmax(dim=-1) @ value


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside each window over pixel tokens, or over DCT-coefficient tokens.

    With ``frequency_domain=True`` (the DCTSwin layer, MTKD ECCV 2024) every window is mapped, per channel, to its
    orthonormal 2-D DCT before the ``qkv`` projection, the ``Ws**2`` frequency tokens attend to each other, the
    output projection acts on frequency tokens, and the inverse DCT maps back to pixels (as the official code,
    whose window partition applies the DCT and whose window reverse the inverse). The 2-D DCT of a row-major
    flattened window is ``kron(D, D)``: one ``(Ws**2, Ws**2)`` matrix product per window, kept as a
    non-persistent buffer ``window_dct`` (not in the state dict).

    Bias: Swin's learned relative-position table, ``(2 Ws - 1)**2`` entries per head, indexed by the offset between
    query and key token; for frequency tokens the offset is the frequency difference ``(u - u', v - v')`` (what the
    official code does; ``'swin'`` then differs only by the DCT/IDCT pair and its shifted layers' key mask). Scaling
    ``head_dim ** -0.5``; attention by :func:`_attention`.
    Input and output ``(B, num_windows, Ws**2, C)``; ``attention_mask`` (additive, broadcastable to
    ``(num_windows, num_heads, Ws**2, Ws**2)``) or ``None``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, frequency_domain: bool):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.frequency_domain = frequency_domain
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_bias_table, std=.02)

        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
        coords = coords.flatten(1)
        offsets = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)
        self.register_buffer('relative_index', offsets[0] * (2 * window_size - 1) + offsets[1], persistent=False)
        if frequency_domain:
            matrix = dct_matrix(window_size, dtype=torch.float64)
            self.register_buffer('window_dct', torch.kron(matrix, matrix).float(), persistent=False)

    def relative_bias(self) -> torch.Tensor:
        """The learned bias as ``(num_heads, Ws**2, Ws**2)``."""
        tokens = self.window_size ** 2
        return self.relative_bias_table[self.relative_index.reshape(-1)].reshape(tokens, tokens, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, num_windows, num_tokens, channels = windows.shape
        if self.frequency_domain:
            windows = self.window_dct @ windows
        qkv = self.qkv(windows).reshape(batch * num_windows, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = self.relative_bias().to(query.dtype)
        if attention_mask is None:
            mask = mask.unsqueeze(0)
        else:
            mask = mask + attention_mask.to(query.dtype)
            # SDPA's fused kernels take 4-D inputs: one mask per (image, window) pair.
            mask = mask.expand(batch, num_windows, self.num_heads, num_tokens, num_tokens)
            mask = mask.reshape(batch * num_windows, self.num_heads, num_tokens, num_tokens)
        attended = _attention(query, key, value, mask)
        attended = self.proj(attended.transpose(1, 2).reshape(batch, num_windows, num_tokens, channels))
        if self.frequency_domain:
            attended = self.window_dct.transpose(0, 1) @ attended
        return attended

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, '
                f'frequency_domain={self.frequency_domain}')


class WindowTokenMixing(nn.Module):
    """MLP-Mixer's token-mixing MLP (Tolstikhin et al., NeurIPS 2021) over the ``Ws**2`` pixel tokens of a window.

    ``Linear(Ws**2, hidden) → GELU → Linear(hidden, Ws**2)`` along the token axis, shared by all channels and
    windows. Input and output ``(B, num_windows, Ws**2, C)``; takes no mask (see :class:`DCTSwinLayer` for how
    shifted windows stay separated).
    """

    def __init__(self, num_tokens: int, hidden_tokens: int):
        super().__init__()
        self.fc1 = nn.Linear(num_tokens, hidden_tokens)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_tokens, num_tokens)

    def forward(self, windows: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError('WindowTokenMixing takes no attention mask.')
        return self.fc2(self.act(self.fc1(windows.transpose(-1, -2)))).transpose(-1, -2)


class FeedForward(nn.Module):
    """Transformer MLP: ``Linear(C, hidden) → GELU → Linear(hidden, C)`` on the last dim."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


def mixer_hidden_tokens(num_feat: int, window_size: int, num_heads: int) -> int:
    """Token-MLP width that gives ``'mixer'`` the parameter count of the attention it replaces (nearest integer).

    Attention: ``qkv`` + ``proj`` + bias table = ``4 C**2 + 4 C + (2 Ws - 1)**2 heads``; token MLP with ``T = Ws**2``
    tokens and width ``D``: ``2 T D + D + T``.
    """
    tokens = window_size ** 2
    attention_params = 4 * num_feat ** 2 + 4 * num_feat + (2 * window_size - 1) ** 2 * num_heads
    return max(1, round((attention_params - tokens) / (2 * tokens + 1)))


class DCTSwinLayer(nn.Module):
    """One DCTSwin transformer layer (MTKD ECCV 2024, knowledge aggregation): window mixing + MLP, pre-norm.

    ``x + WindowMix(LN(x))`` then ``x + MLP(LN(x))``. ``WindowMix`` partitions ``Ws x Ws`` windows and applies
    :class:`WindowSelfAttention` (DCT domain for ``'dctswin'``, pixels for ``'swin'``) or
    :class:`WindowTokenMixing` (``'mixer'``).

    Shifted layers (``shifted=True``, every second layer as in Swin) use Swin's shifted window grid (offset
    ``s = Ws // 2``). Swin rolls the map by ``-s`` and masks attention between the regions of the windows that wrap
    around. After a DCT every token mixes all pixels of its window, so a token-wise pixel mask means nothing;
    instead, each region of a wrapped window is computed on its own, with the window's other pixels set to zero.
    That is exactly zero-padding the normalised map by ``(Ws - s, s)`` on each side, windowing and cropping
    (:func:`shifted_window_padding`), which is how it is computed here. Guarantee, for every block type: inside a
    shifted layer, no output depends on pixels across the image border it wraps over. For ``'swin'`` the padded
    pixels are also masked out as keys (``-inf``), which makes the layer equal to Swin's roll-and-mask form (Swin's
    ``-100`` mask underflows to zero weight). Input and output ``(B, H, W, C)``, H and W multiples of ``Ws``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shifted: bool, mlp_ratio: float,
                 block_type: str):
        super().__init__()
        self.window_size = window_size
        self.shifted = shifted and window_size // 2 > 0
        self.block_type = block_type
        self.norm1 = nn.LayerNorm(dim)
        if block_type == 'mixer':
            self.mixer = WindowTokenMixing(window_size ** 2, mixer_hidden_tokens(dim, window_size, num_heads))
        else:
            self.mixer = WindowSelfAttention(dim, window_size, num_heads, frequency_domain=block_type == 'dctswin')
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        # Convs elsewhere keep PyTorch's default initialisation, as in SwinIR.
        self.apply(_init_transformer_weights)

    def _padding_key_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``(num_windows, 1, 1, Ws**2)``: 0 for image pixels, ``-inf`` for the zero padding."""
        before, after = shifted_window_padding(self.window_size)
        valid = torch.zeros(1, height + before + after, width + before + after, 1, device=device)
        valid[:, before:before + height, before:before + width] = 1
        valid_windows = partition_windows(valid, self.window_size)[0, :, :, 0]
        mask = torch.zeros(valid_windows.shape, device=device).masked_fill(valid_windows == 0, float('-inf'))
        return mask[:, None, None, :]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = features.shape
        normalized = self.norm1(features)
        attention_mask = None
        if self.shifted:
            before, after = shifted_window_padding(self.window_size)
            normalized = F.pad(normalized, (0, 0, before, after, before, after))
            if self.block_type == 'swin':
                attention_mask = self._padding_key_mask(height, width, features.device)
        padded_height, padded_width = normalized.shape[1:3]
        mixed = self.mixer(partition_windows(normalized, self.window_size), attention_mask)
        mixed = merge_windows(mixed, self.window_size, padded_height, padded_width)
        if self.shifted:
            mixed = mixed[:, before:before + height, before:before + width]
        features = features + mixed
        return features + self.mlp(self.norm2(features))


class DCTSwinBlock(nn.Module):
    """DCTSwin block (residual group, MTKD ECCV 2024): ``num_layer`` DCTSwin layers, unshifted then shifted.

    With ``block_conv=True`` (default) a 3x3 conv ends the block and the block input is added back, as SwinIR's
    RSTB; with ``False`` the block is the plain chain of layers (each already residual). Input and output
    ``(B, C, H, W)``, H and W multiples of ``window_size``.
    """

    def __init__(self, dim: int, num_layer: int, num_heads: int, window_size: int, mlp_ratio: float,
                 block_type: str, block_conv: bool):
        super().__init__()
        self.layers = nn.ModuleList([
            DCTSwinLayer(dim, num_heads, window_size, shifted=index % 2 == 1, mlp_ratio=mlp_ratio,
                         block_type=block_type) for index in range(num_layer)])
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if block_conv else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features.permute(0, 2, 3, 1)
        for layer in self.layers:
            tokens = layer(tokens)
        mixed = tokens.permute(0, 3, 1, 2)
        if self.conv is None:
            return mixed
        return self.conv(mixed) + features


@ARCH_REGISTRY.register()
class DCTSwin(nn.Module):
    """DCTSwin knowledge-aggregation network: fuses N teacher SR outputs into one SR image (MTKD, ECCV 2024).

    Jiang, Feng, Zhang and Bull, ECCV 2024, stage 1 (knowledge aggregation): the N teacher outputs, concatenated
    ``(B, 3N, sH, sW)``, are pixel-unshuffled by the scale ``s`` and a 3x3 conv gives shallow features ``F_s`` of
    ``num_feat`` channels at LR size (so the blocks do not depend on ``s``); ``num_block`` DCTSwin blocks of
    ``num_layer`` layers and a 3x3 conv give ``F_d``; a sub-pixel upsampler maps ``F_s + F_d`` to the HR image.

    Args:
        num_teachers: N; the input has ``num_teachers * num_out_ch`` channels (teacher 1's RGB first).
        num_out_ch: image channels (3, RGB).
        num_feat: C, feature channels (paper: 24).
        num_block: B, DCTSwin blocks (paper: 4).
        num_layer: L, layers per block, alternately unshifted and shifted (paper: 2).
        window_size: Ws (paper: 8).
        num_heads: attention heads; must divide ``num_feat``. Not given in the paper; 6 (head width 4 at C = 24),
            the official code's head count (its YAML files and the C = 24 example in ``DCTSwin_arch.py``).
        mlp_ratio: hidden width of each layer's MLP over C (paper: 2).
        upscale: s, the scale of the teacher outputs over the LR image.
        img_range: internal working range: the input is multiplied by it and the output divided, so both stay in
            [0, 1]. No mean is subtracted.
        block_conv: 3x3 conv + block residual at the end of each block (SwinIR's RSTB); the paper leaves it open.
        block_type: one of :data:`BLOCK_TYPES` (``'dctswin'`` is the paper's network; the others its ablations).
        global_residual: beyond the paper: add the mean of the N teacher outputs to the output, so the network
            learns a correction to the ensemble average. Default ``False`` (the paper). With it, the upsampler's
            conv starts at zero, so training starts exactly at the teacher average (ReZero-style) instead of at
            the average plus a random image.
        teacher_weights: beyond the paper: a second sub-pixel head (3x3 conv ``C → N * s**2``, PixelShuffle)
            predicts, for every HR pixel, one weight offset ``Δ_i`` per teacher, shared by the colour channels,
            and ``Σ_i Δ_i T_i`` is added to the output: a content-adaptive (and unconstrained, so also
            extrapolating) mix of the teachers, which a conv/attention stack can only approximate through its
            image head. The head starts at zero, so it changes nothing at initialisation; with
            ``global_residual`` the output is ``Σ_i (1/N + Δ_i) T_i`` plus the image head's correction.
            Default ``False`` (the paper).

    Upsampler: one 3x3 conv ``C → num_out_ch * s**2`` and PixelShuffle(s), SwinIR's light "pixelshuffledirect",
    the one sized for C = 24 (the official YAML's heavier "pixelshuffle" head goes through 64 channels).
    Any input size that is a multiple of ``s``: the LR-size shallow features are padded at the bottom and right to
    a multiple of ``window_size`` by reflection (SwinIR's and the official code's mode; edge replication when a
    side is too short to reflect) and the deep features are cropped back before the last conv.
    Input ``(B, num_teachers * num_out_ch, s H, s W)`` in [0, 1]; output ``(B, num_out_ch, s H, s W)``, nominally
    [0, 1], not clamped.
    """

    def __init__(self, num_teachers: int = 3, num_out_ch: int = 3, num_feat: int = 24, num_block: int = 4,
                 num_layer: int = 2, window_size: int = 8, num_heads: int = 6, mlp_ratio: float = 2.,
                 upscale: int = 4, img_range: float = 1., block_conv: bool = True, block_type: str = 'dctswin',
                 global_residual: bool = False, teacher_weights: bool = False):
        super().__init__()
        check_positive_ints('DCTSwin', num_teachers=num_teachers, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_block=num_block, num_layer=num_layer, window_size=window_size, num_heads=num_heads,
                            upscale=upscale)
        if num_feat % num_heads:
            raise ValueError(f'DCTSwin: num_heads={num_heads} must divide num_feat={num_feat} '
                             '(e.g. num_heads=6 or 4 for num_feat=24).')
        if block_type not in BLOCK_TYPES:
            raise ValueError(f'DCTSwin: block_type must be one of {BLOCK_TYPES}, got {block_type!r}.')
        if not mlp_ratio > 0:
            raise ValueError(f'DCTSwin: mlp_ratio must be positive (paper: 2.), got {mlp_ratio!r}.')
        if not img_range > 0:
            raise ValueError(f'DCTSwin: img_range must be positive (1. or 255.), got {img_range!r}.')
        self.num_teachers = num_teachers
        self.num_out_ch = num_out_ch
        self.num_in_ch = num_teachers * num_out_ch
        self.window_size = window_size
        self.upscale = upscale
        self.img_range = float(img_range)
        self.block_type = block_type
        self.global_residual = bool(global_residual)
        self.teacher_weights = bool(teacher_weights)

        self.conv_first = nn.Conv2d(self.num_in_ch * upscale ** 2, num_feat, 3, 1, 1)
        self.blocks = nn.ModuleList([
            DCTSwinBlock(num_feat, num_layer, num_heads, window_size, mlp_ratio, block_type, block_conv)
            for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale ** 2, 3, 1, 1),
                                       nn.PixelShuffle(upscale))
        if self.global_residual:
            nn.init.zeros_(self.upsampler[0].weight)
            nn.init.zeros_(self.upsampler[0].bias)
        if self.teacher_weights:
            self.weight_head = nn.Sequential(nn.Conv2d(num_feat, num_teachers * upscale ** 2, 3, 1, 1),
                                             nn.PixelShuffle(upscale))
            nn.init.zeros_(self.weight_head[0].weight)
            nn.init.zeros_(self.weight_head[0].bias)

    def _check_input(self, teacher_outputs: torch.Tensor) -> None:
        if teacher_outputs.dim() != 4 or teacher_outputs.shape[1] != self.num_in_ch:
            raise ValueError(f'DCTSwin: expected (B, {self.num_in_ch}, H, W): {self.num_teachers} teacher outputs of '
                             f'{self.num_out_ch} channels concatenated on dim 1, got {tuple(teacher_outputs.shape)}; '
                             'set num_teachers to the number of teachers.')
        height, width = teacher_outputs.shape[-2:]
        if height % self.upscale or width % self.upscale:
            raise ValueError(f'DCTSwin: input height and width must be multiples of upscale={self.upscale} '
                             f'(teacher outputs are upscale x the LR size), got {height}x{width}; pass the teacher '
                             f'outputs of an LR image, or crop them to a multiple of {self.upscale}.')

    def forward(self, teacher_outputs: torch.Tensor) -> torch.Tensor:
        self._check_input(teacher_outputs)
        shallow = self.conv_first(F.pixel_unshuffle(teacher_outputs * self.img_range, self.upscale))
        lr_height, lr_width = shallow.shape[-2:]
        pad_h, pad_w = (-lr_height) % self.window_size, (-lr_width) % self.window_size
        deep = shallow
        if pad_h or pad_w:
            mode = 'reflect' if pad_h < lr_height and pad_w < lr_width else 'replicate'
            deep = F.pad(shallow, (0, pad_w, 0, pad_h), mode=mode)
        for block in self.blocks:
            deep = block(deep)
        deep = deep[..., :lr_height, :lr_width]
        features = self.conv_after_body(deep) + shallow
        output = self.upsampler(features) / self.img_range
        if self.global_residual or self.teacher_weights:
            batch, _, height, width = teacher_outputs.shape
            teachers = teacher_outputs.reshape(batch, self.num_teachers, self.num_out_ch, height, width)
            if self.global_residual:
                output = output + teachers.mean(dim=1)
            if self.teacher_weights:
                output = output + (self.weight_head(features).unsqueeze(2) * teachers).sum(dim=1)
        return output
