"""IMDN (mtkd/archs/imdn_arch.py): the official checkpoints load strictly and reproduce the published numbers."""
from __future__ import annotations

import pytest
import torch

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.imdn_arch import IMDN, IMDN_OFFICIAL_CHECKPOINTS
from mtkd.metrics.evaluation import evaluate_on_benchmark, mean_score
from mtkd.weights.loading import WeightLoadError, load_weights
from conftest import dataset_dir, official_weight

# Exact parameter counts of the official files (694K / 703K / 715K in the paper and README).
EXPECTED_PARAMS = {'IMDN_x2.pth': 694_404, 'IMDN_x3.pth': 703_059, 'IMDN_x4.pth': 715_176}

# Set5 mean Y-PSNR / SSIM (crop = scale). x4: measured with the original code on this data
# (/work/shared/README.md, equal to the paper); x2 and x3: the paper's Table 3 (two/four decimals).
SET5_REFERENCE = {
    'IMDN_x4.pth': (32.210, 0.8948),
    'IMDN_x2.pth': (38.00, 0.9605),
    'IMDN_x3.pth': (34.36, 0.9270),
}
PSNR_TOLERANCE = 0.01
SSIM_TOLERANCE = 0.0005


def _official_imdn(file_name: str, **overrides) -> IMDN:
    network = IMDN(**{**IMDN_OFFICIAL_CHECKPOINTS[file_name]['kwargs'], **overrides})
    load_weights(network, official_weight(file_name))
    return network.eval()


def test_registered_in_basicsr():
    assert ARCH_REGISTRY.get('IMDN') is IMDN


@pytest.mark.parametrize('file_name', sorted(EXPECTED_PARAMS))
def test_official_checkpoint_loads_strictly_with_exact_parameter_count(file_name):
    network = _official_imdn(file_name)
    assert sum(p.numel() for p in network.parameters()) == EXPECTED_PARAMS[file_name]
    assert IMDN_OFFICIAL_CHECKPOINTS[file_name]['num_params'] == EXPECTED_PARAMS[file_name]
    # The checkpoint's keys (``module.`` stripped) are exactly the network's: nothing renamed, nothing extra.
    file_keys = {key.removeprefix('module.')
                 for key in torch.load(official_weight(file_name), map_location='cpu', weights_only=True)}
    assert file_keys == set(network.state_dict())


def test_checkpoint_of_another_scale_is_refused():
    with pytest.raises(WeightLoadError, match='shape mismatches.*upsampler.0.weight'):
        load_weights(IMDN(upscale=2), official_weight('IMDN_x4.pth'))


@pytest.mark.parametrize('file_name', sorted(SET5_REFERENCE))
def test_set5_matches_reference(file_name):
    network = _official_imdn(file_name)
    scale = IMDN_OFFICIAL_CHECKPOINTS[file_name]['kwargs']['upscale']
    score = mean_score(evaluate_on_benchmark(network, dataset_dir('Set5'), scale))
    psnr, ssim = SET5_REFERENCE[file_name]
    assert score.psnr == pytest.approx(psnr, abs=PSNR_TOLERANCE)
    assert score.ssim == pytest.approx(ssim, abs=SSIM_TOLERANCE)


def test_wrong_img_range_breaks_the_official_weights():
    # IMDN works on [0, 1]: telling it to work on [0, 255] must ruin the output (~13.5 dB on Set5).
    network = _official_imdn('IMDN_x4.pth', img_range=255.)
    assert mean_score(evaluate_on_benchmark(network, dataset_dir('Set5'), 4)).psnr < 20.


def test_img_range_scales_input_and_output_exactly():
    torch.manual_seed(0)
    in_range = IMDN(num_feat=16, num_block=2, upscale=3, img_range=255.).eval()
    plain = IMDN(num_feat=16, num_block=2, upscale=3, img_range=1.).eval()
    plain.load_state_dict(in_range.state_dict())
    image = torch.rand(1, 3, 8, 9)
    with torch.no_grad():
        output = in_range(image)
        assert output.shape == (1, 3, 24, 27)
        assert torch.equal(output, plain(image * 255.) / 255.)


@pytest.mark.parametrize('argument, value', [('upscale', 0), ('num_block', 2.0), ('num_feat', 18),
                                              ('img_range', 0.), ('num_in_ch', True)])
def test_bad_arguments_name_themselves(argument, value):
    with pytest.raises(ValueError, match=argument):
        IMDN(**{argument: value})
