"""Adan (mtkd/training/adan.py) against steps computed by hand from Algorithm 1 of Xie et al. (with bias correction)."""
from __future__ import annotations

import math

import pytest
import torch

from mtkd.training.adan import Adan


def _hand_steps(theta, gradients, lr, betas, eps, decay, no_prox):
    """Algorithm 1 in plain Python floats, one scalar parameter."""
    beta1, beta2, beta3 = betas
    m = v = n = 0.0
    previous = gradients[0]
    for step, grad in enumerate(gradients, start=1):
        difference = grad - previous
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * difference
        n = beta3 * n + (1 - beta3) * (grad + beta2 * difference) ** 2
        size = lr / (math.sqrt(n / (1 - beta3 ** step)) + eps)
        direction = m / (1 - beta1 ** step) + beta2 * v / (1 - beta2 ** step)
        if no_prox:
            theta = theta * (1 - lr * decay) - size * direction
        else:
            theta = (theta - size * direction) / (1 + lr * decay)
        previous = grad
    return theta


@pytest.mark.parametrize('no_prox', [False, True])
def test_adan_matches_hand_steps(no_prox):
    gradients = [[0.5, -1.0], [0.1, 0.3], [-0.2, 0.4]]
    lr, betas, eps, decay = 0.1, (0.98, 0.92, 0.99), 1e-8, 0.02
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = Adan([parameter], lr=lr, betas=betas, eps=eps, weight_decay=decay, no_prox=no_prox)
    for index, grad in enumerate(gradients):
        parameter.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        for element, start in enumerate((1.0, -2.0)):
            expected = _hand_steps(start, [g[element] for g in gradients[:index + 1]], lr, betas, eps, decay, no_prox)
            assert parameter[element].item() == pytest.approx(expected, rel=1e-12, abs=1e-12), (index, element)


def test_adan_first_step_is_a_signed_step_of_lr():
    """With bias correction the first update is lr · g / (|g| + eps) (the first gradient is not dropped)."""
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = Adan([parameter], lr=0.1)
    parameter.grad = torch.tensor([3.0, -0.01, 0.0])
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.tensor([0.9, -1.9, 0.5]))
    state = optimizer.state_dict()
    assert state['state'][0]['step'] == 1 and state['param_groups'][0]['betas'] == (0.98, 0.92, 0.99)


def test_adan_refuses_bad_arguments():
    parameter = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match='three values'):
        Adan([parameter], betas=(0.9, 0.99))
    with pytest.raises(ValueError, match='lr must be > 0'):
        Adan([parameter], lr=0)
