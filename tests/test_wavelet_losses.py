"""Frequency-domain distillation losses: MTKD's wavelet loss, its high-band ablation, the DCT loss.

Values are checked against independent numpy computations (PyWavelets, scipy.fft.dctn), semantics with
can-fail constructions (a constant offset lives only in Haar's LL band), gradients by finite differences.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import scipy.fft
import scipy.fftpack
import torch
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY

from mtkd.losses.dct_loss import DCTDistillLoss
from mtkd.losses.wavelet_loss import WaveletDistillLoss


def _random_pair(shape, seed=0):
    generator = np.random.default_rng(seed)
    return generator.random(shape), generator.random(shape)


def _pywt_subband_l1(pred, target, wavelet, levels, mode, high_only, reduce=np.mean):
    """1/(number of subbands) * sum over subbands of reduce(|DWT(pred) - DWT(target)|), each DWT by PyWavelets."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        pred_coefficients = pywt.wavedec2(pred, wavelet, mode=mode, level=levels, axes=(-2, -1))
        target_coefficients = pywt.wavedec2(target, wavelet, mode=mode, level=levels, axes=(-2, -1))
    terms = [] if high_only else [reduce(np.abs(pred_coefficients[0] - target_coefficients[0]))]
    for pred_details, target_details in zip(pred_coefficients[1:], target_coefficients[1:]):
        terms += [reduce(np.abs(p - t)) for p, t in zip(pred_details, target_details)]
    assert len(terms) == (3 * levels if high_only else 3 * levels + 1)
    return sum(terms) / len(terms)


def _scipy_blockwise_dct_l1(pred, target, block, norm='ortho', remainder='replicate'):
    """Mean |DCT(pred block) - DCT(target block)| over every block, one scipy.fft.dctn call per block."""
    height, width = pred.shape[-2:]
    if remainder == 'crop':
        pred = pred[..., :height // block * block, :width // block * block]
        target = target[..., :height // block * block, :width // block * block]
    else:
        padding = [(0, 0)] * (pred.ndim - 2) + [(0, -height % block), (0, -width % block)]
        pred, target = np.pad(pred, padding, mode='edge'), np.pad(target, padding, mode='edge')
    differences = []
    for top in range(0, pred.shape[-2], block):
        for left in range(0, pred.shape[-1], block):
            window = (..., slice(top, top + block), slice(left, left + block))
            differences.append(np.abs(scipy.fft.dctn(pred[window], norm=norm, axes=(-2, -1))
                                      - scipy.fft.dctn(target[window], norm=norm, axes=(-2, -1))))
    return np.mean(np.stack(differences))


# --- MTKD wavelet loss ------------------------------------------------------------------------------------------

def test_hand_computed_haar_values():
    # Haar of [[1, 2], [3, 4]]: cA = 5, cH = -2, cV = -1, cD = 0 (see test_dwt); target zero.
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    assert WaveletDistillLoss()(pred, target).item() == pytest.approx((5 + 2 + 1 + 0) / 4, abs=1e-15)
    assert WaveletDistillLoss(subbands='high')(pred, target).item() == pytest.approx((2 + 1 + 0) / 3, abs=1e-15)
    assert WaveletDistillLoss(loss_weight=0.5)(pred, target).item() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize('levels', [1, 2])
@pytest.mark.parametrize('wavelet', ['haar', 'db2'])
@pytest.mark.parametrize('subbands', ['all', 'high'])
def test_loss_equals_an_independent_pywt_computation(levels, wavelet, subbands):
    pred, target = _random_pair((2, 3, 16, 20), seed=levels)
    loss = WaveletDistillLoss(wavelet=wavelet, levels=levels, subbands=subbands)
    value = loss(torch.from_numpy(pred), torch.from_numpy(target)).item()
    expected = _pywt_subband_l1(pred, target, wavelet, levels, 'symmetric', high_only=subbands == 'high')
    assert value == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize('mode', ['symmetric', 'zero', 'periodization'])
def test_odd_sizes_sum_reduction_and_modes_equal_pywt(mode):
    pred, target = _random_pair((1, 3, 13, 11), seed=5)
    loss = WaveletDistillLoss(levels=2, mode=mode, reduction='sum', loss_weight=2.0)
    value = loss(torch.from_numpy(pred), torch.from_numpy(target)).item()
    expected = 2.0 * _pywt_subband_l1(pred, target, 'haar', 2, mode, high_only=False, reduce=np.sum)
    assert value == pytest.approx(expected, abs=1e-10)


def test_mtkd_normalisation_is_one_over_3k_plus_1():
    # K = 1 vs K = 2 on the same images: terms are counted 4 and 7 times.
    pred, target = _random_pair((1, 1, 8, 8), seed=6)
    pred_tensor, target_tensor = torch.from_numpy(pred), torch.from_numpy(target)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        coefficients = pywt.wavedec2(pred - target, 'haar', level=2)
    level_two_terms = [np.abs(coefficients[0]).mean()] + [np.abs(band).mean() for band in coefficients[1]]
    level_one_terms = [np.abs(band).mean() for band in coefficients[2]]
    expected = (sum(level_two_terms) + sum(level_one_terms)) / 7
    assert WaveletDistillLoss(levels=2)(pred_tensor, target_tensor).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize('levels', [1, 2])
def test_high_band_loss_ignores_a_change_of_the_ll_band_only(levels):
    # Adding a constant to an even-sized image changes only Haar's LL band (at every level).
    pred, target = _random_pair((2, 3, 16, 16), seed=7)
    pred, target = torch.from_numpy(pred), torch.from_numpy(target)
    shifted = pred + 0.25
    high = WaveletDistillLoss(levels=levels, subbands='high')
    everything = WaveletDistillLoss(levels=levels, subbands='all')
    assert high(shifted, target).item() == pytest.approx(high(pred, target).item(), abs=1e-12)
    assert high(target + 0.25, target).item() == pytest.approx(0.0, abs=1e-12)
    assert abs(everything(shifted, target).item() - everything(pred, target).item()) > 1e-3
    # The LL term of a pure offset c over K Haar levels is 2^K c, averaged with 3K zero terms.
    assert everything(target + 0.25, target).item() == pytest.approx(0.25 * 2 ** levels / (3 * levels + 1),
                                                                    abs=1e-12)


def test_gradients_reach_the_prediction_and_never_the_target():
    pred = torch.rand(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    # A target that still carries a graph (as an unfrozen teacher's output would): the loss detaches it.
    target_source = torch.rand(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    target = target_source * 1.0
    for loss in (WaveletDistillLoss(), WaveletDistillLoss(levels=2, subbands='high', wavelet='db2'),
                 DCTDistillLoss(), DCTDistillLoss(block_size=None, norm='backward')):
        pred.grad = None
        loss(pred, target).backward()
        assert pred.grad is not None and pred.grad.abs().sum().item() > 0
        assert target_source.grad is None


@pytest.mark.parametrize('loss', [WaveletDistillLoss(levels=2), WaveletDistillLoss(wavelet='db2', subbands='high'),
                                  DCTDistillLoss(block_size=4), DCTDistillLoss(block_size=None, norm='backward')],
                         ids=['haar-all', 'db2-high', 'dct-block', 'dct-whole'])
def test_gradients_equal_finite_differences(loss):
    pred = torch.rand(1, 2, 8, 6, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 2, 8, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (pred,), eps=1e-7, atol=1e-7)


def test_builds_from_option_file_vocabulary():
    built = LOSS_REGISTRY.get('WaveletDistillLoss')(**{'loss_weight': 1.0, 'levels': 1})
    assert isinstance(built, WaveletDistillLoss) and built.levels == 1 and built.subbands == 'all'
    high = build_loss({'type': 'WaveletDistillLoss', 'loss_weight': 0.5, 'levels': 2, 'subbands': 'high'})
    dct = build_loss({'type': 'DCTDistillLoss', 'loss_weight': 1.0, 'block_size': None, 'norm': 'backward'})
    pred, target = _random_pair((1, 3, 16, 16), seed=8)
    expected = 0.5 * _pywt_subband_l1(pred, target, 'haar', 2, 'symmetric', high_only=True)
    assert high(torch.from_numpy(pred), torch.from_numpy(target)).item() == pytest.approx(expected, abs=1e-10)
    assert isinstance(dct, DCTDistillLoss) and dct.block_size is None


def test_bad_arguments_raise_with_the_argument_name():
    with pytest.raises(ValueError, match='subbands'):
        WaveletDistillLoss(subbands='low')
    with pytest.raises(ValueError, match='levels'):
        WaveletDistillLoss(levels=0)
    with pytest.raises(ValueError, match='reduction'):
        WaveletDistillLoss(reduction='none')
    with pytest.raises(ValueError, match='mode'):
        WaveletDistillLoss(mode='smooth')
    with pytest.raises(ValueError, match='wavelet'):
        WaveletDistillLoss(wavelet='db99')
    with pytest.raises(ValueError, match='same shape'):
        WaveletDistillLoss()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 6))
    with pytest.raises(ValueError, match='block_size'):
        DCTDistillLoss(block_size=0)
    with pytest.raises(ValueError, match='norm'):
        DCTDistillLoss(norm='forward')
    with pytest.raises(ValueError, match='remainder'):
        DCTDistillLoss(remainder='reflect')
    with pytest.raises(ValueError, match='whole'):
        DCTDistillLoss(remainder='crop')(torch.rand(1, 1, 4, 12), torch.rand(1, 1, 4, 12))


# --- DCT loss ---------------------------------------------------------------------------------------------------

def test_dct_loss_is_zero_for_identical_inputs_only():
    image = torch.rand(2, 3, 16, 16)
    assert DCTDistillLoss()(image, image.clone()).item() == 0.0
    assert DCTDistillLoss()(image, image + 1e-3).item() > 0


@pytest.mark.parametrize('norm', ['ortho', 'backward'])
def test_blockwise_dct_loss_equals_scipy_per_block(norm):
    pred, target = _random_pair((2, 3, 16, 24), seed=9)
    value = DCTDistillLoss(norm=norm)(torch.from_numpy(pred), torch.from_numpy(target)).item()
    assert value == pytest.approx(_scipy_blockwise_dct_l1(pred, target, 8, norm), abs=1e-12)


@pytest.mark.parametrize('remainder', ['replicate', 'crop'])
def test_sizes_not_divisible_by_the_block(remainder):
    pred, target = _random_pair((1, 3, 19, 13), seed=10)
    value = DCTDistillLoss(remainder=remainder)(torch.from_numpy(pred), torch.from_numpy(target)).item()
    expected = _scipy_blockwise_dct_l1(pred, target, 8, remainder=remainder)
    assert value == pytest.approx(expected, abs=1e-12)
    other = 'crop' if remainder == 'replicate' else 'replicate'
    assert abs(expected - _scipy_blockwise_dct_l1(pred, target, 8, remainder=other)) > 1e-4  # the choice matters


@pytest.mark.parametrize('norm', ['ortho', 'backward'])
def test_whole_image_dct_loss_equals_scipy(norm):
    pred, target = _random_pair((2, 3, 12, 10), seed=11)
    value = DCTDistillLoss(block_size=None, norm=norm)(torch.from_numpy(pred), torch.from_numpy(target)).item()
    expected = np.abs(scipy.fft.dctn(pred, norm=norm, axes=(-2, -1))
                      - scipy.fft.dctn(target, norm=norm, axes=(-2, -1))).mean()
    assert value == pytest.approx(expected, abs=1e-10)


def test_whole_image_backward_equals_the_official_mtkd_dct_loss():
    # The official MTKD dctLoss: torch_dct.dct_2d (norm=None, the same as scipy.fftpack.dct type II without
    # normalisation along the last dim, then the second-last) and an L1 mean.
    pred, target = _random_pair((1, 3, 8, 12), seed=12)

    def torch_dct_2d(image):
        return scipy.fftpack.dct(scipy.fftpack.dct(image, type=2, axis=-1), type=2, axis=-2)

    expected = np.abs(torch_dct_2d(pred) - torch_dct_2d(target)).mean()
    loss = DCTDistillLoss(block_size=None, norm='backward')
    assert loss(torch.from_numpy(pred), torch.from_numpy(target)).item() == pytest.approx(expected, abs=1e-10)
    # Its scale: DC coefficient of a constant c over H x W is 4 H W c (orthonormal: sqrt(H W) c).
    constant = torch.full((1, 1, 8, 12), 0.5, dtype=torch.float64)
    coefficients = loss.coefficients(constant)
    assert coefficients[0, 0, 0, 0].item() == pytest.approx(4 * 8 * 12 * 0.5, abs=1e-10)
    assert coefficients[0, 0].abs().sum().item() == pytest.approx(4 * 8 * 12 * 0.5, abs=1e-9)
