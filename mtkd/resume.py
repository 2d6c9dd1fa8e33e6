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

import random
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

EXIT_INTERRUPTED = 130


def rng_states() -> dict:
    """The random generators' states, in a form ``torch.load(weights_only=True)`` reads back."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': {'name': name, 'keys': torch.from_numpy(keys.astype(np.int64)), 'position': int(position),
                        'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`rng_states`."""
    random.setstate(_as_python_state(states['python']))
    torch.set_rng_state(states['torch'])
    numpy_state = states['numpy']
    np.random.set_state((numpy_state['name'], numpy_state['keys'].numpy().astype(np.uint32),
                         numpy_state['position'], numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


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
    from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher

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
