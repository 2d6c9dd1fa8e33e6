"""VGG perceptual loss with weights from a local file (no download), for EdgeSRN's optional perceptual term.

Registered as ``VGGPerceptualLoss``. BasicSR's ``PerceptualLoss`` downloads torchvision's VGG weights when
``experiments/pretrained_models/vgg19-dcbd5c4.pth`` is absent; machines without internet then fail deep inside
torchvision. Here the weights file is a required option, checked when the loss is built, and loaded strictly.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from mtkd.weights.loading import read_checkpoint

# torchvision's VGG configurations (conv widths, 'M' = max pool).
VGG_CONFIGS = {
    'vgg11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg13': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
    'vgg19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(vgg_type: str) -> list[str]:
    """Names of the ``features`` modules in order: ``conv1_1, relu1_1, conv1_2, ..., pool1, conv2_1, ...``."""
    names, block, index = [], 1, 1
    for entry in VGG_CONFIGS[vgg_type]:
        if entry == 'M':
            names.append(f'pool{block}')
            block, index = block + 1, 1
        else:
            names += [f'conv{block}_{index}', f'relu{block}_{index}']
            index += 1
    return names


def build_vgg_features(vgg_type: str, last_layer: str) -> nn.Sequential:
    """``torchvision.models.<vgg_type>().features`` up to ``last_layer`` (same module indices, no weights)."""
    modules, in_channels = [], 3
    for entry in VGG_CONFIGS[vgg_type]:
        if entry == 'M':
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(in_channels, entry, 3, padding=1), nn.ReLU(inplace=False)]
            in_channels = entry
    return nn.Sequential(*modules[:vgg_layer_names(vgg_type).index(last_layer) + 1])


def load_vgg_features(features: nn.Sequential, path: str, description: str = 'VGG') -> None:
    """Load the ``features.*`` tensors of a torchvision checkpoint (VGG, or AlexNet for LPIPS) into ``features``,
    strictly.

    ``classifier.*`` tensors (and the features past the last layer used) are not needed and are left out;
    every tensor the truncated network has must be in the file with the right shape. ``description`` names the
    network in messages.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'VGG weights {path} not found. The perceptual loss needs torchvision VGG weights (e.g. '
            'vgg19-dcbd5c4.pth from https://download.pytorch.org/models/vgg19-dcbd5c4.pth); download them on a machine '
            'with internet, copy them here and set vgg_weights, or remove perceptual_opt.')
    state = read_checkpoint(path)
    if isinstance(state, dict) and 'params' in state and isinstance(state['params'], dict):
        state = state['params']
    wanted = {f'features.{name}': tensor for name, tensor in features.state_dict().items()}
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(f'{description} weights {path} lack {len(missing)} tensors of the layers in use, e.g. '
                         f'{missing[:3]}: is it a torchvision {description} checkpoint of the same type?')
    wrong = [f'{key}: file {tuple(state[key].shape)} vs network {tuple(tensor.shape)}'
             for key, tensor in wanted.items() if tuple(state[key].shape) != tuple(tensor.shape)]
    if wrong:
        raise ValueError(f'{description} weights {path} do not fit the {len(wrong)} tensors: ' + '; '.join(wrong[:3]))
    features.load_state_dict({key.removeprefix('features.'): state[key] for key in wanted}, strict=True)


@LOSS_REGISTRY.register()
class VGGPerceptualLoss(nn.Module):
    """``perceptual_weight * sum_l w_l * criterion(phi_l(pred), phi_l(target))`` on a frozen VGG.

    Johnson et al. 2016 / ESRGAN's perceptual loss, BasicSR's option vocabulary (``layer_weights``,
    ``vgg_type``, ``use_input_norm``, ``range_norm``, ``perceptual_weight``, ``criterion``). Returns
    ``(loss, None)`` like BasicSR's ``PerceptualLoss`` (no style term), so ``SRModel`` uses it unchanged
    as ``perceptual_opt``. The VGG is frozen (no parameter gets a gradient); the target's features are
    computed without autograd. Inputs ``(B, 3, H, W)`` RGB in [0, 1] (``range_norm`` maps [-1, 1] first).
    """

    def __init__(self, vgg_weights: str, layer_weights: dict[str, float] | None = None, vgg_type: str = 'vgg19',
                 use_input_norm: bool = True, range_norm: bool = False, perceptual_weight: float = 1.0,
                 criterion: str = 'l1'):
        super().__init__()
        if vgg_type not in VGG_CONFIGS:
            raise ValueError(f"vgg_type '{vgg_type}' is unknown; choose one of {', '.join(VGG_CONFIGS)}")
        layer_weights = dict(layer_weights or {'conv5_4': 1.0})
        names = vgg_layer_names(vgg_type)
        unknown = [layer for layer in layer_weights if layer not in names]
        if unknown:
            raise ValueError(f'VGGPerceptualLoss layers {unknown} are not in {vgg_type}; valid: {", ".join(names)}')
        if criterion not in ('l1', 'l2', 'fro'):
            raise ValueError(f"criterion '{criterion}' is unknown; choose 'l1', 'l2' or 'fro'")
        self.layer_weights = layer_weights
        self.layer_indices = {layer: names.index(layer) for layer in layer_weights}
        last = max(self.layer_indices.values())
        self.features = build_vgg_features(vgg_type, names[last])
        load_vgg_features(self.features, vgg_weights)
        self.features.requires_grad_(False).eval()
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        self.perceptual_weight = perceptual_weight
        self.criterion = criterion
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: never in training mode
        return self

    def layer_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.range_norm:
            images = (images + 1) / 2
        if self.use_input_norm:
            images = (images - self.mean) / self.std
        outputs, wanted = {}, {index: layer for layer, index in self.layer_indices.items()}
        for index, module in enumerate(self.features):
            images = module(images)
            if index in wanted:
                outputs[wanted[index]] = images
        return outputs

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion == 'l1':
            return F.l1_loss(a, b)
        if self.criterion == 'l2':
            return F.mse_loss(a, b)
        return torch.linalg.vector_norm(a - b)

    def forward(self, pred: torch.Tensor, target: torch.Tensor):
        pred_features = self.layer_outputs(pred)
        with torch.no_grad():
            target_features = self.layer_outputs(target.detach())
        loss = sum(weight * self._distance(pred_features[layer], target_features[layer])
                   for layer, weight in self.layer_weights.items())
        return self.perceptual_weight * loss, None
