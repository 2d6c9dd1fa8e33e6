"""How much do the teachers' errors overlap? Pearson correlation of their Y-channel errors on a benchmark set.

MTKD's knowledge aggregation (Jiang et al., Sec. 3.1) can only gain over the best teacher where the teachers err
differently. With N teachers whose errors ``e_i = SR_i - HR`` have equal variance ``σ²`` and pairwise correlation
``ρ``, the plain average has error variance ``σ² (1 + (N - 1) ρ) / N``: near ``ρ = 1`` averaging, and any
fusion of the teachers alone, has little left to gain. This module measures ``ρ`` for every pair of teachers.

Protocol, the same as PSNR's (:func:`mtkd.metrics.evaluation.score_images`): the 8-bit output image, its Y channel
(BasicSR's ``to_y_channel``, ITU-R BT.601, 0-255), ``crop_border = scale``, the ground truth cropped to the SR
size. The errors of every pixel of every image of a set are pooled into one correlation per pair (so large images
weigh more than small ones; PSNR instead averages per image).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mtkd.metrics.evaluation import y_planes


def y_error(sr_bgr_uint8: np.ndarray, gt_bgr_uint8: np.ndarray, crop_border: int) -> np.ndarray:
    """Flattened Y-channel error ``SR - GT`` (float64, grey levels) inside the crop border."""
    planes, target = y_planes({'sr': sr_bgr_uint8}, gt_bgr_uint8, crop_border)
    return (planes[0] - target).reshape(-1)


class ErrorCorrelation:
    """Accumulates, per benchmark set, the sums that give the teachers' error covariance (one pass, any size).

    ``add(dataset, {teacher: sr_bgr_uint8}, gt_bgr_uint8, crop_border)`` once per image, the same teachers in every
    call of a set; ``matrix(dataset)`` then returns ``(names, ρ)`` with ``ρ[i, j]`` the Pearson correlation of
    teacher i's and teacher j's errors over all pixels added for that set.
    """

    def __init__(self):
        self._names: dict[str, list[str]] = {}
        self._count: dict[str, int] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._products: dict[str, np.ndarray] = {}

    @property
    def datasets(self) -> list[str]:
        return list(self._names)

    def add(self, dataset: str, outputs: Mapping[str, np.ndarray], gt_bgr_uint8: np.ndarray, crop_border: int) -> None:
        names = list(outputs)
        if len(names) < 2:
            raise ValueError(f'error correlation needs at least two teachers, got {names}')
        if self._names.setdefault(dataset, names) != names:
            raise ValueError(f'{dataset}: teachers {names} differ from the earlier images\' {self._names[dataset]}')
        planes, target = y_planes(outputs, gt_bgr_uint8, crop_border)
        errors = (planes - target).reshape(len(names), -1)
        self._count[dataset] = self._count.get(dataset, 0) + errors.shape[1]
        self._sum[dataset] = self._sum.get(dataset, 0) + errors.sum(axis=1)
        self._products[dataset] = self._products.get(dataset, 0) + errors @ errors.T

    def matrix(self, dataset: str) -> tuple[list[str], np.ndarray]:
        if dataset not in self._names:
            raise KeyError(f'no image was added for {dataset} (have: {self.datasets})')
        count = self._count[dataset]
        mean = self._sum[dataset] / count
        covariance = self._products[dataset] / count - np.outer(mean, mean)
        std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        if np.any(std == 0):
            zero = [name for name, value in zip(self._names[dataset], std) if value == 0]
            raise ValueError(f'{dataset}: teachers {zero} have no error at all (they return the ground truth); '
                             'a correlation is undefined')
        correlation = np.clip(covariance / np.outer(std, std), -1.0, 1.0)
        return list(self._names[dataset]), correlation


def mean_pairwise(correlation: np.ndarray) -> float:
    """Mean of the off-diagonal entries (the average correlation over teacher pairs)."""
    size = correlation.shape[0]
    return float((correlation.sum() - np.trace(correlation)) / (size * (size - 1)))


def correlation_markdown(accumulator: ErrorCorrelation, datasets: Sequence[str] | None = None,
                         digits: int = 3) -> str:
    """One Markdown table per set: teachers × teachers, then the mean over pairs."""
    blocks = []
    for dataset in datasets or accumulator.datasets:
        names, correlation = accumulator.matrix(dataset)
        lines = [f'Error correlation, {dataset} (Y channel, pooled pixels):', '',
                 '| | ' + ' | '.join(names) + ' |', '|' + '---|' * (len(names) + 1)]
        for name, row in zip(names, correlation):
            lines.append(f'| {name} | ' + ' | '.join(f'{value:.{digits}f}' for value in row) + ' |')
        lines += ['', f'Mean over pairs: {mean_pairwise(correlation):.{digits}f}']
        blocks.append('\n'.join(lines))
    return '\n\n'.join(blocks)
