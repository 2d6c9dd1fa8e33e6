"""RFDN (mtkd/archs/rfdn_arch.py): the official and DTKD checkpoints load strictly and reproduce measured numbers."""
from __future__ import annotations

import pytest
import torch

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.rfdn_arch import RFDN, RFDN_OFFICIAL_CHECKPOINTS
from mtkd.metrics.evaluation import evaluate_on_benchmark, mean_score
from mtkd.weights.loading import WeightLoadError, load_weights
from conftest import dataset_dir, official_weight

# Exact parameter counts (433K for RFDN with 50 channels, 705K for the 64-channel DTKD/MTKDSR students).
EXPECTED_PARAMS = {'RFDN_AIM.pth': 433_448, 'DTKD-RFDN.pth': 704_560, 'DTKD-RFDN-perceptual.pth': 704_560,
                   'MTKDSR_RFDN_x4.pth': 704_560}

# Set5 x4 mean Y-PSNR / SSIM measured with the original implementations on this data (/work/shared/README.md).
SET5_REFERENCE = {
    'RFDN_AIM.pth': (32.159, 0.8946),
    'DTKD-RFDN.pth': (31.342, 0.8773),
    'DTKD-RFDN-perceptual.pth': (31.337, 0.8766),
}
PSNR_TOLERANCE = 0.01
SSIM_TOLERANCE = 0.0005


def _official_rfdn(file_name: str, **overrides) -> RFDN:
    network = RFDN(**{**RFDN_OFFICIAL_CHECKPOINTS[file_name]['kwargs'], **overrides})
    load_weights(network, official_weight(file_name))
    return network.eval()


def _set5_score(network: RFDN):
    return mean_score(evaluate_on_benchmark(network, dataset_dir('Set5'), 4))


def test_registered_in_basicsr():
    assert ARCH_REGISTRY.get('RFDN') is RFDN


def test_documented_ranges_of_the_released_files():
    assert RFDN_OFFICIAL_CHECKPOINTS['RFDN_AIM.pth']['kwargs']['img_range'] == 255.
    assert all(RFDN_OFFICIAL_CHECKPOINTS[name]['kwargs']['img_range'] == 1.
               for name in ('DTKD-RFDN.pth', 'DTKD-RFDN-perceptual.pth', 'MTKDSR_RFDN_x4.pth'))
    # No magic default: a plain RFDN works on [0, 1].
    assert RFDN(num_feat=50).img_range == 1.


@pytest.mark.parametrize('file_name', sorted(EXPECTED_PARAMS))
def test_checkpoint_loads_strictly_with_exact_parameter_count(file_name):
    network = _official_rfdn(file_name)
    assert sum(p.numel() for p in network.parameters()) == EXPECTED_PARAMS[file_name]
    assert RFDN_OFFICIAL_CHECKPOINTS[file_name]['num_params'] == EXPECTED_PARAMS[file_name]
    file_keys = set(torch.load(official_weight(file_name), map_location='cpu', weights_only=True))
    assert file_keys == set(network.state_dict())


def test_checkpoint_with_other_width_is_refused():
    with pytest.raises(WeightLoadError, match='shape mismatches'):
        load_weights(RFDN(num_feat=64), official_weight('RFDN_AIM.pth'))


@pytest.mark.parametrize('file_name', sorted(SET5_REFERENCE))
def test_set5_x4_matches_original_implementation(file_name):
    score = _set5_score(_official_rfdn(file_name))
    psnr, ssim = SET5_REFERENCE[file_name]
    assert score.psnr == pytest.approx(psnr, abs=PSNR_TOLERANCE)
    assert score.ssim == pytest.approx(ssim, abs=SSIM_TOLERANCE)


def test_img_range_matters_for_rfdn_aim():
    # RFDN_AIM was trained on [0, 255]: run on [0, 1] it falls below bicubic (28.43 dB); measured 26.02 dB.
    assert _set5_score(_official_rfdn('RFDN_AIM.pth', img_range=1.)).psnr < 27.


def test_img_range_scales_input_and_output_exactly():
    torch.manual_seed(0)
    in_range = RFDN(num_feat=16, num_block=2, upscale=2, img_range=255.).eval()
    plain = RFDN(num_feat=16, num_block=2, upscale=2, img_range=1.).eval()
    plain.load_state_dict(in_range.state_dict())
    image = torch.rand(1, 3, 15, 17)
    with torch.no_grad():
        output = in_range(image)
        assert output.shape == (1, 3, 30, 34)
        assert torch.equal(output, plain(image * 255.) / 255.)


def test_input_too_small_for_the_attention_is_refused():
    with pytest.raises(ValueError, match='at least 15 pixels'):
        RFDN(num_feat=16, num_block=1)(torch.rand(1, 3, 14, 32))


@pytest.mark.parametrize('argument, value', [('upscale', 0), ('num_block', 4.0), ('num_feat', 2),
                                              ('img_range', -1.), ('num_out_ch', None)])
def test_bad_arguments_name_themselves(argument, value):
    with pytest.raises(ValueError, match=argument):
        RFDN(**{argument: value})
