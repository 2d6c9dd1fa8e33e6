"""The process group and the few collectives mtkd needs outside DDP's own gradient all-reduce.

One process per GPU (``torchrun --nproc-per-node N mtkd/train.py -opt <file> --launcher pytorch``), NCCL on GPUs
and gloo on CPUs. Every collective waits at most ``dist_params.timeout`` seconds (default 1800; PyTorch's NCCL
default is 600, too short for a teacher-cache build or a validation of full-size images), so a rank that
died or stalled ends the job with a timeout error instead of a hang. What mtkd shares between ranks:

* the teacher-output cache: every rank computes its share of the images, then one barrier
  (:func:`mtkd.data.teacher_paired_dataset.build_missing_teacher_cache`);
* validation: every rank scores its share of the images, the per-image values are gathered
  (:meth:`mtkd.models.plain_sr_model.PlainSRModel.dist_validation`);
* the end of a step: one small all-reduce of [non-finite loss, Ctrl-C] per optimizer step, so every rank skips
  the same updates and stops at the same iteration (:class:`mtkd.training.optimization.OptimizerStep`).
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_SECONDS = 1800
Item = TypeVar('Item')


def timeout_from_options(dist_params: Mapping | None) -> datetime.timedelta:
    """``dist_params.timeout`` (seconds) as a timedelta."""
    seconds = (dist_params or {}).get('timeout') or DEFAULT_TIMEOUT_SECONDS
    return datetime.timedelta(seconds=float(seconds))


def _slurm_environment(port: int | None) -> None:
    """torchrun's environment variables from SLURM's (one task per GPU)."""
    os.environ.setdefault('MASTER_ADDR', subprocess.getoutput(
        f"scontrol show hostname {os.environ['SLURM_NODELIST']} | head -n1"))
    os.environ['MASTER_PORT'] = str(port or os.environ.get('MASTER_PORT', 29500))
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', str(int(os.environ['SLURM_PROCID']) %
                                                                   max(torch.cuda.device_count(), 1)))


def init_process_group(launcher: str, dist_params: Mapping | None = None) -> None:
    """Start the process group of a ``pytorch`` (torchrun) or ``slurm`` launch with the option's backend and timeout.

    Backend: ``dist_params.backend``, else NCCL with CUDA and gloo without (so DDP runs in CPU tests too); NCCL on
    a machine without CUDA falls back to gloo with a note. Each process takes the GPU ``LOCAL_RANK %
    device_count`` (two processes may share one GPU with gloo). Timeout: ``dist_params.timeout`` seconds."""
    dist_params = dist_params or {}
    if launcher == 'slurm':
        _slurm_environment(dist_params.get('port'))
    backend = dist_params.get('backend') or ('nccl' if torch.cuda.is_available() else 'gloo')
    if backend == 'nccl' and not torch.cuda.is_available():
        # NCCL needs GPUs; the same option file (every shipped one says nccl) should run a CPU smoke test.
        if int(os.environ.get('RANK', 0)) == 0:
            print('mtkd: note: dist_params.backend is nccl but this machine has no CUDA GPU: using gloo',
                  file=sys.stderr)
        backend = 'gloo'
    arguments: dict[str, Any] = {'backend': backend, 'timeout': timeout_from_options(dist_params)}
    if torch.cuda.is_available():
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        if backend == 'nccl':
            arguments['device_id'] = device  # binds the communicator now: barriers need not guess the device
    dist.init_process_group(**arguments)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return rank_and_world()[1] > 1


def shard(items: Sequence[Item], rank: int | None = None, world: int | None = None) -> list[Item]:
    """This rank's share of ``items``: every ``world``-th item from ``rank`` (balanced when sorted by size)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    return list(items[rank::world])


def collective_device() -> torch.device:
    """Where small tensors for collectives live: the current GPU with NCCL, the CPU with gloo."""
    if dist.is_initialized() and dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def barrier() -> None:
    """Wait for every rank (a no-op in a single process); bounded by the process group's timeout."""
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (every rank gets the same answer; one host sync)."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects; ``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


__all__ = ['DEFAULT_TIMEOUT_SECONDS', 'timeout_from_options', 'init_process_group', 'rank_and_world',
           'is_distributed', 'shard', 'collective_device', 'barrier', 'any_rank', 'gather_objects']
