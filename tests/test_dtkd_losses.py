"""DTKD losses (mtkd/losses/dtkd_loss.py, edge_loss.py, vgg_perceptual_loss.py) and entropy routing, on
hand-made tensors with known answers; gradients reach the prediction only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtkd.losses.dtkd_loss import (DiscrepancyAttentionLoss, ReliabilityAttentionLoss, RoutedL1Loss,
                                   discrepancy_mask, reliability_mask)
from mtkd.losses.edge_loss import EdgeLoss
from mtkd.losses.vgg_perceptual_loss import VGGPerceptualLoss, build_vgg_features, vgg_layer_names
from mtkd.methods.entropy_routing import EntropyRouter, max_entropy


def _pixels(*values):
    """A (1, 1, 1, N) tensor: one channel, N pixels in a row."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_reliability_mask_keeps_only_pixels_where_the_teacher_is_closer_to_gt():
    gt = _pixels(0.5, 0.5, 0.5, 0.5)
    student = _pixels(0.6, 0.5, 0.9, 0.4)
    teacher = _pixels(0.5, 0.7, 0.8, 0.4)  # closer, farther, closer, equal
    torch.testing.assert_close(reliability_mask(student, teacher, gt), _pixels(1., 0., 1., 1.))
    soft = reliability_mask(student, teacher, gt, mode='soft', temperature=0.1)
    torch.testing.assert_close(soft, torch.sigmoid(_pixels(0.1, -0.2, 0.1, 0.0) / 0.1))
    # Loss: mean over all 4 pixels of mask * |S - T| = (0.1 + 0 + 0.1 + 0) / 4.
    loss = ReliabilityAttentionLoss(loss_weight=2.0)(student.requires_grad_(), teacher, gt)
    torch.testing.assert_close(loss, torch.tensor(2.0 * 0.2 / 4))
    loss.backward()
    torch.testing.assert_close(student.grad, 2.0 * _pixels(1., 0., 1., 0.) / 4)  # sign(0) = 0 at the equal pixel


def test_discrepancy_mask_weights_pixels_above_the_mean_discrepancy():
    student = _pixels(0.0, 0.0, 0.0, 0.0)
    teacher = _pixels(0.1, 0.1, 0.1, 0.5)  # |S - T| mean = 0.2: only the last pixel is above
    torch.testing.assert_close(discrepancy_mask(student, teacher), _pixels(0., 0., 0., 1.))
    torch.testing.assert_close(discrepancy_mask(student, teacher, weighting='magnitude'), _pixels(0., 0., 0., 2.5))
    loss = DiscrepancyAttentionLoss(among='all')(student.requires_grad_(), teacher)
    torch.testing.assert_close(loss, torch.tensor(0.5 / 4))
    # Per-image reference: a second image with its own mean.
    pair_student = torch.zeros(2, 1, 1, 2)
    pair_teacher = torch.tensor([[0.1, 0.3], [1.0, 3.0]]).view(2, 1, 1, 2)
    batch = discrepancy_mask(pair_student, pair_teacher, reference='batch')   # mean 1.1
    image = discrepancy_mask(pair_student, pair_teacher, reference='image')   # means 0.2 and 2.0
    assert batch.flatten().tolist() == [0, 0, 0, 1] and image.flatten().tolist() == [0, 1, 0, 1]


def test_discrepancy_among_reliable_pixels_takes_its_mean_and_selection_there_only():
    gt = _pixels(0.5, 0.5, 0.5, 0.5, 0.5)
    student = _pixels(0.6, 0.6, 0.6, 0.6, 0.5)
    teacher = _pixels(0.5, 0.52, 0.58, 0.95, 0.5)  # reliable, reliable, reliable, false texture, reliable (tie)
    # |S - T| = 0.1, 0.08, 0.02, 0.35, 0. All pixels: mean 0.11, only the false texture is above it.
    torch.testing.assert_close(discrepancy_mask(student, teacher), _pixels(0., 0., 0., 1., 0.))
    # Among the reliable pixels (the first three and the tie): mean (0.1 + 0.08 + 0.02 + 0) / 4 = 0.05.
    gate = reliability_mask(student, teacher, gt)
    torch.testing.assert_close(gate, _pixels(1., 1., 1., 0., 1.))
    torch.testing.assert_close(discrepancy_mask(student, teacher, gate=gate), _pixels(1., 1., 0., 0., 0.))
    torch.testing.assert_close(discrepancy_mask(student, teacher, weighting='magnitude', gate=gate),
                               _pixels(2., 1.6, 0., 0., 0.))
    pred = student.clone().requires_grad_()
    loss = DiscrepancyAttentionLoss(loss_weight=2.0)(pred, teacher, gt)
    torch.testing.assert_close(loss, torch.tensor(2.0 * (0.1 + 0.08) / 5))
    loss.backward()
    torch.testing.assert_close(pred.grad, 2.0 * _pixels(1., 1., 0., 0., 0.) / 5)
    with pytest.raises(ValueError, match='needs the ground truth gt'):
        DiscrepancyAttentionLoss()(student, teacher)
    with pytest.raises(ValueError, match="among 'some' is unknown"):
        DiscrepancyAttentionLoss(among='some')


def _false_texture_case(seed: int = 0, size: int = 32, batch: int = 2):
    """The issue's constructed case: student = GT + N(0, 0.03); teacher = GT + N(0, 0.01) + ±0.15 false texture
    on 25 % of the pixels (same sign on the three channels of a pixel)."""
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=generator) * 0.6 + 0.2
    student = gt + 0.03 * torch.randn(gt.shape, generator=generator)
    false = torch.rand(batch, 1, size, size, generator=generator) < 0.25
    sign = torch.where(torch.rand(batch, 1, size, size, generator=generator) < 0.5, -1.0, 1.0)
    teacher = gt + 0.01 * torch.randn(gt.shape, generator=generator) + 0.15 * sign * false
    return gt, student, teacher, false


def test_constructed_false_texture_case_old_combination_lets_teacher_errors_in():
    """Before the second pass (``among: all``) the discrepancy term selected almost only unreliable pixels (97 %
    here) and every false-texture pixel; reliability + discrepancy then acts like plain L1 KD on false texture."""
    gt, student, teacher, false = _false_texture_case()
    reliable = reliability_mask(student, teacher, gt).bool()
    selected = discrepancy_mask(student, teacher).bool()
    assert not (reliable & false).any()  # every false-texture pixel is unreliable
    assert (selected & ~reliable).sum() / selected.sum() > 0.95
    assert selected[false].all()
    pred = student.clone().requires_grad_()
    old_combination = DiscrepancyAttentionLoss(among='all')
    (ReliabilityAttentionLoss()(pred, teacher, gt) + old_combination(pred, teacher, gt)).backward()
    assert (pred.grad.abs().sum(dim=1, keepdim=True)[false] > 0).all()


def test_constructed_false_texture_case_redesigned_combination_keeps_teacher_errors_out():
    """``among: reliable``: the gradient of both distillation terms is exactly zero at every false-texture pixel and
    non-zero at every reliable pixel; the discrepancy term still selects a share of the reliable pixels."""
    gt, student, teacher, false = _false_texture_case()
    reliable = reliability_mask(student, teacher, gt).bool()
    pred = student.clone().requires_grad_()
    reliability, discrepancy = ReliabilityAttentionLoss(), DiscrepancyAttentionLoss()
    (reliability(pred, teacher, gt) + discrepancy(pred, teacher, gt)).backward()
    per_pixel = pred.grad.abs().sum(dim=1, keepdim=True)
    assert torch.all(per_pixel[false] == 0) and torch.all(per_pixel[reliable] > 0)
    selected = discrepancy_mask(student, teacher, gate=reliability_mask(student, teacher, gt)).bool()
    assert not (selected & ~reliable).any() and 0.2 < selected.sum() / reliable.sum() < 0.8
    # Reliable pixels above the reliable mean get both terms: twice the gradient of the others.
    per_element = pred.grad[:, :1]
    torch.testing.assert_close(per_element[selected].abs().min(), 2 * per_element[reliable & ~selected].abs().max())


def test_channel_aggregation_of_the_reliability_mask_per_pixel_and_per_element():
    """RGB errors that disagree across channels: per pixel the channel *means* are compared (a max would flip both
    pixels); with ``per_pixel: false`` each channel is its own element."""
    gt = torch.full((1, 3, 1, 2), 0.5)
    student, teacher = gt.clone(), gt.clone()
    student[0, :, 0, 0] += torch.tensor([0.3, 0.0, 0.0])     # student errors mean 0.1, max 0.3
    teacher[0, :, 0, 0] += torch.tensor([0.15, 0.15, 0.15])  # teacher errors mean 0.15, max 0.15
    student[0, :, 0, 1] += torch.tensor([0.12, 0.12, 0.12])  # mean 0.12, max 0.12
    teacher[0, :, 0, 1] += torch.tensor([0.0, 0.0, 0.3])     # mean 0.1, max 0.3
    torch.testing.assert_close(reliability_mask(student, teacher, gt), torch.tensor([[[[0.0, 1.0]]]]))
    elementwise = reliability_mask(student, teacher, gt, per_pixel=False)
    torch.testing.assert_close(elementwise, torch.tensor([[1., 1.], [0., 1.], [0., 0.]]).view(1, 3, 1, 2))
    pred = student.clone().requires_grad_()
    loss = ReliabilityAttentionLoss(per_pixel=False)(pred, teacher, gt)
    # |S - T| of the kept elements: (0.15) at pixel 0 channel 0, (0.12, 0.12) at pixel 1 channels 0 and 1; 6 elements.
    torch.testing.assert_close(loss, torch.tensor((0.15 + 0.12 + 0.12) / 6))
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[1., 1.], [0., 1.], [0., 0.]]).view(1, 3, 1, 2) / 6)


def test_channel_aggregation_of_the_discrepancy_mask():
    """Per pixel ``|S - T|`` is the channel mean (a max would select only the first two pixels)."""
    student = torch.zeros(1, 3, 1, 4)
    teacher = torch.zeros(1, 3, 1, 4)
    teacher[0, :, 0, 0] = torch.tensor([0.3, 0.0, 0.0])  # mean 0.1, max 0.3
    teacher[0, :, 0, 1] = 0.15
    teacher[0, :, 0, 2] = 0.09
    # Channel means (0.1, 0.15, 0.09, 0): mean 0.085, three pixels above.
    torch.testing.assert_close(discrepancy_mask(student, teacher), torch.tensor([[[[1., 1., 1., 0.]]]]))
    # Per element: mean (0.3 + 3 x 0.15 + 3 x 0.09) / 12 = 0.085.
    expected = torch.tensor([[1., 1., 1., 0.], [0., 1., 1., 0.], [0., 1., 1., 0.]]).view(1, 3, 1, 4)
    torch.testing.assert_close(discrepancy_mask(student, teacher, per_pixel=False), expected)


def test_routed_l1_weights_and_normalisations():
    student, teacher = _pixels(0.0, 0.0, 0.0, 0.0), _pixels(0.4, 0.4, 0.8, 0.8)
    weight = _pixels(1.0, 1.0, 0.0, 0.0)
    torch.testing.assert_close(RoutedL1Loss()(student, teacher, weight=weight), torch.tensor(0.8 / 4))
    torch.testing.assert_close(RoutedL1Loss(normalize='weight')(student, teacher, weight=weight), torch.tensor(0.4))
    zero = RoutedL1Loss(normalize='weight')(student, teacher, weight=torch.zeros_like(weight))
    assert zero == 0 and not torch.isnan(zero)
    torch.testing.assert_close(RoutedL1Loss()(student, teacher), torch.tensor(0.6))


def test_entropy_router_sends_flat_patches_to_the_fidelity_teacher():
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 16, 16), 0.3)
    texture = torch.rand(1, 3, 16, 16, generator=generator)  # about 7.5 bits
    gt = torch.cat([flat, texture])
    hard = EntropyRouter(threshold=4.0)(gt)
    assert hard.shape == (2, 1, 16, 16) and hard[0].max() == 0 and hard[1].min() == 1
    soft = EntropyRouter(threshold=4.0, mode='soft', temperature=0.5)(gt)
    torch.testing.assert_close(soft[0, 0, 0, 0], torch.sigmoid(torch.tensor(-4.0 / 0.5)))
    assert (EntropyRouter(threshold=4.0, mode='off')(gt) == 0.5).all()
    mixed = gt[1:].clone()
    mixed[..., :8, :8] = 0.3  # one flat window in a textured patch
    windows = EntropyRouter(threshold=4.0, window_size=8)(mixed)
    assert windows[0, 0, :8, :8].max() == 0 and windows[0, 0, 8:, 8:].min() == 1
    with pytest.raises(ValueError, match="routing mode 'sometimes'"):
        EntropyRouter(threshold=4.0, mode='sometimes')


def test_entropy_exactly_at_the_threshold_goes_to_the_fidelity_teacher():
    """The tie rule (the helper's ``H <= threshold`` is its fidelity side): fails if ``>`` becomes ``>=``."""
    halves = torch.zeros(1, 3, 8, 8)
    halves[..., 4:] = 1.0  # two grey levels, equally frequent: exactly 1 bit
    assert EntropyRouter(threshold=1.0)(halves).max() == 0
    assert EntropyRouter(threshold=1.0 - 1e-6)(halves).min() == 1
    torch.testing.assert_close(EntropyRouter(threshold=1.0, mode='soft')(halves), torch.full((1, 1, 8, 8), 0.5))
    # Per 4x4 window: the left window is flat (0 bits), the right one holds two levels in equal shares.
    windows = torch.zeros(1, 3, 4, 8)
    windows[:, :, ::2, 4:] = 1.0  # right window: two levels on 8 of 16 pixels each, exactly 1 bit
    routed = EntropyRouter(threshold=1.0, window_size=4)(windows)
    assert routed.max() == 0
    routed = EntropyRouter(threshold=0.5, window_size=4)(windows)
    assert routed[..., :4].max() == 0 and routed[..., 4:].min() == 1


def test_a_window_threshold_no_window_can_exceed_is_refused():
    """A w x w window holds at most log2(min(w², 256)) bits: 7 bits per 8x8 window would route nothing."""
    assert max_entropy(64) == 6 and max_entropy(16 * 16) == 8 and max_entropy(64 * 64) == 8
    with pytest.raises(ValueError, match=r'cannot be exceeded by a 8x8 window \(at most log2\(64\) = 6 bits\)'):
        EntropyRouter(threshold=7.0, window_size=8)
    with pytest.raises(ValueError, match='cannot be exceeded'):
        EntropyRouter(threshold=6.0, window_size=8)
    EntropyRouter(threshold=5.9, window_size=8)
    EntropyRouter(threshold=7.0, window_size=8, mode='off')  # routing off: no threshold used


def test_edge_loss_value_and_gradient():
    gt = torch.zeros(1, 3, 6, 6)
    gt[..., 3:] = 1.0
    # A step of half the height: Sobel 2 instead of 4 on 12 of the 36 pixels.
    pred = (gt * 0.5).requires_grad_()
    loss = EdgeLoss(operator='sobel')(pred, gt)
    torch.testing.assert_close(loss, torch.tensor(2 * 12 / 36), atol=1e-3, rtol=0)
    loss.backward()
    assert pred.grad[..., 1:5].abs().sum() > 0 and pred.grad[..., 0].abs().max() == 0
    # A flat prediction has zero Sobel gradient (d sqrt(gx² + gy²) = 0 at gx = gy = 0): the loss cannot move it.
    flat = torch.zeros(1, 3, 6, 6, requires_grad=True)
    EdgeLoss(operator='sobel')(flat, gt).backward()
    assert flat.grad.abs().max() == 0
    assert EdgeLoss(operator='laplacian')(gt, gt) == 0
    with pytest.raises(ValueError, match="operator 'canny' is unknown"):
        EdgeLoss(operator='canny')


def test_vgg_perceptual_loss_with_random_weights_from_a_file(tmp_path):
    names = vgg_layer_names('vgg19')
    assert names[:5] == ['conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1'] and names[names.index('conv5_4')] == 'conv5_4'
    assert len(names) == 37  # torchvision vgg19.features has 37 modules
    features = build_vgg_features('vgg19', 'relu2_1')
    torch.manual_seed(0)
    for module in features:
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.1)
    state = {f'features.{key}': value for key, value in features.state_dict().items()}
    state['classifier.0.weight'] = torch.zeros(2, 2)  # a full torchvision file also has the classifier
    torch.save(state, tmp_path / 'vgg.pth')
    loss_fn = VGGPerceptualLoss(str(tmp_path / 'vgg.pth'), layer_weights={'conv1_2': 0.5, 'relu2_1': 1.0})
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    gt = torch.rand(1, 3, 16, 16)
    loss, style = loss_fn(pred, gt)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    norm_pred, norm_gt = (pred - mean) / std, (gt - mean) / std
    expected = 0.5 * F.l1_loss(features[:3](norm_pred), features[:3](norm_gt)) + \
        F.l1_loss(features(norm_pred), features(norm_gt))
    torch.testing.assert_close(loss, expected)
    assert style is None
    loss.backward()
    assert pred.grad.abs().sum() > 0 and all(p.grad is None and not p.requires_grad for p in loss_fn.parameters())
    with pytest.raises(FileNotFoundError, match='vgg19-dcbd5c4.pth'):
        VGGPerceptualLoss(str(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='lack .* tensors'):
        VGGPerceptualLoss(str(tmp_path / 'vgg.pth'), layer_weights={'conv3_1': 1.0})
