"""Feature-distillation losses on intermediate features: attention transfer (AT) and feature affinity (FAKD).

Both take lists of student and teacher features, typically from :class:`mtkd.methods.feature_taps.FeatureTaps`, pair
them in order, and sum the per-pair losses (as both official codes do). Teacher features are targets: they are
detached inside the loss, so no gradient can reach a teacher even if it was not frozen. Computation is in
float32 whatever the input dtype, because the normalisations divide by norms that underflow in float16.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

__all__ = ['AttentionTransferLoss', 'FeatureAffinityLoss', 'attention_map', 'spatial_affinity']

_REDUCTIONS = ('mean', 'sum')
# torch.nn.functional.normalize's default, which the official AT code uses.
_ATTENTION_NORM_EPS = 1e-12
# Added to the per-pixel channel norm, as in the official FAKD code (feature_transformation.spatial_similarity).
_AFFINITY_NORM_EPS = 1e-8


def attention_map(features: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Activation-based spatial attention map, L2-normalised per sample.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, Sec. 3.1 (F^p_sum) and Eq. 2:
    ``Q = vec(sum_c |F_c|^p)``, then ``Q / ||Q||_2``. Summing or averaging over channels gives the same result
    after normalisation (the official code averages).

    Args:
        features: ``(B, C, H, W)``, any range.
        p: exponent applied to the absolute activations (the paper uses 2).

    Returns:
        ``(B, H*W)`` with unit L2 norm per row (a row of zeros stays zero: the norm is clamped at 1e-12).
    """
    attention = features.abs().pow(p).sum(dim=1).flatten(1)
    return F.normalize(attention, p=2, dim=1, eps=_ATTENTION_NORM_EPS)


def spatial_affinity(features: torch.Tensor, pool_size: int = 1, pool_type: str = 'max') -> torch.Tensor:
    """Spatial affinity (cosine similarity between every pair of pixels) of a feature map.

    He et al., "FAKD: Feature-Affinity Based Knowledge Distillation for Efficient Image Super-Resolution",
    ICIP 2020, as computed by the official code (Vincent-Hoo/Knowledge-Distillation-for-Super-resolution,
    ``spatial_similarity`` / ``pooled_spatial_similarity``): optional ``pool_size`` x ``pool_size`` pooling (stride
    = kernel, ``ceil_mode=True``), features flattened to ``(B, C, HW)``, each pixel's channel vector divided by
    ``(||F_:,i||_2 + 1e-8)``, affinity ``A = F^T F``.

    Args:
        features: ``(B, C, H, W)``, any range.
        pool_size: 1 (no pooling, the paper's FAKD) or the pooling kernel, to shrink the ``HW x HW`` matrix.
        pool_type: ``'max'`` or ``'avg'`` pooling (official ``--pool_type``, default max).

    Returns:
        ``(B, HW, HW)`` with values in ``[-1, 1]`` (``HW`` after pooling); independent of ``C``.
    """
    if pool_size > 1:
        pool = F.max_pool2d if pool_type == 'max' else F.avg_pool2d
        features = pool(features, kernel_size=pool_size, stride=pool_size, padding=0, ceil_mode=True)
    flat = features.flatten(2)
    normalised = flat / (flat.norm(p=2, dim=1, keepdim=True) + _AFFINITY_NORM_EPS)
    return normalised.transpose(1, 2).bmm(normalised)


def _as_feature_list(features, argument: str) -> list[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        return [features]
    if isinstance(features, Mapping):
        features = list(features.values())
    if not isinstance(features, Sequence) or isinstance(features, str):
        raise TypeError(f'{argument} must be a tensor, a list of tensors or a dict of tensors (FeatureTaps.features), '
                        f'got {type(features).__name__}')
    features = list(features)
    for index, feature in enumerate(features):
        if not isinstance(feature, torch.Tensor):
            raise TypeError(f'{argument}[{index}] is a {type(feature).__name__}, not a tensor')
    return features


def _paired_features(student_features, teacher_features, loss_name: str):
    students = _as_feature_list(student_features, 'student_features')
    teachers = _as_feature_list(teacher_features, 'teacher_features')
    if not students:
        raise ValueError(f'{loss_name}: student_features is empty; give at least one feature pair')
    if len(students) != len(teachers):
        raise ValueError(f'{loss_name}: {len(students)} student features but {len(teachers)} teacher features; '
                         'student_layers and teacher_layers must pair one to one')
    pairs = []
    for index, (student, teacher) in enumerate(zip(students, teachers)):
        for name, feature in (('student', student), ('teacher', teacher)):
            if feature.dim() != 4:
                raise ValueError(
                    f'{loss_name}: {name} feature {index} has shape {tuple(feature.shape)}, expected (B, C, H, W). '
                    'Tap a layer with a 4-D output: for transformer blocks with (B, HW, C) tokens tap a convolution, '
                    'e.g. SwinIR "layers.i.conv"')
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f'{loss_name}: pair {index} has batch sizes {student.shape[0]} (student) and '
                             f'{teacher.shape[0]} (teacher); run both networks on the same batch')
        # Targets: detached so no gradient reaches a teacher; float32 so the normalisations cannot underflow.
        pairs.append((student.float(), teacher.detach().float()))
    return pairs


def _check_common(loss_weight, reduction, loss_name: str) -> None:
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
        raise TypeError(f'{loss_name}: loss_weight must be a number, got {loss_weight!r}')
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{loss_name}: unsupported reduction '{reduction}'; choose one of {', '.join(_REDUCTIONS)}")


@LOSS_REGISTRY.register()
class AttentionTransferLoss(nn.Module):
    """Attention transfer between paired student and teacher features.

    Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
    Neural Networks via Attention Transfer", ICLR 2017, Eq. 2, as the authors' code computes it
    (szagoruyko/attention-transfer, ``at`` / ``at_loss``). Per pair ``j``, with ``q = attention_map(F, p)``
    (``(B, HW)``, unit L2 norm per sample)::

        distance='squared' (official code):  L_j = mean_{b, i} (q_s[b, i] - q_t[b, i])^2     (reduction 'mean')
                                              L_j = sum_{b, i}  (q_s[b, i] - q_t[b, i])^2     (reduction 'sum')
        distance='norm' (Eq. 2 as printed):   L_j = mean_b ||q_s[b] - q_t[b]||_2               (reduction 'mean')
                                              L_j = sum_b  ||q_s[b] - q_t[b]||_2               (reduction 'sum')
        loss = loss_weight * sum_j L_j

    The paper writes ``beta/2 * sum_j ||.||_p`` with p = 2 and "beta = 10^3 divided by the number of elements in
    the attention map and batch size"; the code realises that division as the mean of squared differences and
    multiplies by ``--beta`` (the paper: 10^3). ``loss_weight`` plays the role of that ``beta``. ``'norm'``
    is the printed Eq. 2 (not squared; where student and teacher agree exactly torch uses the zero subgradient).

    Args:
        loss_weight: multiplies the sum over pairs.
        p: exponent of the attention mapping ``sum_c |F_c|^p`` (paper: 2).
        reduction: ``'mean'`` or ``'sum'``, over batch (and positions for ``'squared'``), as above.
        distance: ``'squared'`` (default, official code) or ``'norm'`` (Eq. 2 read literally).
        interpolate: student and teacher features must share ``(H, W)`` (channels may differ); if True, the
            student's un-normalised attention map is resized to the teacher's size (bilinear,
            ``align_corners=False``) instead of raising. The paper has no such case: off by default.

    Forward: ``student_features``, ``teacher_features``: lists of ``(B, C, H, W)`` tensors paired in order (a
    single tensor or a ``FeatureTaps.features`` dict is accepted). Returns a scalar.
    """

    def __init__(self, loss_weight: float = 1.0, p: float = 2, reduction: str = 'mean', distance: str = 'squared',
                 interpolate: bool = False):
        super().__init__()
        _check_common(loss_weight, reduction, 'AttentionTransferLoss')
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0:
            raise ValueError(f'AttentionTransferLoss: p must be a positive number (the paper uses 2), got {p!r}')
        if distance not in ('squared', 'norm'):
            raise ValueError(f"AttentionTransferLoss: unsupported distance '{distance}'; choose 'squared' (official "
                             "code) or 'norm' (Eq. 2 as printed)")
        self.loss_weight = loss_weight
        self.p = p
        self.reduction = reduction
        self.distance = distance
        self.interpolate = bool(interpolate)

    def forward(self, student_features, teacher_features) -> torch.Tensor:
        total = 0
        for index, (student, teacher) in enumerate(
                _paired_features(student_features, teacher_features, 'AttentionTransferLoss')):
            if student.shape[-2:] != teacher.shape[-2:] and not self.interpolate:
                raise ValueError(f'AttentionTransferLoss: pair {index} has spatial sizes {tuple(student.shape[-2:])} '
                                 f'(student) and {tuple(teacher.shape[-2:])} (teacher); tap layers of equal size or '
                                 'set interpolate: true')
            student_map = self._attention(student, teacher.shape[-2:])
            teacher_map = attention_map(teacher, self.p)
            difference = student_map - teacher_map
            if self.distance == 'squared':
                per_element = difference.pow(2)
                total = total + (per_element.mean() if self.reduction == 'mean' else per_element.sum())
            else:
                per_sample = torch.linalg.vector_norm(difference, ord=2, dim=1)
                total = total + (per_sample.mean() if self.reduction == 'mean' else per_sample.sum())
        return self.loss_weight * total

    def _attention(self, student: torch.Tensor, size) -> torch.Tensor:
        if student.shape[-2:] == size:
            return attention_map(student, self.p)
        raw = student.abs().pow(self.p).sum(dim=1, keepdim=True)
        raw = F.interpolate(raw, size=tuple(size), mode='bilinear', align_corners=False)
        return F.normalize(raw.flatten(1), p=2, dim=1, eps=_ATTENTION_NORM_EPS)

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, p={self.p}, reduction={self.reduction}, '
                f'distance={self.distance}, interpolate={self.interpolate}')


@LOSS_REGISTRY.register()
class FeatureAffinityLoss(nn.Module):
    """FAKD: L1 distance between the spatial-affinity matrices of paired student and teacher features.

    He et al., "FAKD: Feature-Affinity Based Knowledge Distillation for Efficient Image Super-Resolution",
    ICIP 2020, as the official code computes it
    (Vincent-Hoo/Knowledge-Distillation-for-Super-resolution: ``spatial_similarity`` and ``FeatureLoss`` with
    ``nn.L1Loss``). Per pair ``j``, with ``A = spatial_affinity(F)`` (``(B, HW, HW)``, see that function)::

        L_j = mean_{b, i, k} |A_s[b, i, k] - A_t[b, i, k]|      (reduction 'mean', the official nn.L1Loss)
        L_j = sum_{b, i, k}  |A_s[b, i, k] - A_t[b, i, k]|      (reduction 'sum')
        loss = loss_weight * sum_j L_j

    The official scripts use ``10*SA`` on three features (EDSR: the outputs of the three thirds of the body; RCAN:
    residual groups 2, 6 and the body's last conv) next to L1 to HR and to the teacher's output, each weighted 0.5,
    on images in [0, 255]. The affinity is scale-free and the L1 terms are not, so on [0, 1] images the same balance
    is ``loss_weight: 10/255`` with 0.5 / 0.5 (the shipped FAKD files; docs/baselines.md). The affinity does not
    depend on the channel count, so student and teacher widths may differ; their spatial sizes must match.

    Memory: one ``(HW)^2`` float32 matrix is 20.25 MiB per sample for a 48x48 LR patch (FAKD's x4 setting,
    HW = 2304), 64 MiB for 64x64. Each pair keeps one such matrix per sample for backward (measured with
    ``saved_tensors_hooks``: 21.4 / 66.0 MiB per sample) and briefly holds about three during its forward. At
    batch 16 with 64x64 patches and three pairs that is about 3 GiB kept plus 3 GiB transient.
    ``pool_size: 2`` divides the matrix by 16 (the official ``PSA`` variant; not used for the paper's results).

    Args:
        loss_weight: multiplies the sum over pairs.
        reduction: ``'mean'`` or ``'sum'``, over ``B x HW x HW`` as above.
        pool_size: 1 (paper) or the kernel of a pooling applied before the affinity (stride = kernel,
            ``ceil_mode=True``), the official ``--pool_size``.
        pool_type: ``'max'`` (official default) or ``'avg'``.

    Forward: ``student_features``, ``teacher_features``: lists of ``(B, C, H, W)`` tensors paired in order (a
    single tensor or a ``FeatureTaps.features`` dict is accepted). Returns a scalar.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean', pool_size: int = 1,
                 pool_type: str = 'max'):
        super().__init__()
        _check_common(loss_weight, reduction, 'FeatureAffinityLoss')
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f'FeatureAffinityLoss: pool_size must be an integer >= 1 (1: no pooling), got '
                             f'{pool_size!r}')
        if pool_type not in ('max', 'avg'):
            raise ValueError(f"FeatureAffinityLoss: unsupported pool_type '{pool_type}'; choose 'max' or 'avg'")
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.pool_size = pool_size
        self.pool_type = pool_type

    def forward(self, student_features, teacher_features) -> torch.Tensor:
        total = 0
        for index, (student, teacher) in enumerate(
                _paired_features(student_features, teacher_features, 'FeatureAffinityLoss')):
            if student.shape[-2:] != teacher.shape[-2:]:
                raise ValueError(f'FeatureAffinityLoss: pair {index} has spatial sizes {tuple(student.shape[-2:])} '
                                 f'(student) and {tuple(teacher.shape[-2:])} (teacher); the affinity matrices are '
                                 'HW x HW, so tap layers of equal spatial size')
            difference = (spatial_affinity(student, self.pool_size, self.pool_type)
                          - spatial_affinity(teacher, self.pool_size, self.pool_type)).abs()
            total = total + (difference.mean() if self.reduction == 'mean' else difference.sum())
        return self.loss_weight * total

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, reduction={self.reduction}, pool_size={self.pool_size}, '
                f'pool_type={self.pool_type}')
