"""Geometric self-ensemble ("x8", the "+" models of SR papers).

Timofte et al., "Seven ways to improve example-based single image super resolution" (CVPR 2016, Sec. 3.1:
rotations and flips at test time) and Lim et al., EDSR (CVPRW 2017, Sec. 4, "geometric self-ensemble",
EDSR+): run the network on the 8 images of the dihedral group D4 (4 rotations by 90 degrees, each with and
without a mirror), undo each transform on its output, and average the 8 outputs with equal weights.

Choices the papers leave open, made here:

- Transform ``k`` (0..7) is ``rot90(flip_w(x) if k >= 4 else x, k % 4)`` on the last two axes; its inverse is
  ``rot90(y, -(k % 4))`` then the same mirror. Which 8 representatives are used does not matter (the group is the
  same), only that each output is mapped back by the exact inverse; :func:`inverse_dihedral` is tested against it.
- The outputs are averaged unclamped in the network's float precision (EDSR's code averages the float outputs too),
  accumulated in float32 when the network runs in half precision.
- The transforms run one after another (peak memory of one forward, not eight); each keeps the batch.
- Odd rotations swap H and W: networks padded to a window multiple pad each transformed image on its own.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

#: Size of the dihedral group D4: 4 rotations, each with and without a mirror.
NUM_TRANSFORMS = 8


def _check_index(index: int) -> None:
    if not isinstance(index, int) or not 0 <= index < NUM_TRANSFORMS:
        raise ValueError(f'dihedral transform index must be an integer in 0..{NUM_TRANSFORMS - 1}, got {index!r}')


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """Transform ``index`` of D4 on the last two axes: mirror left-right when ``index >= 4``, then rotate by
    ``90 * (index % 4)`` degrees counter-clockwise. ``index = 0`` is the identity."""
    _check_index(index)
    if index >= 4:
        images = images.flip(-1)
    return torch.rot90(images, index % 4, dims=(-2, -1))


def inverse_dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``inverse_dihedral(dihedral(x, k), k) == x`` for every ``k``."""
    _check_index(index)
    images = torch.rot90(images, -(index % 4), dims=(-2, -1))
    return images.flip(-1) if index >= 4 else images


def self_ensemble(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The x8 self-ensemble of ``run`` on ``images`` ``(B, C, H, W)``: ``mean_k T_k^-1(run(T_k(images)))``.

    ``run`` maps a batch to a batch with the same leading axes (an SR network: ``(B, 3, sH, sW)``, any scale);
    it must treat H and W alike up to size (it is given both orientations). For a network that commutes with
    rotations and mirrors, the result equals ``run(images)``. Returns the mean in ``images``' float dtype
    (float32 accumulation for half-precision outputs).
    """
    if not torch.is_tensor(images) or images.dim() < 3:
        raise ValueError(f'self_ensemble needs images with at least 3 axes (C, H, W), got '
                         f'{getattr(images, "shape", type(images))}')
    total = None
    for index in range(NUM_TRANSFORMS):
        output = inverse_dihedral(run(dihedral(images, index).contiguous()), index)
        if total is None:
            total = output.float() if output.dtype in (torch.float16, torch.bfloat16) else output.clone()
        else:
            if output.shape != total.shape:
                raise ValueError(f'self_ensemble: transform {index} gave an output of shape {tuple(output.shape)} '
                                 f'after its inverse, transform 0 gave {tuple(total.shape)}; the network must treat '
                                 'height and width alike (pad non-square inputs to a multiple it accepts)')
            total += output
    return (total / NUM_TRANSFORMS).to(images.dtype if images.is_floating_point() else total.dtype)


__all__ = ['NUM_TRANSFORMS', 'dihedral', 'inverse_dihedral', 'self_ensemble']
