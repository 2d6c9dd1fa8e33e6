"""Adan: the adaptive Nesterov momentum optimizer (Xie, Zhou, Li, Lin and Yan, "Adan: Adaptive Nesterov Momentum
Algorithm for Faster Optimizing Deep Models", arXiv 2208.06677, TPAMI 2024), Algorithm 1.

DTKD's training script (lizhangray/SRDTKD ``main.py``) prints an ``adan`` switch ("Optimizer: adan" else "adam") but
neither its value nor its implementation is public. The PyPI package ``adan-pytorch`` (0.1.0, 2022) was checked and
not taken: its moments start at zero and are first updated at the second step, so the first gradient is dropped and
step 1 moves no parameter, and its bias corrections then count that empty step; it is an unmaintained single file
(MIT, last release 2022) that writes through ``.data``; docs/dtkd.md has the details. This is our implementation of
Algorithm 1, written from the paper, with Adam-style bias correction of the three moments (as in the authors'
reference implementation) so the first step is well defined. Betas follow torch's convention (decay of the running
average, close to 1), i.e. the paper's ``β`` is ``1 - beta`` here; the defaults are the paper's recommended (0.02,
0.08, 0.01).

Per parameter, with ``g_k`` the gradient at step ``k`` (``g_0 := g_1``, so the first difference is 0)::

    m_k = b1 m + (1 - b1) g_k
    v_k = b2 v + (1 - b2) (g_k - g_{k-1})
    n_k = b3 n + (1 - b3) (g_k + b2 (g_k - g_{k-1}))²
    step = lr / (sqrt(n_k / (1 - b3^k)) + eps)
    θ ← (θ - step ∘ (m_k / (1 - b1^k) + b2 v_k / (1 - b2^k))) / (1 + lr λ)         (proximal weight decay)
    θ ← θ (1 - lr λ) - step ∘ (...)                                               (no_prox: decoupled decay)

Pure torch: imports nothing of mtkd.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class Adan(Optimizer):
    """Adan (Algorithm 1 of Xie et al.) with bias correction; ``betas`` in torch's convention (see the module)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, no_prox: bool = False):
        if lr <= 0:
            raise ValueError(f'Adan: lr must be > 0, got {lr}')
        if len(betas) != 3 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f'Adan: betas must be three values in [0, 1), got {betas}')
        if eps <= 0:
            raise ValueError(f'Adan: eps must be > 0, got {eps}')
        if weight_decay < 0:
            raise ValueError(f'Adan: weight_decay must be >= 0, got {weight_decay}')
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, no_prox=no_prox))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, decay = group['lr'], group['eps'], group['weight_decay']
            beta1, beta2, beta3 = group['betas']
            for parameter in group['params']:
                if parameter.grad is None:
                    continue
                grad = parameter.grad
                if grad.is_sparse:
                    raise RuntimeError('Adan does not support sparse gradients')
                state = self.state[parameter]
                if not state:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(parameter)
                    state['exp_avg_diff'] = torch.zeros_like(parameter)
                    state['exp_avg_sq'] = torch.zeros_like(parameter)
                    state['previous_grad'] = grad.clone()
                state['step'] += 1
                step = state['step']
                difference = grad - state['previous_grad']
                state['exp_avg'].mul_(beta1).add_(grad, alpha=1 - beta1)
                state['exp_avg_diff'].mul_(beta2).add_(difference, alpha=1 - beta2)
                corrected = grad + beta2 * difference
                state['exp_avg_sq'].mul_(beta3).addcmul_(corrected, corrected, value=1 - beta3)
                denominator = (state['exp_avg_sq'] / (1 - beta3 ** step)).sqrt_().add_(eps)
                direction = (state['exp_avg'] / (1 - beta1 ** step)
                             + beta2 * state['exp_avg_diff'] / (1 - beta2 ** step))
                if group['no_prox']:
                    parameter.mul_(1 - lr * decay).addcdiv_(direction, denominator, value=-lr)
                else:
                    parameter.addcdiv_(direction, denominator, value=-lr).div_(1 + lr * decay)
                state['previous_grad'].copy_(grad)
        return loss


__all__ = ['Adan']
