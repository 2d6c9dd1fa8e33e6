"""Super-resolve image files with any registered network and its weights (``scripts/infer.py``).

A model is described by a :class:`ModelSpec`: the network block (``type`` plus arguments, as ``network_g`` of an
option file), its weights file (read by :func:`mtkd.weights.loading.load_weights`, always strictly: our checkpoints with
``params``/``params_ema`` and the official formats), the upscaling factor and the optional padding multiple of
window-attention networks (``val.pad_multiple``). Images are read as uint8 BGR, fed as RGB ``(1, 3, H, W)`` in
[0, 1] (each network rescales to its own ``img_range`` inside) and written as 8-bit PNG, rounded as BasicSR does
(:func:`mtkd.metrics.evaluation.tensor_to_image`).

Large images: ``tile_size`` runs the network on LR tiles with ``tile_overlap`` LR pixels of context
(:func:`mtkd.teachers.ensemble.run_tiled`: tile outputs are cropped to their core, not blended). That equals the
whole-image output (float rounding aside) only for networks whose receptive-field radius is at most ``tile_overlap`` and
that have no image-global operation: EDSR, MSRResNet, PAN, EdgeSRN (checked: PAN and EdgeSRN x4 agree within 1e-7 with
24 LR pixels of overlap). IMDN and RCAN (channel attention over the whole image), LBNet, RFDN and RLFN (ESA pooling
on a stride grid) and window-attention networks give slightly different outputs when tiled (RFDN-AIM on Set5
butterfly: 28.60 dB tiled at 32/16 against 28.64 dB whole).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from mtkd.metrics.evaluation import image_to_tensor, read_image, tensor_to_image
from mtkd.teachers.ensemble import run_tiled
from mtkd.transforms.padding import PAD_MODES, run_padded
from mtkd.transforms.self_ensemble import self_ensemble as run_self_ensemble
from mtkd.utils.fileio import atomic_write
from mtkd.weights.loading import PARAM_KEY_AUTO, load_weights

#: File name endings read from an input folder (case-insensitive).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
#: Network arguments that hold the upscaling factor, by arch (IMDN/RFDN/EDSR: ``upscale``; others ``scale``).
SCALE_ARGUMENTS = ('upscale', 'scale', 'upscale_factor')
#: LR pixels of context around each tile unless told otherwise.
DEFAULT_TILE_OVERLAP = 16


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and run one SR network.

    ``network``: the arch block (``{'type': 'IMDN', 'upscale': 4, ...}``); ``weights``: checkpoint path (None:
    random weights, for profiling only); ``param_key``/``key_format``: as :func:`mtkd.weights.loading.load_weights`;
    ``pad_multiple``/``pad_mode``: pad inputs to this multiple and crop back (window attention); ``self_ensemble``:
    run the x8 geometric self-ensemble (``val.self_ensemble`` of a test file); ``name``: for tables and output file
    names.
    """
    network: dict[str, Any]
    scale: int
    weights: str | None = None
    param_key: str | None = PARAM_KEY_AUTO
    key_format: str = 'basicsr'
    pad_multiple: int | None = None
    pad_mode: str = 'symmetric'
    name: str = ''
    self_ensemble: bool = False

    def __post_init__(self):
        if not isinstance(self.network, Mapping) or not isinstance(self.network.get('type'), str):
            raise ValueError(f"a network block needs a 'type' (e.g. {{'type': 'IMDN', 'upscale': 4}}), "
                             f'got {self.network!r}')
        object.__setattr__(self, 'network', copy.deepcopy(dict(self.network)))
        if not isinstance(self.scale, int) or isinstance(self.scale, bool) or self.scale < 1:
            raise ValueError(f'scale must be a positive integer, got {self.scale!r}')
        declared = network_scale(self.network)
        if declared is not None and declared != self.scale:
            raise ValueError(f"{self.network['type']} is built for x{declared} ({self.network}) but the scale is "
                             f'x{self.scale}: use weights and a network block for x{self.scale}, or --scale {declared}')
        if self.pad_multiple is not None and (not isinstance(self.pad_multiple, int) or self.pad_multiple < 1):
            raise ValueError(f'pad_multiple must be a positive integer or None, got {self.pad_multiple!r}')
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode '{self.pad_mode}' is not one of {PAD_MODES}")
        if not self.name:
            object.__setattr__(self, 'name', self.network['type'])


def network_scale(network: Mapping) -> int | None:
    """The upscaling factor a network block declares (``upscale``/``scale``/``upscale_factor``), or None."""
    for key in SCALE_ARGUMENTS:
        if key in network:
            return network[key]
    return None


def parse_arch(text: str) -> dict[str, Any]:
    """A network block from a JSON or YAML string such as ``'{"type": "IMDN", "upscale": 4}'``."""
    try:
        block = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f'--arch {text!r} is not valid JSON/YAML: {error}') from None
    if not isinstance(block, dict) or not isinstance(block.get('type'), str):
        raise ValueError(f"--arch must be a mapping with a 'type', e.g. '{{\"type\": \"IMDN\", \"upscale\": 4}}'; "
                         f'got {text!r}')
    return block


def resolve_path(path: str | None, root: str | None) -> str | None:
    """``path`` as is when absolute or when ``root`` is None, else joined to ``root``."""
    if path is None or root is None or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def model_spec_from_options(options: Mapping, root: str | None = None, *, weights: str | None = None,
                            param_key: str | None = None, key_format: str | None = None,
                            scale: int | None = None, name: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from an option dict: ``network_g``, ``path.pretrain_network_g`` (relative paths taken
    from ``root``), ``path.param_key_g``, ``path.key_format_g``, ``val.pad_multiple``/``pad_mode`` and ``scale``.

    The keyword arguments override the file (``weights`` as given, not joined to ``root``).
    """
    if not isinstance(options.get('network_g'), Mapping):
        raise ValueError("the option file has no network_g block (a test file such as options/test_imdn_x4.yml has "
                         "one); or pass --arch '{\"type\": ..., ...}' with --weights")
    path_options = options.get('path') or {}
    val_options = options.get('val') or {}
    network = options['network_g']
    if scale is None:
        scale = options.get('scale', network_scale(network))
    if scale is None:
        raise ValueError('neither the option file (scale) nor its network_g (upscale) gives the scale: pass --scale')
    return ModelSpec(
        network=dict(network), scale=scale,
        weights=weights if weights is not None else resolve_path(path_options.get('pretrain_network_g'), root),
        param_key=param_key if param_key is not None else path_options.get('param_key_g', PARAM_KEY_AUTO),
        key_format=key_format if key_format is not None else path_options.get('key_format_g', 'basicsr'),
        pad_multiple=val_options.get('pad_multiple'), pad_mode=val_options.get('pad_mode', 'symmetric'),
        name=name or options.get('name') or network['type'], self_ensemble=bool(val_options.get('self_ensemble')))


def model_spec_from_arch(network: Mapping | str, *, weights: str | None = None, param_key: str | None = None,
                         key_format: str | None = None, scale: int | None = None, pad_multiple: int | None = None,
                         name: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a network block (or its JSON/YAML text); the scale defaults to its ``upscale``."""
    block = parse_arch(network) if isinstance(network, str) else dict(network)
    check_arch(block.get('type'))
    if scale is None:
        scale = network_scale(block)
    if scale is None:
        raise ValueError(f"{block['type']}: the network block has no upscale/scale argument: pass --scale")
    return ModelSpec(network=block, scale=scale, weights=weights,
                     param_key=param_key if param_key is not None else PARAM_KEY_AUTO,
                     key_format=key_format or 'basicsr', pad_multiple=pad_multiple, name=name or block['type'])


def add_model_arguments(parser, arch_needs: str = '--weights') -> None:
    """The command-line arguments that name a model (``--opt`` or ``--arch``, weights, key layout, scale), shared by
    the scripts that load one (``scripts/infer.py``, ``scripts/export_model.py``)."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument('--opt', help='option file with network_g (and path.pretrain_network_g), e.g. '
                                     'options/test_imdn_x4.yml')
    model.add_argument('--arch', help='network block as JSON/YAML, e.g. \'{"type": "IMDN", "upscale": 4}\' '
                                      f'(needs {arch_needs})')
    parser.add_argument('--weights', default=None, help='checkpoint file (overrides path.pretrain_network_g)')
    parser.add_argument('--param-key', default=None,
                        help='key of the state dict in the checkpoint: auto (default), params, params_ema, none')
    parser.add_argument('--key-format', default=None,
                        help='key layout of the checkpoint (mtkd.weights.formats), default basicsr')
    parser.add_argument('--scale', type=int, default=None,
                        help="upscaling factor (default: the option file's scale or the network's upscale)")
    parser.set_defaults(arch_needs=arch_needs)  # for the error of model_spec_from_arguments


def model_spec_from_arguments(args, root: str | None, weights_optional: bool = False) -> ModelSpec:
    """The :class:`ModelSpec` of arguments added by :func:`add_model_arguments` (``--param-key none``: the
    checkpoint is a bare state dict). ``--arch`` needs ``--weights`` unless ``weights_optional``."""
    from mtkd.config.cli import load_option_file

    raw_state_dict = args.param_key is not None and args.param_key.lower() == 'none'
    param_key = None if raw_state_dict else args.param_key  # None here: the option file's (or auto)
    if args.opt:
        spec = model_spec_from_options(load_option_file(args.opt), root=root, weights=args.weights,
                                       param_key=param_key, key_format=args.key_format, scale=args.scale)
    else:
        if args.weights is None and not weights_optional:
            raise ValueError(f"--arch needs {getattr(args, 'arch_needs', '--weights')}")
        spec = model_spec_from_arch(args.arch, weights=args.weights, param_key=param_key,
                                    key_format=args.key_format, scale=args.scale)
    return dataclasses.replace(spec, param_key=None) if raw_state_dict else spec


def check_arch(arch: str) -> None:
    """A ValueError listing the registered archs when ``arch`` is not one of them."""
    from basicsr.utils.registry import ARCH_REGISTRY

    if not isinstance(arch, str) or (arch not in ARCH_REGISTRY and f'{arch}_basicsr' not in ARCH_REGISTRY):
        known = ', '.join(sorted(name for name, _ in ARCH_REGISTRY))
        raise ValueError(f"unknown arch '{arch}'; registered archs: {known}")


def build_network(network: Mapping) -> nn.Module:
    """BasicSR's ``build_network`` with errors that name the arch and what is registered."""
    from basicsr.archs import build_network as basicsr_build_network

    block = copy.deepcopy(dict(network))
    arch = block.get('type')
    check_arch(arch)
    try:
        return basicsr_build_network(block)
    except TypeError as error:
        raise ValueError(f'cannot build {arch} from {network}: {error}') from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cuda`` when available and no device is given; a clear error for an unavailable CUDA device."""
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device} requested but CUDA is not available in this PyTorch build/machine: '
                         'use --device cpu')
    return device


def load_model(spec: ModelSpec, device: str | torch.device = 'cpu', allow_random_weights: bool = False,
               logger=None) -> nn.Module:
    """Build ``spec.network``, load ``spec.weights`` strictly (:class:`mtkd.weights.loading.WeightLoadError` when they
    do not fit), put it in eval mode on ``device``. ``allow_random_weights``: keep the random init when no weights are
    given (profiling)."""
    network = build_network(spec.network)
    if spec.weights is not None:
        load_weights(network, spec.weights, param_key=spec.param_key, strict=True, key_format=spec.key_format,
                     logger=logger)
    elif not allow_random_weights:
        raise ValueError(f"{spec.name} ({spec.network['type']}): no weights given; pass --weights PATH or set "
                         'path.pretrain_network_g in the option file')
    return network.eval().to(device)


@torch.no_grad()
def super_resolve(network: nn.Module, images: torch.Tensor, scale: int, tile_size: int | None = None,
                  tile_overlap: int = DEFAULT_TILE_OVERLAP, pad_multiple: int | None = None,
                  pad_mode: str = 'symmetric', self_ensemble: bool = False) -> torch.Tensor:
    """SR of ``(B, 3, H, W)`` RGB in [0, 1] → ``(B, 3, sH, sW)``, not clamped; tiled when ``tile_size`` is set
    (see the module docstring for which networks tiling leaves exact), each tile padded to ``pad_multiple``;
    ``self_ensemble``: each tile's output is the mean of its 8 rotated/mirrored runs (8x the cost)."""
    if tile_size is not None and (tile_size < 1 or tile_overlap < 0):
        raise ValueError(f'tile size must be >= 1 and tile overlap >= 0, got {tile_size} and {tile_overlap}')

    def run_once(batch: torch.Tensor) -> torch.Tensor:
        return run_padded(network, batch, pad_multiple, scale, pad_mode)

    def run(batch: torch.Tensor) -> list[torch.Tensor]:
        return [run_self_ensemble(run_once, batch) if self_ensemble else run_once(batch)]

    output = run_tiled(run, images, scale, tile_size, tile_overlap)[0]
    expected = (images.shape[-2] * scale, images.shape[-1] * scale)
    if tuple(output.shape[-2:]) != expected:
        raise ValueError(f'{type(network).__name__} turned a {tuple(images.shape[-2:])} input into '
                         f'{tuple(output.shape[-2:])}, not the x{scale} size {expected}: the scale does not match '
                         'the network')
    return output


def list_images(input_path: str) -> list[str]:
    """``[input_path]`` for a file; the image files (:data:`IMAGE_EXTENSIONS`) of a folder, sorted, not recursive."""
    if os.path.isfile(input_path):
        return [input_path]
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f'input {input_path} does not exist (give an image file or a folder of images)')
    paths = [os.path.join(input_path, name) for name in sorted(os.listdir(input_path))
             if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(input_path, name))]
    if not paths:
        raise FileNotFoundError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in {input_path}')
    return paths


def output_path(input_path: str, output_dir: str, suffix: str) -> str:
    """``<output_dir>/<stem>_<suffix>.png`` (``<stem>.png`` when ``suffix`` is empty)."""
    stem = os.path.splitext(os.path.basename(input_path))[0]
    return os.path.join(output_dir, f'{stem}_{suffix}.png' if suffix else f'{stem}.png')


def write_png(image_bgr_uint8: np.ndarray, path: str) -> str:
    """Write a uint8 BGR image as PNG, atomically (no half-written file on a crash)."""
    ok, encoded = cv2.imencode('.png', image_bgr_uint8)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {image_bgr_uint8.shape} image as PNG for {path}')
    return atomic_write(path, lambda handle: handle.write(encoded.tobytes()))


def default_suffix(spec: ModelSpec) -> str:
    """``<arch>_x<scale>``, e.g. ``IMDN_x4``."""
    return f"{spec.network['type']}_x{spec.scale}"


def super_resolve_files(network: nn.Module, paths: Sequence[str], output_dir: str, scale: int, suffix: str,
                        device: str | torch.device = 'cpu', tile_size: int | None = None,
                        tile_overlap: int = DEFAULT_TILE_OVERLAP, pad_multiple: int | None = None,
                        pad_mode: str = 'symmetric', progress: bool = True, self_ensemble: bool = False) -> list[str]:
    """Super-resolve every file of ``paths`` into ``output_dir`` (:func:`output_path`); returns the written paths.

    An unreadable file raises :class:`mtkd.metrics.evaluation.ImageReadError` naming it (images written before it stay).
    Two inputs that would write the same output (``a.png`` and ``a.jpg``) are refused before any work.
    """
    targets = [output_path(path, output_dir, suffix) for path in paths]
    seen: dict[str, str] = {}
    inputs = {os.path.realpath(path) for path in paths}
    for path, target in zip(paths, targets):
        if target in seen:
            raise ValueError(f'{seen[target]} and {path} would both be written to {target}: rename one of them')
        if os.path.realpath(target) in inputs:
            raise ValueError(f'{target} is an input image and would be overwritten by an output: choose another '
                             'output folder or a --suffix')
        seen[target] = path
    os.makedirs(output_dir, exist_ok=True)
    iterator: Iterable = zip(paths, targets)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=len(paths), unit='image', desc='super-resolving')
    for path, target in iterator:
        lr = image_to_tensor(read_image(path)).to(device)
        sr = super_resolve(network, lr, scale, tile_size, tile_overlap, pad_multiple, pad_mode, self_ensemble)
        write_png(tensor_to_image(sr), target)
    return targets


def run_inference(spec: ModelSpec, input_path: str, output_dir: str, suffix: str | None = None,
                  device: str | torch.device | None = None, tile_size: int | None = None,
                  tile_overlap: int = DEFAULT_TILE_OVERLAP, progress: bool = True, logger=None,
                  self_ensemble: bool = False) -> list[str]:
    """List the inputs, load the model, super-resolve everything; returns the written paths. The self-ensemble runs
    when ``self_ensemble`` or ``spec.self_ensemble`` asks for it."""
    suffix = default_suffix(spec) if suffix is None else suffix
    paths = without_own_outputs(list_images(input_path), input_path, output_dir, suffix, logger)
    device = resolve_device(device)
    network = load_model(spec, device, logger=logger)
    return super_resolve_files(network, paths, output_dir, spec.scale, suffix, device, tile_size, tile_overlap,
                               spec.pad_multiple, spec.pad_mode, progress, self_ensemble or spec.self_ensemble)


def without_own_outputs(paths: Sequence[str], input_path: str, output_dir: str, suffix: str,
                        logger=None) -> list[str]:
    """``paths`` less the outputs an earlier run wrote into the same folder (``<stem>_<suffix>.png``), so that
    writing the results beside the inputs does not super-resolve them again on the next run."""
    if not (suffix and os.path.isdir(input_path) and os.path.isdir(output_dir)
            and os.path.samefile(input_path, output_dir)):
        return list(paths)
    own = [path for path in paths if os.path.basename(path).endswith(f'_{suffix}.png')]
    if own and logger is not None:
        logger.warning(f'{len(own)} image(s) in {input_path} end in _{suffix}.png, the outputs of an earlier run '
                       'into the same folder: skipped')
    kept = [path for path in paths if path not in set(own)]
    if not kept:
        raise FileNotFoundError(f'{input_path} holds only outputs of an earlier run (*_{suffix}.png)')
    return kept


__all__ = ['DEFAULT_TILE_OVERLAP', 'IMAGE_EXTENSIONS', 'ModelSpec', 'build_network', 'check_arch', 'default_suffix',
           'list_images', 'load_model', 'model_spec_from_arch', 'model_spec_from_options', 'network_scale',
           'output_path', 'parse_arch', 'resolve_device', 'run_inference', 'super_resolve', 'super_resolve_files',
           'without_own_outputs', 'write_png']
