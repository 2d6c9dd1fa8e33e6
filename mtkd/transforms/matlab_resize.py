"""MATLAB-exact bicubic resizing (``imresize(img, scale, 'bicubic')``) and mod-cropping.

The low-resolution images of every single-image super-resolution benchmark (Set5, Set14, BSD100, Urban100,
DIV2K's ``LR_bicubic``) were made with MATLAB's ``imresize(HR, 1/s, 'bicubic')``; this module reproduces it bit for
bit on uint8 images, so that LR images made here equal the published ones.

What MATLAB does, and what this module does the same way (MATLAB's ``imresize.m`` and its helpers
``contributions``, ``cubic``, ``dimensionOrder``, ``resizeAlongDim``/``imresizemex``):

* Kernel: Keys' cubic convolution with ``a = -0.5`` (Keys, IEEE TASSP 1981), support ``[-2, 2]``.
* Antialiasing when shrinking (scale ``< 1``): the kernel is stretched by ``1 / scale`` and scaled by ``scale``,
  i.e. ``h(x) = scale * cubic(scale * x)``, with support ``4 / scale``.
* Coordinates: output pixel ``x`` (1-based) maps to input ``u = x / scale + 0.5 * (1 - 1 / scale)``, the
  half-pixel-centre convention. The taps are ``floor(u - width / 2) + [0, ceil(width) + 2)``, the weights are
  normalised to sum to 1 per output pixel, and taps outside the image are mirrored (symmetric padding, the edge
  pixel repeated: ``aux = [1..n, n..1]``). Tap columns that are zero for every output pixel are dropped (this
  changes nothing numerically but keeps the summation order of MATLAB's mex).
* Output size from a scale: ``ceil(scale * input_size)``; the scale given is used as is for the kernel (not
  recomputed from the rounded size). From an output size: ``scale = output_size / input_size`` per dimension.
* Separable, one dimension at a time: MATLAB resizes first along the dimension with the SMALLEST scale factor
  (``[~, order] = sort(scale)``); its ``sort`` is stable, so with equal factors rows (height, dimension 1) go first.
  The published Set5/Set14 LR images confirm height first (``tests/test_matlab_resize.py``).
* Arithmetic: each output value is a sum over the taps, in tap order, of ``weight * pixel`` in float64 (as
  ``imresizemex`` does). The result of each pass is converted back to the input's class: for integer images
  (uint8, uint16, ...) that means ROUNDING HALF AWAY FROM ZERO and saturating to the type's range AFTER EACH
  PASS. This intermediate rounding is the detail that BasicSR's ``basicsr.utils.matlab_functions.imresize``
  (float throughout, rounded once at the end) misses, which makes its x2/x3/x4 LR images differ from the
  published ones by one grey level on some pixels.
* Float images are not rounded; after each pass they are cast back to their own float type (a no-op for
  float64, a float32 rounding for float32, as MATLAB does for ``single``). No range is assumed.

Why taps rather than a dense ``(out, in)`` weight matrix and one matmul: the taps are few (4 for upscaling,
``4 * s + 2`` for shrinking by ``s``), so gathering ``P`` shifted copies costs ``O(P * out)`` per line instead of
``O(in * out)``, and it keeps MATLAB's summation order, which a BLAS matmul does not (a different order moves a
value sitting next to ``k + 0.5`` across the rounding boundary now and then). Each tap is one vectorised gather and
multiply-add over the whole image.

Layouts: numpy arrays are images ``(H, W)`` or ``(H, W, C)``; torch tensors are ``(H, W)``, ``(C, H, W)`` or
``(B, C, H, W)`` (the last two dimensions are resized). Channel order (RGB/BGR) does not matter: channels are
resized independently. Values keep their range (``[0, 255]`` for uint8, whatever range for floats).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

try:  # torch is optional: only needed to resize tensors
    import torch
except ImportError:  # pragma: no cover - torch is a dependency of the project, but this module does not need it
    torch = None

__all__ = ['imresize', 'modcrop', 'resize_contributions', 'cubic']

ScaleArgument = Union[float, Sequence[float], None]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5``, MATLAB's ``cubic`` (Keys, IEEE TASSP 1981, eq. 15).

    Args:
        x: distances, any shape, float64.

    Returns:
        Kernel values, same shape; zero for ``|x| > 2``.
    """
    absolute = np.abs(x)
    absolute2 = absolute ** 2
    absolute3 = absolute ** 3
    # Same expression and term order as MATLAB so float64 results agree to the last bit.
    return ((1.5 * absolute3 - 2.5 * absolute2 + 1) * (absolute <= 1)
            + (-0.5 * absolute3 + 2.5 * absolute2 - 4 * absolute + 2) * ((1 < absolute) & (absolute <= 2)))


def resize_contributions(in_length: int, out_length: int, scale: float,
                         antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel taps of MATLAB's bicubic resize along one dimension (MATLAB's ``contributions``).

    Args:
        in_length: input length along the dimension.
        out_length: output length.
        scale: output/input factor used for the kernel (``< 1`` shrinks).
        antialiasing: stretch the kernel when shrinking (MATLAB's default for bicubic).

    Returns:
        ``(weights, indices)``, both ``(out_length, P)``: float64 weights summing to 1 per row, and 0-based input
        indices already mirrored into ``[0, in_length)``.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel_width = kernel_width / scale

        def kernel(distance):
            return scale * cubic(scale * distance)
    else:
        kernel = cubic

    output_positions = np.arange(1, out_length + 1, dtype=np.float64)
    input_positions = output_positions / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(input_positions - kernel_width / 2)
    num_taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(num_taps, dtype=np.float64)[None, :]  # 1-based, may fall outside
    weights = kernel(input_positions[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)

    # Mirror out-of-range taps: MATLAB's aux = [1:n, n:-1:1] indexed modulo 2n.
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]

    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _round_half_away_from_zero(values):
    """MATLAB's ``round`` (and its double→integer conversion): ties go away from zero, unlike numpy's."""
    if torch is not None and isinstance(values, torch.Tensor):
        return torch.sign(values) * torch.floor(torch.abs(values) + 0.5)
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _resize_along_axis(image, axis: int, weights: np.ndarray, indices: np.ndarray):
    """One MATLAB pass: float64 weighted sum over taps, in tap order, then back to the input's type.

    ``image`` is a numpy array or a torch tensor of any dtype; the result has the same dtype, the length of
    ``axis`` changed to ``weights.shape[0]``.
    """
    is_tensor = torch is not None and isinstance(image, torch.Tensor)
    broadcast_shape = [1] * image.ndim
    broadcast_shape[axis] = weights.shape[0]

    if is_tensor:
        source = image.to(torch.float64)
        tap_weights = torch.from_numpy(weights).to(source.device)
        tap_indices = torch.from_numpy(indices).to(source.device)
        accumulated = None
        for tap in range(weights.shape[1]):
            term = tap_weights[:, tap].reshape(broadcast_shape) * source.index_select(axis, tap_indices[:, tap])
            accumulated = term if accumulated is None else accumulated + term
    else:
        source = image.astype(np.float64, copy=False)
        accumulated = None
        for tap in range(weights.shape[1]):
            term = weights[:, tap].reshape(broadcast_shape) * np.take(source, indices[:, tap], axis=axis)
            accumulated = term if accumulated is None else accumulated + term

    return _cast_like(accumulated, image)


def _cast_like(values, reference):
    """Convert float64 ``values`` to ``reference``'s dtype as MATLAB converts double to the input's class."""
    if torch is not None and isinstance(reference, torch.Tensor):
        if reference.dtype.is_floating_point:
            return values.to(reference.dtype)
        if reference.dtype == torch.bool:
            raise TypeError('imresize: boolean tensors are not supported; convert the image to uint8 or float first')
        info = torch.iinfo(reference.dtype)
        return _round_half_away_from_zero(values).clamp_(info.min, info.max).to(reference.dtype)
    if np.issubdtype(reference.dtype, np.floating):
        return values.astype(reference.dtype, copy=False)
    if np.issubdtype(reference.dtype, np.integer):
        info = np.iinfo(reference.dtype)
        return np.clip(_round_half_away_from_zero(values), info.min, info.max).astype(reference.dtype)
    raise TypeError(f'imresize: image dtype {reference.dtype} is not supported; use an integer or float image')


def _scale_pair(scale: ScaleArgument) -> tuple[float, float]:
    if np.ndim(scale) == 0:
        pair = (float(scale), float(scale))
    else:
        pair = tuple(float(value) for value in scale)
        if len(pair) != 2:
            raise ValueError(f'imresize: scale must be one number or (height_scale, width_scale), got {scale!r}')
    if not all(math.isfinite(value) and value > 0 for value in pair):
        raise ValueError(f'imresize: scale must be positive and finite (e.g. 1/4 to shrink by 4), got {scale!r}')
    return pair


def imresize(image, scale: ScaleArgument = None, output_shape: Sequence[int] | None = None,
             antialiasing: bool = True):
    """Resize like MATLAB's ``imresize(image, scale, 'bicubic')``, bit-exact on integer images.

    Reproduces the LR images of the SISR benchmarks (Set5, Set14, BSD100, DIV2K ``LR_bicubic``); see the module
    docstring for every convention (kernel, antialiasing, pass order, per-pass rounding).

    Args:
        image: numpy ``(H, W)`` / ``(H, W, C)`` or torch ``(H, W)`` / ``(C, H, W)`` / ``(B, C, H, W)``; uint8
            ``[0, 255]`` (or any integer type) is rounded after each pass as MATLAB does; float images keep their
            range and are not rounded.
        scale: MATLAB's multiplier: ``1 / 4`` shrinks by 4, ``2`` doubles; one number or ``(height, width)``.
        output_shape: ``(out_height, out_width)`` instead of ``scale``; the factors become ``out / in``.
        antialiasing: stretch the kernel when shrinking (MATLAB's default for bicubic: True).

    Returns:
        The resized image, same type, dtype and layout, with the new height and width.
    """
    is_tensor = torch is not None and isinstance(image, torch.Tensor)
    if not is_tensor and not isinstance(image, np.ndarray):
        raise TypeError(f'imresize: image must be a numpy array or a torch tensor, got {type(image).__name__}')
    if is_tensor:
        if image.ndim not in (2, 3, 4):
            raise ValueError(f'imresize: tensor image must be (H, W), (C, H, W) or (B, C, H, W), got shape '
                             f'{tuple(image.shape)}')
        height_axis, width_axis = image.ndim - 2, image.ndim - 1
    else:
        if image.ndim not in (2, 3):
            raise ValueError(f'imresize: numpy image must be (H, W) or (H, W, C), got shape {image.shape}')
        height_axis, width_axis = 0, 1
    in_shape = (int(image.shape[height_axis]), int(image.shape[width_axis]))
    if min(in_shape) < 1:
        raise ValueError(f'imresize: image has an empty spatial dimension, shape {tuple(image.shape)}')

    if (scale is None) == (output_shape is None):
        raise ValueError('imresize: give exactly one of scale (e.g. scale=1/4) or output_shape=(height, width)')
    if scale is not None:
        scales = _scale_pair(scale)
        out_shape = tuple(int(math.ceil(factor * length)) for factor, length in zip(scales, in_shape))
    else:
        if len(output_shape) != 2 or not all(int(length) == length and length >= 1 for length in output_shape):
            raise ValueError(f'imresize: output_shape must be two positive integers (height, width), '
                             f'got {output_shape!r}')
        out_shape = (int(output_shape[0]), int(output_shape[1]))
        scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])

    axes = (height_axis, width_axis)
    # MATLAB: [~, order] = sort(scale), a stable sort, so height first on ties.
    order = sorted(range(2), key=lambda dimension: scales[dimension])
    resized = image
    for dimension in order:
        weights, indices = resize_contributions(in_shape[dimension], out_shape[dimension], scales[dimension],
                                                antialiasing)
        resized = _resize_along_axis(resized, axes[dimension], weights, indices)
    return resized


def modcrop(image, scale: int):
    """Crop the bottom and right edges so height and width are multiples of ``scale`` (``HR[:H//s*s, :W//s*s]``).

    The standard first step before making LR images, so that ``LR * scale`` covers the cropped HR exactly.

    Args:
        image: numpy ``(H, W)`` / ``(H, W, C)`` or torch ``(..., H, W)``.
        scale: positive integer factor.

    Returns:
        A view of ``image`` with height and width rounded down to multiples of ``scale``.
    """
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f'modcrop: scale must be a positive integer, got {scale!r}')
    scale = int(scale)
    is_tensor = torch is not None and isinstance(image, torch.Tensor)
    if is_tensor:
        if image.ndim < 2:
            raise ValueError(f'modcrop: tensor must have at least 2 dimensions (..., H, W), got {tuple(image.shape)}')
        height, width = image.shape[-2:]
        return image[..., :height - height % scale, :width - width % scale]
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError(f'modcrop: image must be a numpy (H, W) or (H, W, C) array or a torch tensor, got '
                         f'{getattr(image, "shape", type(image).__name__)}')
    height, width = image.shape[:2]
    return image[:height - height % scale, :width - width % scale]
