"""Exact resume and Ctrl-C for BasicSR's training loop.

BasicSR resumes from a training state (optimizers, schedulers, epoch, iteration) but restarts the epoch's data
from its first batch and re-seeds the random generators, so a resumed run sees other batches and other crops
than an uninterrupted one. Here a resumed run continues exactly:

* every training state also stores the random-generator states (Python, NumPy, torch) as they were before the
  next batch was fetched (:func:`rng_states`);
* the training loop's prefetcher (patched into ``basicsr.train`` by :func:`install`) skips, on the first epoch
  after a resume, the batches that epoch had already delivered (the sampler's order depends only on the epoch),
  then restores the saved generator states. With a fixed seed on the CPU, the resumed run's losses equal the
  uninterrupted run's (tested with a real SIGKILL).

Ctrl-C (SIGINT) sets a flag; at the end of the current iteration, before the next batch is fetched, the model's
registered callback saves a resumable state (network + training state) and the run exits with status 130.
"""
from __future__ import annotations

import os
import random
import re
import signal
import sys
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mtkd.utils.errors import MtkdError

EXIT_INTERRUPTED = 130


class TrainingStateError(MtkdError, RuntimeError):
    """A training state that cannot be read, or whose network checkpoints are missing."""


def rng_states() -> dict:
    """This process's random generators' states, in a form ``torch.load(weights_only=True)`` reads back.

    CUDA: the generator of the current device only (``'cuda'``), so each DDP rank saves its own stream and a
    job resumed on fewer or other GPUs restores it onto whatever device the rank now has."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': {'name': name, 'keys': torch.from_numpy(keys.astype(np.int64)), 'position': int(position),
                        'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`rng_states`. The tensors may live anywhere (a state loaded onto a GPU, or onto ``meta`` for a
    test): generators take CPU byte tensors. An older state's list of every device's CUDA generator gives the
    current device its own entry."""
    random.setstate(_as_python_state(states['python']))
    torch.set_rng_state(_cpu_bytes(states['torch']))
    numpy_state = states['numpy']
    np.random.set_state((numpy_state['name'], _cpu(numpy_state['keys']).numpy().astype(np.uint32),
                         int(numpy_state['position']), int(numpy_state['has_gauss']),
                         float(numpy_state['cached_gaussian'])))
    cuda_state = states.get('cuda')
    if cuda_state is not None and torch.cuda.is_available():
        if isinstance(cuda_state, (list, tuple)):  # states saved before: every device's generator
            device = torch.cuda.current_device()
            cuda_state = cuda_state[device] if device < len(cuda_state) else None
        if cuda_state is not None:
            torch.cuda.set_rng_state(_cpu_bytes(cuda_state))


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type == 'meta':
        raise TrainingStateError('a random-generator state was loaded onto the meta device and has no values; load '
                                 'training states onto the CPU (mtkd.training.resume.read_training_state)')
    return tensor.cpu()


def _cpu_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return _cpu(tensor).to(torch.uint8)


def rng_states_of_every_rank() -> list[dict]:
    """:func:`rng_states` of every DDP rank, in rank order (a collective: every rank must call it); one entry
    without DDP."""
    states = rng_states()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, states)
        return gathered
    return [states]


def rank_rng_states(state: dict, rank: int) -> dict | None:
    """The generator states a training state saved for ``rank`` (``rng_per_rank``; older states: ``rng``, which was
    rank 0's), or None for a rank the saved job did not have (it keeps its fresh seed + rank)."""
    per_rank = state.get('rng_per_rank')
    if per_rank is not None:
        return per_rank[rank] if rank < len(per_rank) else None
    return state.get('rng') if rank == 0 else None


def read_training_state(path: str) -> dict:
    """A training state, onto the CPU (``weights_only``): the optimizers place their moments on their parameters'
    devices when loaded, and the generator states must be CPU byte tensors. Raises :class:`TrainingStateError`
    naming the file when it is truncated, corrupt or not a training state."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise TrainingStateError(f'training state {path} not found') from None
    except Exception as error:  # noqa: BLE001 - zip, pickle and OS errors all mean an unusable file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainingStateError(f'training state {path} cannot be read ({reason}): it is truncated or corrupt. '
                                 'Resume from an earlier state (path.resume_state: <experiment>/training_states/'
                                 '<iter>.state), or delete it and use --auto_resume, which takes the newest complete '
                                 'state') from None
    if not isinstance(state, dict) or not {'iter', 'epoch', 'optimizers', 'schedulers'} <= set(state):
        raise TrainingStateError(f'{path} is not a BasicSR training state (it lacks iter/epoch/optimizers/'
                                 'schedulers)')
    return state


def network_checkpoints(state_path: str, iteration: int, network_keys: list[str]) -> dict[str, str]:
    """``{'pretrain_network_g': <experiment>/models/net_g_<iter>.pth, ...}``: the checkpoints saved with the state,
    found beside it (``<experiment>/training_states/<iter>.state`` → ``<experiment>/models``), whichever
    experiment it belongs to."""
    models = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(state_path))), 'models')
    return {f'pretrain_{key}': os.path.join(models, f"net_{key.removeprefix('network_')}_{iteration}.pth")
            for key in network_keys}


def _complete_state(path: str, network_keys: list[str]) -> tuple[dict, dict[str, str]]:
    """A readable state and its existing, whole network checkpoints; :class:`TrainingStateError` otherwise."""
    state = read_training_state(path)
    checkpoints = network_checkpoints(path, state['iter'], network_keys)
    for checkpoint in checkpoints.values():
        if not os.path.isfile(checkpoint):
            raise TrainingStateError(f'training state {path} has no network checkpoint {checkpoint}')
        if not zipfile.is_zipfile(checkpoint):
            raise TrainingStateError(f'network checkpoint {checkpoint} of training state {path} is truncated or '
                                     'corrupt')
    return state, checkpoints


def _states_newest_first(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    found = [(int(match[1]), name) for name in os.listdir(folder) if (match := re.fullmatch(r'(\d+)\.state', name))]
    return [os.path.join(folder, name) for _, name in sorted(found, reverse=True)]


def load_resume_state(opt: dict, warn: Callable[[str], None] | None = None) -> dict | None:
    """BasicSR's ``load_resume_state`` for mtkd: the training state to resume (None to start afresh), and ``opt``
    pointed at the network checkpoints saved with it.

    ``--auto_resume`` takes the newest *complete* state in ``path.training_states``: a state that cannot be read,
    or whose checkpoints are missing or truncated, is skipped with a warning (``warn``, default stderr), and the
    run resumes from the one before; when none is complete, :class:`TrainingStateError` lists why. An explicit
    ``path.resume_state`` must be complete. The checkpoints are those beside the state, so a state of another
    experiment resumes that experiment's weights into this one (with a note), never this experiment's missing
    files. As BasicSR does, ``pretrain_network_*`` is replaced and ``param_key_* : params_ema`` becomes ``params``.
    """
    warn = warn or (lambda text: print(f'mtkd: warning: {text}', file=sys.stderr))
    network_keys = [key for key in opt if key.startswith('network_')]
    if opt.get('auto_resume'):
        candidates, skipped = _states_newest_first(opt['path']['training_states']), []
        for path in candidates:
            try:
                state, checkpoints = _complete_state(path, network_keys)
                break
            except TrainingStateError as error:
                skipped.append(str(error))
                warn(f'{error}; trying the previous training state')
        else:
            if candidates:
                raise TrainingStateError('--auto_resume found no complete training state in '
                                         f"{opt['path']['training_states']}:\n  - " + '\n  - '.join(skipped) +
                                         '\nDelete that folder to start afresh, or set path.resume_state')
            return None
        opt['path']['resume_state'] = path
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        state, checkpoints = _complete_state(path, network_keys)
    else:
        return None
    experiment = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if os.path.abspath(opt['path']['experiments_root']) != experiment:
        warn(f"resuming the training state and weights of {experiment} into experiment '{opt['name']}' "
             f"({opt['path']['experiments_root']}); later states and checkpoints are written there")
        for key in ('experiments_root', 'models', 'training_states', 'log', 'visualization'):
            os.makedirs(opt['path'][key], exist_ok=True)  # BasicSR creates them only for a fresh run
    opt['path'].update(checkpoints)
    for key in [key for key in opt['path'] if key.startswith('param_key')]:
        if opt['path'][key] == 'params_ema':
            opt['path'][key] = 'params'
    return state


def _as_python_state(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


@dataclass
class _LoopState:
    """What the patched prefetcher and the interrupt callback share within one training process."""
    pending: tuple[int, int, dict] | None = None      # (epoch, iteration, rng) of a resume not yet applied
    iterations_per_epoch: int | None = None
    interrupted: bool = False
    on_interrupt: Callable[[], None] | None = None


LOOP = _LoopState()


def expect_resume(epoch: int, iteration: int, rng: dict | None) -> None:
    """Called by the model when it resumes: the next epoch start skips what ``epoch`` had already delivered."""
    LOOP.pending = (epoch, iteration, rng)


def current_epoch(iteration: int) -> int:
    """The epoch an iteration belongs to (iteration 0 and the first batch of each epoch start it)."""
    if not LOOP.iterations_per_epoch:
        return 0
    return max(iteration - 1, 0) // LOOP.iterations_per_epoch


def _sigint(signum, frame):  # noqa: ARG001
    if LOOP.interrupted:  # a second Ctrl-C: stop now
        raise KeyboardInterrupt
    LOOP.interrupted = True


def register_interrupt(callback: Callable[[], None]) -> None:
    """After Ctrl-C (caught once :func:`install` ran), ``callback`` runs at the end of the current iteration."""
    LOOP.on_interrupt = callback


class _Resumable:
    """Mixin for BasicSR's prefetchers: resume skipping and Ctrl-C between iterations."""

    def _setup(self, loader) -> None:
        LOOP.iterations_per_epoch = len(loader)

    def next(self):
        if LOOP.interrupted and LOOP.on_interrupt is not None:
            LOOP.on_interrupt()
        return super().next()

    def reset(self):
        super().reset()
        if LOOP.pending is None:
            return
        epoch, iteration, rng = LOOP.pending
        LOOP.pending = None
        for _ in range(iteration - epoch * len(self.ori_loader)):
            super().next()
        if rng is not None:
            restore_rng_states(rng)


def install():
    """Put the resumable prefetchers into ``basicsr.train`` and catch Ctrl-C (called by the entry points only).

    Returns the SIGINT handler it replaced, for the caller to restore when the run ends."""
    import basicsr.train as basicsr_train
    from mtkd.data.prefetch import CPUPrefetcher, CUDAPrefetcher  # BasicSR's, with record_stream (CUDA)

    LOOP.interrupted = False
    previous = signal.signal(signal.SIGINT, _sigint)
    if getattr(basicsr_train.CPUPrefetcher, '_mtkd_resumable', False):
        return previous

    class ResumableCPUPrefetcher(_Resumable, CPUPrefetcher):
        _mtkd_resumable = True

        def __init__(self, loader):
            super().__init__(loader)
            self._setup(loader)

    class ResumableCUDAPrefetcher(_Resumable, CUDAPrefetcher):
        _mtkd_resumable = True

        def __init__(self, loader, opt):
            super().__init__(loader, opt)
            self._setup(loader)

    basicsr_train.CPUPrefetcher = ResumableCPUPrefetcher
    basicsr_train.CUDAPrefetcher = ResumableCUDAPrefetcher
    return previous
