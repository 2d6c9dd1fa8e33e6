"""EdgeSRN (mtkd/archs/edgesrn_arch.py): the released key names, and the same function as BasicSR's RRDBNet."""
from __future__ import annotations

import re

import pytest
import torch

from basicsr.archs.rrdbnet_arch import RRDBNet
from mtkd.archs.edgesrn_arch import EdgeSRN

# Released EdgeSRN (64 features, growth 32, 10 RRDB): 10 x 3 RDBs x 5 convs + 6 convs outside the trunk.
RELEASED_PARAMS = 7_345_475


def test_released_configuration_parameter_count_and_key_names():
    network = EdgeSRN()
    assert sum(p.numel() for p in network.parameters()) == RELEASED_PARAMS
    keys = set(network.state_dict())
    outside = {f'{name}.{kind}' for name in ('conv_first', 'trunk_conv', 'upconv1', 'upconv2', 'HRconv', 'conv_last')
               for kind in ('weight', 'bias')}
    trunk = {f'RRDB_trunk.{block}.RDB{rdb}.conv{conv}.{kind}' for block in range(10) for rdb in (1, 2, 3)
             for conv in range(1, 6) for kind in ('weight', 'bias')}
    assert keys == outside | trunk


def _to_basicsr_key(key: str) -> str:
    key = re.sub(r'^RRDB_trunk\.', 'body.', key)
    key = re.sub(r'\.RDB(\d)\.', lambda m: f'.rdb{m.group(1)}.', key)
    for ours, theirs in (('trunk_conv', 'conv_body'), ('upconv1', 'conv_up1'), ('upconv2', 'conv_up2'),
                         ('HRconv', 'conv_hr')):
        key = key.replace(ours, theirs)
    return key


def test_same_output_as_basicsr_rrdbnet_with_the_same_weights():
    torch.manual_seed(0)
    ours = EdgeSRN(num_feat=8, num_block=2, num_grow_ch=4, upscale=4).eval()
    theirs = RRDBNet(num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=2, num_grow_ch=4).eval()
    theirs.load_state_dict({_to_basicsr_key(key): value for key, value in ours.state_dict().items()}, strict=True)
    image = torch.rand(2, 3, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), theirs(image))
    assert ours(image).shape == (2, 3, 24, 28)


def test_scale_two_and_img_range():
    network = EdgeSRN(num_feat=8, num_block=1, num_grow_ch=4, upscale=2)
    assert 'upconv2.weight' not in network.state_dict()
    assert network(torch.rand(1, 3, 5, 5)).shape == (1, 3, 10, 10)
    scaled = EdgeSRN(num_feat=8, num_block=1, num_grow_ch=4, upscale=2, img_range=255.)
    scaled.load_state_dict(network.state_dict())
    image = torch.rand(1, 3, 5, 5)
    with torch.no_grad():  # img_range 255: the same layers applied to 255 * input, output divided by 255
        torch.testing.assert_close(scaled(image), network(image * 255.) / 255.)
    with pytest.raises(ValueError, match='upscale must be 2 or 4'):
        EdgeSRN(upscale=3)

