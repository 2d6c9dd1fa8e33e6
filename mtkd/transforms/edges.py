"""Edge maps of RGB images in torch: Sobel, Laplacian and the fractional-differential operator (DTKD's EdgeSRN).

EdgeSRN (Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation", KBS 2025) is
trained GAN-free with an edge loss between edge maps of its output and of the ground truth. The authors' earlier
code (lizhangray/MTKDSR, ``Utils/edge_detect.py``) computes edges on the BT.601 luma with SciPy convolutions
(Sobel magnitude, a 4-neighbour Laplacian, and a fractional-differential mask of order ``v``), per image on the
CPU. Here the same operators are differentiable convolutions on the training device.

Conventions (choices the papers leave open, documented in docs/dtkd.md):

* Luma: BT.601 on RGB in [0, 1], ``Y = 0.299 R + 0.587 G + 0.114 B`` (the weights sum to 1; the authors'
  ``16 + 65.481 R + ...`` studio-range form differs by an offset, which every operator here removes, and a
  factor 0.859).
* Borders: replicate padding, so a constant image has zero response everywhere (SciPy's ``mode='same'`` pads
  with zeros, which invents an edge at the image border).
* Sobel: ``sqrt(gx² + gy² + eps)`` (``eps`` keeps the gradient finite where both are zero). The authors divide
  by the per-image maximum and zero values under 5/255; that makes the map independent of contrast and is not
  done here.
* Fractional differential of order ``v`` (Pu et al.'s mask as in the authors' code): coefficients
  ``a1 = -v``, ``a2 = (-v)(1 - v)/2``, ``a3 = (-v)(1 - v)(2 - v)/6`` at distance 1, 2, 3 in the 8 directions; 3x3 (``a1``), 5x5 (``a1, a2``) or 7x7
  (``a1, a2, a3``) with centre 8. Its coefficients sum to ``8 - 8v (+ 8 a2 + 8 a3)``: only ``v = 1`` at 3x3 is
  a pure derivative; other orders keep a share of the intensity, as in the authors' operator.

Input ``(B, 3, H, W)`` RGB; output ``(B, 1, H, W)``. Pure torch: imports nothing of mtkd. The luma weights and
kernels are made once per device and dtype (:func:`_constant`), not copied from the host at every call.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

OPERATORS = ('sobel', 'laplacian', 'fractional')
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``(B, 1, H, W)`` of RGB images ``(B, 3, H, W)`` (same range as the input)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'expected RGB images (B, 3, H, W), got {tuple(images.shape)}')
    weights = _constant('luma', images.device, images.dtype)
    return (images * weights).sum(dim=1, keepdim=True)


def _constant(name: str, device: torch.device, dtype: torch.dtype, order: float = 0.0, size: int = 3) -> torch.Tensor:
    """The luma weights ``(1, 3, 1, 1)`` or a ``(1, 1, k, k)`` kernel on ``device``, made once per device and dtype
    (a copy from the host at every call would be a host-to-device transfer per loss evaluation)."""
    if torch.compiler.is_compiling():  # traced: a constant of the graph, never cached
        return _make_constant(name, device, dtype, order, size)
    return _cached_constant(name, device, dtype, order, size)


def _make_constant(name: str, device: torch.device, dtype: torch.dtype, order: float, size: int) -> torch.Tensor:
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        if name == 'luma':
            return torch.tensor(LUMA_WEIGHTS, dtype=dtype).view(1, 3, 1, 1).to(device)
        kernels = {'sobel_x': SOBEL_X, 'sobel_y': SOBEL_X.t(), 'laplacian': LAPLACIAN}
        kernel = kernels[name] if name in kernels else fractional_kernel(order, size)
        return kernel.to(dtype)[None, None].contiguous().to(device)


_cached_constant = functools.lru_cache(maxsize=None)(_make_constant)


def _filter(luma: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    radius = kernel.shape[-1] // 2
    padded = F.pad(luma, (radius, radius, radius, radius), mode='replicate')
    return F.conv2d(padded, kernel)


SOBEL_X = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]])
LAPLACIAN = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]])


def fractional_kernel(order: float, size: int = 3) -> torch.Tensor:
    """The fractional-differential mask of ``order`` (v) and ``size`` 3, 5 or 7 (centre 8, eight directions)."""
    if size not in (3, 5, 7):
        raise ValueError(f'fractional kernel size must be 3, 5 or 7, got {size}')
    coefficients = [-order, -order * (-order + 1) / 2, -order * (-order + 1) * (-order + 2) / 6]
    kernel = torch.zeros(size, size)
    centre = size // 2
    kernel[centre, centre] = 8.0
    for distance in range(1, centre + 1):
        value = coefficients[distance - 1]
        for row_step in (-1, 0, 1):
            for col_step in (-1, 0, 1):
                if row_step or col_step:
                    kernel[centre + row_step * distance, centre + col_step * distance] = value
    return kernel


def edge_map(images: torch.Tensor, operator: str = 'sobel', order: float = 0.5, kernel_size: int = 3,
             eps: float = 1e-6) -> torch.Tensor:
    """Edge map ``(B, 1, H, W)`` of RGB ``images`` by ``operator`` (see the module docstring).

    ``sobel``: gradient magnitude; ``laplacian``: signed 4-neighbour Laplacian; ``fractional``: the signed
    response of :func:`fractional_kernel` (``order``, ``kernel_size``).
    """
    luma = rgb_to_luma(images)
    device, dtype = luma.device, luma.dtype
    if operator == 'sobel':
        horizontal = _filter(luma, _constant('sobel_x', device, dtype))
        vertical = _filter(luma, _constant('sobel_y', device, dtype))
        return torch.sqrt(horizontal.square() + vertical.square() + eps)
    if operator == 'laplacian':
        return _filter(luma, _constant('laplacian', device, dtype))
    if operator == 'fractional':
        return _filter(luma, _constant('fractional', device, dtype, float(order), int(kernel_size)))
    raise ValueError(f"unknown edge operator '{operator}'; choose one of {', '.join(OPERATORS)}")
