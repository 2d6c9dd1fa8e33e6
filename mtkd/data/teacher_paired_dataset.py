"""Paired GT/LQ images with the cached outputs of every teacher, cropped and flipped together with GT.

Used by the KD models of mtkd (MTKD stage 1 and 2, Jiang et al., ECCV 2024; DTKD) so that teachers are run
once per image (:mod:`mtkd.teacher_cache`) instead of at every iteration.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.utils import data
from torchvision.transforms.functional import normalize

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, get_root_logger, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from mtkd.config.schema import PairedImageDatasetOptions, register_dataset_options
from mtkd.data.pairing import match_gt_to_lq
from mtkd.teacher_cache import (BUILD_COMMAND, DEFAULT_CACHE_ROOT, TeacherCacheError, TeacherOutputCache,
                                dataset_key, image_stem, paired_lq_paths)
from mtkd.teachers import check_fingerprint


@register_dataset_options('TeacherPairedImageDataset')
class TeacherPairedImageDatasetOptions(PairedImageDatasetOptions):
    """``TeacherPairedImageDataset``: BasicSR's paired-folder options plus where the teacher outputs are."""
    teacher_cache_dir: str | None = Field(
        default=None, description='folder of a built teacher-output cache (<teacher_cache_root>/<key>, printed by '
        'scripts/build_teacher_cache.py); when null, the cache is found under teacher_cache_root from '
        'teacher_fingerprints')
    teacher_cache_root: str = Field(default=DEFAULT_CACHE_ROOT,
                                    description='where scripts/build_teacher_cache.py puts caches')
    teacher_names: list[str] | None = Field(
        default=None, description="the teachers' names in order; the cache's manifest must list the same")
    skip_images_smaller_than_patch: bool = Field(
        default=False, description='training: leave out (and log) images whose HR is smaller than gt_size '
        'instead of stopping with an error (the 291-image set has 7 such images at gt_size 128, x4)')
    teachers: list[dict[str, Any]] | None = Field(
        default=None, description='filled by mtkd from the teachers: list: with it, a missing cache is built at '
        'start (rank 0 builds, other ranks wait)')
    teacher_fingerprints: list[dict[str, Any]] | None = Field(
        default=None, description='filled by mtkd from the teachers: list (mtkd.teachers.fingerprint_specs), not '
        'by hand: identifies the cache exactly (weights sha256 included)')


def build_missing_teacher_cache(opt: dict, lq_paths: list[str]) -> None:
    """Build the cache of ``opt['teachers']`` on ``lq_paths`` unless a complete one exists (a no-op without
    ``teachers``). Under DDP rank 0 builds and the other ranks wait, so the cache is built once."""
    from basicsr.utils.dist_util import get_dist_info

    from mtkd.teachers import TeacherEnsemble, teacher_specs_from_options

    if not opt.get('teachers') or opt.get('teacher_cache_dir'):
        return
    rank, world_size = get_dist_info()
    if rank == 0:
        specs = teacher_specs_from_options(opt['teachers'])
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        ensemble = TeacherEnsemble(specs, opt['scale'], device=device, logger=get_root_logger())
        cache = TeacherOutputCache(opt.get('teacher_cache_root') or DEFAULT_CACHE_ROOT, ensemble.fingerprint(),
                                   dataset_key(lq_paths), opt['scale'])
        if not cache.is_complete([image_stem(path) for path in lq_paths]):
            cache.build(ensemble, lq_paths, progress=True, logger=get_root_logger())
        del ensemble
    if world_size > 1:
        torch.distributed.barrier()


def open_teacher_cache(opt: dict, lq_paths: list[str]) -> TeacherOutputCache:
    """The cache a dataset block points to, checked against its LR files, scale and teachers.

    ``teacher_cache_dir`` names the folder; otherwise ``teacher_fingerprints`` (filled by the option layer
    from ``teachers:``) finds it under ``teacher_cache_root``. Hashes every LR file once
    (:func:`mtkd.teacher_cache.dataset_key`) so that a cache of other or changed images is refused.
    """
    fingerprints = opt.get('teacher_fingerprints')
    directory = opt.get('teacher_cache_dir')
    key = dataset_key(lq_paths)
    if directory:
        cache = TeacherOutputCache.from_directory(directory)
        if fingerprints is not None:
            check_fingerprint(cache.ensemble_fingerprint, fingerprints, what=f'teacher-output cache {directory}')
    elif fingerprints is not None:
        cache = TeacherOutputCache.find(opt.get('teacher_cache_root') or DEFAULT_CACHE_ROOT, fingerprints, key,
                                        opt['scale'])
    else:
        raise ValueError(f"dataset '{opt.get('name')}' (TeacherPairedImageDataset): set teacher_cache_dir to the "
                         f'folder printed by `{BUILD_COMMAND}`, or let mtkd fill teacher_fingerprints from teachers:')
    if cache.dataset_key != key:
        raise TeacherCacheError(f'the teacher-output cache {cache.path} was built from other LR images than '
                                f"{opt.get('dataroot_lq')} (files added, removed or changed); rebuild it with "
                                f'`{BUILD_COMMAND}`')
    if cache.scale != opt['scale']:
        raise TeacherCacheError(f'the teacher-output cache {cache.path} is x{cache.scale}, the dataset x{opt["scale"]}')
    return cache


@DATASET_REGISTRY.register()
class TeacherPairedImageDataset(data.Dataset):
    """BasicSR's paired GT/LQ dataset that also returns every teacher's output, cropped like GT.

    Options: those of BasicSR's ``PairedImageDataset`` (``dataroot_gt``, ``dataroot_lq``, ``filename_tmpl``,
    ``meta_info_file``, ``gt_size``, ``use_hflip``, ``use_rot``, ``phase``, ``scale``, ``mean``/``std``;
    disk backend, RGB only) plus ``teacher_cache_dir`` / ``teacher_cache_root`` / ``teacher_fingerprints``
    (which cache, see :func:`open_teacher_cache`) and ``teacher_names`` (checked against the cache).

    Returns ``{'lq': (3, h, w), 'gt': (3, H, W), 'lq_path', 'gt_path', 'teacher_outputs': (N, 3, H, W)}``,
    float32 RGB; ``lq`` and ``gt`` in [0, 1], teacher outputs nominally [0, 1] (float16-stored, unclamped).
    Training: the teacher outputs are cropped at exactly the GT crop and get the same flip/rotation, because
    they go through BasicSR's ``paired_random_crop`` and ``augment`` in one list with GT (and LQ). The cached
    arrays are memory-mapped, so only the crop is read. Other phases: whole images, GT cut to LQ × scale.
    """

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        backend = dict(opt.get('io_backend') or {'type': 'disk'})
        if backend.get('type', 'disk') != 'disk':
            raise ValueError("TeacherPairedImageDataset reads image folders: io_backend type must be 'disk' "
                             f"(got {backend.get('type')!r}); the teacher outputs are cached separately")
        if opt.get('color') == 'y':
            raise ValueError("TeacherPairedImageDataset: color 'y' is not supported (teacher outputs are RGB); "
                             'remove color: y')
        self.io_backend_opt = backend
        self.file_client = None
        self.scale = opt['scale']
        self.mean, self.std = opt.get('mean'), opt.get('std')
        self.paths = paired_lq_paths(opt['dataroot_gt'], opt['dataroot_lq'], opt.get('filename_tmpl', '{}'),
                                     opt.get('meta_info_file'))
        self.stems = [image_stem(pair['lq_path']) for pair in self.paths]
        build_missing_teacher_cache(opt, [pair['lq_path'] for pair in self.paths])
        self.cache = open_teacher_cache(opt, [pair['lq_path'] for pair in self.paths])
        self.teacher_names = self.cache.teacher_names
        wanted = opt.get('teacher_names')
        if wanted is not None and list(wanted) != self.teacher_names:
            raise TeacherCacheError(f'teacher_names {list(wanted)} differ from the teachers of the cache '
                                    f'{self.cache.path}: {self.teacher_names} (order matters); point teacher_cache_dir '
                                    f'to a cache of these teachers or build it with `{BUILD_COMMAND}`')
        missing = self.cache.missing(self.stems)
        if missing:
            shown = ', '.join(f'{stem} ({teacher})' for teacher, stem in missing[:5])
            more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
            raise TeacherCacheError(f'the teacher-output cache {self.cache.path} lacks {shown}{more}; finish it with '
                                    f'`{BUILD_COMMAND}`')
        if opt['phase'] == 'train' and opt.get('skip_images_smaller_than_patch'):
            self._drop_images_smaller_than(opt['gt_size'])

    def _drop_images_smaller_than(self, gt_size: int) -> None:
        """Leave out training images whose (cropped) HR is smaller than the patch, and log their names."""
        first_teacher = self.teacher_names[0]
        keep = [index for index, stem in enumerate(self.stems)
                if min(self.cache.open_array(first_teacher, stem).shape[:2]) >= gt_size]
        dropped = [self.stems[index] for index in range(len(self.stems)) if index not in set(keep)]
        if dropped:
            get_root_logger().warning(f"dataset '{self.opt.get('name')}': {len(dropped)} image(s) smaller than "
                                      f'gt_size {gt_size} left out (skip_images_smaller_than_patch): {dropped}')
        self.paths = [self.paths[index] for index in keep]
        self.stems = [self.stems[index] for index in keep]

    def __len__(self) -> int:
        return len(self.paths)

    def _teacher_arrays(self, index: int, lq_shape: tuple[int, ...]) -> list[np.ndarray]:
        stem = self.stems[index]
        expected = (lq_shape[0] * self.scale, lq_shape[1] * self.scale, 3)
        arrays = [self.cache.open_array(name, stem) for name in self.teacher_names]
        for name, array in zip(self.teacher_names, arrays):
            if tuple(array.shape) != expected:
                raise TeacherCacheError(f"cached output of '{name}' for {stem} is {tuple(array.shape)}, expected "
                                        f'{expected} (LQ × {self.scale}): the cache does not belong to this data')
        return arrays

    def __getitem__(self, index: int) -> dict:
        if self.file_client is None:
            options = dict(self.io_backend_opt)
            self.file_client = FileClient(options.pop('type', 'disk'), **options)
        gt_path, lq_path = self.paths[index]['gt_path'], self.paths[index]['lq_path']
        # HWC, BGR, float32 in [0, 1], as BasicSR's PairedImageDataset reads them.
        image_gt = imfrombytes(self.file_client.get(gt_path, 'gt'), float32=True)
        image_lq = imfrombytes(self.file_client.get(lq_path, 'lq'), float32=True)
        teacher_arrays = self._teacher_arrays(index, image_lq.shape)
        image_gt = match_gt_to_lq(image_gt, image_lq, self.scale, gt_path, lq_path)

        if self.opt['phase'] == 'train':
            # One list: the teacher outputs get GT's crop window and flips (memory maps: only the crop is read).
            cropped_gts, image_lq = paired_random_crop([image_gt] + teacher_arrays, image_lq, self.opt['gt_size'],
                                                       self.scale, gt_path)
            image_gt = cropped_gts[0]
            teachers = [np.array(crop, dtype=np.float32) for crop in cropped_gts[1:]]
            augmented = augment([image_gt, image_lq] + teachers, self.opt.get('use_hflip', True),
                                self.opt.get('use_rot', True))
            image_gt, image_lq, teachers = augmented[0], augmented[1], augmented[2:]
        else:
            teachers = [np.array(array, dtype=np.float32) for array in teacher_arrays]

        tensor_gt, tensor_lq = img2tensor([image_gt, image_lq], bgr2rgb=True, float32=True)
        # Cached outputs are already RGB.
        teacher_outputs = torch.stack([torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
                                       for array in teachers])
        if self.mean is not None or self.std is not None:
            normalize(tensor_lq, self.mean, self.std, inplace=True)
            normalize(tensor_gt, self.mean, self.std, inplace=True)
            for output in teacher_outputs:
                normalize(output, self.mean, self.std, inplace=True)
        return {'lq': tensor_lq, 'gt': tensor_gt, 'lq_path': lq_path, 'gt_path': gt_path,
                'teacher_outputs': teacher_outputs}


__all__ = ['TeacherPairedImageDataset', 'TeacherPairedImageDatasetOptions', 'open_teacher_cache']
