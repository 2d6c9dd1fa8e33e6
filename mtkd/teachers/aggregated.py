"""The teachers followed by the frozen stage-1 aggregator, as one "teacher" whose output is ``I_MT``.

MTKD stage 2 (Jiang et al., ECCV 2024, Sec. 3.2) distils the aggregated image ``I_MT``. With teachers and
aggregator fixed, ``I_MT`` of every training image can be computed once and cached like a teacher output
(``teacher_cache_content: aggregate`` in a ``TeacherPairedImageDataset`` block): the stage-2 step then runs
neither the teachers nor the aggregator, and the cache holds one image per LR image instead of N + 1.
:class:`AggregatedTeachers` has the interface :class:`mtkd.teachers.cache.TeacherOutputCache` builds from
(``names``, ``scale``, ``device``, ``fingerprint()``, ``forward(lq, tile_size, tile_overlap)``).

The fingerprint is that of the aggregator (arch, arguments, sha256 of the checkpoint, ``param_key``) with the
fingerprints of its teachers inside, so a change of any teacher or of the KA checkpoint selects another cache.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mtkd.teachers.ensemble import (TeacherEnsemble, canonical_network_args, check_checkpoint_teachers,
                                    fingerprint_specs, freeze_network, run_tiled, teacher_specs_from_options)
from mtkd.utils.fileio import file_sha256

AGGREGATE_NAME = 'aggregate'


def _resolve(path: str | None, root: str | None) -> str | None:
    if path is None or root is None or os.path.isabs(os.path.expanduser(path)):
        return path
    return os.path.join(root, path)


def aggregate_fingerprint(teacher_fingerprints: Sequence[Mapping], aggregator: Mapping,
                          weights_sha256: str | None) -> list[dict[str, Any]]:
    """The one-entry fingerprint of ``I_MT`` (see the module docstring)."""
    return [{'name': AGGREGATE_NAME, 'type': aggregator['network']['type'],
             'args': canonical_network_args(aggregator['network']), 'weights_sha256': weights_sha256,
             'param_key': aggregator.get('param_key', 'auto'), 'teachers': [dict(entry) for entry in teacher_fingerprints]}]


def aggregate_fingerprint_from_options(teachers: Sequence[Mapping], aggregator: Mapping,
                                       root: str | None = None) -> list[dict[str, Any]]:
    """:func:`aggregate_fingerprint` from option blocks, without building anything (hashes the files)."""
    specs = teacher_specs_from_options(teachers, root)
    weights = _resolve(aggregator.get('weights'), root)
    sha = file_sha256(weights) if weights and os.path.isfile(weights) else None
    return aggregate_fingerprint(fingerprint_specs(specs), aggregator, sha)


def load_frozen_aggregator(options: Mapping, ensemble: TeacherEnsemble, root: str | None = None,
                           allow_random_weights: bool = False, logger: logging.Logger | None = None
                           ) -> tuple[torch.nn.Module, str | None]:
    """The stage-1 KA network of an ``aggregator:`` block, frozen three ways, on the teachers' device.

    Its checkpoint must record the same teacher list as ``ensemble`` (order included) and loads strictly by default
    (EMA weights first with ``param_key: auto``). Returns the network and the resolved weights path (None when,
    with ``allow_random_weights`` for smoke tests, it keeps random weights).
    """
    from basicsr.archs import build_network

    from mtkd.weights.loading import load_weights

    logger = logger or logging.getLogger('basicsr')
    with torch.random.fork_rng(devices=[]):  # leaves the student's initialisation unchanged (see TeacherEnsemble)
        network = build_network(dict(options['network']))
    weights = _resolve(options.get('weights'), root)
    if weights is None or not os.path.isfile(weights):
        where = 'aggregator.weights is not set' if weights is None else f'aggregator weights {weights} not found'
        if not allow_random_weights:
            raise ValueError(f'{where}: give the stage-1 checkpoint (experiments/<stage1 name>/models/'
                             'net_g_latest.pth), trained with options/stage1_*.yml')
        logger.warning(f'{where}; RANDOM aggregator weights (smoke test): its output means nothing.')
        return freeze_network(network).to(ensemble.device), None
    check_checkpoint_teachers(weights, ensemble, 'aggregator checkpoint', logger)
    load_weights(network, weights, param_key=options.get('param_key', 'auto'),
                 strict=options.get('strict_load', True), logger=logger)
    return freeze_network(network).to(ensemble.device), weights


class AggregatedTeachers:
    """``lq (B, 3, H, W)`` → ``[I_MT (B, 3, sH, sW)]``: the teachers, then the frozen aggregator, under no_grad."""

    def __init__(self, ensemble: TeacherEnsemble, aggregator: Mapping, root: str | None = None,
                 logger: logging.Logger | None = None):
        self.network, weights = load_frozen_aggregator(aggregator, ensemble, root, logger=logger)
        self.ensemble = ensemble
        self._fingerprint = aggregate_fingerprint(ensemble.fingerprint(), aggregator, file_sha256(weights))

    names = [AGGREGATE_NAME]

    @property
    def scale(self) -> int:
        return self.ensemble.scale

    @property
    def device(self) -> torch.device:
        return self.ensemble.device

    def fingerprint(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self._fingerprint]

    def _aggregate(self, lq: torch.Tensor) -> list[torch.Tensor]:
        # The aggregator reads the teacher outputs rounded to float16, as from a teacher-output cache and as
        # DistillModel computes I_MT during a step: the three ways give the same I_MT (mtkd.training.precision).
        from mtkd.training.precision import round_like_cache

        return [self.network(torch.cat([round_like_cache(output) for output in self.ensemble.forward(lq)], dim=1))]

    def forward(self, lq: torch.Tensor, tile_size: int | None = None, tile_overlap: int = 16) -> list[torch.Tensor]:
        with torch.no_grad():
            return run_tiled(self._aggregate, lq, self.scale, tile_size, tile_overlap)

    __call__ = forward


def cache_networks_from_options(opt: Mapping, device: str | torch.device, logger: logging.Logger | None = None
                                ) -> TeacherEnsemble | AggregatedTeachers:
    """The networks whose outputs a ``TeacherPairedImageDataset`` block's cache holds: its ``teachers`` (filled by
    mtkd, weights resolved), followed for ``teacher_cache_content: aggregate`` by the frozen ``aggregator``."""
    specs = teacher_specs_from_options(opt['teachers'])
    ensemble = TeacherEnsemble(specs, opt['scale'], device=device, logger=logger)
    if opt.get('teacher_cache_content') == 'aggregate':
        return AggregatedTeachers(ensemble, opt['aggregator'], logger=logger)
    return ensemble
