"""mtkd.analysis.profiling and scripts/profile_models.py: exact MAC counts of single layers (both counters), attention
matmuls seen only by FlopCounterMode, IMDN's published size, the table. Wall-clock times are never asserted."""
from __future__ import annotations

import os

import pytest
import torch
import yaml
from torch import nn

from mtkd.analysis.profiling import count_macs, count_parameters, format_count, profile_network, profile_table
from mtkd.tools.inference import build_network

from conftest import REPO_ROOT, load_script
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2}


@pytest.mark.parametrize('counter', ['flop_counter', 'hooks'])
def test_single_layers(counter):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.rand(1, 3, 10, 12), counter) == 3 * 8 * 9 * 10 * 12
    linear = nn.Linear(5, 7)
    assert count_macs(linear, torch.rand(2, 4, 5), counter) == 2 * 4 * 7 * 5
    # Transposed, grouped: every input element meets out_channels/groups kernels of 3x3.
    transposed = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    assert count_macs(transposed, torch.rand(1, 4, 5, 6), counter) == (4 * 5 * 6) * (6 // 2) * 9
    grouped = nn.Conv2d(4, 6, (1, 3), padding=(0, 1), groups=2)
    assert count_macs(grouped, torch.rand(2, 4, 5, 6), counter) == (2 * 6 * 5 * 6) * (4 // 2) * 3


class Attention(nn.Module):
    """A 1x1 projection then the (HW x HW) attention matrix of the projected features: a functional matmul."""

    def __init__(self):
        super().__init__()
        self.project = nn.Conv2d(3, 8, 1, bias=False)

    def forward(self, images):
        tokens = self.project(images).flatten(2).transpose(1, 2)  # (B, HW, 8)
        return (tokens @ tokens.transpose(1, 2)).softmax(-1) @ tokens


def test_attention_matmuls_counted_only_by_flop_counter():
    images = torch.rand(1, 3, 4, 4)
    projection = 16 * 3 * 8
    attention = 16 * 16 * 8 + 16 * 16 * 8  # Q K^T and A V
    assert count_macs(Attention(), images, 'hooks') == projection
    assert count_macs(Attention(), images, 'flop_counter') == projection + attention
    with pytest.raises(ValueError, match='not one of'):
        count_macs(Attention(), images, 'fvcore')


def test_imdn_published_size():
    """IMDN x4 (Hui et al., ACM MM 2019, Table 3): 715K parameters, 40.9G Mult-Adds for a 1280x720 output."""
    with open(os.path.join(REPO_ROOT, 'options', 'test_imdn_x4.yml'), encoding='utf-8') as handle:
        network = build_network(yaml.safe_load(handle)['network_g'])
    assert count_parameters(network) == 715_176
    # On the meta device nothing is computed: shapes alone give the counts.
    network, images = network.to('meta'), torch.empty(1, 3, 180, 320, device='meta')
    macs = count_macs(network, images)
    assert macs == count_macs(network, images, 'hooks')
    assert round(macs / 1e9, 1) == 40.9


def test_profile_row_pads_and_table():
    torch.manual_seed(0)
    network = build_network(TINY_EDSR)
    row = profile_network('tiny', network, 2, input_size=(12, 10), runs=1, warmup=0, pad_multiple=8)
    assert row.output_size == (24, 20)  # cropped back after padding to 16x16
    assert row.macs == count_macs(network, torch.rand(1, 3, 16, 16))
    assert row.parameters == count_parameters(network) and row.latency_ms is not None
    unpadded = profile_network('tiny', network, 2, input_size=(12, 10), runs=0)
    assert unpadded.macs == count_macs(network, torch.rand(1, 3, 10, 12)) < row.macs
    assert unpadded.latency_ms is None
    table = profile_table([row, unpadded])
    assert f'| tiny | {row.parameters:,} ' in table and '12x10 -> 24x20' in table
    assert (format_count(715_176), format_count(40_885_865_472), format_count(999)) == ('715.18K', '40.89G', '999')


def test_script(tmp_path, capsys):
    option_file = tmp_path / 'tiny_edsr.yml'
    option_file.write_text(yaml.safe_dump({'name': 'ignored', 'scale': 2, 'network_g': TINY_EDSR}))
    script = load_script('profile_models')
    arch = '{"type": "IMDN", "num_feat": 16, "num_block": 1, "upscale": 3}'
    assert script.main([str(option_file), '--arch', arch, '--input-size', '12', '10', '--runs', '1',
                        '--warmup', '0', '--device', 'cpu']) == 0
    table = capsys.readouterr().out
    assert '| tiny_edsr | ' in table and '| IMDN | ' in table
    assert f'{count_parameters(build_network(TINY_EDSR)):,}' in table and '12x10 -> 36x30' in table
    assert script.main(['--arch', '{"type": "Nope"}', '--runs', '0']) == 2
    assert "unknown arch 'Nope'" in capsys.readouterr().err
