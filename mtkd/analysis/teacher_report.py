"""Teacher report: is a teacher "good" in the DTKD sense, i.e. are its textures reliable rather than invented?

DTKD (Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation", KBS 2025) argues
that a good teacher generates reliable, learnable textures and not false textures. This module measures, for each
teacher on each benchmark set: the field's PSNR/SSIM (:mod:`mtkd.metrics.evaluation`'s protocol), NIQE (BasicSR's
``calculate_niqe``, no reference, lower = more natural), optionally LPIPS (:class:`mtkd.metrics.lpips_metric.LPIPS`,
full reference, lower = perceptually closer; weights from local files) and a false-texture measure, the
high-frequency energy the teacher puts where the ground truth has little (:func:`false_texture_energy`).
docs/teacher_report.md explains how to read them; comparing EdgeSRN trained with and without its VGG term
(``options/test_dtkd_edgesrn_x4.yml`` and ``test_dtkd_edgesrn_novgg_x4.yml``) is the DTKD use (docs/dtkd.md).

All image measures are taken on the 8-bit image the teacher output rounds to (``tensor_to_image``, clamped
to [0, 1]), exactly as PSNR is, with ``crop_border = scale``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.metrics.evaluation import (benchmark_pairs, ground_truth_for, image_to_tensor, read_image, score_images,
                                     tensor_to_image)
from mtkd.metrics.tables import dataset_columns, format_cell
from mtkd.teachers.ensemble import TeacherEnsemble, TeacherSpec, run_teacher, run_tiled, teacher_specs_from_options
from mtkd.transforms.edges import rgb_to_luma

#: Default "the ground truth has little high-frequency energy" threshold, in 8-bit grey levels of the 7x7 mean of
#: |HP(GT)| (see :func:`false_texture_energy`). Gaussian noise of std 1 grey level gives about 0.9, edges and textures
#: tens. With 3, the flat share of the Set5/Set14 images is 2 % (baboon) to 79 % (bird), median about 30 %; with 2 some
#: natural images (pepper, bridge, coastguard: 2-5 %) keep almost no flat pixel, because their smooth areas carry
#: sensor noise and JPEG grain of 2-3 grey levels.
FLAT_THRESHOLD = 3.0
#: Side of the box over which the ground truth's high-frequency energy is averaged (pixels).
FLAT_WINDOW = 7
#: NIQE (BasicSR, after Mittal et al. 2013) cuts the image into 96x96 blocks without overlap and fits a Gaussian
#: to the blocks' features; the covariance needs at least two blocks.
NIQE_BLOCK = 96


def luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB ``(B, 3, H, W)`` in [0, 1] → ``(B, 1, H, W)`` in 8-bit grey levels [0, 255]."""
    return rgb_to_luma(images) * 255.0


def high_pass(gray: torch.Tensor) -> torch.Tensor:
    """``HP(Y) = Y - mean of the 4 neighbours of Y`` (= -Laplacian / 4), edges replicated; ``(B, 1, H, W)``.

    Zero on constant and linear regions; a checkerboard ``c ± a`` gives ``|HP| = 2a`` at every pixel.
    """
    padded = F.pad(gray, (1, 1, 1, 1), mode='replicate')
    neighbours = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 4
    return gray - neighbours


def local_mean(values: torch.Tensor, window: int = FLAT_WINDOW) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` box centred on each pixel (edges replicated); ``(B, 1, H, W)``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f'window must be an odd positive size, got {window}')
    radius = window // 2
    return F.avg_pool2d(F.pad(values, (radius,) * 4, mode='replicate'), window, stride=1)


@dataclass(frozen=True)
class FalseTexture:
    """Per-image false-texture energy (8-bit grey levels; NaN where no pixel is flat) and fraction of flat pixels."""
    energy: torch.Tensor
    flat_fraction: torch.Tensor


def false_texture_map(sr: torch.Tensor, gt: torch.Tensor, flat_threshold: float = FLAT_THRESHOLD,
                      crop_border: int = 0, window: int = FLAT_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """The excess map ``max(|HP(SR)| - |HP(GT)|, 0)`` and the flat mask, both ``(B, 1, H - 2c, W - 2c)``.

    See :func:`false_texture_energy` for the definition.
    """
    if sr.shape != gt.shape:
        raise ValueError(f'sr {tuple(sr.shape)} and gt {tuple(gt.shape)} must have the same shape')
    if crop_border < 0 or 2 * crop_border >= min(sr.shape[-2:]):
        raise ValueError(f'crop_border {crop_border} leaves nothing of a {sr.shape[-2]}x{sr.shape[-1]} image')
    hp_sr = high_pass(luma(sr.float())).abs()
    hp_gt = high_pass(luma(gt.float())).abs()
    flat = local_mean(hp_gt, window) < flat_threshold
    excess = (hp_sr - hp_gt).clamp(min=0)
    if crop_border:
        excess = excess[..., crop_border:-crop_border, crop_border:-crop_border]
        flat = flat[..., crop_border:-crop_border, crop_border:-crop_border]
    return excess, flat


def false_texture_energy(sr: torch.Tensor, gt: torch.Tensor, flat_threshold: float = FLAT_THRESHOLD,
                         crop_border: int = 0, window: int = FLAT_WINDOW) -> FalseTexture:
    """False texture: the high-frequency energy an SR image has where its ground truth has little (DTKD's "false
    textures" of a bad teacher, Li et al., KBS 2025), per image, in 8-bit grey levels.

    Definition, for RGB ``sr`` and ``gt`` ``(B, 3, H, W)`` in [0, 1]:

    1. ``Y = 255 (0.299 R + 0.587 G + 0.114 B)``, the BT.601 luma in grey levels (full range, so a difference
       of ``d`` grey levels in R, G and B is a difference of ``d`` in Y; PSNR's studio-swing Y would scale it by
       219/255).
    2. ``HP(Y) = Y - (Y[up] + Y[down] + Y[left] + Y[right]) / 4`` (= -Laplacian / 4, edges replicated): zero
       on constant and linear ramps, ``2a`` in magnitude on a checkerboard of amplitude ``±a``.
    3. Flat pixels, where the ground truth has little high-frequency energy: the ``window`` x ``window`` (7x7)
       box mean of ``|HP(Y_gt)|`` is below ``flat_threshold`` grey levels (default 3, :data:`FLAT_THRESHOLD`:
       noise of std 1 grey level gives about 0.9, edges and textures tens).
    4. ``crop_border`` pixels are removed on every side (as PSNR removes ``scale``), after filtering.
    5. Energy = mean over the flat pixels of ``max(|HP(Y_sr)| - |HP(Y_gt)|, 0)``: the high-frequency
       magnitude the SR image adds beyond the ground truth's own. Blur (less high frequency) counts zero:
       the measure sees invented detail, not lost detail, which PSNR/SSIM already penalise.

    Returns :class:`FalseTexture`: ``energy`` ``(B,)`` (NaN for an image without flat pixels) and
    ``flat_fraction`` ``(B,)``, the share of (cropped) pixels that are flat.
    """
    excess, flat = false_texture_map(sr, gt, flat_threshold, crop_border, window)
    flat = flat.to(excess.dtype)
    count = flat.sum(dim=(1, 2, 3))
    total = (excess * flat).sum(dim=(1, 2, 3))
    energy = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float('nan')))
    return FalseTexture(energy=energy, flat_fraction=count / flat[0].numel())


def niqe_score(image_bgr_uint8: np.ndarray, crop_border: int) -> float:
    """BasicSR's NIQE on the Y channel (``calculate_niqe(img, crop_border, 'HWC', 'y')``); lower = more natural.

    NIQE needs at least two 96x96 blocks after cropping (its covariance is undefined with one); a smaller
    image raises a ``ValueError`` naming the size instead of BasicSR's ``SVD did not converge``.
    """
    from basicsr.metrics import calculate_niqe

    height, width = (length - 2 * crop_border for length in image_bgr_uint8.shape[:2])
    if (height // NIQE_BLOCK) * (width // NIQE_BLOCK) < 2:
        raise ValueError(f'NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks, but the image is {height}x{width} '
                         f'after cropping {crop_border} pixels per side: use larger images or no NIQE (--no-niqe)')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # nanmean/cov warnings of flat blocks
        return float(calculate_niqe(image_bgr_uint8, crop_border=crop_border, input_order='HWC', convert_to='y'))


class ImageObserver(Protocol):
    """Anything that accumulates a per-set measure from every image's 8-bit teacher outputs and ground truth."""

    def add(self, dataset: str, outputs: Mapping[str, np.ndarray], gt_bgr_uint8: np.ndarray,
            crop_border: int) -> None: ...


@dataclass
class TeacherReportRow:
    """One teacher on one benchmark set: means over its images (false texture: over images with flat pixels).

    ``niqe`` (``lpips``) is None when NIQE (LPIPS) was not computed. ``per_image``: ``name -> {psnr, ssim, niqe,
    false_texture, flat_fraction, lpips}``.
    """
    teacher: str
    dataset: str
    scale: int
    num_images: int
    psnr: float
    ssim: float
    niqe: float | None
    false_texture: float
    flat_fraction: float
    per_image: dict[str, dict[str, float | None]] = field(default_factory=dict, repr=False)
    lpips: float | None = None


def lpips_score(network: nn.Module, sr_bgr_uint8: np.ndarray, gt_bgr_uint8: np.ndarray, crop_border: int) -> float:
    """LPIPS between two uint8 BGR images of one size, ``crop_border`` pixels cropped per side (``network``: an
    :class:`mtkd.metrics.lpips_metric.LPIPS`, on its own device)."""
    def tensor(image: np.ndarray) -> torch.Tensor:
        if crop_border:
            image = image[crop_border:-crop_border, crop_border:-crop_border]
        return image_to_tensor(np.ascontiguousarray(image)).to(_network_device(network))

    with torch.no_grad():
        return float(network(tensor(sr_bgr_uint8), tensor(gt_bgr_uint8))[0])


def _network_device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device('cpu')


def _nan_mean(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else float('nan')


@torch.no_grad()
def report_teachers(networks: Mapping[str, nn.Module], set_dirs: Sequence[str], scale: int, niqe: bool = True,
                    tile_size: int | None = None, tile_overlap: int = 16, flat_threshold: float = FLAT_THRESHOLD,
                    logger: logging.Logger | None = None,
                    observers: Sequence[ImageObserver] = (), progress: bool = False,
                    lpips: nn.Module | None = None) -> list[TeacherReportRow]:
    """PSNR/SSIM, NIQE and false texture of each teacher on each benchmark set; one row per (teacher, set).

    ``networks``: name → network taking RGB ``(1, 3, h, w)`` in [0, 1] (on its parameters' device) and returning
    ``(1, 3, s h, s w)``. ``set_dirs``: folders laid out as :func:`mtkd.metrics.evaluation.benchmark_pairs` expects (the
    set is named after the folder). Every measure is taken on the uint8 image :func:`tensor_to_image` makes of
    the output, with ``crop_border = scale``; PSNR/SSIM are :func:`mtkd.metrics.evaluation.score_images`. ``tile_size``:
    run on tiles of this many LR pixels (:func:`mtkd.teachers.ensemble.run_tiled`) to bound memory. ``observers``:
    accumulators also given every image's teacher outputs, set by set (:class:`ImageObserver`: the error
    correlation of :mod:`mtkd.analysis.error_correlation`, the fusion bounds of :mod:`mtkd.analysis.fusion_bounds`).
    ``progress``: a progress bar per set on stderr (images done, rate, ETA). ``lpips``: an
    :class:`mtkd.metrics.lpips_metric.LPIPS` network (RGB [0, 1] pairs → distances); when given, each teacher's LPIPS
    to the ground truth is measured on the same 8-bit images, ``crop_border = scale`` pixels cropped.
    """
    from tqdm import tqdm

    if not networks:
        raise ValueError('networks is empty: give at least one teacher (name -> network)')
    logger = logger or logging.getLogger('mtkd')
    for network in networks.values():
        network.eval()
    per_image = {(name, set_dir): {} for name in networks for set_dir in set_dirs}
    set_names = {set_dir: os.path.basename(os.path.normpath(set_dir)) for set_dir in set_dirs}
    for set_dir in set_dirs:
        pairs = benchmark_pairs(set_dir, scale)
        for image_name, hr_path, lr_path in tqdm(pairs, desc=set_names[set_dir], unit='img', disable=not progress,
                                                 dynamic_ncols=True):
            hr_bgr = read_image(hr_path)
            lr = image_to_tensor(read_image(lr_path))
            outputs = {}
            for name, network in networks.items():
                device = _network_device(network)
                output = run_tiled(lambda images: [network(images)], lr.to(device), scale, tile_size, tile_overlap)[0]
                sr_bgr = outputs[name] = tensor_to_image(output)
                score = score_images(sr_bgr, hr_bgr, scale)
                texture = false_texture_energy(image_to_tensor(sr_bgr),
                                               image_to_tensor(ground_truth_for(sr_bgr, hr_bgr)),
                                               flat_threshold, crop_border=scale)
                per_image[(name, set_dir)][image_name] = {
                    'psnr': score.psnr, 'ssim': score.ssim,
                    'niqe': niqe_score(sr_bgr, scale) if niqe else None,
                    'false_texture': float(texture.energy[0]), 'flat_fraction': float(texture.flat_fraction[0]),
                    'lpips': lpips_score(lpips, sr_bgr, ground_truth_for(sr_bgr, hr_bgr), scale)
                    if lpips is not None else None}
            for observer in observers:
                observer.add(set_names[set_dir], outputs, hr_bgr, scale)
            logger.debug(f'{set_names[set_dir]}/{image_name} done')
    rows = []
    for name in networks:
        for set_dir in set_dirs:
            images = per_image[(name, set_dir)]
            values = list(images.values())
            rows.append(TeacherReportRow(
                teacher=name, dataset=set_names[set_dir], scale=scale,
                num_images=len(values),
                psnr=float(np.mean([value['psnr'] for value in values])),
                ssim=float(np.mean([value['ssim'] for value in values])),
                niqe=float(np.mean([value['niqe'] for value in values])) if niqe else None,
                false_texture=_nan_mean([value['false_texture'] for value in values]),
                flat_fraction=float(np.mean([value['flat_fraction'] for value in values])),
                per_image=images,
                lpips=float(np.mean([value['lpips'] for value in values])) if lpips is not None else None))
    return rows


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.{digits}f}'


def report_markdown(rows: Sequence[TeacherReportRow], psnr_digits: int = 2, ssim_digits: int = 4,
                    niqe_digits: int = 4, texture_digits: int = 4, lpips_digits: int = 4) -> str:
    """Markdown table: a row per teacher, per set three columns ``PSNR/SSIM``, ``NIQE``, ``false texture``, and
    ``LPIPS`` when any row has it.

    Sets in the field's order (:func:`mtkd.metrics.tables.dataset_columns`), cells formatted as
    :mod:`mtkd.metrics.tables` (``-``: not measured).
    """
    teachers, means = [], {}
    for row in rows:
        if row.teacher not in teachers:
            teachers.append(row.teacher)
        means.setdefault(row.teacher, {})[row.dataset] = row
    scales = {row.teacher: row.scale for row in rows}
    with_lpips = any(row.lpips is not None for row in rows)
    datasets = dataset_columns([_Columns({row.dataset: {} for row in rows})])
    header = ['Teacher', 'Scale']
    for dataset in datasets:
        header += [f'{dataset} PSNR/SSIM', f'{dataset} NIQE', f'{dataset} false texture']
        header += [f'{dataset} LPIPS'] if with_lpips else []
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for teacher in teachers:
        cells = [teacher, f'x{scales[teacher]}']
        for dataset in datasets:
            row = means[teacher].get(dataset)
            if row is None:
                cells += ['-'] * (4 if with_lpips else 3)
                continue
            cells += [format_cell({'psnr': row.psnr, 'ssim': row.ssim}, psnr_digits, ssim_digits),
                      _number(row.niqe, niqe_digits), _number(row.false_texture, texture_digits)]
            cells += [_number(row.lpips, lpips_digits)] if with_lpips else []
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


@dataclass(frozen=True)
class _Columns:
    """The one field of :class:`mtkd.metrics.tables.TableRow` that ``dataset_columns`` reads."""
    means: dict


class TeacherNetwork(nn.Module):
    """One frozen teacher run exactly as :class:`mtkd.teachers.ensemble.TeacherEnsemble` runs it
    (:func:`mtkd.teachers.ensemble.run_teacher`: test-time padding, self-ensemble), as a module for
    :func:`report_teachers`."""

    def __init__(self, network: nn.Module, spec: TeacherSpec, scale: int):
        super().__init__()
        self.network, self.spec, self.scale = network, spec, scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return run_teacher(self.network, self.spec, self.scale, images)


#: Appended to a teacher's name when the report self-ensembles it (EDSR's "+" models).
SELF_ENSEMBLE_SUFFIX = '+'


def self_ensembled(specs: Sequence[TeacherSpec]) -> list[TeacherSpec]:
    """The same teachers, each run as its x8 self-ensemble and named ``<name>+`` (a plain and a self-ensembled
    teacher are different teachers: other outputs, another cache folder)."""
    return [spec if spec.self_ensemble else
            dataclasses.replace(spec, name=spec.name + SELF_ENSEMBLE_SUFFIX, self_ensemble=True) for spec in specs]


def teacher_specs_from_option_file(options: Mapping, root: str | None = None) -> list[TeacherSpec]:
    """Teachers of an option dict: its ``teachers:`` list (stage-1/2 files), or else the one network of a test
    file (``network_g`` with ``path.pretrain_network_g``, ``param_key_g``, ``strict_load_g`` and
    ``val.pad_multiple``/``pad_mode``/``self_ensemble``), named after the file's ``name``. Relative weights are taken
    from ``root``.
    """
    if options.get('teachers') is not None:
        return teacher_specs_from_options(options['teachers'], root=root)
    if 'network_g' not in options:
        raise ValueError('the option file has neither teachers: (a list of name/network/weights blocks, e.g. '
                         'options/stage1_ka_light_x4.yml) nor network_g with path.pretrain_network_g (a test file, '
                         'e.g. options/test_imdn_x4.yml)')
    path_options = options.get('path') or {}
    val_options = options.get('val') or {}
    spec = {'name': options.get('name') or options['network_g'].get('type'), 'network': options['network_g'],
            'weights': path_options.get('pretrain_network_g'),
            'param_key': path_options.get('param_key_g', 'auto'),
            'strict_load': path_options.get('strict_load_g', True),
            'pad_multiple': val_options.get('pad_multiple'), 'pad_mode': val_options.get('pad_mode', 'symmetric'),
            'self_ensemble': bool(val_options.get('self_ensemble', False))}
    return teacher_specs_from_options([spec], root=root)


def networks_from_option_file(options: Mapping, scale: int, root: str | None = None,
                              device: str | torch.device = 'cpu', logger: logging.Logger | None = None,
                              self_ensemble: bool = False) -> dict[str, nn.Module]:
    """``name -> frozen network`` for :func:`report_teachers`, built and loaded (strictly) as the teachers of
    training are (:class:`mtkd.teachers.ensemble.TeacherEnsemble`); a missing weights file raises
    :class:`mtkd.teachers.ensemble.TeacherWeightsError` naming the file and how to get it (``make link-shared``).
    ``self_ensemble``: every teacher as its x8 self-ensemble (:func:`self_ensembled`)."""
    specs = teacher_specs_from_option_file(options, root)
    if self_ensemble:
        specs = self_ensembled(specs)
    ensemble = TeacherEnsemble(specs, scale=scale, device=device, logger=logger)
    return {spec.name: TeacherNetwork(ensemble.network(spec.name), spec, scale) for spec in specs}


__all__ = ['FLAT_THRESHOLD', 'FLAT_WINDOW', 'FalseTexture', 'ImageObserver', 'SELF_ENSEMBLE_SUFFIX', 'TeacherNetwork',
           'TeacherReportRow', 'false_texture_energy', 'false_texture_map', 'high_pass', 'local_mean', 'lpips_score',
           'luma',
           'networks_from_option_file', 'niqe_score', 'report_markdown', 'report_teachers', 'self_ensembled',
           'teacher_specs_from_option_file']
