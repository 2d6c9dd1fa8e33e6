"""Paired GT/LQ images with the cached outputs of every teacher, cropped and flipped together with GT.

Used by the KD models of mtkd (MTKD stage 1 and 2, Jiang et al., ECCV 2024; DTKD) so that teachers are run
once per image (:mod:`mtkd.teachers.cache`) instead of at every iteration.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY

from mtkd.config.schema import register_dataset_options
from mtkd.data.checked_paired_dataset import CheckedPairedImageDataset, CheckedPairedImageDatasetOptions
from mtkd.teachers.cache import (BUILD_COMMAND, DEFAULT_CACHE_ROOT, TeacherCacheError, TeacherOutputCache,
                                 check_dataset_cache_behaviour, dataset_key, image_stem)
from mtkd.teachers.ensemble import check_fingerprint


@register_dataset_options('TeacherPairedImageDataset')
class TeacherPairedImageDatasetOptions(CheckedPairedImageDatasetOptions):
    """``TeacherPairedImageDataset``: BasicSR's paired-folder options plus where the teacher outputs are."""
    teacher_cache_dir: str | None = Field(
        default=None, description='folder of a built teacher-output cache (<teacher_cache_root>/<key>, printed by '
        'scripts/build_teacher_cache.py); when null, the cache is found under teacher_cache_root from '
        'teacher_fingerprints')
    teacher_cache_root: str = Field(default=DEFAULT_CACHE_ROOT,
                                    description='where scripts/build_teacher_cache.py puts caches')
    teacher_names: list[str] | None = Field(
        default=None, description="the teachers' names in order; the cache's manifest must list the same")
    teachers: list[dict[str, Any]] | None = Field(
        default=None, description='filled by mtkd from the teachers: list: with it, a missing cache is built at '
        'start (under DDP every rank builds its share)')
    teacher_fingerprints: list[dict[str, Any]] | None = Field(
        default=None, description='filled by mtkd from the teachers: list '
        '(mtkd.teachers.ensemble.fingerprint_specs), not by hand: identifies the cache exactly (weights sha256 '
        'included)')
    teacher_cache_content: Literal['teachers', 'aggregate'] = Field(
        default='teachers', description="'teachers': each teacher's output (stage 1, DTKD, KD); 'aggregate': only "
        "the stage-1 aggregator's I_MT (MTKD stage 2: neither teachers nor aggregator run during training)")
    aggregator: dict[str, Any] | None = Field(
        default=None, description="filled by mtkd from the model's aggregator: block for content 'aggregate'")
    accept_stale_teacher_cache: bool = Field(
        default=False, description='use the cache even when its networks now compute other outputs on the probe '
        'image than when it was built (their code changed; mtkd.teachers.cache.behaviour_fingerprint): a warning '
        'instead of an error')


def build_missing_teacher_cache(opt: dict, lq_paths: list[str]) -> None:
    """Build the cache of ``opt['teachers']`` on ``lq_paths`` unless a complete one exists (a no-op without
    ``teachers``). Under DDP every rank computes its share of the images on its own GPU, then one barrier
    (:func:`mtkd.teachers.cache.build_sharded`; bounded by ``dist_params.timeout``): the cache is built once, in
    1/N of the time, and no rank waits idle for the whole build."""
    from mtkd.teachers.aggregated import cache_networks_from_options
    from mtkd.teachers.cache import build_sharded
    from mtkd.training import distributed

    if not opt.get('teachers') or opt.get('teacher_cache_dir'):
        return
    stems = [image_stem(path) for path in lq_paths]
    fingerprints = opt.get('teacher_fingerprints')
    key = dataset_key(lq_paths)
    root = opt.get('teacher_cache_root') or DEFAULT_CACHE_ROOT
    # The option layer fills teacher_fingerprints: a complete cache is found without building any network.
    if fingerprints is not None and not distributed.any_rank(
            not TeacherOutputCache(root, fingerprints, key, opt['scale']).is_complete(stems)):
        return
    device = torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')
    networks = cache_networks_from_options(opt, device, get_root_logger())
    cache = TeacherOutputCache(root, networks.fingerprint(), key, opt['scale'])
    if distributed.any_rank(not cache.is_complete(stems)):
        build_sharded(cache, networks, lq_paths, progress=True, logger=get_root_logger())
    del networks


def open_teacher_cache(opt: dict, lq_paths: list[str]) -> TeacherOutputCache:
    """The cache a dataset block points to, checked against its LR files, scale and teachers.

    ``teacher_cache_dir`` names the folder; otherwise ``teacher_fingerprints`` (filled by the option layer
    from ``teachers:``) finds it under ``teacher_cache_root``. Hashes every LR file once
    (:func:`mtkd.teachers.cache.dataset_key`) so that a cache of other or changed images is refused.
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
class TeacherPairedImageDataset(CheckedPairedImageDataset):
    """Paired GT/LQ images that also return every teacher's output, cropped and flipped like GT.

    Options: those of :class:`CheckedPairedImageDataset` (BasicSR's ``PairedImageDataset`` vocabulary, disk
    backend, RGB) plus ``teacher_cache_dir`` / ``teacher_cache_root`` / ``teacher_fingerprints`` (which cache,
    see :func:`open_teacher_cache`), ``teacher_names`` (checked against the cache) and ``teachers`` (filled by
    mtkd: a missing cache is built at start).

    Returns ``{'lq': (3, h, w), 'gt': (3, H, W), 'lq_path', 'gt_path', 'teacher_outputs': (N, 3, H, W)}``, RGB;
    ``lq`` and ``gt`` float32 in [0, 1], teacher outputs (``cached_target`` for an aggregate cache) float16 as
    stored, nominally [0, 1], unclamped: the models widen them to float32 on the device, which halves the
    workers' memory and the host-to-device copy and gives the same values.
    Training: the teacher outputs are cropped at exactly the GT crop and get the same flip/rotation, because
    they go through BasicSR's ``paired_random_crop`` and ``augment`` in one list with GT (and LQ). The cached
    arrays are memory-mapped, so only the crop is read. Other phases: whole images, GT cut to LQ × scale.
    """

    def setup(self) -> None:
        """Build the teacher-output cache if missing, open it, and check it covers every image."""
        opt = self.opt
        lq_paths = [pair['lq_path'] for pair in self.paths]
        build_missing_teacher_cache(opt, lq_paths)
        self.cache = open_teacher_cache(opt, lq_paths)
        check_dataset_cache_behaviour(self.cache, opt, get_root_logger())  # stale outputs of changed code
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

    def lq_size(self, index: int) -> tuple[int, int]:
        """From the memory-mapped cached output (no image decoding): ``(sH, sW) / scale``."""
        height, width = self.cache.open_array(self.teacher_names[0], self.stems[index]).shape[:2]
        return height // self.scale, width // self.scale

    def extra_arrays(self, index: int, lq_shape: tuple[int, ...]) -> list[np.ndarray]:
        stem = self.stems[index]
        expected = (lq_shape[0] * self.scale, lq_shape[1] * self.scale, 3)
        arrays = [self.cache.open_array(name, stem) for name in self.teacher_names]
        for name, array in zip(self.teacher_names, arrays):
            if tuple(array.shape) != expected:
                raise TeacherCacheError(f"cached output of '{name}' for {stem} is {tuple(array.shape)}, expected "
                                        f'{expected} (LQ × {self.scale}): the cache does not belong to this data')
        return arrays

    def extra_outputs(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        # Cached outputs are already RGB. An aggregate cache holds I_MT only: the distillation target itself.
        stacked = torch.stack([torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))) for array in arrays])
        if self.opt.get('teacher_cache_content') == 'aggregate':
            return {'cached_target': stacked[0]}
        return {'teacher_outputs': stacked}


__all__ = ['TeacherPairedImageDataset', 'TeacherPairedImageDatasetOptions', 'open_teacher_cache']
