"""One optimizer update for every mtkd model: mixed precision, accumulation, clipping, a non-finite guard.

Options (validated in :mod:`mtkd.config.schema`; docs/performance.md): ``use_amp`` + ``amp_dtype`` (``fp16``, the
default, adds a ``GradScaler``; ``bf16``), ``train.accumulate`` (one optimizer step every ``accumulate``
iterations, the loss divided by it, so two accumulated batches equal one batch twice as large),
``train.grad_clip_norm`` (global L2 norm, after unscaling), ``train.max_nonfinite_losses`` (a NaN/inf loss skips
its update with a warning; that many in a row raise :class:`NonFiniteLossError`, whose message says where the last
good checkpoint is).

No host synchronisation per step. The guard never reads a device value before ``backward``: the backward always
runs, and at the end of an accumulation window the update is skipped *on the device* when the window's loss or
the gradients are not finite (the fused Adam/AdamW that mtkd builds take a ``found_inf`` flag, the mechanism
``GradScaler`` itself uses; a non-fused optimizer costs one sync per step). Under DDP one all-reduce of two
numbers per step ([non-finite loss, Ctrl-C]) makes every rank skip the same updates and agree on when to stop.
The flags reach the host through an asynchronous copy and are read at the next window's end (on CUDA;
``defer_host_checks``), when they are long computed: warnings, the divergence limit and the agreed stop come one
optimizer step late, the skipped update itself is never applied. A ``GradScaler`` overflow skip (fp16) is neither
a non-finite loss nor a taken step (the EMA does not move).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from mtkd.training.precision import AMP_DTYPES


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf losses in a row: the run stops, its last saved checkpoint is intact."""


@dataclass
class _PendingFlags:
    """One optimizer step's flags on their way to the host: [non-finite loss (any rank), Ctrl-C (any rank),
    update skipped, the loss value] and the CUDA event after which the copy is complete."""
    iteration: int
    values: torch.Tensor
    event: object | None


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` can skip itself on the device (fused Adam/AdamW: ``found_inf``)."""
    return bool(getattr(optimizer, '_step_supports_amp_scaling', False))


class OptimizerStep:
    """Backward pass and optimizer step of one iteration (see the module docstring).

    ``interrupted``: returns whether this process got a Ctrl-C; under ``distributed`` it is all-reduced with the
    non-finite flag and :attr:`stop_requested` becomes true on every rank at the same iteration.
    ``defer_host_checks``: read the flags one optimizer step late (default: on CUDA), else at once."""

    def __init__(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
                 device: torch.device, use_amp: bool = False, amp_dtype: str = 'fp16', accumulate: int = 1,
                 grad_clip_norm: float | None = None, max_nonfinite_losses: int = 5, distributed: bool = False,
                 logger=None, interrupted: Callable[[], bool] | None = None, defer_host_checks: bool | None = None):
        self.optimizer = optimizer
        self.parameters = [parameter for parameter in parameters if parameter.requires_grad]
        self.device = torch.device(device)
        self.use_amp = use_amp
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_amp and amp_dtype == 'fp16')
        self.accumulate = accumulate
        self.grad_clip_norm = grad_clip_norm
        self.max_nonfinite_losses = max_nonfinite_losses
        self.distributed = distributed
        self.logger = logger
        self.interrupted = interrupted or (lambda: False)
        self.defer_host_checks = self.device.type == 'cuda' if defer_host_checks is None else defer_host_checks
        self.nonfinite_in_a_row = 0
        self.stop_requested = False
        self.last_taken: torch.Tensor | None = None
        self._window_nonfinite: torch.Tensor | None = None
        self._window_value: torch.Tensor | None = None
        self._pending: _PendingFlags | None = None

    def autocast(self):
        """The forward/loss context: autocast in ``amp_dtype`` when AMP is on, nothing otherwise."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @staticmethod
    def window_ends(current_iter: int, accumulate: int) -> bool:
        """Whether iteration ``current_iter`` (from 1) ends an accumulation window (the optimizer steps)."""
        return current_iter % accumulate == 0

    def __call__(self, loss: torch.Tensor, current_iter: int) -> torch.Tensor | None:
        """Backward ``loss``; at the end of an accumulation window, step the optimizer unless a loss of the window or
        a gradient is not finite. Returns None inside a window, else a device bool tensor: the update was taken."""
        window_end = self.window_ends(current_iter, self.accumulate)
        if window_end and self.defer_host_checks:
            self.flush()  # the previous step's flags: computed long ago, so reading them costs no wait
        value = loss.detach().float()
        nonfinite = ~torch.isfinite(value)
        if (current_iter - 1) % self.accumulate == 0:  # a window starts: gradients stay readable after the step
            self.optimizer.zero_grad(set_to_none=True)
            self._window_nonfinite, self._window_value = nonfinite, value
        else:
            self._window_nonfinite = self._window_nonfinite | nonfinite
            self._window_value = torch.where(nonfinite, value, self._window_value)
        self.scaler.scale(loss / self.accumulate).backward()
        if not window_end:
            return None
        taken = self._step(current_iter)
        if not self.defer_host_checks:
            self.flush()
        return taken

    def _step(self, current_iter: int) -> torch.Tensor:
        flags = torch.stack([self._window_nonfinite.float(),
                             torch.full((), 1.0 if self.interrupted() else 0.0, device=self._window_value.device)])
        if self.distributed:  # every rank must skip (and stop) together
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        gradients = [parameter.grad for parameter in self.parameters if parameter.grad is not None]
        if self.grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip_norm)
        elif gradients:
            norm = torch.nn.utils.get_total_norm(gradients)
        else:
            norm = torch.zeros((), device=flags.device)
        skip = (flags[0] > 0) | ~torch.isfinite(norm.to(flags.device))
        self._apply(skip)
        self.scaler.update()
        self.last_taken = ~skip
        values = torch.stack([flags[0], flags[1], skip.float(), self._window_value])
        if self.defer_host_checks:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=values.device.type == 'cuda')
            host.copy_(values, non_blocking=True)
            event = None
            if values.device.type == 'cuda':
                event = torch.cuda.Event()
                event.record()
            self._pending = _PendingFlags(current_iter, host, event)
        else:
            self._pending = _PendingFlags(current_iter, values.cpu(), None)
        return self.last_taken

    def _apply(self, skip: torch.Tensor) -> None:
        """``optimizer.step()`` unless ``skip``: decided on the device by a fused optimizer, on the host otherwise."""
        if supports_device_skip(self.optimizer):
            self.optimizer.grad_scale = None  # gradients are already unscaled
            self.optimizer.found_inf = skip.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.grad_scale, self.optimizer.found_inf
        elif not bool(skip):  # one host sync: this optimizer cannot skip its own update
            self.optimizer.step()

    def flush(self) -> None:
        """Read the last step's flags now: warn about (and count) a non-finite loss, raise after too many in a row,
        set :attr:`stop_requested` after a Ctrl-C on any rank."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.event is not None and not pending.event.query():  # done long ago, as a rule: no wait
            pending.event.synchronize()
        nonfinite, interrupted, skipped, value = pending.values.tolist()
        if interrupted:
            self.stop_requested = True
        if nonfinite:
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= self.max_nonfinite_losses:
                raise NonFiniteLossError(
                    f'{self.nonfinite_in_a_row} non-finite losses in a row (last at iteration {pending.iteration}): '
                    'training diverged. The network was not updated by them; the last saved checkpoint is intact '
                    '(experiments/<name>/models). Lower the learning rate, enable train.grad_clip_norm, or check '
                    'the data and the loss weights, then resume with --auto_resume.')
            if self.logger is not None:
                where = '' if value != value or abs(value) == float('inf') else ' on another rank'
                self.logger.warning(
                    f'iteration {pending.iteration}: the loss is {value if not where else "non-finite"}{where}; update '
                    f'skipped ({self.nonfinite_in_a_row} in a row, the run stops at {self.max_nonfinite_losses})')
        elif not skipped:
            self.nonfinite_in_a_row = 0

    def state_dict(self) -> dict:
        self.flush()
        return {'scaler': self.scaler.state_dict(), 'nonfinite_in_a_row': self.nonfinite_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        if state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])
        self.nonfinite_in_a_row = int(state.get('nonfinite_in_a_row', 0))


__all__ = ['OptimizerStep', 'NonFiniteLossError', 'supports_device_skip', 'AMP_DTYPES']
