"""RLFN (mtkd/archs/rlfn_arch.py): the official checkpoints load strictly and reproduce measured numbers."""
from __future__ import annotations

import pytest
import torch

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.rlfn_arch import RLFN, RLFN_OFFICIAL_CHECKPOINTS
from mtkd.metrics.evaluation import evaluate_on_benchmark, mean_score
from mtkd.weights.loading import WeightLoadError, load_weights
from conftest import dataset_dir, official_weight

# Exact parameter counts: RLFN 544K / 527K, RLFN-S 470K / 455K (x4 / x2), NTIRE 2022 model 317K.
EXPECTED_PARAMS = {'rlfn_x4.pth': 543_740, 'rlfn_x2.pth': 526_856, 'rlfn_s_x4.pth': 470_208,
                   'rlfn_s_x2.pth': 454_620, 'rlfn_ntire_x4.pth': 317_218}

# Set5 mean Y-PSNR / SSIM (crop = scale). x4: measured with the original code on this data
# (/work/shared/README.md); x2: the RLFN paper's Table 2 (two/four decimals).
SET5_REFERENCE = {
    'rlfn_x4.pth': (32.238, 0.8953),
    'rlfn_s_x4.pth': (32.239, 0.8954),
    'rlfn_x2.pth': (38.07, 0.9607),
}
PSNR_TOLERANCE = 0.01
SSIM_TOLERANCE = 0.0005


def _official_rlfn(file_name: str, **overrides) -> RLFN:
    network = RLFN(**{**RLFN_OFFICIAL_CHECKPOINTS[file_name]['kwargs'], **overrides})
    load_weights(network, official_weight(file_name))
    return network.eval()


def test_registered_in_basicsr():
    assert ARCH_REGISTRY.get('RLFN') is RLFN


@pytest.mark.parametrize('file_name', sorted(EXPECTED_PARAMS))
def test_official_checkpoint_loads_strictly_with_exact_parameter_count(file_name):
    network = _official_rlfn(file_name)
    assert sum(p.numel() for p in network.parameters()) == EXPECTED_PARAMS[file_name]
    assert RLFN_OFFICIAL_CHECKPOINTS[file_name]['num_params'] == EXPECTED_PARAMS[file_name]
    assert RLFN_OFFICIAL_CHECKPOINTS[file_name]['kwargs']['img_range'] == 255.
    file_keys = set(torch.load(official_weight(file_name), map_location='cpu', weights_only=True))
    assert file_keys == set(network.state_dict())


def test_ntire_model_needs_its_inner_width():
    # RLFN_Prune: 46 channels between blocks but 48 inside; without num_mid_feat the shapes disagree.
    with pytest.raises(WeightLoadError, match='shape mismatches.*block_1.c1_r.weight'):
        load_weights(RLFN(num_feat=46, num_block=4), official_weight('rlfn_ntire_x4.pth'))


@pytest.mark.parametrize('file_name', sorted(SET5_REFERENCE))
def test_set5_matches_reference(file_name):
    network = _official_rlfn(file_name)
    scale = RLFN_OFFICIAL_CHECKPOINTS[file_name]['kwargs']['upscale']
    score = mean_score(evaluate_on_benchmark(network, dataset_dir('Set5'), scale))
    psnr, ssim = SET5_REFERENCE[file_name]
    assert score.psnr == pytest.approx(psnr, abs=PSNR_TOLERANCE)
    assert score.ssim == pytest.approx(ssim, abs=SSIM_TOLERANCE)


def test_img_range_matters():
    # Trained on [0, 255]; on [0, 1] RLFN still gives ~31 dB on baby and head (a silent failure) but
    # 27.67 dB on average, far below its 32.24 dB and below bicubic (28.43 dB).
    scores = evaluate_on_benchmark(_official_rlfn('rlfn_x4.pth', img_range=1.), dataset_dir('Set5'), 4)
    assert mean_score(scores).psnr < 28.5
    assert scores['butterfly'].psnr < 23.


def test_img_range_scales_input_and_output_exactly():
    torch.manual_seed(0)
    in_range = RLFN(num_feat=12, num_block=2, upscale=3, img_range=255., num_mid_feat=8, esa_channels=4).eval()
    plain = RLFN(num_feat=12, num_block=2, upscale=3, img_range=1., num_mid_feat=8, esa_channels=4).eval()
    plain.load_state_dict(in_range.state_dict())
    image = torch.rand(2, 3, 16, 15)
    with torch.no_grad():
        output = in_range(image)
        assert output.shape == (2, 3, 48, 45)
        assert torch.equal(output, plain(image * 255.) / 255.)


def test_input_too_small_for_the_attention_is_refused():
    with pytest.raises(ValueError, match='at least 15 pixels'):
        RLFN(num_feat=8, num_block=1)(torch.rand(1, 3, 20, 12))


@pytest.mark.parametrize('argument, value', [('upscale', -2), ('num_block', 0), ('num_mid_feat', 0),
                                              ('esa_channels', 1.5), ('img_range', 0)])
def test_bad_arguments_name_themselves(argument, value):
    with pytest.raises(ValueError, match=argument):
        RLFN(**{argument: value})
