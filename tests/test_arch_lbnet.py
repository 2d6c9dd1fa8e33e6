"""LBNet / LBNet-T (mtkd/archs/lbnet_arch.py) against the official checkpoints and published/measured scores.

LBNet is slow on CPU (its attention is quadratic in 1/16 of the image's pixels): the x2 Set5 test takes
~40-60 s on one free core, most of it on Set5's 256x256 'baby'.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import dataset_dir, official_weight
from mtkd.archs.lbnet_arch import DIV2K_RGB_MEAN, LBNET_OFFICIAL_CHECKPOINTS, EfficientAttention, LBNet
from mtkd.metrics.evaluation import evaluate_on_benchmark, mean_score
from mtkd.weights.loading import WeightLoadError, load_weights


def _official_lbnet(file_name: str) -> LBNet:
    network = LBNet(**LBNET_OFFICIAL_CHECKPOINTS[file_name]['kwargs'])
    load_weights(network, official_weight(file_name))  # strict by default
    return network.eval()


def _set5_score(file_name: str):
    network = _official_lbnet(file_name)
    scale = LBNET_OFFICIAL_CHECKPOINTS[file_name]['kwargs']['upscale']
    return mean_score(evaluate_on_benchmark(network, dataset_dir('Set5'), scale))


@pytest.mark.parametrize('file_name', sorted(LBNET_OFFICIAL_CHECKPOINTS))
def test_official_checkpoint_loads_strictly_with_exact_parameter_count(file_name):
    network = _official_lbnet(file_name)
    assert sum(p.numel() for p in network.parameters()) == LBNET_OFFICIAL_CHECKPOINTS[file_name]['num_params']


def test_lbnet_t_weights_need_the_unreduced_attention():
    # LBNet-T widths with LBNet's halving `reduce` layer (3 heads, as 6 do not divide 162/2): the square
    # LBNet-T `reduce` weights do not fit.
    network = LBNet(num_feat=18, num_heads=3, upscale=4, attention_reduction=2)
    with pytest.raises(WeightLoadError, match='shape mismatches: .*attention.atten.reduce.weight'):
        load_weights(network, official_weight('LBNet-T_X4.pt'))


def test_mean_shift_starts_as_the_edsr_div2k_mean_shift():
    network = LBNet(img_range=255.)
    mean = torch.tensor(DIV2K_RGB_MEAN)
    identity = torch.eye(3).view(3, 3, 1, 1)
    torch.testing.assert_close(network.sub_mean.weight.data, identity)
    torch.testing.assert_close(network.add_mean.weight.data, identity)
    torch.testing.assert_close(network.sub_mean.bias.data, -255. * mean)
    torch.testing.assert_close(network.add_mean.bias.data, 255. * mean)


def _official_chunked_attention(module: EfficientAttention, tokens: torch.Tensor) -> torch.Tensor:
    """The official EffAttention maths written out: explicit softmax in a loop over torch.split chunks."""
    tokens = module.reduce(tokens)
    batch, num_tokens, channels = tokens.shape
    qkv = module.qkv(tokens).reshape(batch, num_tokens, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4)
    chunk = num_tokens // 16
    outputs = []
    for query, key, value in zip(*(torch.split(t, chunk, dim=-2) for t in qkv)):
        weights = (query @ key.transpose(-2, -1) * module.scale).softmax(dim=-1)
        outputs.append((weights @ value).transpose(1, 2))
    return module.proj(torch.cat(outputs, dim=1).reshape(batch, num_tokens, channels))


@pytest.mark.parametrize('dim, num_heads, reduction', [(288, 8, 2), (162, 6, 1)])
@pytest.mark.parametrize('num_tokens', [16, 17, 37, 100, 300])
def test_chunked_attention_matches_the_official_loop(dim, num_heads, reduction, num_tokens):
    torch.manual_seed(num_tokens)
    module = EfficientAttention(dim, num_heads, reduction).eval()
    # The official scale uses the unreduced width: 1/sqrt(288/8) = 1/6 for LBNet, although its heads are 18 wide.
    assert module.scale == pytest.approx(1 / math.sqrt(dim // num_heads))
    tokens = torch.randn(2, num_tokens, dim)
    with torch.no_grad():
        torch.testing.assert_close(module(tokens), _official_chunked_attention(module, tokens),
                                   rtol=1e-5, atol=1e-5)


def test_too_small_input_raises_a_clear_error():
    network = LBNet(upscale=4).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r'3x5 pixels is too small.*at least 16'):
            network(torch.rand(1, 3, 3, 5))
        assert network(torch.rand(1, 3, 4, 4)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize('kwargs, argument', [
    ({'num_feat': 33}, 'num_feat'),
    ({'num_feat': 8}, 'num_feat'),
    ({'num_heads': 7}, 'num_heads'),
    ({'num_in_ch': 1}, 'num_in_ch'),
    ({'upscale': 0}, 'upscale'),
    ({'img_range': -1.}, 'img_range'),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        LBNet(**kwargs)


@pytest.mark.parametrize('file_name, psnr, ssim', [
    # Measured with the DTKD authors' code on this data (/work/shared/README.md).
    ('DTKD-LBNet.pth', 32.096, 0.8919),
    ('DTKD-LBNet-perceptual.pth', 31.707, 0.8856),
])
def test_dtkd_students_set5_x4_match_the_original_code(file_name, psnr, ssim):
    score = _set5_score(file_name)
    assert score.psnr == pytest.approx(psnr, abs=0.01)
    assert score.ssim == pytest.approx(ssim, abs=0.0005)


def test_lbnet_x2_set5_matches_the_paper():
    # LBNet paper Table 2 and the official README: 38.05 / 0.9607 (also measured with the official code here).
    score = _set5_score('LBNet-X2.pt')
    assert score.psnr == pytest.approx(38.05, abs=0.01)
    assert score.ssim == pytest.approx(0.9607, abs=0.0005)
