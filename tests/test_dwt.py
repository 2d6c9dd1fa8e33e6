"""2-D DWT in torch: equal to PyWavelets (coefficients, sizes, inverse), exact Haar values, energy, gradients."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pywt
import torch

from mtkd.transforms.dwt import MODES, dwt2, dwt_output_length, idwt2, wavedec2, waverec2

SHAPES = [(2, 3, 16, 12), (1, 2, 13, 11), (2, 1, 7, 9)]


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _pywt_wavedec2(image, wavelet, level, mode):
    with warnings.catch_warnings():
        # PyWavelets warns when a level exceeds dwt_max_level; the coefficients are still defined.
        warnings.simplefilter('ignore', UserWarning)
        return pywt.wavedec2(image, wavelet, mode=mode, level=level, axes=(-2, -1))


def _assert_same_coefficients(ours, reference, tolerance=1e-10):
    assert len(ours) == len(reference)
    assert ours[0].shape == reference[0].shape
    np.testing.assert_allclose(ours[0].numpy(), reference[0], rtol=0, atol=tolerance)
    for our_details, reference_details in zip(ours[1:], reference[1:]):
        assert len(our_details) == 3
        for our_band, reference_band in zip(our_details, reference_details):
            assert our_band.shape == reference_band.shape
            np.testing.assert_allclose(our_band.numpy(), reference_band, rtol=0, atol=tolerance)


@pytest.mark.parametrize('wavelet', ['haar', 'db2'])
@pytest.mark.parametrize('mode', ['symmetric', 'zero', 'periodization'])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('level', [1, 2, 3])
def test_wavedec2_equals_pywt(wavelet, mode, shape, level):
    image = _random(shape, seed=level)
    ours = wavedec2(torch.from_numpy(image), wavelet, level, mode)
    _assert_same_coefficients(ours, _pywt_wavedec2(image, wavelet, level, mode))


@pytest.mark.parametrize('wavelet', ['db3', 'sym4', 'bior2.2', 'coif1'])
@pytest.mark.parametrize('mode', MODES)
def test_other_wavelets_and_modes_equal_pywt(wavelet, mode):
    # 7x9 and three levels reach sizes smaller than the filters: the extension wraps several times.
    image = _random((1, 2, 7, 9), seed=3)
    ours = wavedec2(torch.from_numpy(image), wavelet, 3, mode)
    _assert_same_coefficients(ours, _pywt_wavedec2(image, wavelet, 3, mode))


@pytest.mark.parametrize('mode', MODES)
def test_dwt2_on_a_plain_image_equals_pywt(mode):
    image = _random((11, 6), seed=4)
    approximation, details = dwt2(torch.from_numpy(image), 'db2', mode)
    reference_approximation, reference_details = pywt.dwt2(image, 'db2', mode=mode)
    _assert_same_coefficients([approximation, details], [reference_approximation, reference_details])


def test_haar_known_values_and_pywt_naming():
    block = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    approximation, (horizontal, vertical, diagonal) = dwt2(block)
    # cA = sum / 2; cH = (top - bottom) / 2; cV = (left - right) / 2; cD = (main - anti diagonal) / 2.
    assert approximation.item() == pytest.approx(5.0, abs=1e-15)
    assert horizontal.item() == pytest.approx(-2.0, abs=1e-15)
    assert vertical.item() == pytest.approx(-1.0, abs=1e-15)
    assert diagonal.item() == pytest.approx(0.0, abs=1e-15)
    reference = pywt.dwt2(block.numpy(), 'haar')
    assert [reference[0].item(), *[band.item() for band in reference[1]]] == pytest.approx([5, -2, -1, 0], abs=1e-14)


def test_haar_odd_size_uses_pywt_symmetric_extension():
    # 3x5 -> 2x3 coefficients (floor((N + 1) / 2)); the last ones read a mirrored copy of the last row/column.
    image = torch.arange(15, dtype=torch.float64).reshape(3, 5)
    approximation, (horizontal, vertical, diagonal) = dwt2(image, 'haar', 'symmetric')
    assert approximation.shape == (2, 3)
    assert approximation[1, 2].item() == pytest.approx(2 * image[2, 4].item(), abs=1e-13)
    assert horizontal[1, 2].item() == pytest.approx(0.0, abs=1e-13)
    assert vertical[1, 2].item() == pytest.approx(0.0, abs=1e-13)
    # Zero extension instead: the corner coefficient sees one sample and three zeros.
    approximation_zero, _ = dwt2(image, 'haar', 'zero')
    assert approximation_zero[1, 2].item() == pytest.approx(image[2, 4].item() / 2, abs=1e-13)


def test_haar_fast_path_equals_the_convolution_path():
    # bior1.1 has Haar's filters but goes through the general strided convolution.
    assert pywt.Wavelet('bior1.1').dec_lo == pywt.Wavelet('haar').dec_lo
    assert pywt.Wavelet('bior1.1').dec_hi == pywt.Wavelet('haar').dec_hi
    image = torch.from_numpy(_random((2, 3, 13, 10), seed=5))
    for mode in ('symmetric', 'zero'):
        fast = wavedec2(image, 'haar', 3, mode)
        general = wavedec2(image, 'bior1.1', 3, mode)
        _assert_same_coefficients(fast, [general[0].numpy()] + [[b.numpy() for b in d] for d in general[1:]],
                                  tolerance=1e-13)


@pytest.mark.parametrize('length', [1, 2, 7, 8, 13])
@pytest.mark.parametrize('wavelet', ['haar', 'db2', 'sym4'])
@pytest.mark.parametrize('mode', ['symmetric', 'periodization'])
def test_output_length_equals_pywt(length, wavelet, mode):
    expected = pywt.dwt_coeff_len(length, pywt.Wavelet(wavelet).dec_len, mode)
    assert dwt_output_length(length, wavelet, mode) == expected


def test_haar_inverse_reconstructs_exactly():
    image = torch.from_numpy(_random((2, 3, 16, 24), seed=6))
    assert torch.allclose(idwt2(dwt2(image)), image, rtol=0, atol=1e-12)
    for level in (1, 2, 3):
        assert torch.allclose(waverec2(wavedec2(image, 'haar', level)), image, rtol=0, atol=1e-12)
    # Odd sizes come back one row/column longer (as in PyWavelets); the image is the top-left part.
    odd = torch.from_numpy(_random((1, 2, 13, 11), seed=7))
    reconstructed = waverec2(wavedec2(odd, 'haar', 2))
    assert reconstructed.shape == (1, 2, 14, 12)
    assert torch.allclose(reconstructed[..., :13, :11], odd, rtol=0, atol=1e-12)


@pytest.mark.parametrize('wavelet', ['haar', 'db2', 'bior2.2'])
@pytest.mark.parametrize('mode', ['symmetric', 'zero', 'periodization'])
def test_inverse_equals_pywt_and_reconstructs(wavelet, mode):
    image = _random((2, 2, 13, 10), seed=8)
    coefficients = _pywt_wavedec2(image, wavelet, 2, mode)
    ours = waverec2([torch.from_numpy(coefficients[0])]
                    + [tuple(torch.from_numpy(band) for band in details) for details in coefficients[1:]],
                    wavelet, mode)
    reference = pywt.waverec2(coefficients, wavelet, mode=mode, axes=(-2, -1))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.numpy()[..., :13, :10], image, rtol=0, atol=1e-10)


@pytest.mark.parametrize('wavelet, mode', [('haar', 'symmetric'), ('haar', 'zero'), ('db2', 'periodization'),
                                           ('sym4', 'periodization')])
def test_orthogonal_wavelets_keep_the_energy(wavelet, mode):
    # Parseval: an orthogonal transform without boundary redundancy keeps the sum of squares.
    image = torch.from_numpy(_random((2, 3, 32, 16), seed=9))
    coefficients = wavedec2(image, wavelet, 3, mode)
    energy = coefficients[0].square().sum() + sum(band.square().sum() for d in coefficients[1:] for band in d)
    # 1e-10, not 1e-15: PyWavelets' tabulated sym4 taps are orthonormal only to about 1e-12.
    assert energy.item() == pytest.approx(image.square().sum().item(), rel=1e-10)


def test_boundary_redundancy_breaks_energy_for_long_filters():
    # With symmetric extension db2 produces extra coefficients: the energy is not kept (why the test above
    # uses periodization for db2).
    image = torch.from_numpy(_random((1, 1, 16, 16), seed=10))
    coefficients = wavedec2(image, 'db2', 1, 'symmetric')
    energy = coefficients[0].square().sum() + sum(band.square().sum() for band in coefficients[1])
    assert abs(energy.item() - image.square().sum().item()) > 1e-3


@pytest.mark.parametrize('wavelet, mode', [('haar', 'symmetric'), ('db2', 'symmetric'), ('db2', 'zero'),
                                           ('db2', 'periodization')])
def test_gradients_equal_finite_differences(wavelet, mode):
    image = torch.from_numpy(_random((1, 2, 7, 6), seed=11)).requires_grad_(True)

    def flattened(x):
        coefficients = wavedec2(x, wavelet, 2, mode)
        return torch.cat([coefficients[0].flatten()] + [b.flatten() for d in coefficients[1:] for b in d])

    assert torch.autograd.gradcheck(flattened, (image,), eps=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x: idwt2(dwt2(x, wavelet, mode), wavelet, mode), (image,),
                                    eps=1e-6, atol=1e-9)


def test_float32_agrees_with_float64():
    image = torch.from_numpy(_random((2, 3, 17, 16), seed=12))
    single = wavedec2(image.float(), 'db2', 2)
    double = wavedec2(image, 'db2', 2)
    assert single[0].dtype == torch.float32
    assert torch.allclose(single[0].double(), double[0], atol=1e-5)
    assert math.isclose(single[1][2].double().sum().item(), double[1][2].sum().item(), abs_tol=1e-4)


def test_bad_arguments_raise_with_the_argument_name():
    image = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match='mode'):
        dwt2(image, 'haar', 'smooth')
    with pytest.raises(ValueError, match='wavelet'):
        dwt2(image, 'db99')
    with pytest.raises(ValueError, match='wavelet'):
        dwt2(image, 'morl')  # a continuous wavelet
    with pytest.raises(ValueError, match='level'):
        wavedec2(image, 'haar', 0)
    with pytest.raises(TypeError, match='floating-point'):
        dwt2(torch.ones(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match='reflect'):
        wavedec2(torch.rand(1, 1, 2, 2), 'haar', 2, 'reflect')  # PyWavelets refuses reflect on 1 sample too
    with pytest.raises(ValueError, match='one shape'):
        idwt2((torch.rand(1, 1, 4, 4), (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 3), torch.rand(1, 1, 4, 4))))
