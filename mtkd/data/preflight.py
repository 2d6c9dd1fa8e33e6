"""Check every dataset of an option file before anything is built or trained.

BasicSR lists a dataset's files when it is built and reads them only when a batch or a validation image is
needed, and at validation it crops any HR larger than ``LR × scale`` silently: an x2 model run on an X4 folder
scores about 11 dB with exit code 0, a corrupt validation image stops training at its first validation
(iteration 5000 in the paper files). :func:`check_datasets` runs at start-up, for every dataset of the file:

- the GT and LQ folders pair up as BasicSR pairs them (``filename_tmpl``, ``meta_info_file``), and each file
  without its partner is named;
- every image can be read: validation and test images are decoded in full (they are few, and every one of them
  is scored), training images by their header (PIL), which finds empty, truncated-header and non-image files;
- every pair follows the mod-crop rule (:func:`mtkd.data.pairing.pair_size_problem`): HR = LR × scale, plus
  at most ``scale - 1`` rows/columns;
- a training image is at least the patch (``gt_size``) unless ``skip_images_smaller_than_patch`` leaves it out.

LMDB datasets are not checked here (BasicSR reads their sizes from the LMDB's meta file); datasets of types
mtkd does not know are left to their own code.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mtkd.data.pairing import pair_size_problem
from mtkd.utils.errors import MtkdError

#: Dataset types whose folders are GT/LQ pairs listed like BasicSR's ``PairedImageDataset``.
PAIRED_TYPES = ('PairedImageDataset', 'CheckedPairedImageDataset', 'TeacherPairedImageDataset')
#: Dataset types with an LQ folder only.
SINGLE_TYPES = ('SingleImageDataset',)
#: Problems listed in full in one error; the rest are counted.
SHOWN_PROBLEMS = 8


class DataCheckError(MtkdError, ValueError):
    """A dataset whose files do not pair up, cannot be read, or whose sizes do not match the scale."""


@dataclass(frozen=True)
class DatasetReport:
    """What :func:`check_dataset` looked at: the block's key, the dataset's name, images read, seconds."""
    key: str
    name: str
    images: int
    seconds: float


def list_files(folder: str) -> list[str]:
    """Names of the files BasicSR's ``scandir`` lists in ``folder``: not hidden, not folders, sorted."""
    return sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith('.') and entry.is_file())


def paired_paths(dataroot_gt: str, dataroot_lq: str, filename_tmpl: str = '{}',
                 meta_info_file: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(gt_path, lq_path)], problems)``: the pairs BasicSR's ``PairedImageDataset`` would build, and a
    problem for each file without its partner (where BasicSR stops on a bare ``AssertionError``)."""
    if meta_info_file:
        with open(meta_info_file, encoding='utf-8') as handle:
            gt_names = [line.strip().split(' ')[0] for line in handle if line.strip()]
        lq_names = set(list_files(dataroot_lq))
        gt_present = set(list_files(dataroot_gt))
        missing_gt = [name for name in gt_names if name not in gt_present]
        problems = [f'{meta_info_file} lists {name}, which is not in {dataroot_gt}' for name in missing_gt]
    else:
        gt_names, lq_names = list_files(dataroot_gt), set(list_files(dataroot_lq))
        problems = []
    pairs, expected_lq = [], set()
    for gt_name in gt_names:
        stem, extension = os.path.splitext(os.path.basename(gt_name))
        lq_name = f'{filename_tmpl.format(stem)}{extension}'
        expected_lq.add(lq_name)
        if lq_name not in lq_names:
            problems.append(f'{os.path.join(dataroot_gt, gt_name)} has no LR partner {lq_name} in {dataroot_lq} '
                            f"(filename_tmpl '{filename_tmpl}')")
            continue
        pairs.append((os.path.join(dataroot_gt, gt_name), os.path.join(dataroot_lq, lq_name)))
    if not meta_info_file:
        problems += [f'{os.path.join(dataroot_lq, name)} has no HR partner in {dataroot_gt} (filename_tmpl '
                     f"'{filename_tmpl}' maps HR names to LR names)" for name in sorted(lq_names - expected_lq)]
    return pairs, problems


def image_size(path: str, decode: bool) -> tuple[int, int]:
    """``(height, width)`` of an image file; ``decode`` reads every pixel (as BasicSR will), otherwise only the
    header is read. Raises :class:`mtkd.metrics.evaluation.ImageReadError` naming the file."""
    from mtkd.metrics.evaluation import ImageReadError, read_image

    if decode:
        return read_image(path).shape[:2]
    size = os.path.getsize(path)
    if size == 0:
        raise ImageReadError(f'Image file {path} is empty (0 bytes): re-create or re-download it.')
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()  # PNG: every chunk's CRC, so a truncated file is found without decoding it
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return read_image(path).shape[:2]  # a format PIL does not know may still decode with OpenCV
    return height, width


def _pair_problems(pair: tuple[str, str], scale: int, decode: bool, min_gt_size: int | None) -> list[str]:
    from mtkd.metrics.evaluation import ImageReadError

    gt_path, lq_path = pair
    try:
        gt_size, lq_size = image_size(gt_path, decode), image_size(lq_path, decode)
    except ImageReadError as error:
        return [str(error)]
    problem = pair_size_problem(gt_size, lq_size, scale, gt_path, lq_path)
    if problem:
        return [problem]
    if min_gt_size and min(lq_size) * scale < min_gt_size:
        return [f'LR {lq_path} is {lq_size[1]}x{lq_size[0]}, smaller than the training patch (gt_size {min_gt_size} '
                f'at scale {scale}); set skip_images_smaller_than_patch: true (CheckedPairedImageDataset) to leave '
                'such images out, or lower gt_size']
    return []


def _single_problems(path: str, decode: bool) -> list[str]:
    from mtkd.metrics.evaluation import ImageReadError

    try:
        image_size(path, decode)
    except ImageReadError as error:
        return [str(error)]
    return []


def _map(function, items: Iterable, workers: int) -> list:
    items = list(items)
    if workers <= 1 or len(items) < 16:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoders release the GIL
        return list(pool.map(function, items))


def check_dataset(key: str, dataset: Mapping, scale: int, workers: int = 4) -> tuple[DatasetReport, list[str]]:
    """The problems of one dataset block (BasicSR's dict, paths resolved), and what was checked."""
    started = time.perf_counter()
    dataset_type = dataset.get('type')
    phase = dataset.get('phase') or key.split('_')[0]
    decode = phase != 'train'
    backend = (dataset.get('io_backend') or {}).get('type', 'disk')
    name = dataset.get('name', key)
    if backend != 'disk' or dataset_type not in PAIRED_TYPES + SINGLE_TYPES:
        return DatasetReport(key, name, 0, 0.0), []
    if dataset_type in SINGLE_TYPES:
        folder, meta = dataset['dataroot_lq'], dataset.get('meta_info_file')
        if meta:
            with open(meta, encoding='utf-8') as handle:
                paths = [os.path.join(folder, line.strip().split(' ')[0]) for line in handle if line.strip()]
        else:
            paths = [os.path.join(folder, name) for name in list_files(folder)]
        problems = [problem for found in _map(lambda path: _single_problems(path, decode), paths, workers)
                    for problem in found]
        return DatasetReport(key, name, len(paths), time.perf_counter() - started), problems
    pairs, problems = paired_paths(dataset['dataroot_gt'], dataset['dataroot_lq'], dataset.get('filename_tmpl') or '{}',
                                   dataset.get('meta_info_file'))
    if not pairs and not problems:
        problems = [f"no image pairs in {dataset['dataroot_gt']} and {dataset['dataroot_lq']}"]
    min_gt_size = (dataset.get('gt_size') if phase == 'train' and not dataset.get('skip_images_smaller_than_patch')
                   else None)
    found = _map(lambda pair: _pair_problems(pair, scale, decode, min_gt_size), pairs, workers)
    problems += [problem for pair_problems in found for problem in pair_problems]
    return DatasetReport(key, name, 2 * len(pairs), time.perf_counter() - started), problems


def check_datasets(options: Mapping, workers: int | None = None) -> list[DatasetReport]:
    """Check every dataset of BasicSR's option dict (paths resolved); raise :class:`DataCheckError` listing the
    problems of all of them at once (the first :data:`SHOWN_PROBLEMS` of each in full)."""
    workers = workers or min(8, os.cpu_count() or 1)
    reports, sections = [], []
    for key, dataset in (options.get('datasets') or {}).items():
        report, problems = check_dataset(key, dataset, options['scale'], workers)
        reports.append(report)
        if problems:
            shown = [f'  - {problem}' for problem in problems[:SHOWN_PROBLEMS]]
            if len(problems) > SHOWN_PROBLEMS:
                shown.append(f'  - ... and {len(problems) - SHOWN_PROBLEMS} more')
            sections.append(f"datasets.{key} ('{report.name}'): {len(problems)} problem(s)\n" + '\n'.join(shown))
    if sections:
        raise DataCheckError('The data of this option file cannot be used (nothing was trained or written):\n'
                             + '\n'.join(sections))
    return reports


__all__ = ['DataCheckError', 'DatasetReport', 'check_dataset', 'check_datasets', 'image_size', 'paired_paths',
           'list_files']
