"""One optimizer update for every mtkd model: mixed precision, accumulation, clipping, a non-finite guard.

Options (validated in :mod:`mtkd.config.schema`; docs/performance.md): ``use_amp`` + ``amp_dtype`` (``bf16``;
``fp16`` adds a ``GradScaler``), ``train.accumulate`` (one optimizer step every ``accumulate`` iterations, the loss
divided by it, so two accumulated batches equal one batch twice as large), ``train.grad_clip_norm`` (global L2
norm, after unscaling), ``train.max_nonfinite_losses`` (a NaN/inf loss skips its update with a warning; that many
in a row raise :class:`NonFiniteLossError`, whose message says where the last good checkpoint is).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf losses in a row: the run stops, its last saved checkpoint is intact."""


class OptimizerStep:
    """Backward pass and optimizer step of one iteration (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
                 device: torch.device, use_amp: bool = False, amp_dtype: str = 'bf16', accumulate: int = 1,
                 grad_clip_norm: float | None = None, max_nonfinite_losses: int = 5, distributed: bool = False,
                 logger=None):
        self.optimizer = optimizer
        self.parameters = [parameter for parameter in parameters if parameter.requires_grad]
        self.device = device
        self.use_amp = use_amp
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == 'fp16')
        self.accumulate = accumulate
        self.grad_clip_norm = grad_clip_norm
        self.max_nonfinite_losses = max_nonfinite_losses
        self.distributed = distributed
        self.logger = logger
        self.nonfinite_in_a_row = 0

    def autocast(self):
        """The forward/loss context: autocast in ``amp_dtype`` when AMP is on, nothing otherwise."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
        if self.distributed:  # every rank must skip together, or DDP's all-reduce waits forever
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def __call__(self, loss: torch.Tensor, current_iter: int) -> bool:
        """Backward ``loss``; step the optimizer at the end of an accumulation window. Returns whether it stepped."""
        if not self._finite_everywhere(loss):
            self.nonfinite_in_a_row += 1
            message = (f'iteration {current_iter}: the loss is {loss.detach().float().item()}; update skipped '
                       f'({self.nonfinite_in_a_row} in a row, the run stops at {self.max_nonfinite_losses})')
            if self.nonfinite_in_a_row >= self.max_nonfinite_losses:
                raise NonFiniteLossError(
                    f'{self.nonfinite_in_a_row} non-finite losses in a row (last at iteration {current_iter}): '
                    'training diverged. The network was not updated by them; the last saved checkpoint is intact '
                    '(experiments/<name>/models). Lower the learning rate, enable train.grad_clip_norm, or check '
                    'the data and the loss weights, then resume with --auto_resume.')
            if self.logger is not None:
                self.logger.warning(message)
            return False
        self.nonfinite_in_a_row = 0
        if (current_iter - 1) % self.accumulate == 0:  # a window starts: gradients stay readable after the step
            self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss / self.accumulate).backward()
        if current_iter % self.accumulate:
            return False
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def state_dict(self) -> dict:
        return {'scaler': self.scaler.state_dict(), 'nonfinite_in_a_row': self.nonfinite_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        if state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])
        self.nonfinite_in_a_row = int(state.get('nonfinite_in_a_row', 0))
