"""PAN (mtkd/archs/pan_arch.py) against the official checkpoints and published/measured scores."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mtkd.archs.pan_arch import PAN, PAN_OFFICIAL_CHECKPOINTS
from mtkd.metrics.evaluation import evaluate_on_benchmark, mean_score
from mtkd.weights.loading import WeightLoadError, load_weights
from conftest import dataset_dir, official_weight

# Set5 mean PSNR (dB) / SSIM, Y channel, crop = scale. x4: measured with the official code on this data
# (/work/shared/README.md); x2, x3: PAN paper, Table 2 (2 and 4 decimals).
PAN_SET5_REFERENCE = {
    'PANx4_DF2K.pth': (32.131, 0.8948),
    'PANx2_DF2K.pth': (38.00, 0.9605),
    'PANx3_DF2K.pth': (34.40, 0.9271),
}


def _official_pan(file_name: str) -> PAN:
    network = PAN(**PAN_OFFICIAL_CHECKPOINTS[file_name]['kwargs'])
    load_weights(network, official_weight(file_name))  # strict by default
    return network.eval()


@pytest.mark.parametrize('file_name', sorted(PAN_OFFICIAL_CHECKPOINTS))
def test_official_checkpoint_loads_strictly_with_exact_parameter_count(file_name):
    network = _official_pan(file_name)
    assert sum(p.numel() for p in network.parameters()) == PAN_OFFICIAL_CHECKPOINTS[file_name]['num_params']


def test_x4_has_a_second_upsampling_stage_and_x2_weights_do_not_fit_it():
    network = PAN(upscale=4)
    assert {'upconv2.weight', 'att2.conv.weight', 'HRconv2.weight'} <= set(network.state_dict())
    assert not any(key.startswith(('upconv2', 'att2', 'HRconv2')) for key in PAN(upscale=3).state_dict())
    with pytest.raises(WeightLoadError, match='missing keys: .*upconv2'):
        load_weights(network, official_weight('PANx2_DF2K.pth'))


@pytest.mark.parametrize('upscale', [2, 3, 4])
def test_global_residual_is_bilinear_upsampling_of_the_input(upscale):
    network = PAN(upscale=upscale).eval()
    torch.nn.init.zeros_(network.conv_last.weight)
    torch.nn.init.zeros_(network.conv_last.bias)
    image = torch.rand(1, 3, 5, 7)
    with torch.no_grad():
        output = network(image)
    expected = F.interpolate(image, scale_factor=upscale, mode='bilinear', align_corners=False)
    assert output.shape == (1, 3, 5 * upscale, 7 * upscale)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


@pytest.mark.parametrize('file_name', ['PANx4_DF2K.pth', 'PANx2_DF2K.pth', 'PANx3_DF2K.pth'])
def test_set5_scores_match_reference(file_name):
    network = _official_pan(file_name)
    scale = PAN_OFFICIAL_CHECKPOINTS[file_name]['kwargs']['upscale']
    score = mean_score(evaluate_on_benchmark(network, dataset_dir('Set5'), scale))
    psnr, ssim = PAN_SET5_REFERENCE[file_name]
    assert score.psnr == pytest.approx(psnr, abs=0.01)
    assert score.ssim == pytest.approx(ssim, abs=0.0005)


@pytest.mark.parametrize('kwargs, argument', [
    ({'upscale': 8}, 'upscale'),
    ({'num_in_ch': 1, 'num_out_ch': 3}, 'num_in_ch'),
    ({'num_feat': 41}, 'num_feat'),
    ({'num_block': 0}, 'num_block'),
    ({'img_range': 0}, 'img_range'),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        PAN(**kwargs)
