"""DTKD's distillation terms: routed L1, reliability attention and discrepancy attention.

Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025): teachers
that invent textures raise the student's generalisation error, so DTKD keeps teacher errors out of the student
with "two attention loss functions". Their formulas are not public; the designs below follow the abstract's
error analysis and the released helper (lizhangray/SRDTKD ``Utils/utils.py: get_l1_attention_mask``), and every
choice is an argument (docs/dtkd.md).

All three are L1 distances between the student ``pred`` and a teacher output ``target`` (``(B, C, H, W)``, RGB in
[0, 1]), multiplied elementwise by an optional ``weight`` map (``(B, 1, H, W)`` or ``(B, C, H, W)``; DTKD's
entropy routing share of this teacher) and by the term's own attention mask. The masks and the target carry no
gradient; ``pred`` does. ``normalize``: ``'all'`` divides the weighted sum by the number of elements (a pixel
with zero weight counts as a zero; the helper's masked-mean semantics), ``'weight'`` by the sum of the weights
(a weighted mean over the pixels that take part; 0 when none does, never NaN).

How the two attention terms combine (``DiscrepancyAttentionLoss(among=...)``): a teacher pixel with false texture
is far from the student, so a discrepancy mask over *all* pixels (``among: 'all'``, the helper applied to
``|S - T|`` as it stands, and this module's behaviour before the second pass) selects exactly the pixels the
reliability mask excludes, and the sum of the two terms acts like plain L1 KD there. ``among: 'reliable'`` (the
default) looks for large discrepancies only among the pixels where the teacher is reliable
(:func:`reliability_mask`): both its reference mean and its selection ignore the others, so no distillation term
pulls the student towards a teacher error (docs/dtkd.md, "How the two attention terms combine").

Registered into BasicSR's ``LOSS_REGISTRY``: ``RoutedL1Loss``, ``ReliabilityAttentionLoss``,
``DiscrepancyAttentionLoss``.
"""
from __future__ import annotations

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

NORMALIZATIONS = ('all', 'weight')
#: ``DiscrepancyAttentionLoss(among=...)``: choose among the reliable pixels (default) or all (the old combination).
AMONG_CHOICES = ('reliable', 'all')


def weighted_l1(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, normalize: str) -> torch.Tensor:
    """``sum(weights * |pred - target|)`` divided per ``normalize`` (see the module docstring)."""
    difference = (pred - target.detach()).abs()
    if weights is None:
        return difference.mean()
    weights = weights.detach().expand_as(difference)
    total = (weights * difference).sum()
    if normalize == 'all':
        return total / difference.numel()
    return total / weights.sum().clamp_min(torch.finfo(difference.dtype).eps)


def _combine(*maps: torch.Tensor | None) -> torch.Tensor | None:
    present = [item for item in maps if item is not None]
    if not present:
        return None
    combined = present[0]
    for item in present[1:]:
        combined = combined * item
    return combined


def reliability_mask(pred: torch.Tensor, target: torch.Tensor, gt: torch.Tensor, mode: str = 'hard',
                     temperature: float = 0.01, per_pixel: bool = True) -> torch.Tensor:
    """Where the teacher is at least as close to GT as the student: ``|T - GT| <= |S - GT|``.

    ``'hard'``: 1 there, 0 elsewhere; ``'soft'``: ``sigmoid((|S - GT| - |T - GT|) / temperature)`` (0.5 where both
    are equally far). ``per_pixel``: errors are channel means and the mask is ``(B, 1, H, W)``; otherwise
    elementwise ``(B, C, H, W)``. No gradient.
    """
    with torch.no_grad():
        student_error = (pred - gt).abs()
        teacher_error = (target - gt).abs()
        if per_pixel:
            student_error = student_error.mean(dim=1, keepdim=True)
            teacher_error = teacher_error.mean(dim=1, keepdim=True)
        if mode == 'hard':
            return (teacher_error <= student_error).to(pred.dtype)
        return torch.sigmoid((student_error - teacher_error) / temperature).to(pred.dtype)


def discrepancy_mask(pred: torch.Tensor, target: torch.Tensor, weighting: str = 'binary', reference: str = 'batch',
                     per_pixel: bool = True, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Where the student still differs from the teacher more than on average: ``|S - T| > mean |S - T|``.

    The released helper's semantics (``get_l1_attention_mask(mask, loss)`` with ``mask = |S - T|`` and ``loss`` its
    mean; which operands the helper compares is not public: student and teacher outputs is our choice).
    ``'binary'``: 1 there, 0 elsewhere (the helper's first output); ``'magnitude'``: ``|S - T| / mean`` there, 0
    elsewhere (the helper's second output, divided by the mean so the weights are >= 1 rather than ~1e-2).
    ``reference``: the mean over the whole batch (``'batch'``, the helper's scalar loss) or per image.
    ``per_pixel``: ``|S - T|`` is the channel mean, the mask ``(B, 1, H, W)``; otherwise per element.

    ``gate`` (no gradient, the shape of the mask or broadcastable to it, values in [0, 1]): the pixels to choose
    among, e.g. :func:`reliability_mask`. The reference mean is the ``gate``-weighted mean of ``|S - T|``, a
    pixel is selected only where ``gate > 0``, and the mask is multiplied by ``gate``. ``None``: every pixel.
    """
    with torch.no_grad():
        discrepancy = (pred - target).abs()
        if per_pixel:
            discrepancy = discrepancy.mean(dim=1, keepdim=True)
        dims = tuple(range(discrepancy.dim())) if reference == 'batch' else tuple(range(1, discrepancy.dim()))
        if gate is None:  # every pixel: the first reconstruction's rule
            mean = discrepancy.mean(dim=dims, keepdim=True)
            above = discrepancy > mean
            gate = torch.ones((), dtype=discrepancy.dtype, device=discrepancy.device)
        else:
            gate = gate.detach().to(discrepancy.dtype).expand_as(discrepancy)
            total = gate.sum(dim=dims, keepdim=True)
            mean = (gate * discrepancy).sum(dim=dims, keepdim=True) / total.clamp_min(torch.finfo(total.dtype).tiny)
            above = (discrepancy > mean) & (gate > 0)
        if weighting == 'binary':
            return (above.to(discrepancy.dtype) * gate).to(pred.dtype)
        weights = torch.where(above, discrepancy / mean.clamp_min(1e-12), torch.zeros_like(discrepancy))
        return (weights * gate).to(pred.dtype)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} '{value}' is unknown; choose one of {', '.join(choices)}")


@LOSS_REGISTRY.register()
class RoutedL1Loss(nn.Module):
    """Plain output distillation ``loss_weight * L1(S, T)``, weighted by the routing map when one is given."""

    def __init__(self, loss_weight: float = 1.0, normalize: str = 'all'):
        super().__init__()
        _check_choice('normalize', normalize, NORMALIZATIONS)
        self.loss_weight = loss_weight
        self.normalize = normalize

    def forward(self, pred, target, gt=None, weight=None):
        return self.loss_weight * weighted_l1(pred, target, weight, self.normalize)


@LOSS_REGISTRY.register()
class ReliabilityAttentionLoss(nn.Module):
    """Distil only where the teacher is reliable: ``L1`` weighted by :func:`reliability_mask` (DTKD, attention 1).

    Follows the abstract's error analysis: a teacher pixel that is farther from GT than the student's own output
    would pull the student towards an error, so it is left out.
    """

    def __init__(self, loss_weight: float = 1.0, mode: str = 'hard', temperature: float = 0.01,
                 per_pixel: bool = True, normalize: str = 'all'):
        super().__init__()
        _check_choice('mode', mode, ('hard', 'soft'))
        _check_choice('normalize', normalize, NORMALIZATIONS)
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.loss_weight = loss_weight
        self.mode = mode
        self.temperature = temperature
        self.per_pixel = per_pixel
        self.normalize = normalize

    def forward(self, pred, target, gt, weight=None):
        mask = reliability_mask(pred, target, gt, self.mode, self.temperature, self.per_pixel)
        return self.loss_weight * weighted_l1(pred, target, _combine(mask, weight), self.normalize)


@LOSS_REGISTRY.register()
class DiscrepancyAttentionLoss(nn.Module):
    """Spend capacity where the student still differs from a reliable teacher: ``L1`` weighted by
    :func:`discrepancy_mask` (DTKD, attention 2).

    ``among``: ``'reliable'`` (default) chooses among the pixels where the teacher is at least as close to GT as
    the student (:func:`reliability_mask` with ``reliability_mode``, ``reliability_temperature`` and this loss's
    ``per_pixel``, which should equal the reliability term's settings; ``DualTeacherModel`` checks that), so a
    teacher's false texture never gets weight; needs ``gt``. ``'all'``: every pixel, the helper applied to all of
    ``|S - T|`` (the first DTKD reconstruction; the ablation that lets false textures in).
    """

    def __init__(self, loss_weight: float = 1.0, weighting: str = 'binary', reference: str = 'batch',
                 per_pixel: bool = True, normalize: str = 'all', among: str = 'reliable',
                 reliability_mode: str = 'hard', reliability_temperature: float = 0.01):
        super().__init__()
        _check_choice('weighting', weighting, ('binary', 'magnitude'))
        _check_choice('reference', reference, ('batch', 'image'))
        _check_choice('normalize', normalize, NORMALIZATIONS)
        _check_choice('among', among, AMONG_CHOICES)
        _check_choice('reliability_mode', reliability_mode, ('hard', 'soft'))
        if reliability_temperature <= 0:
            raise ValueError(f'reliability_temperature must be > 0, got {reliability_temperature}')
        self.loss_weight = loss_weight
        self.weighting = weighting
        self.reference = reference
        self.per_pixel = per_pixel
        self.normalize = normalize
        self.among = among
        self.reliability_mode = reliability_mode
        self.reliability_temperature = reliability_temperature

    def forward(self, pred, target, gt=None, weight=None):
        gate = None
        if self.among == 'reliable':
            if gt is None:
                raise ValueError("DiscrepancyAttentionLoss(among='reliable') needs the ground truth gt to find the "
                                 "reliable pixels; pass gt or use among='all'")
            gate = reliability_mask(pred, target, gt, self.reliability_mode, self.reliability_temperature,
                                    self.per_pixel)
        mask = discrepancy_mask(pred, target, self.weighting, self.reference, self.per_pixel, gate)
        return self.loss_weight * weighted_l1(pred, target, _combine(mask, weight), self.normalize)
