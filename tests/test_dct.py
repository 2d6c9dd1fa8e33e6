"""Orthonormal 2-D DCT: scipy's definition, exact inverse, FFT form equal to the matrix form."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from mtkd.transforms.dct import dct_2d, dct_2d_fft, dct_matrix, idct_2d


@pytest.mark.parametrize('size', [1, 2, 5, 8, 16])
def test_matrix_is_orthonormal_and_equals_scipy(size):
    matrix = dct_matrix(size, dtype=torch.float64)
    assert torch.allclose(matrix @ matrix.T, torch.eye(size, dtype=torch.float64), atol=1e-12)
    expected = scipy.fft.dct(np.eye(size), norm='ortho', axis=0)
    assert np.allclose(matrix.numpy(), expected, atol=1e-12)
    matrix32 = dct_matrix(size)
    assert matrix32.dtype == torch.float32
    assert torch.allclose(matrix32 @ matrix32.T, torch.eye(size), atol=1e-6)


def test_known_values_of_the_8_point_matrix():
    matrix = dct_matrix(8, dtype=torch.float64)
    # DC row is the constant 1/sqrt(8); row 1 starts at sqrt(2/8) cos(pi/16).
    assert torch.allclose(matrix[0], torch.full((8,), 8 ** -0.5, dtype=torch.float64))
    assert matrix[1, 0].item() == pytest.approx(0.5 * np.cos(np.pi / 16), abs=1e-15)
    assert matrix[7, 7].item() == pytest.approx(0.5 * np.cos(np.pi * 15 * 7 / 16), abs=1e-15)


@pytest.mark.parametrize('size', [3, 8])
def test_dct_2d_equals_scipy_dctn(size):
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    expected = scipy.fft.dctn(blocks.numpy(), norm='ortho', axes=(-2, -1))
    assert np.allclose(dct_2d(blocks).numpy(), expected, atol=1e-12)
    blocks32 = blocks.float()
    assert np.allclose(dct_2d(blocks32).numpy(), expected, atol=1e-5)


def test_inverse_reproduces_input_and_energy_is_kept():
    generator = torch.Generator().manual_seed(1)
    blocks = torch.rand(4, 6, 8, 8, generator=generator)
    coefficients = dct_2d(blocks)
    assert torch.allclose(idct_2d(coefficients), blocks, atol=1e-5)
    assert torch.allclose(dct_2d(idct_2d(blocks)), blocks, atol=1e-5)
    # Orthonormal: Parseval holds per block.
    assert torch.allclose(coefficients.square().sum((-2, -1)), blocks.square().sum((-2, -1)), rtol=1e-5)


def test_constant_block_has_only_a_dc_coefficient():
    coefficients = dct_2d(torch.full((8, 8), 0.5, dtype=torch.float64))
    assert coefficients[0, 0].item() == pytest.approx(0.5 * 8, abs=1e-12)
    coefficients[0, 0] = 0
    assert coefficients.abs().max().item() < 1e-12


@pytest.mark.parametrize('size', [1, 4, 7, 8, 32])
def test_fft_form_equals_matrix_form(size):
    generator = torch.Generator().manual_seed(size)
    blocks = torch.randn(3, 2, size, size, generator=generator)
    assert torch.allclose(dct_2d_fft(blocks), dct_2d(blocks), atol=1e-5)
    blocks64 = blocks.double()
    assert torch.allclose(dct_2d_fft(blocks64), dct_2d(blocks64), atol=1e-12)


def test_cached_matrix_is_used_and_checked():
    blocks = torch.randn(2, 8, 8)
    matrix = dct_matrix(8)
    assert torch.equal(dct_2d(blocks, matrix), dct_2d(blocks))
    # An identity "matrix" must change the result: the argument is really used.
    assert torch.equal(dct_2d(blocks, torch.eye(8)), blocks)
    with pytest.raises(ValueError, match='dct_matrix\\(8\\)'):
        dct_2d(blocks, dct_matrix(4))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='n must be a positive integer'):
        dct_matrix(0)
    with pytest.raises(ValueError, match='square'):
        dct_2d(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match='square'):
        dct_2d_fft(torch.zeros(4, 5))
    with pytest.raises(TypeError, match='floating-point'):
        idct_2d(torch.zeros(4, 4, dtype=torch.int64))
