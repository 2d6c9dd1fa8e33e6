"""LPIPS (Zhang, Isola, Efros, Shechtman and Wang, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018), version 0.1, as a registered BasicSR metric ``calculate_lpips``; lower = more similar.

Our implementation of the published formula, with every weight read from local files (nothing is downloaded)::

    x ∈ [0, 1] RGB → 2x - 1 → (x - shift) / scale      shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450)
    f_l = backbone activations at the 5 LPIPS layers          (AlexNet relu1..relu5, or VGG16 relu1_2 .. relu5_3)
    f̂_l = f_l / (||f_l||_channels + 1e-10)                  unit-normalised along channels, per pixel
    d(x, y) = Σ_l mean_{h,w} Σ_c w_{l,c} (f̂_l(x) - f̂_l(y))²_c   learned non-negative per-channel weights w_l

Files (``pretrained/lpips/`` by convention; relative paths are taken from the repository root, like option files):

- ``backbone_weights``: torchvision's ImageNet checkpoint, ``alexnet-owt-7be5be79.pth`` (``net: alex``, the LPIPS
  authors' default metric) or ``vgg16-397923af.pth`` (``net: vgg``), from https://download.pytorch.org/models/.
  Only the ``features.*`` tensors up to the last layer used are read, strictly.
- ``linear_weights``: the LPIPS v0.1 linear layers of that backbone, ``alex.pth`` / ``vgg.pth`` from the LPIPS
  repository (richzhang/PerceptualSimilarity, ``lpips/weights/v0.1/``, BSD-2-Clause), keys
  ``lin<k>.model.1.weight`` of shape ``(1, C_k, 1, 1)``.

A missing file raises ``FileNotFoundError`` naming it and where to get it. ``optional: true`` in a metric block
instead leaves the metric out of that run with one logged warning (:func:`available_metrics`, called by the
validation loop), so option files can list LPIPS on machines without the weights. As a metric it takes BasicSR's
uint8 images (``HWC`` BGR, as ``tensor2img`` makes them), crops ``crop_border`` pixels per side, and compares the RGB
images (LPIPS has no Y-channel form). Networks are built once per (net, files, device) and cached.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY
from torch import nn

from mtkd.losses.vgg_perceptual_loss import build_vgg_features, load_vgg_features, vgg_layer_names
from mtkd.weights.loading import read_checkpoint

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
#: LPIPS's input scaling layer (applied to images in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: Normalisation epsilon of the LPIPS reference (``normalize_tensor``).
LPIPS_EPS = 1e-10
#: Backbone layers LPIPS compares (indices into torchvision's ``features``) and their widths.
LPIPS_NETS = {
    'alex': {'taps': (1, 4, 7, 9, 11), 'channels': (64, 192, 384, 256, 256),
             'backbone_file': 'alexnet-owt-7be5be79.pth', 'linear_file': 'alex.pth'},
    'vgg': {'taps': tuple(vgg_layer_names('vgg16').index(name)
                          for name in ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')),
            'channels': (64, 128, 256, 512, 512),
            'backbone_file': 'vgg16-397923af.pth', 'linear_file': 'vgg.pth'},
}
DEFAULT_DIR = 'pretrained/lpips'


def where_to_get(net: str) -> str:
    """How to obtain the two files of ``net`` (for messages)."""
    spec = LPIPS_NETS[net]
    return (f"backbone: https://download.pytorch.org/models/{spec['backbone_file']}; linear layers: "
            f"lpips/weights/v0.1/{spec['linear_file']} of the LPIPS repository (github.com/richzhang/"
            f"PerceptualSimilarity, BSD-2-Clause); copy both to {DEFAULT_DIR}/ on a machine with internet")


def resolve(path: str) -> str:
    """``path`` itself when absolute, else relative to the repository root."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def missing_files(net: str, backbone_weights: str, linear_weights: str) -> list[str]:
    """The given weight files that do not exist."""
    return [path for path in (backbone_weights, linear_weights) if not os.path.isfile(resolve(path))]


def build_alexnet_features(last_index: int) -> nn.Sequential:
    """``torchvision.models.alexnet().features`` up to ``last_index`` (same module indices, no weights)."""
    modules = [nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
               nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
               nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
               nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
               nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2)]
    return nn.Sequential(*modules[:last_index + 1])


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between RGB images in [0, 1] ``(B, 3, H, W)`` → ``(B,)``; frozen, weights from files."""

    def __init__(self, net: str = 'alex', backbone_weights: str | None = None, linear_weights: str | None = None):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net '{net}' is unknown; choose one of {', '.join(LPIPS_NETS)}")
        spec = LPIPS_NETS[net]
        backbone_weights = backbone_weights or f"{DEFAULT_DIR}/{spec['backbone_file']}"
        linear_weights = linear_weights or f"{DEFAULT_DIR}/{spec['linear_file']}"
        missing = missing_files(net, backbone_weights, linear_weights)
        if missing:
            raise FileNotFoundError(f'LPIPS ({net}) weights not found: {", ".join(missing)}. They cannot be downloaded '
                                    f'here: {where_to_get(net)}; or leave LPIPS out (in an option file, '
                                    'optional: true skips it)')
        self.net, self.taps = net, spec['taps']
        last = max(self.taps)
        if net == 'alex':
            self.features = build_alexnet_features(last)
        else:
            self.features = build_vgg_features('vgg16', vgg_layer_names('vgg16')[last])
        load_vgg_features(self.features, resolve(backbone_weights), 'AlexNet' if net == 'alex' else 'VGG16')
        state = read_checkpoint(resolve(linear_weights))
        weights = []
        for index, channels in enumerate(spec['channels']):
            key = f'lin{index}.model.1.weight'
            if key not in state:
                raise ValueError(f'LPIPS linear weights {linear_weights} lack {key}: is it lpips/weights/v0.1/'
                                 f"{spec['linear_file']}?")
            weight = state[key].float()
            if tuple(weight.shape) != (1, channels, 1, 1):
                raise ValueError(f'LPIPS linear weights {linear_weights}: {key} has shape {tuple(weight.shape)}, '
                                 f'expected (1, {channels}, 1, 1) for net {net}')
            weights.append(weight.view(channels))
        self.linear = nn.ParameterList([nn.Parameter(weight, requires_grad=False) for weight in weights])
        self.register_buffer('shift', torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised activations at the LPIPS layers of RGB ``images`` in [0, 1]."""
        images = ((images * 2 - 1) - self.shift) / self.scale
        outputs = []
        for index, module in enumerate(self.features):
            images = module(images)
            if index in self.taps:
                outputs.append(images / (images.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS))
        return outputs

    def forward(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if images.shape != reference.shape:
            raise ValueError(f'LPIPS needs images of one shape, got {tuple(images.shape)} and {tuple(reference.shape)}')
        distance = images.new_zeros(images.shape[0])
        for weight, first, second in zip(self.linear, self.layer_features(images), self.layer_features(reference)):
            per_pixel = ((first - second) ** 2 * weight.view(1, -1, 1, 1)).sum(dim=1)
            distance = distance + per_pixel.mean(dim=(1, 2))
        return distance


_CACHE: dict[tuple, LPIPS] = {}
_WARNED: set[tuple] = set()


def lpips_network(net: str, backbone_weights: str, linear_weights: str, device: str | torch.device = 'cpu') -> LPIPS:
    """The :class:`LPIPS` network for these files on ``device``, built once and cached."""
    key = (net, resolve(backbone_weights), resolve(linear_weights), str(device))
    if key not in _CACHE:
        _CACHE[key] = LPIPS(net, backbone_weights, linear_weights).to(device)
    return _CACHE[key]


def _image_tensor(image: np.ndarray, crop_border: int, input_order: str) -> torch.Tensor:
    if input_order == 'CHW':
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'LPIPS needs 3-channel images, got shape {image.shape}')
    if crop_border:
        image = image[crop_border:-crop_border, crop_border:-crop_border]
    rgb = np.ascontiguousarray(image[..., ::-1]).astype(np.float32) / 255.0  # BasicSR images are BGR
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


@METRIC_REGISTRY.register()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int, net: str = 'alex',
                    backbone_weights: str | None = None, linear_weights: str | None = None, optional: bool = False,
                    input_order: str = 'HWC', device: str | None = None, **kwargs) -> float:
    """LPIPS v0.1 between two uint8 BGR images (BasicSR's metric convention), ``crop_border`` pixels cropped per
    side; lower = more similar. ``net``: ``'alex'`` or ``'vgg'``; the weight files: see the module docstring
    (default ``pretrained/lpips/<torchvision file>`` and ``pretrained/lpips/<net>.pth``). ``optional``: a run
    without the files leaves the metric out (:func:`available_metrics`); called directly, it still raises.
    ``device``: default CUDA when available."""
    if img.shape != img2.shape:
        raise ValueError(f'LPIPS: image shapes differ: {img.shape} vs {img2.shape}')
    spec = LPIPS_NETS.get(net)
    if spec is None:
        raise ValueError(f"LPIPS net '{net}' is unknown; choose one of {', '.join(LPIPS_NETS)}")
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    network = lpips_network(net, backbone_weights or f"{DEFAULT_DIR}/{spec['backbone_file']}",
                            linear_weights or f"{DEFAULT_DIR}/{spec['linear_file']}", device)
    with torch.no_grad():
        distance = network(_image_tensor(img, crop_border, input_order).to(device),
                           _image_tensor(img2, crop_border, input_order).to(device))
    return float(distance[0])


def available_metrics(metrics: Mapping[str, Mapping] | None,
                      logger: logging.Logger | None = None) -> dict[str, Mapping]:
    """``metrics`` without the LPIPS blocks marked ``optional: true`` whose weight files are missing (each one
    logged once as a warning naming the files and where to get them); every other block unchanged."""
    kept = {}
    for name, options in (metrics or {}).items():
        if options.get('type') == 'calculate_lpips' and options.get('optional'):
            net = options.get('net', 'alex')
            spec = LPIPS_NETS.get(net)
            if spec is not None:
                backbone = options.get('backbone_weights') or f"{DEFAULT_DIR}/{spec['backbone_file']}"
                missing = missing_files(net, backbone,
                                        options.get('linear_weights') or f"{DEFAULT_DIR}/{spec['linear_file']}")
                if missing:
                    key = (name, tuple(missing))
                    if key not in _WARNED:
                        _WARNED.add(key)
                        (logger or logging.getLogger('basicsr')).warning(
                            f'val.metrics.{name}: LPIPS left out of this run (optional: true): '
                            f'{", ".join(missing)} not found; {where_to_get(net)}')
                    continue
        kept[name] = options
    return kept


__all__ = ['LPIPS', 'LPIPS_NETS', 'available_metrics', 'build_alexnet_features', 'calculate_lpips', 'lpips_network',
           'missing_files', 'where_to_get']
