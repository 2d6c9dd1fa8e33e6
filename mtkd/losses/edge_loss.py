"""Edge loss: a distance between edge maps of the output and of the ground truth (DTKD's EdgeSRN training).

Registered into BasicSR's ``LOSS_REGISTRY`` as ``EdgeLoss``. Edge maps: :func:`mtkd.transforms.edges.edge_map`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from mtkd.transforms.edges import OPERATORS, edge_map


@LOSS_REGISTRY.register()
class EdgeLoss(nn.Module):
    """``loss_weight * criterion(E(pred), E(target))`` with ``E`` an edge operator on the luma.

    Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025) train
    EdgeSRN with "edge-enhanced learning" instead of a GAN: L1 to GT plus this term. The operator is a choice
    the paper leaves to the user (Sobel, Laplacian; the authors' earlier code also has a fractional-differential
    operator): ``operator`` picks it, see :mod:`mtkd.transforms.edges`. The target's edge map is detached.
    Sobel is a magnitude: where the prediction is exactly flat its gradient is zero, so the Sobel loss cannot
    create an edge from nothing (the L1 term does that); the signed Laplacian and fractional maps have no such
    dead point.

    Args:
        loss_weight: multiplies the loss.
        operator: ``'sobel'`` (gradient magnitude), ``'laplacian'`` or ``'fractional'``.
        criterion: ``'l1'`` or ``'l2'`` between the two edge maps.
        order, kernel_size: the fractional operator's order ``v`` and mask size (3, 5, 7).
        reduction: ``'mean'`` or ``'sum'``.
    Shapes: ``(B, 3, H, W)`` RGB in [0, 1] for both inputs.
    """

    def __init__(self, loss_weight: float = 1.0, operator: str = 'sobel', criterion: str = 'l1', order: float = 0.5,
                 kernel_size: int = 3, reduction: str = 'mean'):
        super().__init__()
        if operator not in OPERATORS:
            raise ValueError(f"EdgeLoss operator '{operator}' is unknown; choose one of {', '.join(OPERATORS)}")
        if criterion not in ('l1', 'l2'):
            raise ValueError(f"EdgeLoss criterion '{criterion}' is unknown; choose 'l1' or 'l2'")
        if reduction not in ('mean', 'sum'):
            raise ValueError(f"EdgeLoss reduction '{reduction}' is unknown; choose 'mean' or 'sum'")
        self.loss_weight = loss_weight
        self.operator = operator
        self.criterion = criterion
        self.order = order
        self.kernel_size = kernel_size
        self.reduction = reduction

    def edges(self, images: torch.Tensor) -> torch.Tensor:
        return edge_map(images, self.operator, self.order, self.kernel_size)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
        distance = F.l1_loss if self.criterion == 'l1' else F.mse_loss
        return self.loss_weight * distance(self.edges(pred), self.edges(target).detach(), reduction=self.reduction)
