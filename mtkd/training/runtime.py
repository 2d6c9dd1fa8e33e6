"""Run-time settings that depend on the machine: fp32 precision, data-loader defaults, compiled modules.

:func:`configure` is called once by the entry points (``mtkd/train.py``, ``mtkd/test.py`` through
:func:`mtkd.config.cli.runtime_options`) on the validated options; scripts that run networks call
:func:`mtkd.training.precision.set_float32_precision` themselves (``import mtkd`` already sets IEEE fp32).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import torch
from torch import nn

from mtkd.training.precision import set_float32_precision


def configure(options: MutableMapping[str, Any]) -> None:
    """Apply ``fast_matmul`` (TF32 or IEEE fp32, matmul and convolutions) and fill the data-loader defaults."""
    set_float32_precision(bool(options.get('fast_matmul')))
    fill_data_loader_defaults(options)


def fill_data_loader_defaults(options: MutableMapping[str, Any]) -> None:
    """``pin_memory`` and ``persistent_workers`` left at null get the machine's sensible value.

    ``pin_memory``: true for the training set when it trains on a CUDA GPU (page-locked batches make the
    ``non_blocking`` host-to-device copies asynchronous). ``persistent_workers``: true for the training set when it
    has workers (no re-forking and re-opening of caches at every epoch). Validation and test sets are read in the
    main process by BasicSR (no workers): both false."""
    on_cuda = options.get('num_gpu') not in (0, None) and torch.cuda.is_available()
    for phase, dataset in (options.get('datasets') or {}).items():
        training = phase == 'train'
        if dataset.get('pin_memory') is None:
            dataset['pin_memory'] = training and on_cuda
        if dataset.get('persistent_workers') is None:
            dataset['persistent_workers'] = training and int(dataset.get('num_worker_per_gpu') or 0) > 0


@contextlib.contextmanager
def eager(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, calls of ``module`` run its plain forward even if it was compiled in place
    (``nn.Module.compile``). Validation and testing use it: every image size would otherwise recompile (and with
    ``reduce-overhead`` record one CUDA graph per size) until the recompile limit, then fall back to eager."""
    compiled = getattr(module, '_compiled_call_impl', None)
    if compiled is None:
        yield module
        return
    module._compiled_call_impl = None
    try:
        yield module
    finally:
        module._compiled_call_impl = compiled


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place."""
    return getattr(module, '_compiled_call_impl', None) is not None


__all__ = ['configure', 'fill_data_loader_defaults', 'eager', 'is_compiled']
