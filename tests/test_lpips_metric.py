"""LPIPS (mtkd/metrics/lpips_metric.py) with random weights from files, against a hand computation of the formula;
missing files are refused with where to get them, and optional blocks are left out of a run with a warning."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from basicsr.utils.registry import METRIC_REGISTRY

from mtkd.losses.vgg_perceptual_loss import vgg_layer_names
from mtkd.metrics.lpips_metric import (LPIPS, LPIPS_NETS, available_metrics, build_alexnet_features,
                                       calculate_lpips)

ALEX_CONVS = {0: (2, 4), 3: (2, 1), 6: (1, 1), 8: (1, 1), 10: (1, 1)}  # features index -> (padding, stride)


@pytest.fixture
def alex_files(tmp_path):
    """A torchvision-style AlexNet checkpoint and LPIPS linear layers, random (linear weights non-negative)."""
    generator = torch.Generator().manual_seed(0)
    features = build_alexnet_features(11)
    state = {}
    for name, tensor in features.state_dict().items():
        state[f'features.{name}'] = torch.randn(tensor.shape, generator=generator) * (0.05 if 'weight' in name else 0.1)
    state['classifier.1.weight'] = torch.zeros(2, 2)  # a full torchvision file also has the classifier
    torch.save(state, tmp_path / 'alexnet.pth')
    linear = {f'lin{index}.model.1.weight': torch.rand(1, channels, 1, 1, generator=generator)
              for index, channels in enumerate(LPIPS_NETS['alex']['channels'])}
    torch.save(linear, tmp_path / 'alex.pth')
    return str(tmp_path / 'alexnet.pth'), str(tmp_path / 'alex.pth'), state, linear


def hand_lpips(first_rgb: np.ndarray, second_rgb: np.ndarray, state: dict, linear: dict) -> float:
    """The LPIPS formula written out with functional ops on the raw tensors, in float64."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(rgb):
        x = torch.from_numpy(rgb.astype(np.float64) / 255).permute(2, 0, 1)[None]
        x = (2 * x - 1 - shift) / scale
        found = []
        for index in (0, 3, 6, 8, 10):
            if index in (3, 6):
                x = F.max_pool2d(x, 3, 2)
            padding, stride = ALEX_CONVS[index]
            x = F.relu(F.conv2d(x, state[f'features.{index}.weight'].double(), state[f'features.{index}.bias'].double(),
                                stride=stride, padding=padding))
            found.append(x)
        return found

    total = 0.0
    for layer, (a, b) in enumerate(zip(taps(first_rgb), taps(second_rgb))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        weights = linear[f'lin{layer}.model.1.weight'].double().view(1, -1, 1, 1)
        total += float(((a - b) ** 2 * weights).sum(1).mean())
    return total


def test_lpips_equals_the_hand_computation_and_is_registered(alex_files):
    backbone, linear_path, state, linear = alex_files
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (72, 70, 3), dtype=np.uint8)  # RGB
    second = np.clip(first.astype(int) + rng.integers(-40, 41, first.shape), 0, 255).astype(np.uint8)
    crop = 4
    expected = hand_lpips(first[crop:-crop, crop:-crop], second[crop:-crop, crop:-crop], state, linear)
    # BasicSR metrics take uint8 BGR images; the metric crops, converts to RGB and compares.
    value = calculate_lpips(first[..., ::-1], second[..., ::-1], crop_border=crop, net='alex',
                            backbone_weights=backbone, linear_weights=linear_path, device='cpu')
    assert value == pytest.approx(expected, rel=1e-5) and expected > 0
    assert METRIC_REGISTRY.get('calculate_lpips') is calculate_lpips
    assert calculate_lpips(first, first, 0, backbone_weights=backbone, linear_weights=linear_path, device='cpu') == 0
    # A batch through the module: one distance per image, symmetric.
    network = LPIPS('alex', backbone, linear_path)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    forward, backward = network(images, images.flip(0)), network(images.flip(0), images)
    torch.testing.assert_close(forward, backward.flip(0))
    assert forward.shape == (2,) and all(p.grad is None and not p.requires_grad for p in network.parameters())


def test_lpips_vgg_taps_are_the_published_layers():
    names = vgg_layer_names('vgg16')
    assert [names[index] for index in LPIPS_NETS['vgg']['taps']] == ['relu1_2', 'relu2_2', 'relu3_3', 'relu4_3',
                                                                      'relu5_3']
    alexnet = build_alexnet_features(12)  # torchvision's alexnet().features: LPIPS reads relu1..relu5
    assert all(isinstance(alexnet[index], torch.nn.ReLU) and isinstance(alexnet[index - 1], torch.nn.Conv2d)
               for index in LPIPS_NETS['alex']['taps'])
    assert [alexnet[index - 1].out_channels for index in LPIPS_NETS['alex']['taps']] == \
        list(LPIPS_NETS['alex']['channels'])


def test_missing_or_wrong_files_are_refused_with_where_to_get_them(tmp_path, alex_files):
    backbone, linear_path, _, linear = alex_files
    with pytest.raises(FileNotFoundError, match=r'alexnet-owt-7be5be79\.pth.*PerceptualSimilarity'):
        LPIPS('alex', str(tmp_path / 'none.pth'), linear_path)
    torch.save({key: value for key, value in linear.items() if not key.startswith('lin4')}, tmp_path / 'short.pth')
    with pytest.raises(ValueError, match='lack lin4.model.1.weight'):
        LPIPS('alex', backbone, str(tmp_path / 'short.pth'))
    with pytest.raises(ValueError, match="LPIPS net 'squeeze' is unknown"):
        LPIPS('squeeze', backbone, linear_path)


def test_optional_lpips_is_left_out_with_one_warning_when_its_files_are_missing(alex_files, caplog):
    backbone, linear_path, _, _ = alex_files
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': 4},
               'lpips': {'type': 'calculate_lpips', 'crop_border': 4, 'optional': True,
                         'backbone_weights': '/nonexistent/alexnet.pth', 'linear_weights': linear_path},
               'lpips_required': {'type': 'calculate_lpips', 'crop_border': 4,
                                  'backbone_weights': '/nonexistent/alexnet.pth'}}
    with caplog.at_level(logging.WARNING, logger='unit'):
        kept = available_metrics(metrics, logging.getLogger('unit'))
        available_metrics(metrics, logging.getLogger('unit'))
    assert list(kept) == ['psnr', 'lpips_required']  # a required metric stays: it fails loudly when computed
    warnings = [record.message for record in caplog.records if 'left out' in record.message]
    assert len(warnings) == 1 and '/nonexistent/alexnet.pth' in warnings[0]
    present = dict(metrics['lpips'], backbone_weights=backbone)
    assert available_metrics({'lpips': present}) == {'lpips': present}
