"""2-D discrete wavelet transform (single- and multi-level, forward and inverse), equal to PyWavelets, in torch.

MTKD's distillation loss compares wavelet subbands of the student's output and of the aggregated teacher
image (Jiang, Feng, Zhang and Bull, "MTKD: Multi-Teacher Knowledge Distillation for Image Super-Resolution",
ECCV 2024, Eq. 3), so the transform must be differentiable and run on the training device: PyWavelets
(numpy) cannot be used inside the loss, but it is the reference this module reproduces exactly.

Conventions, all PyWavelets' (``pywt.dwt2``, ``pywt.wavedec2``, ``pywt.idwt2``, ``pywt.waverec2`` with
``axes=(-2, -1)``):

* Filters are ``pywt.Wavelet(name).dec_lo / dec_hi / rec_lo / rec_hi``; any discrete wavelet PyWavelets knows
  (``'haar'``, ``'db2'``, ``'sym4'``, ``'bior2.2'``, ...) works. PyWavelets is imported only for non-Haar
  wavelets: Haar is a special case computed from 2x2 sums and differences, with no convolution.
* One level along one axis of length ``N`` with a filter of length ``F``:
  ``approximation[o] = sum_j dec_lo[j] * x_ext[2 o + 1 - j]`` (and ``dec_hi`` for the detail), where ``x_ext``
  is ``x`` extended beyond its ends by ``mode``. The output has ``floor((N + F - 1) / 2)`` samples, so odd
  sizes and filters longer than 2 use the extension; for Haar (``F = 2``) an even ``N`` needs none, and an
  odd ``N`` gives ``(N + 1) / 2`` samples, the last one reading one extended sample past the end (for the
  default ``'symmetric'`` mode, a copy of the last row or column).
* ``mode`` (PyWavelets' signal-extension modes): ``'symmetric'`` (default; half-sample mirror
  ``x1 x0 | x0 x1``), ``'reflect'`` (whole-sample mirror ``x2 x1 | x0 x1``), ``'zero'``, ``'constant'``
  (edge value), ``'periodic'``, and ``'periodization'`` (circular, ``ceil(N / 2)`` samples, an odd ``N`` first
  extended by repeating its last sample; the only mode in which an orthogonal wavelet keeps the energy
  exactly for every filter length). ``'smooth'``, ``'antisymmetric'`` and ``'antireflect'`` are not provided.
* 2-D: the 1-D transform along rows (axis -2), then columns (axis -1). Subbands are named as PyWavelets names
  them: approximation ``cA`` and details ``(cH, cV, cD)`` = horizontal (high-pass along axis -2), vertical
  (high-pass along axis -1) and diagonal. Papers call them LL and ``(LH, HL, HH)``; which of LH/HL is which
  varies between papers, the order here is PyWavelets'.
* Multi-level lists: ``[cA_K, (cH_K, cV_K, cD_K), ..., (cH_1, cV_1, cD_1)]``, coarsest first.
* Inverse: the full up-sampling convolution with ``rec_lo / rec_hi``, keeping ``2 n - F + 2`` samples (for all
  modes but periodization, where the result wraps around). As in PyWavelets, the inverse of an odd-sized
  transform is one sample longer than the original; :func:`waverec2` drops the extra last row/column of an
  intermediate approximation that is one longer than the next level's details, as ``pywt.waverec2`` does.

Tensors are ``(..., H, W)``, typically ``(B, C, H, W)`` images in ``[0, 1]``; every leading dimension is kept
and transformed independently. Any floating dtype; float64 agrees with PyWavelets to rounding (about 1e-15).
Gradients flow through everything (indexing, convolution). Pure torch: this module imports nothing of mtkd.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ['MODES', 'dwt2', 'idwt2', 'wavedec2', 'waverec2', 'dwt_output_length', 'wavelet_filters']

MODES = ('symmetric', 'reflect', 'zero', 'constant', 'periodic', 'periodization')
_HAAR_NAMES = ('haar', 'db1')

Details = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _check_mode(mode: str, function: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{function}: mode must be one of {', '.join(MODES)} (PyWavelets' extension modes), "
                         f'got {mode!r}.')


@functools.lru_cache(maxsize=None)
def wavelet_filters(wavelet: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(dec_lo, dec_hi, rec_lo, rec_hi)`` of a PyWavelets discrete wavelet, as tuples of floats.

    Raises ``ValueError`` naming the argument for an unknown or continuous wavelet.
    """
    if not isinstance(wavelet, str):
        raise TypeError(f'wavelet must be a PyWavelets wavelet name such as "haar" or "db2", got {wavelet!r}.')
    if wavelet in _HAAR_NAMES:
        tap = 1.0 / math.sqrt(2.0)
        return (tap, tap), (-tap, tap), (tap, tap), (tap, -tap)
    try:
        import pywt
    except ImportError as error:  # pragma: no cover - pywavelets is a dependency of mtkd
        raise ImportError(f'wavelet {wavelet!r} needs PyWavelets for its filter taps: pip install pywavelets '
                          f"(Haar needs nothing: wavelet='haar').") from error
    try:
        bank = pywt.Wavelet(wavelet)
    except ValueError as error:
        raise ValueError(f'wavelet {wavelet!r} is not a discrete wavelet PyWavelets knows; choose one of '
                         f'pywt.wavelist(kind="discrete"), e.g. "haar", "db2", "sym4", "bior2.2".') from error
    return tuple(bank.dec_lo), tuple(bank.dec_hi), tuple(bank.rec_lo), tuple(bank.rec_hi)


def dwt_output_length(length: int, wavelet: str = 'haar', mode: str = 'symmetric') -> int:
    """Samples per axis after one level: ``floor((N + F - 1) / 2)``, or ``ceil(N / 2)`` for periodization.

    Equals ``pywt.dwt_coeff_len(N, F, mode)``.
    """
    _check_mode(mode, 'dwt_output_length')
    if mode == 'periodization':
        return (length + 1) // 2
    filter_length = len(wavelet_filters(wavelet)[0])
    return (length + filter_length - 1) // 2


def _extension_index(length: int, positions: torch.Tensor, mode: str) -> torch.Tensor:
    """Source index of each (possibly out-of-range) position; ``length`` stands for a zero sample."""
    if mode == 'symmetric':
        folded = positions.remainder(2 * length)
        return torch.where(folded < length, folded, 2 * length - 1 - folded)
    if mode == 'reflect':
        if length == 1:
            raise ValueError("mode 'reflect' needs at least 2 samples along each transformed axis (as in "
                             "PyWavelets); a level reached size 1: use fewer levels or mode 'symmetric'.")
        folded = positions.remainder(2 * length - 2)
        return torch.where(folded < length, folded, 2 * length - 2 - folded)
    if mode == 'periodic':
        return positions.remainder(length)
    if mode == 'periodization':
        # An odd signal is first made even by repeating its last sample, then wrapped.
        period = length + length % 2
        return positions.remainder(period).clamp(max=length - 1)
    if mode == 'constant':
        return positions.clamp(0, length - 1)
    inside = (positions >= 0) & (positions < length)  # zero
    return torch.where(inside, positions, torch.full_like(positions, length))


def _extend(signal: torch.Tensor, dim: int, start: int, count: int, mode: str) -> torch.Tensor:
    """Samples ``start .. start + count - 1`` of ``signal`` extended along ``dim`` by ``mode``."""
    length = signal.shape[dim]
    if start == 0 and count == length:
        return signal
    positions = torch.arange(start, start + count, device=signal.device)
    index = _extension_index(length, positions, mode)
    if mode == 'zero':
        # One appended zero sample is what every out-of-range position reads.
        padding = [0, 0] * (signal.dim() - 1 - (dim % signal.dim())) + [0, 1]
        signal = F.pad(signal, padding)
    return signal.index_select(dim, index)


def _window(length: int, filter_length: int, mode: str) -> tuple[int, int, int]:
    """``(first extended position, number of positions, output length)`` for one axis of one level."""
    if mode == 'periodization':
        output = (length + 1) // 2
        # PyWavelets centres the periodized filter: its outputs read x[2 o + F / 2 - j] (circularly).
        start = 2 - filter_length + (filter_length // 2 - 1)
    else:
        output = (length + filter_length - 1) // 2
        start = 2 - filter_length
    return start, 2 * output + filter_length - 2, output


def _as_batch_of_planes(tensor: torch.Tensor, function: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2:
        raise ValueError(f'{function}: expected a tensor of shape (..., H, W), typically (B, C, H, W), got '
                         f'{type(tensor).__name__} {tuple(getattr(tensor, "shape", ()))}.')
    if not tensor.is_floating_point():
        raise TypeError(f'{function}: expected a floating-point tensor, got {tensor.dtype}; convert with .float().')
    leading = tuple(tensor.shape[:-2])
    return tensor.reshape(-1, 1, tensor.shape[-2], tensor.shape[-1]), leading


def _haar_analysis(planes: torch.Tensor) -> torch.Tensor:
    """One Haar level of even-sized ``(M, 1, H, W)`` planes → ``(M, 4, H/2, W/2)`` [cA, cH, cV, cD]."""
    top_left = planes[..., 0::2, 0::2]
    top_right = planes[..., 0::2, 1::2]
    bottom_left = planes[..., 1::2, 0::2]
    bottom_right = planes[..., 1::2, 1::2]
    # Both 1-D Haar filters carry 1/sqrt(2): the 2-D products carry 1/2.
    top, bottom = top_left + top_right, bottom_left + bottom_right
    left_minus_right = (top_left - top_right) + (bottom_left - bottom_right)
    diagonal = (top_left - top_right) - (bottom_left - bottom_right)
    return torch.cat([top + bottom, top - bottom, left_minus_right, diagonal], dim=1) * 0.5


def _outer_kernels(first: tuple[float, ...], second: tuple[float, ...], like: torch.Tensor,
                   reverse: bool) -> torch.Tensor:
    """``(4, 1, F, F)`` separable kernels [lo⊗lo, hi⊗lo, lo⊗hi, hi⊗hi] (rows ⊗ columns) = [cA, cH, cV, cD], on
    ``like``'s device and dtype, made once per filter pair, device and dtype."""
    if torch.compiler.is_compiling():
        return _make_outer_kernels(first, second, like.device, like.dtype, reverse)
    return _cached_outer_kernels(first, second, like.device, like.dtype, reverse)


def _make_outer_kernels(first: tuple[float, ...], second: tuple[float, ...], device: torch.device,
                        dtype: torch.dtype, reverse: bool) -> torch.Tensor:
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        low = torch.tensor(first, dtype=torch.float64)
        high = torch.tensor(second, dtype=torch.float64)
        if reverse:
            # conv2d correlates; the transform convolves.
            low, high = low.flip(0), high.flip(0)
        kernels = torch.stack([torch.outer(low, low), torch.outer(high, low), torch.outer(low, high),
                               torch.outer(high, high)])
        return kernels.unsqueeze(1).to(dtype=dtype, device=device)


_cached_outer_kernels = functools.lru_cache(maxsize=None)(_make_outer_kernels)


def _analysis(planes: torch.Tensor, wavelet: str, mode: str) -> torch.Tensor:
    """One level of ``(M, 1, H, W)`` → ``(M, 4, h, w)`` stacked [cA, cH, cV, cD]."""
    dec_lo, dec_hi, _, _ = wavelet_filters(wavelet)
    filter_length = len(dec_lo)
    row_start, row_count, _ = _window(planes.shape[-2], filter_length, mode)
    column_start, column_count, _ = _window(planes.shape[-1], filter_length, mode)
    extended = _extend(planes, -2, row_start, row_count, mode)
    extended = _extend(extended, -1, column_start, column_count, mode)
    if wavelet in _HAAR_NAMES:
        return _haar_analysis(extended)
    return F.conv2d(extended, _outer_kernels(dec_lo, dec_hi, planes, reverse=True), stride=2)


def _haar_synthesis(stacked: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_haar_analysis`: ``(M, 4, h, w)`` → ``(M, 1, 2h, 2w)``."""
    approximation, horizontal, vertical, diagonal = stacked.unbind(1)
    top_left = approximation + horizontal + vertical + diagonal
    top_right = approximation + horizontal - vertical - diagonal
    bottom_left = approximation - horizontal + vertical - diagonal
    bottom_right = approximation - horizontal - vertical + diagonal
    top = torch.stack([top_left, top_right], dim=-1).flatten(-2)
    bottom = torch.stack([bottom_left, bottom_right], dim=-1).flatten(-2)
    return (torch.stack([top, bottom], dim=-2).flatten(-3, -2) * 0.5).unsqueeze(1)


def _wrap(signal: torch.Tensor, dim: int, period: int, shift: int) -> torch.Tensor:
    """Sum ``signal`` circularly into ``period`` samples along ``dim``, then roll by ``shift``."""
    dim = dim % signal.dim()
    length = signal.shape[dim]
    folds = -(-length // period)
    padding = [0, 0] * (signal.dim() - 1 - dim) + [0, folds * period - length]
    padded = F.pad(signal, padding)
    shape = list(padded.shape)
    shape[dim:dim + 1] = [folds, period]
    return padded.reshape(shape).sum(dim).roll(shift, dims=dim)


def _synthesis(stacked: torch.Tensor, wavelet: str, mode: str) -> torch.Tensor:
    """``(M, 4, h, w)`` stacked [cA, cH, cV, cD] → ``(M, 1, H, W)``."""
    _, _, rec_lo, rec_hi = wavelet_filters(wavelet)
    filter_length = len(rec_lo)
    if wavelet in _HAAR_NAMES:
        return _haar_synthesis(stacked)
    # Full up-sampling convolution: sample 2 k + t receives c[k] * rec[t].
    full = F.conv_transpose2d(stacked, _outer_kernels(rec_lo, rec_hi, stacked, reverse=False), stride=2)
    if mode == 'periodization':
        shift = -(filter_length // 2 - 1)
        full = _wrap(full, -2, 2 * stacked.shape[-2], shift)
        return _wrap(full, -1, 2 * stacked.shape[-1], shift)
    crop = filter_length - 2
    height = 2 * stacked.shape[-2] - filter_length + 2
    width = 2 * stacked.shape[-1] - filter_length + 2
    if height < 1 or width < 1:
        raise ValueError(f'idwt2: coefficients of size {tuple(stacked.shape[-2:])} are too small for {wavelet!r} '
                         f'(filter length {filter_length}): they cannot come from a dwt2 of any image.')
    return full[..., crop:crop + height, crop:crop + width]


def dwt2(image: torch.Tensor, wavelet: str = 'haar', mode: str = 'symmetric') -> tuple[torch.Tensor, Details]:
    """One level of the 2-D DWT: ``(..., H, W)`` → ``(cA, (cH, cV, cD))``, each ``(..., h, w)``.

    Equals ``pywt.dwt2(image, wavelet, mode, axes=(-2, -1))``: ``h = floor((H + F - 1) / 2)`` (``ceil(H / 2)``
    for periodization); for Haar and even sizes, ``h = H / 2`` and no extension is used.
    """
    _check_mode(mode, 'dwt2')
    planes, leading = _as_batch_of_planes(image, 'dwt2')
    stacked = _analysis(planes, wavelet, mode)
    bands = [band.reshape(*leading, *stacked.shape[-2:]) for band in stacked.unbind(1)]
    return bands[0], (bands[1], bands[2], bands[3])


def idwt2(coefficients: tuple[torch.Tensor, Details], wavelet: str = 'haar',
          mode: str = 'symmetric') -> torch.Tensor:
    """Inverse of :func:`dwt2`: ``(cA, (cH, cV, cD))``, each ``(..., h, w)``, → ``(..., H, W)``.

    Equals ``pywt.idwt2``: ``H = 2 h - F + 2`` (``2 h`` for periodization), so an odd original size comes back
    one sample longer, as in PyWavelets. Perfect reconstruction for orthogonal and biorthogonal wavelets.
    """
    _check_mode(mode, 'idwt2')
    try:
        approximation, (horizontal, vertical, diagonal) = coefficients
    except (TypeError, ValueError) as error:
        raise ValueError('idwt2: coefficients must be (cA, (cH, cV, cD)) as dwt2 returns them.') from error
    bands = [approximation, horizontal, vertical, diagonal]
    if any(band.shape != approximation.shape for band in bands):
        raise ValueError(f'idwt2: the four subbands must have one shape, got {[tuple(b.shape) for b in bands]}.')
    planes, leading = _as_batch_of_planes(approximation, 'idwt2')
    stacked = torch.cat([band.reshape(planes.shape) for band in bands], dim=1)
    image = _synthesis(stacked, wavelet, mode)
    return image.reshape(*leading, *image.shape[-2:])


def wavedec2(image: torch.Tensor, wavelet: str = 'haar', level: int = 1,
             mode: str = 'symmetric') -> list:
    """``level``-level 2-D DWT: ``[cA_K, (cH_K, cV_K, cD_K), ..., (cH_1, cV_1, cD_1)]``, coarsest first.

    Equals ``pywt.wavedec2(image, wavelet, mode, level, axes=(-2, -1))``; each level transforms the previous
    level's approximation. Levels beyond ``pywt.dwt_max_level`` are computed (PyWavelets warns; here the
    boundary extension simply dominates those coarse coefficients).
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f'wavedec2: level must be a positive integer (the number of decomposition levels), '
                         f'got {level!r}.')
    _check_mode(mode, 'wavedec2')
    planes, leading = _as_batch_of_planes(image, 'wavedec2')
    details: list[Details] = []
    approximation = planes
    for _ in range(level):
        stacked = _analysis(approximation, wavelet, mode)
        approximation = stacked[:, :1]
        size = stacked.shape[-2:]
        details.append(tuple(band.reshape(*leading, *size) for band in stacked[:, 1:].unbind(1)))
    return [approximation.reshape(*leading, *approximation.shape[-2:])] + details[::-1]


def waverec2(coefficients: list, wavelet: str = 'haar', mode: str = 'symmetric') -> torch.Tensor:
    """Inverse of :func:`wavedec2` (``pywt.waverec2``): coarsest level first, ``(..., H, W)`` out.

    An intermediate approximation one row/column longer than the next level's details (odd sizes) loses its
    last row/column, as in PyWavelets; the result of an odd-sized image is one sample longer than it.
    """
    if not isinstance(coefficients, (list, tuple)) or len(coefficients) < 2:
        raise ValueError('waverec2: coefficients must be [cA_K, (cH_K, cV_K, cD_K), ..., (cH_1, cV_1, cD_1)] '
                         'as wavedec2 returns them (at least one level).')
    approximation = coefficients[0]
    for details in coefficients[1:]:
        target_height, target_width = details[0].shape[-2:]
        excess_height = approximation.shape[-2] - target_height
        excess_width = approximation.shape[-1] - target_width
        if excess_height not in (0, 1) or excess_width not in (0, 1):
            raise ValueError(f'waverec2: an approximation of size {tuple(approximation.shape[-2:])} does not fit '
                             f'details of size {(target_height, target_width)}: the list is not from wavedec2.')
        approximation = approximation[..., :target_height, :target_width]
        approximation = idwt2((approximation, tuple(details)), wavelet, mode)
    return approximation
