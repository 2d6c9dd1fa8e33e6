"""DUKD: data-upcycling knowledge distillation terms (zoom-in, zoom-out, label consistency), model-independent.

Zhang et al., "Data Upcycling Knowledge Distillation for Image Super-Resolution", arXiv 2309.14162 (2023; v4 in
ECCV format, 2024): the total loss is ``L = L_rec + λ_kd·L_kd + λ_dukd·L_dukd``. ``L_rec`` and ``L_kd`` are the
ordinary pixel and output-KD losses on the training pair; this module computes the ``L_dukd`` terms on "upcycled"
inputs. Where the paper text is not precise, the behaviour follows the authors' code (github.com/yun224/DUKD,
``models/dukd_model.py`` and ``options/*/dukd_*.yml``); ``docs/dukd.md`` lists every definition, its source and
the choices made here.

* Zoom-in: LR-sized tiles of the HR patch are fed to teacher and student as extra LR inputs; the student learns the
  teacher's output on them (the HR tile is a sharper, in-domain "LR" image).
* Zoom-out: the LR patch downscaled by the scale (MATLAB bicubic) is fed to both; the student learns the teacher's
  output on it and, with the pixel-loss weight, the LR patch itself (its true "HR").
* Label consistency: on the zoom-in inputs, each sample gets random invertible augmentations ``F`` (colour
  inversion, flips, transpose, each with probability ``p``); the student sees ``F(x)`` and its output mapped back,
  ``F⁻¹(S(F(x)))``, is matched to the teacher's output on the clean ``x``.

Tensors are ``(B, C, H, W)`` images in ``[0, img_range]`` (``[0, 1]`` in this project); the student and teacher
map ``(B, C, h, w)`` to ``(B, C, s·h, s·w)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from mtkd.transforms.matlab_resize import imresize

__all__ = ['INVERTIBLE_AUGMENTATIONS', 'OFFICIAL_AUGMENTATIONS', 'invertible_augmentations', 'choose_zoom_in_tiles',
           'crop_tiles', 'zoom_in_inputs', 'zoom_out_inputs', 'sample_augmentation_masks', 'augment', 'deaugment',
           'DUKDLoss']

Tensor = torch.Tensor
ImageMap = Callable[[Tensor], Tensor]


# ---- invertible augmentations ------------------------------------------------------------------------------
def _identity(images: Tensor) -> Tensor:
    return images


def _flip_width(images: Tensor) -> Tensor:
    return images.flip(-1)


def _flip_height(images: Tensor) -> Tensor:
    return images.flip(-2)


def _transpose(images: Tensor) -> Tensor:
    return images.transpose(-2, -1)


def _rotate90(images: Tensor) -> Tensor:
    return torch.rot90(images, 1, dims=(-2, -1))


def _rotate180(images: Tensor) -> Tensor:
    return torch.rot90(images, 2, dims=(-2, -1))


def _rotate270(images: Tensor) -> Tensor:
    return torch.rot90(images, 3, dims=(-2, -1))


def _anti_transpose(images: Tensor) -> Tensor:
    return torch.rot90(images, 2, dims=(-2, -1)).transpose(-2, -1)


def _color_inversion(images: Tensor, img_range: float = 1.0) -> Tensor:
    return img_range - images


#: name → (forward, inverse) over ``(B, C, H, W)`` tensors in ``[0, 1]``: the 8 symmetries of the square (the
#: dihedral group D4) and colour inversion ``1 - x``. Every pair satisfies ``inverse(forward(x)) == x`` exactly.
INVERTIBLE_AUGMENTATIONS: dict[str, tuple[ImageMap, ImageMap]] = {
    'identity': (_identity, _identity),
    'hflip': (_flip_width, _flip_width),          # mirror left-right (the width axis)
    'vflip': (_flip_height, _flip_height),        # mirror upside-down (the height axis)
    'transpose': (_transpose, _transpose),
    'rot90': (_rotate90, _rotate270),
    'rot180': (_rotate180, _rotate180),
    'rot270': (_rotate270, _rotate90),
    'anti_transpose': (_anti_transpose, _anti_transpose),
    'invert': (_color_inversion, _color_inversion),
}

#: The official code's four operations, in its order ('i', 'h', 'v', 't' in ``noising``; its 'h' flips the height
#: axis, i.e. our 'vflip', and its 'v' the width axis, our 'hflip').
OFFICIAL_AUGMENTATIONS = ('invert', 'vflip', 'hflip', 'transpose')

_SHAPE_CHANGING = {'transpose', 'rot90', 'rot270', 'anti_transpose'}


def invertible_augmentations(names: Sequence[str] | None = None) -> list[tuple[ImageMap, ImageMap]]:
    """The (forward, inverse) pairs named in ``names`` (all of ``INVERTIBLE_AUGMENTATIONS`` when ``None``).

    DUKD's invertible augmentations (Zhang et al., arXiv 2309.14162, label consistency regularisation; the official
    code uses colour inversion, both flips and transpose). Each function maps ``(B, C, H, W)`` to ``(B, C, H, W)``
    (``(B, C, W, H)`` for transposes and 90° rotations); values in ``[0, 1]``.
    """
    names = list(INVERTIBLE_AUGMENTATIONS) if names is None else list(names)
    unknown = [name for name in names if name not in INVERTIBLE_AUGMENTATIONS]
    if unknown:
        raise ValueError(f'invertible_augmentations: unknown augmentation(s) {unknown}; choose from '
                         f'{sorted(INVERTIBLE_AUGMENTATIONS)}')
    return [INVERTIBLE_AUGMENTATIONS[name] for name in names]


def sample_augmentation_masks(batch_size: int, names: Sequence[str], probability: float,
                              generator: torch.Generator | None = None) -> Tensor:
    """Independent Bernoulli(``probability``) draws: which sample gets which augmentation, ``(len(names), B)`` bool.

    As in the official code (``noising``, ``train.noisy.prob``: 0.3), every operation is drawn independently for
    every sample, so a sample may get several (applied in ``names`` order) or none. Drawn on the CPU so that a
    seeded CPU generator gives the same draws on every device.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f'augmentation probability must be in [0, 1] (the paper uses 0.3), got {probability}')
    invertible_augmentations(names)  # validates the names
    return torch.rand((len(names), batch_size), generator=generator) < probability


def _apply_per_sample(images: Tensor, names: Sequence[str], masks: Tensor, which: int,
                      img_range: float) -> Tensor:
    # Which augmentations to run is decided on the host from the CPU masks (no device sync); the per-sample
    # selection goes to the device in one copy.
    masks = masks.cpu()
    used = [index for index, drawn in enumerate(masks.any(dim=1).tolist()) if drawn]
    if not used:
        return images
    selection = masks.to(images.device, non_blocking=True)
    order = used if which == 0 else reversed(used)
    for index in order:
        name = names[index]
        if name in _SHAPE_CHANGING and images.shape[-2] != images.shape[-1]:
            raise ValueError(f"augmentation '{name}' swaps height and width: per-sample use needs square patches, "
                             f'got {tuple(images.shape[-2:])}; use square crops or drop {name!r}')
        function = INVERTIBLE_AUGMENTATIONS[name][which]
        changed = function(images, img_range) if name == 'invert' else function(images)
        # torch.where keeps the autograd graph for both branches; unselected samples pass through unchanged.
        images = torch.where(selection[index].view(-1, 1, 1, 1), changed, images)
    return images


def augment(images: Tensor, names: Sequence[str], masks: Tensor, img_range: float = 1.0) -> Tensor:
    """``F(x)``: apply to each sample the augmentations its column of ``masks`` selects, in ``names`` order.

    Args:
        images: ``(B, C, H, W)`` in ``[0, img_range]``; square when a transpose/90° rotation is in ``names``.
        names: augmentation names (keys of ``INVERTIBLE_AUGMENTATIONS``).
        masks: ``(len(names), B)`` bool from ``sample_augmentation_masks``.
    """
    return _apply_per_sample(images, names, masks, 0, img_range)


def deaugment(images: Tensor, names: Sequence[str], masks: Tensor, img_range: float = 1.0) -> Tensor:
    """``F⁻¹(y)``: the exact inverse of ``augment`` (inverses applied in reverse order), for inputs or SR outputs.

    The official code re-applies the forward operations in forward order instead; that equals the inverse except
    when a sample draws transpose and exactly one flip (a 90° rotation), where it leaves the output rotated by
    180°. The exact inverse is what the paper's ``F⁻¹`` denotes (see ``docs/dukd.md``).
    """
    return _apply_per_sample(images, names, masks, 1, img_range)


# ---- upcycled inputs -----------------------------------------------------------------------------------------
def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(value) for value in size)
    return height, width


def choose_zoom_in_tiles(gt_size: Sequence[int], lq_size: int | Sequence[int], num_tiles: int = 1,
                         generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """Grid cells ``(row, column)`` of the zoom-in tiles: ``num_tiles`` distinct cells drawn uniformly.

    Official code (``dukd_model.py``): the HR patch is cut into the ``s × s`` grid of non-overlapping LR-sized tiles
    and ``n_gt_sub`` of them are drawn without replacement (a random permutation), the same cells for the whole
    batch (1 tile at x3/x4, 2 at x2 in the published option files). Here the grid is
    ``(H_gt // h) × (W_gt // w)``, which is ``s × s`` for a training pair.
    """
    gt_height, gt_width = _pair(gt_size)
    lq_height, lq_width = _pair(lq_size)
    rows, columns = gt_height // lq_height, gt_width // lq_width
    if rows < 1 or columns < 1:
        raise ValueError(f'zoom-in: the LR tile {lq_height}x{lq_width} is larger than the HR patch '
                         f'{gt_height}x{gt_width}')
    if not 1 <= num_tiles <= rows * columns:
        raise ValueError(f'zoom-in: num_tiles must be between 1 and {rows * columns} (the grid of LR-sized tiles '
                         f'in the HR patch), got {num_tiles}')
    cells = torch.randperm(rows * columns, generator=generator)[:num_tiles].tolist()
    return [(cell // columns, cell % columns) for cell in cells]


def crop_tiles(gt: Tensor, tiles: Sequence[tuple[int, int]], lq_size: int | Sequence[int]) -> Tensor:
    """The HR tiles at grid cells ``tiles``, concatenated along the batch: ``(len(tiles)·B, C, h, w)``, tile-major."""
    lq_height, lq_width = _pair(lq_size)
    return torch.cat([gt[..., row * lq_height:(row + 1) * lq_height, column * lq_width:(column + 1) * lq_width]
                      for row, column in tiles], dim=0)


def zoom_in_inputs(gt: Tensor, lq_size: int | Sequence[int], generator: torch.Generator | None = None,
                   num_tiles: int = 1) -> Tensor:
    """DUKD zoom-in: LR-sized tiles of the HR batch, used as extra LR inputs (Zhang et al., arXiv 2309.14162).

    Args:
        gt: HR batch ``(B, C, s·h, s·w)`` in ``[0, 1]``.
        lq_size: ``h`` or ``(h, w)``, the LR patch size.
        generator: seeds the choice of grid cells (``choose_zoom_in_tiles``).
        num_tiles: tiles per HR patch (official ``n_gt_sub``).

    Returns:
        ``(num_tiles·B, C, h, w)``: tile ``k`` of every sample, then tile ``k+1`` (the official ``torch.cat`` order).
    """
    if gt.ndim != 4:
        raise ValueError(f'zoom_in_inputs: gt must be (B, C, H, W), got shape {tuple(gt.shape)}')
    tiles = choose_zoom_in_tiles(gt.shape[-2:], lq_size, num_tiles, generator)
    return crop_tiles(gt, tiles, lq_size)


def zoom_out_inputs(lq: Tensor, scale: int) -> Tensor:
    """DUKD zoom-out: the LR batch downscaled by ``scale`` with MATLAB bicubic (antialiased), no rounding.

    The official code uses BasicSR's ``matlab_functions.imresize(lq, 1 / scale)`` on float tensors; this uses the
    project's MATLAB-exact ``imresize`` (same kernel, antialiasing and coordinates; float images are not rounded).
    ``(B, C, h, w)`` in ``[0, 1]`` → ``(B, C, h / s, w / s)``; ``h`` and ``w`` must be multiples of ``scale`` so that
    the student's output of the zoomed-out input has the LR patch's size.
    """
    if lq.ndim != 4:
        raise ValueError(f'zoom_out_inputs: lq must be (B, C, H, W), got shape {tuple(lq.shape)}')
    if int(scale) != scale or scale < 2:
        raise ValueError(f'zoom_out_inputs: scale must be an integer >= 2, got {scale}')
    height, width = lq.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f'zoom_out_inputs: the LR patch {height}x{width} is not a multiple of the scale {scale}; '
                         f'choose gt_size a multiple of scale**2 (e.g. {scale * scale * 12})')
    return imresize(lq.detach(), scale=1.0 / scale)


# ---- the loss terms ------------------------------------------------------------------------------------------
def _mean_l1(prediction: Tensor, target: Tensor) -> Tensor:
    return (prediction - target).abs().mean()


def _fp32(criterion: Callable[[Tensor, Tensor], Tensor], prediction: Tensor, target: Tensor) -> Tensor:
    """``criterion`` in fp32 with autocast off (the student's output is fp16/bf16 under AMP;
    mtkd.training.precision)."""
    from mtkd.training.precision import fp32_loss

    return fp32_loss(criterion, prediction, target)


@dataclass
class DUKDLoss:
    """The DUKD loss terms ``L_dukd`` on upcycled inputs (Zhang et al., arXiv 2309.14162; official DUKD code).

    Terms returned by ``__call__`` (each a weighted scalar, differentiable w.r.t. the student only):

    * ``l_zoom_in``: ``w_in · L1(F⁻¹(S(F(x_in))), T(x_in))`` with ``x_in`` the zoom-in tiles and ``F`` the random
      invertible augmentations (label consistency; with ``augmentation_probability = 0``, ``F`` is the identity
      and this is plain zoom-in KD).
    * ``l_zoom_out_kd``: ``w_out_kd · L1(S(x_out), T(x_out))`` with ``x_out`` the zoomed-out LR batch.
    * ``l_zoom_out_pix``: ``w_out_pix · L1(S(x_out), x)``: the LR patch is the ground truth of its downscale.

    Defaults are the published option files: ``kd_opt`` L1 weight 1 for the first two, ``pixel_opt`` L1 weight 5
    for the third, augmentation probability 0.3 with the official four operations, 1 tile (2 at x2).
    A weight of 0 skips its term's forward passes (the term is left out of the dict).
    """
    zoom_in_weight: float = 1.0
    zoom_out_kd_weight: float = 1.0
    zoom_out_pixel_weight: float = 5.0
    num_tiles: int = 1
    augmentation_probability: float = 0.3
    augmentations: Sequence[str] = field(default_factory=lambda: list(OFFICIAL_AUGMENTATIONS))
    img_range: float = 1.0
    criterion: Callable[[Tensor, Tensor], Tensor] = _mean_l1

    def __post_init__(self):
        for name in ('zoom_in_weight', 'zoom_out_kd_weight', 'zoom_out_pixel_weight'):
            if getattr(self, name) < 0:
                raise ValueError(f'DUKDLoss: {name} must be >= 0 (0 disables the term), got {getattr(self, name)}')
        invertible_augmentations(self.augmentations)
        if not 0.0 <= self.augmentation_probability <= 1.0:
            raise ValueError(f'DUKDLoss: augmentation_probability must be in [0, 1] (paper: 0.3), '
                             f'got {self.augmentation_probability}')

    def __call__(self, student: ImageMap, teacher_target: ImageMap, lq: Tensor, gt: Tensor, scale: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The DUKD terms for one training batch.

        Args:
            student: the trained network, ``(B, C, h, w)`` → ``(B, C, s·h, s·w)``.
            teacher_target: the frozen target (a teacher, or MTKD's aggregate of teachers), same mapping; it is
                called under ``torch.no_grad``.
            lq: LR batch ``(B, C, h, w)`` in ``[0, img_range]``.
            gt: HR batch ``(B, C, s·h, s·w)``.
            scale: the SR scale ``s``.
            generator: seeds the zoom-in tiles and the augmentation draws (CPU generator).

        Returns:
            ``{'l_zoom_in', 'l_zoom_out_kd', 'l_zoom_out_pix'}`` (terms with a positive weight), weighted scalars.
        """
        if lq.ndim != 4 or gt.ndim != 4:
            raise ValueError(f'DUKDLoss: lq and gt must be (B, C, H, W), got {tuple(lq.shape)} and {tuple(gt.shape)}')
        if tuple(gt.shape[-2:]) != (lq.shape[-2] * scale, lq.shape[-1] * scale):
            raise ValueError(f'DUKDLoss: gt {tuple(gt.shape[-2:])} is not scale={scale} times lq '
                             f'{tuple(lq.shape[-2:])}')
        terms: dict[str, Tensor] = {}
        if self.zoom_in_weight > 0:
            tiles = zoom_in_inputs(gt, lq.shape[-2:], generator, self.num_tiles)
            with torch.no_grad():
                target = teacher_target(tiles)
            masks = sample_augmentation_masks(tiles.shape[0], self.augmentations, self.augmentation_probability,
                                              generator)
            augmented = augment(tiles, self.augmentations, masks, self.img_range)
            restored = deaugment(student(augmented), self.augmentations, masks, self.img_range)
            terms['l_zoom_in'] = self.zoom_in_weight * _fp32(self.criterion, restored, target)
        if self.zoom_out_kd_weight > 0 or self.zoom_out_pixel_weight > 0:
            small = zoom_out_inputs(lq, scale)
            output = student(small)
            if self.zoom_out_kd_weight > 0:
                with torch.no_grad():
                    target = teacher_target(small)
                terms['l_zoom_out_kd'] = self.zoom_out_kd_weight * _fp32(self.criterion, output, target)
            if self.zoom_out_pixel_weight > 0:
                terms['l_zoom_out_pix'] = self.zoom_out_pixel_weight * _fp32(self.criterion, output, lq.detach())
        return terms
