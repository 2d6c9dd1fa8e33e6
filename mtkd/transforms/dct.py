"""Orthonormal 2-D DCT-II of square blocks, as matrix products (exact, invertible) and through the FFT.

The type-II DCT with orthonormal scaling (JPEG's transform; Ahmed, Natarajan and Rao, IEEE Trans. Computers,
1974) of a length-``n`` signal ``x`` is ``X[k] = c_k sqrt(2 / n) sum_i x[i] cos(pi (2 i + 1) k / (2 n))`` with
``c_0 = 1 / sqrt(2)`` and ``c_k = 1`` otherwise. As a matrix ``D`` (rows = frequencies ``k``, columns = positions
``i``) it is orthogonal, so the inverse is ``D.T``, and the 2-D transform of a block ``X`` is ``D @ X @ D.T``.
This is what MTKD's DCTSwin layer applies to every window and channel (Jiang, Feng, Zhang and Bull, "MTKD:
Multi-Teacher Knowledge Distillation for Image Super-Resolution", ECCV 2024).

For the small blocks of window attention (8x8) two matrix products are exact to float rounding and faster on a
GPU than any FFT; :func:`dct_2d_fft` (Makhoul, IEEE Trans. ASSP, 1980) is kept for speed comparisons on large
blocks. Pure torch: this module imports nothing else of mtkd.
"""
from __future__ import annotations

import math

import torch

__all__ = ['dct_matrix', 'dct_2d', 'idct_2d', 'dct_2d_fft']


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` of size ``(n, n)``: rows are frequencies, columns are positions.

    ``D @ x`` is the DCT of a column ``x``; ``D`` equals ``scipy.fft.dct(numpy.eye(n), norm='ortho', axis=0)``
    and ``D @ D.T`` is the identity. Built in float64 and then cast, so every dtype gets the correctly rounded
    matrix.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'dct_matrix: n must be a positive integer (the block size), got {n!r}.')
    frequency = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    position = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    matrix = torch.cos(math.pi * (2 * position + 1) * frequency / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype=dtype, device=device)


def _square_block_size(blocks: torch.Tensor, name: str) -> int:
    if blocks.dim() < 2 or blocks.shape[-1] != blocks.shape[-2]:
        raise ValueError(f'{name}: expected blocks of shape (..., n, n) (square in the last two dims), '
                         f'got {tuple(blocks.shape)}.')
    if not blocks.is_floating_point():
        raise TypeError(f'{name}: expected a floating-point tensor, got {blocks.dtype}; convert with .float().')
    return blocks.shape[-1]


def _matrix_for(blocks: torch.Tensor, matrix: torch.Tensor | None, name: str) -> torch.Tensor:
    size = _square_block_size(blocks, name)
    if matrix is None:
        return dct_matrix(size, dtype=blocks.dtype, device=blocks.device)
    if matrix.shape != (size, size):
        raise ValueError(f'{name}: matrix must be dct_matrix({size}) for blocks of size {size}, '
                         f'got shape {tuple(matrix.shape)}.')
    return matrix


def dct_2d(blocks: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims of ``(..., n, n)``: ``D @ X @ D.T``.

    Equals ``scipy.fft.dctn(X, norm='ortho', axes=(-2, -1))``. ``matrix`` may pass a cached ``dct_matrix(n)``
    of the right dtype and device; otherwise it is built. Output ``(..., n, n)``, index ``[..., u, v]`` =
    vertical frequency ``u``, horizontal frequency ``v``.
    """
    matrix = _matrix_for(blocks, matrix, 'dct_2d')
    return matrix @ blocks @ matrix.transpose(0, 1)


def idct_2d(blocks: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`dct_2d` (orthonormal DCT-III): ``D.T @ X @ D`` over the last two dims of ``(..., n, n)``."""
    matrix = _matrix_for(blocks, matrix, 'idct_2d')
    return matrix.transpose(0, 1) @ blocks @ matrix


def _dct_last_dim_fft(signal: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dim with one complex FFT of the same length (Makhoul 1980)."""
    length = signal.shape[-1]
    # Even samples in order, then odd samples reversed: the FFT of this permutation, rotated by
    # exp(-i pi k / 2n), has the DCT-II as its real part.
    reordered = torch.cat([signal[..., 0::2], signal[..., 1::2].flip(-1)], dim=-1)
    spectrum = torch.fft.fft(reordered, dim=-1)
    angle = -math.pi * torch.arange(length, dtype=signal.dtype, device=signal.device) / (2 * length)
    twiddle = torch.polar(torch.ones_like(angle), angle)
    coefficients = (spectrum * twiddle).real * math.sqrt(2.0 / length)
    coefficients[..., 0] /= math.sqrt(2.0)
    return coefficients


def dct_2d_fft(blocks: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of ``(..., n, n)`` through the FFT; agrees with :func:`dct_2d` to float rounding.

    ``O(n^2 log n)`` per block instead of ``O(n^3)``: only worth it for large blocks; DCTSwin uses the matrix form.
    """
    _square_block_size(blocks, 'dct_2d_fft')
    rows_done = _dct_last_dim_fft(blocks)
    return _dct_last_dim_fft(rows_done.transpose(-1, -2)).transpose(-1, -2)
