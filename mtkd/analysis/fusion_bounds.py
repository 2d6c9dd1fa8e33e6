"""How much could any fusion of the teachers gain? Oracle bounds that fit the ground truth itself.

MTKD's knowledge aggregation (Jiang et al., ECCV 2024, Sec. 3.1) maps N teacher outputs to one image. Before
training one, these bounds say where its gain could come from, per benchmark set:

- ``average``: the plain pixel mean of the teachers (what a global-residual KA starts from).
- ``global``: the best fixed linear combination ``Σ_i w_i T_i`` (least squares against the ground truth over all
  pixels of the set; weights unconstrained, no offset). If it is barely above ``average``, no global weighting
  helps: a KA can only gain by weighting *locally* or by restoring detail no teacher has.
- ``patch p``: least-squares weights fitted separately on every ``p × p`` patch (edge patches smaller), cross-fitted
  on the patch's two checkerboard halves (:func:`patch_oracle`): the gain a content-adaptive weighting that knew
  the right local weights at that granularity would have. It is an oracle (the weights come from the ground
  truth of the neighbouring pixels): a ceiling, not a target. Whether such weights can be predicted from the
  teacher outputs alone is what a KA has to learn.
- ``pixel best``: every pixel from the teacher closest to the ground truth there (a looser ceiling still).

Beside the oracles, one row that is *not* fitted to the set it scores: ``train-fitted weights``, the global
least-squares weights of the training images (:func:`fit_global_weights` on the option file's teacher cache,
``scripts/teacher_report.py --fit-on-train``) applied unchanged to the benchmark. It is what the simplest learned
aggregator, a fixed weighting, would score out of sample: when it is below ``average`` while ``best global
weights`` is above it, the training set prefers a weighting the benchmark does not.

Protocol, PSNR's (:func:`mtkd.metrics.evaluation.score_images`): Y channel of the 8-bit teacher images (BasicSR's
``to_y_channel``, BT.601, 0-255), ``crop_border = scale``, the ground truth cropped to the SR size; each image's
PSNR, then the mean over the set. The combinations are scored on their float Y, not re-quantised to 8 bits (the
plain average here is a few thousandths of a dB off the 8-bit one :func:`mtkd.analysis.teacher_report.report_teachers`
reports). The global weights minimise the pooled squared error of the set, the PSNR is still averaged per image.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mtkd.metrics.evaluation import y_planes

DEFAULT_PATCH_SIZES = (32, 16, 8)


def psnr_of_mse(mse: float | np.ndarray) -> float | np.ndarray:
    """PSNR (dB) of a mean squared error in grey levels (peak 255); infinite for zero error."""
    with np.errstate(divide='ignore'):
        return 10. * np.log10(255. ** 2 / np.asarray(mse, dtype=np.float64))


def least_squares_weights(teachers: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights ``w`` minimising ``||Σ_i w_i teachers[i] - target||²`` (minimum-norm where teachers coincide)."""
    return np.linalg.lstsq(teachers.reshape(teachers.shape[0], -1).T, target.reshape(-1), rcond=None)[0]


def patch_oracle(teachers: np.ndarray, target: np.ndarray, patch_size: int) -> np.ndarray:
    """Least-squares teacher weights per patch, cross-fitted: on every patch the weights fitted to the ground truth
    of the checkerboard's black pixels are applied to its white pixels and vice versa, so no pixel is scored with
    weights fitted to itself (with N weights on ``p²/2`` pixels an in-sample fit would also fit noise)."""
    fused = np.empty_like(target)
    height, width = target.shape
    white = (np.arange(height)[:, None] + np.arange(width)[None, :]) % 2 == 1
    for top in range(0, height, patch_size):
        for left in range(0, width, patch_size):
            window = np.s_[top:top + patch_size, left:left + patch_size]
            patches, goal, fused_patch = teachers[(slice(None),) + window], target[window], fused[window]
            for fit, apply in ((white[window], ~white[window]), (~white[window], white[window])):
                weights = least_squares_weights(patches[:, fit], goal[fit])
                fused_patch[apply] = weights @ patches[:, apply]
    return fused


def pixel_best(teachers: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Every pixel from the teacher whose value is closest to ``target`` there."""
    choice = np.abs(teachers - target).argmin(axis=0)
    return np.take_along_axis(teachers, choice[None], axis=0)[0]


def _normal_equations(teachers: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T Tᵀ`` and ``T y`` of the teachers ``(N, H, W)`` against ``target`` ``(H, W)``, pixels pooled."""
    flat = teachers.reshape(teachers.shape[0], -1)
    return flat @ flat.T, flat @ target.reshape(-1)


def fit_global_weights(images: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray]],
                       crop_border: int) -> dict[str, float]:
    """Least-squares weights ``{teacher: w}`` of ``Σ_i w_i T_i`` pooled over ``images``, pairs of
    ``({teacher: sr_bgr_uint8}, gt_bgr_uint8)`` (the same teachers in each), on PSNR's Y planes cropped by
    ``crop_border``. Keeps only the ``N x N`` normal-equation sums, so any number of images fits in memory."""
    names, gram, cross = None, 0.0, 0.0
    for outputs, gt_bgr_uint8 in images:
        if names is None:
            names = list(outputs)
        elif list(outputs) != names:
            raise ValueError(f'teachers {list(outputs)} differ from the earlier images\' {names}')
        image_gram, image_cross = _normal_equations(*y_planes(outputs, gt_bgr_uint8, crop_border))
        gram, cross = gram + image_gram, cross + image_cross
    if names is None:
        raise ValueError('no image to fit the weights on')
    weights = np.linalg.lstsq(gram, cross, rcond=None)[0]
    return {name: float(weight) for name, weight in zip(names, weights)}


@dataclass(frozen=True)
class FusionBoundRow:
    """The bounds of one set: mean PSNR (dB) of each fusion, and the fitted global weights (teacher order)."""
    dataset: str
    teachers: list[str]
    num_images: int
    average: float
    global_weights: list[float]
    global_psnr: float
    patch_psnr: dict[int, float]
    pixel_best: float
    #: Mean PSNR of the ``transfer_weights`` the accumulator was given (fitted elsewhere), None without them.
    transfer_psnr: float | None = None


class FusionBounds:
    """Accumulates, per benchmark set, what :class:`FusionBoundRow` needs (one pass over the images).

    ``add(dataset, {teacher: sr_bgr_uint8}, gt_bgr_uint8, crop_border)`` once per image, the same teachers in every
    call of a set; ``row(dataset)`` then fits the global weights and returns the bounds. Per image it keeps only the
    normal-equation sums ``T Tᵀ``, ``T y``, ``yᵀ y`` (for the global fit and each image's error under it) and the
    per-image PSNR of the other fusions, so memory does not grow with image size.

    ``transfer_weights`` (``{teacher: w}``, e.g. :func:`fit_global_weights` of the training images): also score
    ``Σ_i w_i T_i`` with these fixed weights, every teacher of every set needing one.
    """

    def __init__(self, patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES,
                 transfer_weights: Mapping[str, float] | None = None):
        if not patch_sizes or any(int(size) != size or size < 2 for size in patch_sizes):
            raise ValueError(f'patch sizes must be integers of at least 2 (each patch is cross-fitted on its two '
                             f'checkerboard halves), got {list(patch_sizes)}')
        self.patch_sizes = tuple(int(size) for size in patch_sizes)
        self.transfer_weights = None if transfer_weights is None else dict(transfer_weights)
        self._names: dict[str, list[str]] = {}
        self._images: dict[str, list[dict]] = {}

    @property
    def datasets(self) -> list[str]:
        return list(self._names)

    def add(self, dataset: str, outputs: Mapping[str, np.ndarray], gt_bgr_uint8: np.ndarray, crop_border: int) -> None:
        names = list(outputs)
        if not names:
            raise ValueError('fusion bounds need at least one teacher output')
        if self._names.setdefault(dataset, names) != names:
            raise ValueError(f'{dataset}: teachers {names} differ from the earlier images\' {self._names[dataset]}')
        if self.transfer_weights is not None and set(names) != set(self.transfer_weights):
            raise ValueError(f'{dataset}: the transfer weights are for teachers {sorted(self.transfer_weights)}, '
                             f'the outputs come from {sorted(names)}: fit them on the same teachers')
        teachers, target = y_planes(outputs, gt_bgr_uint8, crop_border)
        gram, cross = _normal_equations(teachers, target)
        transfer = None
        if self.transfer_weights is not None:
            fused = np.tensordot([self.transfer_weights[name] for name in names], teachers, axes=1)
            transfer = psnr_of_mse(np.mean((fused - target) ** 2))
        self._images.setdefault(dataset, []).append({
            'transfer': transfer,
            'count': target.size, 'gram': gram, 'cross': cross,
            'energy': float(target.reshape(-1) @ target.reshape(-1)),
            'average': psnr_of_mse(np.mean((teachers.mean(axis=0) - target) ** 2)),
            'patch': {size: psnr_of_mse(np.mean((patch_oracle(teachers, target, size) - target) ** 2))
                      for size in self.patch_sizes},
            'pixel_best': psnr_of_mse(np.mean((pixel_best(teachers, target) - target) ** 2))})

    def row(self, dataset: str) -> FusionBoundRow:
        if dataset not in self._names:
            raise KeyError(f'no image was added for {dataset} (have: {self.datasets})')
        images = self._images[dataset]
        gram = sum(image['gram'] for image in images)
        cross = sum(image['cross'] for image in images)
        weights = np.linalg.lstsq(gram, cross, rcond=None)[0]
        global_psnr = [psnr_of_mse(max(weights @ image['gram'] @ weights - 2 * weights @ image['cross']
                                       + image['energy'], 0.0) / image['count']) for image in images]
        return FusionBoundRow(
            dataset=dataset, teachers=list(self._names[dataset]), num_images=len(images),
            average=float(np.mean([image['average'] for image in images])),
            global_weights=[float(weight) for weight in weights], global_psnr=float(np.mean(global_psnr)),
            patch_psnr={size: float(np.mean([image['patch'][size] for image in images])) for size in self.patch_sizes},
            pixel_best=float(np.mean([image['pixel_best'] for image in images])),
            transfer_psnr=None if self.transfer_weights is None
            else float(np.mean([image['transfer'] for image in images])))


def fusion_bounds_markdown(bounds: FusionBounds, datasets: Sequence[str] | None = None, digits: int = 3) -> str:
    """One Markdown table (a row per set) and the fitted global weights of each set."""
    rows = [bounds.row(dataset) for dataset in datasets or bounds.datasets]
    sizes = bounds.patch_sizes
    transfer = bounds.transfer_weights is not None
    lines = ['Fusion bounds (Y PSNR, dB; oracles fitted to the ground truth; mtkd/analysis/fusion_bounds.py):', '',
             '| set | average | ' + ('train-fitted weights | ' if transfer else '') + 'best global weights | '
             + ' | '.join(f'patch {size}' for size in sizes) + ' | pixel best |',
             '|' + '---|' * (4 + transfer + len(sizes))]
    for row in rows:
        lines.append(f'| {row.dataset} | {row.average:.{digits}f} | '
                     + (f'{row.transfer_psnr:.{digits}f} | ' if transfer else '') + f'{row.global_psnr:.{digits}f} | '
                     + ' | '.join(f'{row.patch_psnr[size]:.{digits}f}' for size in sizes)
                     + f' | {row.pixel_best:.{digits}f} |')
    lines.append('')
    if transfer:
        weights = bounds.transfer_weights
        lines.append('Train-fitted weights (not fitted to the sets): '
                     + ', '.join(f'{name} {weight:.3f}' for name, weight in weights.items())
                     + f' (sum {sum(weights.values()):.3f})')
    for row in rows:
        weights = ', '.join(f'{name} {weight:.3f}' for name, weight in zip(row.teachers, row.global_weights))
        lines.append(f'Global weights, {row.dataset}: {weights} (sum {sum(row.global_weights):.3f})')
    return '\n'.join(lines)


__all__ = ['DEFAULT_PATCH_SIZES', 'FusionBoundRow', 'FusionBounds', 'fit_global_weights', 'fusion_bounds_markdown',
           'least_squares_weights', 'patch_oracle', 'pixel_best', 'psnr_of_mse']
