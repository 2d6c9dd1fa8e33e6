"""Key-layout conversions from other code bases' official checkpoints to BasicSR archs (pure functions).

``key_format`` (the ``key_format`` argument of :func:`mtkd.weights.loading.load_weights`):

- ``basicsr``: the keys already match the mtkd/BasicSR arch (identity). All official lightweight SR releases
  that mtkd re-implements with their official key names (IMDN, RFDN, RLFN, PAN, LBNet, ...) use this.
- ``edsr_official``: checkpoints of the official EDSR code (Lim, Son, Kim, Nah and Lee, "Enhanced Deep Residual
  Networks for Single Image Super-Resolution", CVPRW 2017; sanghyun-son/EDSR-PyTorch, ``src/model/edsr.py``),
  e.g. ``edsr_x4-4f62e9ef.pt`` and ``edsr_baseline_x4-6b446fab.pt``, into BasicSR 1.4.2's ``EDSR``.
- ``rcan_official``: checkpoints of the official RCAN code (Zhang, Li, Li, Wang, Zhong and Fu, "Image
  Super-Resolution Using Very Deep Residual Channel Attention Networks", ECCV 2018; yulunzhang/RCAN,
  ``RCAN_TestCode/code/model/rcan.py``), e.g. ``RCAN_BIX4.pt``, into BasicSR 1.4.2's ``RCAN``.

Mean shift. Both official codes wrap the network in two 1x1 ``MeanShift`` convolutions, ``sub_mean`` (weight =
identity, bias = -rgb_range * rgb_mean) and ``add_mean`` (bias = +rgb_range * rgb_mean), stored in the state dict.
BasicSR's ``EDSR``/``RCAN`` do the same with a plain tensor attribute (``(x - rgb_mean) * img_range`` in, ``x /
img_range + rgb_mean`` out) that is not in the state dict. The converters therefore check that both mean-shift
layers are exactly a pure mean shift by ``rgb_range * rgb_mean`` (identity weight, bias within 1e-3 of
-/+ 255 * DIV2K mean on the 0-255 scale) and then drop them; anything else raises :class:`WeightFormatError`
rather than load a network that would silently compute something else. This check matters: the official codes
freeze the layers with ``self.requires_grad = False`` on the module, which freezes nothing (EDSR-PyTorch issue
#80), so a checkpoint may hold trained, drifted mean-shift values that BasicSR's arch cannot represent.

Constructor arguments the converted weights need (the official models take RGB in [0, 255], BasicSR's arch
takes RGB in [0, 1] and multiplies by ``img_range`` inside, which is the same function):
``img_range=255.``, ``rgb_mean=(0.4488, 0.4371, 0.4040)`` (the DIV2K mean, BasicSR's default), plus the sizes:

- EDSR: ``num_feat`` = n_feats, ``num_block`` = n_resblocks, ``upscale``; ``res_scale=0.1`` for EDSR (32
  blocks, 256 features; the official ``--res_scale 0.1``) and ``res_scale=1`` for EDSR-baseline (16 x 64).
  :func:`infer_edsr_options` reads the sizes from a checkpoint.
- RCAN: ``num_feat=64, num_group=10, num_block=20, squeeze_factor=16, upscale``; the official RCAB ignores
  ``res_scale`` (always 1), so keep ``res_scale=1``. :func:`infer_rcan_options` reads them from a checkpoint.

Every converter refuses keys it does not know (a BatchNorm variant, another arch) and structures that do not
close (a residual group without its tail convolution), naming the keys; it never drops a key silently.
This module imports nothing of mtkd but the user-error base class (:mod:`mtkd.utils.errors`):
:mod:`mtkd.weights.loading` turns :class:`WeightFormatError` into its ``WeightLoadError`` with the file name.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from mtkd.utils.errors import MtkdError

Converter = Callable[[Mapping], dict]

#: Mean RGB of the DIV2K training images (1-800) on [0, 1], used by both official codes and by BasicSR.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
#: Pixel range of the official EDSR and RCAN models (``--rgb_range 255``).
OFFICIAL_RGB_RANGE = 255.
#: Tolerance of the mean-shift check: a float32 recomputation agrees to ~1e-5; drifted (trained) layers differ
#: by far more than this.
MEAN_SHIFT_BIAS_TOLERANCE = 1e-3
MEAN_SHIFT_WEIGHT_TOLERANCE = 1e-6

#: BasicSR constructor arguments that every converted checkpoint needs (the sizes come from the checkpoint).
REQUIRED_ARCH_OPTIONS = {
    'edsr_official': {'type': 'EDSR', 'img_range': OFFICIAL_RGB_RANGE, 'rgb_mean': list(DIV2K_RGB_MEAN)},
    'rcan_official': {'type': 'RCAN', 'img_range': OFFICIAL_RGB_RANGE, 'rgb_mean': list(DIV2K_RGB_MEAN),
                      'res_scale': 1},
}


class WeightFormatError(MtkdError, ValueError):
    """A state dict that does not have the layout its ``key_format`` promises."""


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return ', '.join(keys[:limit]) + (f' ... ({len(keys)} in all)' if len(keys) > limit else '')


def _identity(state_dict: Mapping) -> dict:
    return dict(state_dict)


def check_mean_shift(state_dict: Mapping, source: str, rgb_mean=DIV2K_RGB_MEAN,
                     rgb_range: float = OFFICIAL_RGB_RANGE) -> None:
    """Raise unless ``sub_mean``/``add_mean`` (when present) are pure mean shifts by ``rgb_range * rgb_mean``.

    The official ``MeanShift`` is a 1x1 convolution with weight ``eye(3) / std`` (std = 1) and bias
    ``sign * rgb_range * mean / std`` (sign -1 for ``sub_mean``, +1 for ``add_mean``). A checkpoint without the
    two layers passes (nothing to drop).
    """
    expected_weight = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    expected_mean = torch.tensor(rgb_mean, dtype=torch.float64) * rgb_range
    for name, sign in (('sub_mean', -1.), ('add_mean', 1.)):
        weight, bias = state_dict.get(f'{name}.weight'), state_dict.get(f'{name}.bias')
        if weight is None and bias is None:
            continue
        if weight is None or bias is None:
            raise WeightFormatError(f'{source}: {name} has only one of weight/bias; the checkpoint is incomplete.')
        if tuple(weight.shape) != (3, 3, 1, 1) or tuple(bias.shape) != (3,):
            raise WeightFormatError(f'{source}: {name} has shapes weight {tuple(weight.shape)}, bias '
                                    f'{tuple(bias.shape)}; expected (3, 3, 1, 1) and (3,) (an RGB MeanShift).')
        weight, bias = weight.detach().double().cpu(), bias.detach().double().cpu()
        weight_ok = torch.allclose(weight, expected_weight, rtol=0, atol=MEAN_SHIFT_WEIGHT_TOLERANCE)
        bias_ok = torch.allclose(bias, sign * expected_mean, rtol=0, atol=MEAN_SHIFT_BIAS_TOLERANCE)
        if not (weight_ok and bias_ok):
            found_mean = [round(v, 6) for v in (sign * bias / rgb_range).tolist()]
            raise WeightFormatError(
                f'{source}: {name} is not a pure mean shift by {rgb_range:g} * {tuple(rgb_mean)} '
                f'(identity weight: {weight_ok}; bias / {rgb_range:g} gives mean {found_mean}). BasicSR\'s arch '
                'has no learned mean shift, so these weights cannot be converted exactly. If the weight is the '
                f'identity and the mean is another data set\'s, build the arch with rgb_mean={found_mean} and '
                'convert with that rgb_mean; a non-identity weight means the layer was trained (the official '
                '`self.requires_grad = False` freezes nothing) and needs the official arch.')


def _split_known(state_dict: Mapping, rules, source: str, hint: str) -> dict:
    """Rename every key by the first matching ``(regex, rename)`` rule; raise naming any key no rule matches."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, rename in rules:
            match = pattern.fullmatch(key)
            if match:
                new_key = rename(match)
                if new_key is not None:
                    converted[new_key] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightFormatError(f'{source}: unknown keys for this layout: {_listing(unknown)}. {hint}')
    return converted


def _check_dense_indices(indices, what: str, source: str) -> int:
    """The count of ``indices`` after checking they are exactly 0..n-1; returns n."""
    indices = sorted(set(indices))
    if indices != list(range(len(indices))):
        raise WeightFormatError(f'{source}: {what} indices {indices} are not 0..{len(indices) - 1}; '
                                'the checkpoint is incomplete or of another layout.')
    return len(indices)


_PARAM = r'(weight|bias)'


def convert_edsr_official(state_dict: Mapping, rgb_mean=DIV2K_RGB_MEAN,
                          rgb_range: float = OFFICIAL_RGB_RANGE) -> dict:
    """EDSR-PyTorch's ``EDSR`` state dict renamed to BasicSR's ``EDSR`` (Lim et al., CVPRW 2017, Fig. 3).

    Official layout (``src/model/edsr.py``, ``common.py``) and the BasicSR key it becomes:
    ``head.0`` -> ``conv_first``; ``body.i.body.0`` / ``body.i.body.2`` (ResBlock conv, ReLU, conv) ->
    ``body.i.conv1`` / ``body.i.conv2``; ``body.N`` (the conv after the N residual blocks) ->
    ``conv_after_body``; ``tail.0.j`` (Upsampler: conv, PixelShuffle, ...) -> ``upsample.j``; ``tail.1`` ->
    ``conv_last``; ``sub_mean``/``add_mean`` checked by :func:`check_mean_shift` and dropped.
    Tensors are passed through unchanged (same objects).
    """
    source = 'edsr_official'
    check_mean_shift(state_dict, source, rgb_mean, rgb_range)
    block_indices, after_body = [], []

    def block(match):
        block_indices.append(int(match[1]))
        return f'body.{match[1]}.conv{1 if match[2] == "0" else 2}.{match[3]}'

    def conv_after_body(match):
        after_body.append(int(match[1]))
        return f'conv_after_body.{match[2]}'

    rules = [
        (re.compile(rf'(sub_mean|add_mean)\.{_PARAM}'), lambda m: None),
        (re.compile(rf'head\.0\.{_PARAM}'), lambda m: f'conv_first.{m[1]}'),
        (re.compile(rf'body\.(\d+)\.body\.([02])\.{_PARAM}'), block),
        (re.compile(rf'body\.(\d+)\.{_PARAM}'), conv_after_body),
        (re.compile(rf'tail\.0\.(\d+)\.{_PARAM}'), lambda m: f'upsample.{m[1]}.{m[2]}'),
        (re.compile(rf'tail\.1\.{_PARAM}'), lambda m: f'conv_last.{m[1]}'),
    ]
    converted = _split_known(state_dict, rules, source,
                             'Expected the official EDSR layout (sub_mean, head.0, body.i.body.{0,2}, body.N, '
                             'tail.0.j, tail.1, add_mean); a BatchNorm or other variant cannot load into BasicSR\'s '
                             'EDSR.')
    num_block = _check_dense_indices(block_indices, 'residual block', source)
    if set(after_body) != {num_block}:
        raise WeightFormatError(f'{source}: the conv after the body should be body.{num_block} (after {num_block} '
                                f'residual blocks), found body.{sorted(set(after_body))}.')
    return converted


def convert_rcan_official(state_dict: Mapping, rgb_mean=DIV2K_RGB_MEAN,
                          rgb_range: float = OFFICIAL_RGB_RANGE) -> dict:
    """Official RCAN state dict renamed to BasicSR's ``RCAN`` (Zhang et al., ECCV 2018, Figs. 2-4).

    Official layout (``RCAN_TestCode/code/model/rcan.py``) and the BasicSR key it becomes, for residual group
    ``g`` of ``G`` and RCAB ``b`` of ``B``: ``head.0`` -> ``conv_first``; ``body.g.body.b.body.0`` / ``.body.2``
    (conv, ReLU, conv) -> ``body.g.residual_group.b.rcab.0`` / ``.rcab.2``; the channel attention
    ``body.g.body.b.body.3.conv_du.0`` / ``.conv_du.2`` (after the average pool, which has no weights) ->
    ``...rcab.3.attention.1`` / ``.attention.3``; ``body.g.body.B`` (group tail conv) -> ``body.g.conv``;
    ``body.G`` -> ``conv_after_body``; ``tail.0.j`` -> ``upsample.j``; ``tail.1`` -> ``conv_last``;
    ``sub_mean``/``add_mean`` checked by :func:`check_mean_shift` and dropped.
    """
    source = 'rcan_official'
    check_mean_shift(state_dict, source, rgb_mean, rgb_range)
    blocks: dict[int, list[int]] = {}
    group_tails: dict[int, list[int]] = {}
    after_body = []

    def rcab_conv(match):
        blocks.setdefault(int(match[1]), []).append(int(match[2]))
        return f'body.{match[1]}.residual_group.{match[2]}.rcab.{match[3]}.{match[4]}'

    def attention(match):
        blocks.setdefault(int(match[1]), []).append(int(match[2]))
        return f'body.{match[1]}.residual_group.{match[2]}.rcab.3.attention.{int(match[3]) + 1}.{match[4]}'

    def group_tail(match):
        group_tails.setdefault(int(match[1]), []).append(int(match[2]))
        return f'body.{match[1]}.conv.{match[3]}'

    def conv_after_body(match):
        after_body.append(int(match[1]))
        return f'conv_after_body.{match[2]}'

    rules = [
        (re.compile(rf'(sub_mean|add_mean)\.{_PARAM}'), lambda m: None),
        (re.compile(rf'head\.0\.{_PARAM}'), lambda m: f'conv_first.{m[1]}'),
        (re.compile(rf'body\.(\d+)\.body\.(\d+)\.body\.([02])\.{_PARAM}'), rcab_conv),
        (re.compile(rf'body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.([02])\.{_PARAM}'), attention),
        (re.compile(rf'body\.(\d+)\.body\.(\d+)\.{_PARAM}'), group_tail),
        (re.compile(rf'body\.(\d+)\.{_PARAM}'), conv_after_body),
        (re.compile(rf'tail\.0\.(\d+)\.{_PARAM}'), lambda m: f'upsample.{m[1]}.{m[2]}'),
        (re.compile(rf'tail\.1\.{_PARAM}'), lambda m: f'conv_last.{m[1]}'),
    ]
    converted = _split_known(state_dict, rules, source,
                             'Expected the official RCAN layout (sub_mean, head.0, body.g.body.b.body.{0,2}, '
                             'body.g.body.b.body.3.conv_du.{0,2}, body.g.body.B, body.G, tail.0.j, tail.1, '
                             'add_mean).')
    if not blocks:
        raise WeightFormatError(f'{source}: no RCAB keys (body.g.body.b.body.3.conv_du.*) in the state dict: not an '
                                "official RCAN checkpoint (an EDSR-PyTorch EDSR needs key_format 'edsr_official').")
    num_group = _check_dense_indices(list(blocks) + list(group_tails), 'residual group', source)
    block_counts = {g: _check_dense_indices(blocks.get(g, []), f'RCAB (group {g})', source) for g in range(num_group)}
    if len(set(block_counts.values())) > 1:
        raise WeightFormatError(f'{source}: residual groups hold different numbers of RCABs {block_counts}; '
                                "BasicSR's RCAN needs one num_block for all groups.")
    for group, count in block_counts.items():
        if set(group_tails.get(group, [])) != {count}:
            raise WeightFormatError(f'{source}: residual group {group} should end with conv body.{group}.body.'
                                    f'{count} (after {count} RCABs), found {sorted(set(group_tails.get(group, [])))}.')
    if set(after_body) != {num_group}:
        raise WeightFormatError(f'{source}: the conv after the body should be body.{num_group} (after '
                                f'{num_group} residual groups), found body.{sorted(set(after_body))}.')
    return converted


def _upscale_from_upsampler(state_dict: Mapping, num_feat: int, source: str) -> int:
    """The scale factor that an official ``Upsampler`` (``tail.0.j``) realises: 2^(number of convs) or 3."""
    convs = sorted(int(m[1]) for k in state_dict if (m := re.fullmatch(r'tail\.0\.(\d+)\.weight', k)))
    if not convs:
        raise WeightFormatError(f'{source}: no upsampler (tail.0.j.weight) in the state dict.')
    out_channels = {int(state_dict[f'tail.0.{j}.weight'].shape[0]) for j in convs}
    if out_channels == {9 * num_feat} and len(convs) == 1:
        return 3
    if out_channels == {4 * num_feat}:
        return 2 ** len(convs)
    raise WeightFormatError(f'{source}: upsampler convs {convs} with {sorted(out_channels)} output channels '
                            f'match neither x3 (one conv, {9 * num_feat}) nor x2^n (n convs, {4 * num_feat}).')


def infer_edsr_options(state_dict: Mapping) -> dict:
    """BasicSR ``EDSR`` constructor options for an official EDSR-PyTorch state dict (sizes read from it).

    ``res_scale`` cannot be read from weights: 0.1 for the 32-block/256-feature EDSR, 1 for EDSR-baseline, as in
    the official training commands; other sizes get 1 (the official default).
    """
    converted = convert_edsr_official(state_dict)
    num_feat = int(converted['conv_first.weight'].shape[0])
    num_block = len({k.split('.')[1] for k in converted if k.startswith('body.')})
    return {**REQUIRED_ARCH_OPTIONS['edsr_official'], 'num_in_ch': int(converted['conv_first.weight'].shape[1]),
            'num_out_ch': int(converted['conv_last.weight'].shape[0]), 'num_feat': num_feat,
            'num_block': num_block, 'upscale': _upscale_from_upsampler(state_dict, num_feat, 'edsr_official'),
            'res_scale': 0.1 if (num_block, num_feat) == (32, 256) else 1}


def infer_rcan_options(state_dict: Mapping) -> dict:
    """BasicSR ``RCAN`` constructor options for an official RCAN state dict (sizes read from it)."""
    converted = convert_rcan_official(state_dict)
    num_feat = int(converted['conv_first.weight'].shape[0])
    squeezed = int(converted['body.0.residual_group.0.rcab.3.attention.1.weight'].shape[0])
    return {**REQUIRED_ARCH_OPTIONS['rcan_official'], 'num_in_ch': int(converted['conv_first.weight'].shape[1]),
            'num_out_ch': int(converted['conv_last.weight'].shape[0]), 'num_feat': num_feat,
            'num_group': len({k.split('.')[1] for k in converted if k.startswith('body.')}),
            'num_block': len({k.split('.')[3] for k in converted if k.startswith('body.0.residual_group.')}),
            'squeeze_factor': num_feat // squeezed,
            'upscale': _upscale_from_upsampler(state_dict, num_feat, 'rcan_official')}


CONVERTERS: dict[str, Converter] = {
    'basicsr': _identity,
    'edsr_official': convert_edsr_official,
    'rcan_official': convert_rcan_official,
}


def convert_state_dict(state_dict: Mapping, key_format: str) -> dict:
    """Convert ``state_dict`` from ``key_format`` to BasicSR's key layout."""
    if key_format not in CONVERTERS:
        raise ValueError(f"Unknown key_format '{key_format}'; choose one of {sorted(CONVERTERS)}.")
    return CONVERTERS[key_format](state_dict)
