"""DTKD losses (mtkd/losses/dtkd_loss.py, edge_loss.py, vgg_perceptual_loss.py) and entropy routing, on
hand-made tensors with known answers; gradients reach the prediction only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtkd.entropy_routing import EntropyRouter
from mtkd.losses.dtkd_loss import (DiscrepancyAttentionLoss, ReliabilityAttentionLoss, RoutedL1Loss,
                                   discrepancy_mask, reliability_mask)
from mtkd.losses.edge_loss import EdgeLoss
from mtkd.losses.vgg_perceptual_loss import VGGPerceptualLoss, build_vgg_features, vgg_layer_names


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
    loss = DiscrepancyAttentionLoss()(student.requires_grad_(), teacher)
    torch.testing.assert_close(loss, torch.tensor(0.5 / 4))
    # Per-image reference: a second image with its own mean.
    pair_student = torch.zeros(2, 1, 1, 2)
    pair_teacher = torch.tensor([[0.1, 0.3], [1.0, 3.0]]).view(2, 1, 1, 2)
    batch = discrepancy_mask(pair_student, pair_teacher, reference='batch')   # mean 1.1
    image = discrepancy_mask(pair_student, pair_teacher, reference='image')   # means 0.2 and 2.0
    assert batch.flatten().tolist() == [0, 0, 0, 1] and image.flatten().tolist() == [0, 1, 0, 1]


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
