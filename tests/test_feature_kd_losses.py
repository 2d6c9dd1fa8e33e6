"""AT and FAKD losses: exact values against numpy, their invariances, and gradients that reach the student only."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mtkd  # noqa: F401  (before basicsr: compat patches, loss registration)
from basicsr.archs.edsr_arch import EDSR
from basicsr.losses import build_loss
from mtkd.losses.feature_kd_loss import AttentionTransferLoss, FeatureAffinityLoss
from mtkd.methods.feature_taps import FeatureTaps


def numpy_attention(features, p):
    """AT's normalised attention map, written from the formula: vec(sum_c |F_c|^p) / max(||.||_2, 1e-12)."""
    batch = features.shape[0]
    attention = (np.abs(features) ** p).sum(axis=1).reshape(batch, -1)
    return attention / np.maximum(np.linalg.norm(attention, axis=1, keepdims=True), 1e-12)


def numpy_at_loss(pairs, p=2, distance='squared', reduction='mean', loss_weight=1.0):
    total = 0.0
    for student, teacher in pairs:
        difference = numpy_attention(student, p) - numpy_attention(teacher, p)
        if distance == 'squared':
            values = difference ** 2
        else:
            values = np.sqrt((difference ** 2).sum(axis=1))
        total += values.mean() if reduction == 'mean' else values.sum()
    return loss_weight * total


def numpy_affinity(features):
    """FAKD's affinity from the formula: per-pixel channel vectors over (norm + 1e-8), then all pairwise dots."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)
    normalised = flat / (np.sqrt((flat ** 2).sum(axis=1, keepdims=True)) + 1e-8)
    return np.einsum('bci,bcj->bij', normalised, normalised)


def numpy_fakd_loss(pairs, reduction='mean', loss_weight=1.0):
    total = 0.0
    for student, teacher in pairs:
        difference = np.abs(numpy_affinity(student) - numpy_affinity(teacher))
        total += difference.mean() if reduction == 'mean' else difference.sum()
    return loss_weight * total


def numpy_max_pool_ceil(features, kernel):
    batch, channels, height, width = features.shape
    out_height, out_width = -(-height // kernel), -(-width // kernel)
    pooled = np.empty((batch, channels, out_height, out_width))
    for row in range(out_height):
        for column in range(out_width):
            window = features[:, :, row * kernel:(row + 1) * kernel, column * kernel:(column + 1) * kernel]
            pooled[:, :, row, column] = window.max(axis=(2, 3))
    return pooled


@pytest.fixture
def feature_pairs():
    """Two layer pairs with signed values and different channel counts (student 3 / 5, teacher 6 / 4)."""
    generator = torch.Generator().manual_seed(7)
    shapes = [((2, 3, 4, 5), (2, 6, 4, 5)), ((2, 5, 3, 3), (2, 4, 3, 3))]
    return [(torch.randn(*s, generator=generator, dtype=torch.float64),
             torch.randn(*t, generator=generator, dtype=torch.float64)) for s, t in shapes]


def as_numpy(pairs):
    return [(s.numpy(), t.numpy()) for s, t in pairs]


@pytest.mark.parametrize('p', [2, 3])
@pytest.mark.parametrize('distance', ['squared', 'norm'])
@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_attention_transfer_equals_numpy(feature_pairs, p, distance, reduction):
    loss = AttentionTransferLoss(loss_weight=0.7, p=p, distance=distance, reduction=reduction)
    value = loss([s for s, _ in feature_pairs], [t for _, t in feature_pairs])
    expected = numpy_at_loss(as_numpy(feature_pairs), p, distance, reduction, 0.7)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_feature_affinity_equals_numpy(feature_pairs, reduction):
    loss = FeatureAffinityLoss(loss_weight=10.0, reduction=reduction)
    value = loss([s for s, _ in feature_pairs], [t for _, t in feature_pairs])
    expected = numpy_fakd_loss(as_numpy(feature_pairs), reduction, 10.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_feature_affinity_pooling_equals_numpy(feature_pairs):
    student, teacher = feature_pairs[0]  # 4 x 5: pooling by 2 with ceil_mode gives 2 x 3
    value = FeatureAffinityLoss(pool_size=2)(student, teacher)
    pooled = [(numpy_max_pool_ceil(student.numpy(), 2), numpy_max_pool_ceil(teacher.numpy(), 2))]
    assert pooled[0][0].shape[-2:] == (2, 3)
    assert value.item() == pytest.approx(numpy_fakd_loss(pooled), rel=1e-5)


def test_feature_affinity_ignores_per_pixel_scale_and_channel_order(feature_pairs):
    student, teacher = feature_pairs[0]
    loss = FeatureAffinityLoss()
    reference = loss(student, teacher).item()
    generator = torch.Generator().manual_seed(3)
    per_pixel = 0.1 + 5 * torch.rand(student.shape[0], 1, *student.shape[2:], generator=generator,
                                     dtype=torch.float64)
    assert loss(student * per_pixel, teacher).item() == pytest.approx(reference, rel=1e-6)
    permutation = torch.randperm(student.shape[1], generator=generator)
    assert loss(student[:, permutation], teacher).item() == pytest.approx(reference, rel=1e-6)
    # A per-channel scale changes the pixel directions, so the affinity (and the loss) must change.
    per_channel = torch.tensor([1.0, 4.0, 0.2], dtype=torch.float64).view(1, 3, 1, 1)
    assert abs(loss(student * per_channel, teacher).item() - reference) > 1e-3


def test_losses_vanish_for_equal_features_whatever_the_channel_count(feature_pairs):
    student = feature_pairs[0][0]
    # Extra all-zero teacher channels change neither the channel-summed attention nor the pixel affinities.
    wider_teacher = torch.cat([student, torch.zeros_like(student)], dim=1)
    for loss in (AttentionTransferLoss(), AttentionTransferLoss(distance='norm'), FeatureAffinityLoss()):
        assert loss(student, student).item() == 0.0
        assert loss(student, wider_teacher).item() == pytest.approx(0.0, abs=1e-7)
        assert loss(student, feature_pairs[0][1]).item() > 1e-4


def test_attention_transfer_interpolates_only_when_asked(feature_pairs):
    teacher = feature_pairs[0][1]
    # Nearest-neighbour x2 enlargement, then bilinear /2 (align_corners=False) averages each 2x2 block back.
    student = F.interpolate(teacher, scale_factor=2, mode='nearest')
    with pytest.raises(ValueError, match='set interpolate: true'):
        AttentionTransferLoss()(student, teacher)
    assert AttentionTransferLoss(interpolate=True)(student, teacher).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match='HW x HW'):
        FeatureAffinityLoss()(student, teacher)


def test_half_precision_features_with_empty_pixels_stay_finite(feature_pairs):
    student, teacher = (f.float() for f in feature_pairs[0])
    student[:, :, 0, 0] = 0  # a pixel whose channels are all zero (after a ReLU): its norm is 0
    expected = FeatureAffinityLoss()(student.half().float(), teacher.half().float())
    value = FeatureAffinityLoss()(student.half(), teacher.half())
    assert torch.isfinite(value) and value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_arguments_are_named(feature_pairs):
    student, teacher = feature_pairs[0]
    with pytest.raises(ValueError, match='2 student features but 1 teacher'):
        FeatureAffinityLoss()([student, student], [teacher])
    with pytest.raises(ValueError, match=r'expected \(B, C, H, W\)'):
        AttentionTransferLoss()(student.flatten(2), teacher.flatten(2))
    with pytest.raises(ValueError, match='batch sizes 1'):
        FeatureAffinityLoss()(student[:1], teacher)
    with pytest.raises(ValueError, match="reduction 'none'"):
        FeatureAffinityLoss(reduction='none')
    with pytest.raises(ValueError, match='pool_size'):
        FeatureAffinityLoss(pool_size=0)
    with pytest.raises(ValueError, match="distance 'l1'"):
        AttentionTransferLoss(distance='l1')
    with pytest.raises(ValueError, match='p must be a positive number'):
        AttentionTransferLoss(p=0)


def test_built_from_options_by_basicsr():
    loss = build_loss({'type': 'FeatureAffinityLoss', 'loss_weight': 10.0})
    assert isinstance(loss, FeatureAffinityLoss) and loss.loss_weight == 10.0
    loss = build_loss({'type': 'AttentionTransferLoss', 'loss_weight': 500.0, 'p': 2})
    assert isinstance(loss, AttentionTransferLoss) and loss.loss_weight == 500.0


def edsr(seed, num_feat, num_block):
    torch.manual_seed(seed)
    return EDSR(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block, upscale=2)


@pytest.mark.parametrize('loss', [AttentionTransferLoss(), FeatureAffinityLoss()], ids=['AT', 'FAKD'])
@pytest.mark.parametrize('frozen_teacher', [True, False], ids=['frozen', 'trainable-teacher'])
def test_gradients_reach_every_student_parameter_up_to_the_tap_and_no_teacher(loss, frozen_teacher):
    student = edsr(0, num_feat=8, num_block=3)
    teacher = edsr(1, num_feat=16, num_block=4)
    if frozen_teacher:
        teacher.eval().requires_grad_(False)
    image = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    with FeatureTaps(student, ['body.1']) as student_taps, \
            FeatureTaps(teacher, ['body.2'], detach=frozen_teacher) as teacher_taps:
        if frozen_teacher:
            with torch.no_grad():
                teacher(image)
        else:
            teacher(image)  # a teacher left trainable by mistake: the loss still sends it nothing
        student(image)
        value = loss(student_taps.feature_list(), teacher_taps.feature_list())
    assert value.requires_grad and value.item() > 0
    value.backward()

    upstream = ('conv_first.', 'body.0.', 'body.1.')
    for name, parameter in student.named_parameters():
        if name.startswith(upstream):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert all(parameter.grad is None for parameter in teacher.parameters())


@pytest.mark.parametrize('loss', [AttentionTransferLoss(), FeatureAffinityLoss()], ids=['AT', 'FAKD'])
def test_teacher_features_from_inference_mode_are_accepted(loss, feature_pairs):
    student = feature_pairs[0][0].float().requires_grad_()
    with torch.inference_mode():
        teacher = feature_pairs[0][1].float() * 1.0
    assert teacher.is_inference()
    value = loss(student, teacher)
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
