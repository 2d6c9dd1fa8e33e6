"""Official EDSR-PyTorch / RCAN checkpoints into BasicSR's EDSR / RCAN: exact renaming and identical outputs.

The "official" networks below rebuild, for tiny configurations, the module structure of the official codes
(sanghyun-son/EDSR-PyTorch ``src/model/edsr.py`` + ``common.py``; yulunzhang/RCAN
``RCAN_TestCode/code/model/rcan.py`` + ``common.py``), so their state dicts carry the official key names
without any of our mapping code involved. Each test converts such a state dict, loads it strictly into BasicSR's
arch and checks that both networks compute the same function (official on [0, 255], BasicSR on [0, 1]).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mtkd  # noqa: F401  (compat first)
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from mtkd.weights.formats import (DIV2K_RGB_MEAN, WeightFormatError, convert_edsr_official, convert_rcan_official,
                                  convert_state_dict, infer_edsr_options, infer_rcan_options)
from mtkd.weights.loading import WeightLoadError, describe_mismatch, load_weights

DIVFLICKR2K_RGB_MEAN = (0.4690, 0.4490, 0.4036)


# ---- the official structures, rebuilt (same module nesting, hence the same state-dict keys) ----

def _conv(in_channels, out_channels, kernel_size=3):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)


class OfficialMeanShift(nn.Conv2d):
    """common.MeanShift: 1x1 conv, weight eye(3) (std 1), bias sign * rgb_range * mean, computed in float32."""

    def __init__(self, rgb_range, rgb_mean, sign):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.Tensor(rgb_mean)


def official_upsampler(scale, num_feat):
    """common.Upsampler without BN/activation: (conv to 4F, PixelShuffle(2)) * log2(scale), or conv 9F + PS(3)."""
    layers = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [_conv(num_feat, 4 * num_feat), nn.PixelShuffle(2)]
    else:
        assert scale == 3
        layers += [_conv(num_feat, 9 * num_feat), nn.PixelShuffle(3)]
    return nn.Sequential(*layers)


class OfficialResBlock(nn.Module):
    def __init__(self, num_feat, res_scale):
        super().__init__()
        self.body = nn.Sequential(_conv(num_feat, num_feat), nn.ReLU(True), _conv(num_feat, num_feat))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x).mul(self.res_scale) + x


class OfficialEDSR(nn.Module):
    def __init__(self, num_feat, num_block, scale, res_scale, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        self.sub_mean = OfficialMeanShift(255, rgb_mean, -1)
        self.add_mean = OfficialMeanShift(255, rgb_mean, 1)
        self.head = nn.Sequential(_conv(3, num_feat))
        self.body = nn.Sequential(*[OfficialResBlock(num_feat, res_scale) for _ in range(num_block)],
                                  _conv(num_feat, num_feat))
        self.tail = nn.Sequential(official_upsampler(scale, num_feat), _conv(num_feat, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


class OfficialCALayer(nn.Module):
    def __init__(self, num_feat, reduction):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(_conv(num_feat, num_feat // reduction, 1), nn.ReLU(True),
                                     _conv(num_feat // reduction, num_feat, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class OfficialRCAB(nn.Module):
    def __init__(self, num_feat, reduction):
        super().__init__()
        self.body = nn.Sequential(_conv(num_feat, num_feat), nn.ReLU(True), _conv(num_feat, num_feat),
                                  OfficialCALayer(num_feat, reduction))

    def forward(self, x):
        return self.body(x) + x  # the official RCAB ignores res_scale


class OfficialResidualGroup(nn.Module):
    def __init__(self, num_feat, reduction, num_block):
        super().__init__()
        self.body = nn.Sequential(*[OfficialRCAB(num_feat, reduction) for _ in range(num_block)],
                                  _conv(num_feat, num_feat))

    def forward(self, x):
        return self.body(x) + x


class OfficialRCAN(nn.Module):
    def __init__(self, num_feat, num_group, num_block, reduction, scale, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        self.sub_mean = OfficialMeanShift(255, rgb_mean, -1)
        self.head = nn.Sequential(_conv(3, num_feat))
        self.body = nn.Sequential(*[OfficialResidualGroup(num_feat, reduction, num_block) for _ in range(num_group)],
                                  _conv(num_feat, num_feat))
        self.tail = nn.Sequential(official_upsampler(scale, num_feat), _conv(num_feat, 3))
        self.add_mean = OfficialMeanShift(255, rgb_mean, 1)

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


def _randomise(network, seed):
    """Non-trivial weights and biases everywhere except the mean shifts (which must stay pure)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if 'mean' not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return network


def _same_function(official, basicsr_net, scale, seed=0):
    """Max |official(255 x) / 255 - basicsr(x)| on a random [0, 1] image, in float64."""
    x = torch.rand(1, 3, 7, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    official, basicsr_net = official.double().eval(), basicsr_net.double().eval()
    with torch.no_grad():
        # The official bias holds float32(255 * mean), BasicSR computes 255 * (x - float32(mean)): they differ by
        # float32 rounding (up to 4e-6 on the 0-255 scale). Recomputing the bias in float64 leaves only float64
        # rounding between the two networks, so the tolerance below can be tight.
        mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float32).double()
        official.sub_mean.bias.copy_(-255. * mean)
        official.add_mean.bias.copy_(255. * mean)
        expected = official(x * 255.) / 255.
        actual = basicsr_net(x)
    assert actual.shape == (1, 3, 7 * scale, 6 * scale)
    return (expected - actual).abs().max().item()


# ---- EDSR ----

def _edsr_expected_mapping(num_block, scale):
    """The official -> BasicSR key mapping for EDSR, spelled out independently of the converter."""
    mapping = {'head.0': 'conv_first', f'body.{num_block}': 'conv_after_body', 'tail.1': 'conv_last'}
    for block in range(num_block):
        mapping[f'body.{block}.body.0'] = f'body.{block}.conv1'
        mapping[f'body.{block}.body.2'] = f'body.{block}.conv2'
    upsampler_convs = [0] if scale == 3 else [2 * i for i in range(int(math.log2(scale)))]
    for index in upsampler_convs:
        mapping[f'tail.0.{index}'] = f'upsample.{index}'
    return {f'{old}.{p}': f'{new}.{p}' for old, new in mapping.items() for p in ('weight', 'bias')}


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_edsr_official_converts_exactly_and_computes_the_same_function(scale):
    official = _randomise(OfficialEDSR(num_feat=8, num_block=2, scale=scale, res_scale=0.1), seed=scale)
    official_state = official.state_dict()
    converted = convert_edsr_official(official_state)

    expected_mapping = _edsr_expected_mapping(num_block=2, scale=scale)
    assert set(official_state) - set(expected_mapping) == {'sub_mean.weight', 'sub_mean.bias', 'add_mean.weight',
                                                          'add_mean.bias'}
    assert sorted(converted) == sorted(expected_mapping.values())
    for old, new in expected_mapping.items():
        assert torch.equal(converted[new], official_state[old]), old

    network = EDSR(3, 3, num_feat=8, num_block=2, upscale=scale, res_scale=0.1, img_range=255.,
                   rgb_mean=DIV2K_RGB_MEAN)
    assert describe_mismatch(network, converted) is None
    network.load_state_dict(converted, strict=True)
    assert _same_function(official, network, scale) < 1e-10


def test_edsr_official_through_load_weights_from_a_file(tmp_path):
    official = _randomise(OfficialEDSR(num_feat=8, num_block=3, scale=4, res_scale=1), seed=7)
    path = tmp_path / 'edsr_baseline_tiny_x4.pt'
    torch.save(official.state_dict(), path)

    options = infer_edsr_options(torch.load(path, weights_only=True))
    assert options == {'type': 'EDSR', 'img_range': 255., 'rgb_mean': list(DIV2K_RGB_MEAN), 'num_in_ch': 3,
                       'num_out_ch': 3, 'num_feat': 8, 'num_block': 3, 'upscale': 4, 'res_scale': 1}
    network = EDSR(**{k: v for k, v in options.items() if k != 'type'})
    load_weights(network, str(path), key_format='edsr_official')
    assert _same_function(official, network, 4) < 1e-10


def test_edsr_large_configuration_gets_res_scale_0_1():
    # The 32-block/256-feature EDSR trains with --res_scale 0.1; only shapes are read, so a fake dict is enough.
    state = {'head.0.weight': torch.zeros(256, 3, 3, 3), 'head.0.bias': torch.zeros(256),
             'body.32.weight': torch.zeros(256, 256, 3, 3), 'body.32.bias': torch.zeros(256),
             'tail.0.0.weight': torch.zeros(1024, 256, 3, 3), 'tail.0.0.bias': torch.zeros(1024),
             'tail.1.weight': torch.zeros(3, 256, 3, 3), 'tail.1.bias': torch.zeros(3)}
    for block in range(32):
        for conv in (0, 2):
            state[f'body.{block}.body.{conv}.weight'] = torch.zeros(256, 256, 3, 3)
            state[f'body.{block}.body.{conv}.bias'] = torch.zeros(256)
    options = infer_edsr_options(state)
    assert (options['num_block'], options['num_feat'], options['upscale'], options['res_scale']) == (32, 256, 2, 0.1)


def test_edsr_official_unknown_key_is_refused_by_name(tmp_path):
    state = OfficialEDSR(num_feat=8, num_block=2, scale=2, res_scale=1).state_dict()
    state['body.0.body.1.running_mean'] = torch.zeros(8)  # a BatchNorm variant (--bn) BasicSR cannot hold
    with pytest.raises(WeightFormatError, match=r'unknown keys for this layout: body\.0\.body\.1\.running_mean'):
        convert_edsr_official(state)

    path = tmp_path / 'edsr_bn.pt'
    torch.save(state, path)
    network = EDSR(3, 3, num_feat=8, num_block=2, upscale=2)
    with pytest.raises(WeightLoadError, match=r"edsr_bn\.pt \(key_format 'edsr_official'\): .*running_mean"):
        load_weights(network, str(path), key_format='edsr_official')


def test_edsr_official_incomplete_body_is_refused():
    state = OfficialEDSR(num_feat=8, num_block=3, scale=2, res_scale=1).state_dict()
    del state['body.1.body.0.weight'], state['body.1.body.0.bias'], state['body.1.body.2.weight'], \
        state['body.1.body.2.bias']
    with pytest.raises(WeightFormatError, match=r'residual block indices \[0, 2\] are not 0\.\.1'):
        convert_edsr_official(state)

    state = OfficialEDSR(num_feat=8, num_block=3, scale=2, res_scale=1).state_dict()
    del state['body.3.weight'], state['body.3.bias']
    with pytest.raises(WeightFormatError, match=r'conv after the body should be body\.3'):
        convert_edsr_official(state)


def test_mean_shift_other_than_div2k_is_refused_with_the_mean_it_found():
    state = OfficialEDSR(num_feat=8, num_block=1, scale=2, res_scale=1, rgb_mean=DIVFLICKR2K_RGB_MEAN).state_dict()
    with pytest.raises(WeightFormatError, match=r'sub_mean is not a pure mean shift.*\[0\.469, 0\.449, 0\.4036\]'):
        convert_edsr_official(state)
    # With the arch built for that mean, the same checkpoint converts.
    converted = convert_edsr_official(state, rgb_mean=DIVFLICKR2K_RGB_MEAN)
    assert 'conv_first.weight' in converted


def test_trained_mean_shift_is_refused():
    state = OfficialEDSR(num_feat=8, num_block=1, scale=2, res_scale=1).state_dict()
    state['add_mean.weight'] = state['add_mean.weight'] * 1.01  # a drifted (trained) mean-shift weight
    with pytest.raises(WeightFormatError, match=r'add_mean is not a pure mean shift .*identity weight: False'):
        convert_edsr_official(state)
    state = OfficialEDSR(num_feat=8, num_block=1, scale=2, res_scale=1).state_dict()
    state['sub_mean.bias'] = state['sub_mean.bias'] + 0.01  # 0.01 on the 0-255 scale: over the 1e-3 tolerance
    with pytest.raises(WeightFormatError, match=r'sub_mean is not a pure mean shift'):
        convert_edsr_official(state)


# ---- RCAN ----

def _rcan_expected_mapping(num_group, num_block, scale):
    """The official -> BasicSR key mapping for RCAN, spelled out independently of the converter."""
    mapping = {'head.0': 'conv_first', f'body.{num_group}': 'conv_after_body', 'tail.1': 'conv_last'}
    for group in range(num_group):
        mapping[f'body.{group}.body.{num_block}'] = f'body.{group}.conv'
        for block in range(num_block):
            old, new = f'body.{group}.body.{block}.body', f'body.{group}.residual_group.{block}.rcab'
            mapping[f'{old}.0'] = f'{new}.0'
            mapping[f'{old}.2'] = f'{new}.2'
            mapping[f'{old}.3.conv_du.0'] = f'{new}.3.attention.1'  # BasicSR puts the pool at attention.0
            mapping[f'{old}.3.conv_du.2'] = f'{new}.3.attention.3'
    upsampler_convs = [0] if scale == 3 else [2 * i for i in range(int(math.log2(scale)))]
    for index in upsampler_convs:
        mapping[f'tail.0.{index}'] = f'upsample.{index}'
    return {f'{old}.{p}': f'{new}.{p}' for old, new in mapping.items() for p in ('weight', 'bias')}


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_rcan_official_converts_exactly_and_computes_the_same_function(scale):
    official = _randomise(OfficialRCAN(num_feat=16, num_group=2, num_block=3, reduction=4, scale=scale), seed=scale)
    official_state = official.state_dict()
    converted = convert_rcan_official(official_state)

    expected_mapping = _rcan_expected_mapping(num_group=2, num_block=3, scale=scale)
    assert set(official_state) - set(expected_mapping) == {'sub_mean.weight', 'sub_mean.bias', 'add_mean.weight',
                                                          'add_mean.bias'}
    assert sorted(converted) == sorted(expected_mapping.values())
    for old, new in expected_mapping.items():
        assert torch.equal(converted[new], official_state[old]), old

    network = RCAN(3, 3, num_feat=16, num_group=2, num_block=3, squeeze_factor=4, upscale=scale, res_scale=1,
                   img_range=255., rgb_mean=DIV2K_RGB_MEAN)
    network.load_state_dict(converted, strict=True)
    assert _same_function(official, network, scale) < 1e-10

    options = infer_rcan_options(official_state)
    assert options == {'type': 'RCAN', 'img_range': 255., 'rgb_mean': list(DIV2K_RGB_MEAN), 'res_scale': 1,
                       'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_group': 2, 'num_block': 3,
                       'squeeze_factor': 4, 'upscale': scale}


def test_rcan_official_through_load_weights_from_a_file(tmp_path):
    official = _randomise(OfficialRCAN(num_feat=16, num_group=2, num_block=2, reduction=8, scale=2), seed=3)
    path = tmp_path / 'RCAN_tiny_BIX2.pt'
    torch.save(official.state_dict(), path)
    network = RCAN(3, 3, num_feat=16, num_group=2, num_block=2, squeeze_factor=8, upscale=2)
    load_weights(network, str(path), key_format='rcan_official')
    assert _same_function(official, network, 2) < 1e-10


def test_rcan_official_unknown_and_inconsistent_keys_are_refused():
    state = OfficialRCAN(num_feat=16, num_group=2, num_block=2, reduction=4, scale=2).state_dict()
    state['body.0.body.0.body.3.conv_du.4.weight'] = torch.zeros(1)
    with pytest.raises(WeightFormatError, match=r'unknown keys for this layout: body\.0\.body\.0\.body\.3\.conv_du\.4'):
        convert_rcan_official(state)

    state = OfficialRCAN(num_feat=16, num_group=2, num_block=2, reduction=4, scale=2).state_dict()
    del state['body.1.body.2.weight'], state['body.1.body.2.bias']  # group 1 loses its tail conv
    with pytest.raises(WeightFormatError, match=r'residual group 1 should end with conv body\.1\.body\.2'):
        convert_rcan_official(state)


def test_wrong_key_format_for_the_checkpoint_is_refused():
    edsr_state = OfficialEDSR(num_feat=8, num_block=2, scale=2, res_scale=1).state_dict()
    with pytest.raises(WeightFormatError, match=r'not an official RCAN checkpoint'):
        convert_rcan_official(edsr_state)
    rcan_state = OfficialRCAN(num_feat=16, num_group=1, num_block=1, reduction=4, scale=2).state_dict()
    with pytest.raises(WeightFormatError, match=r'unknown keys for this layout: body\.0\.body\.0\.body\.0\.bias'):
        convert_edsr_official(rcan_state)


def test_unknown_key_format_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown key_format 'edsr'.*'edsr_official'"):
        convert_state_dict({}, 'edsr')


def test_basicsr_key_format_is_identity():
    state = {'a.weight': torch.ones(1)}
    converted = convert_state_dict(state, 'basicsr')
    assert converted == state and converted is not state
