"""One weight loader for every checkpoint format users meet.

Formats read (detected from the file, no flag needed):
- raw state dicts (most official SR releases: IMDN, RFDN, RLFN, PAN, LBNet, ...);
- BasicSR checkpoints ``{'params': ..., 'params_ema': ...}`` (and ``state_dict``/``model`` wrappers);
- keys prefixed ``module.`` (saved from DataParallel/DDP);
- ``.pth``/``.pt`` (always ``torch.load(weights_only=True)``: a pickle can run code) and ``.safetensors``.
Key-layout conversions for official checkpoints of other code bases (EDSR-PyTorch, RCAN) are applied
with ``key_format`` (see :mod:`mtkd.weights.formats`); a file that does not have the layout its key_format
promises raises :class:`WeightLoadError` naming the file and the keys.

Loading is strict by default; a mismatch raises :class:`WeightLoadError` naming the missing keys, the
unexpected keys, shape mismatches and the likely cause. A checkpoint that pickles Python objects is refused
(``WeightLoadError``), never unpickled. Where each official file comes from: ``pretrained/manifest.yaml``.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch

from mtkd.utils.errors import MtkdError
from mtkd.utils.fileio import file_sha256  # noqa: F401  (re-exported: callers hash weight files through this module)

PARAM_KEY_AUTO = 'auto'
#: Wrapper keys tried, in order, by ``param_key='auto'``.
AUTO_PARAM_KEYS = ('params_ema', 'params', 'state_dict', 'model')


class WeightLoadError(MtkdError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the network."""


def read_checkpoint(path: str) -> dict:
    """Read a checkpoint file (``.pth``/``.pt`` with ``weights_only=True``, or ``.safetensors``) onto the CPU."""
    if not os.path.isfile(path):
        raise WeightLoadError(f'Checkpoint not found: {path}. Run `make link-shared` (shared weights) or '
                              '`python scripts/download_pretrained.py` (see pretrained/README.md).')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return dict(load_file(path, device='cpu'))
        except Exception as error:  # safetensors raises its own error types
            raise WeightLoadError(f'Cannot read safetensors file {path}: {error}') from error
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own message advises weights_only=False; mtkd never does that, so say what to do instead.
        text = str(error)
        refused_global = re.search(r'Unsupported global: GLOBAL (\S+)', text)
        if refused_global:
            raise WeightLoadError(
                f'Refused checkpoint {path}: it pickles Python objects ({refused_global[1]}) that '
                'torch.load(weights_only=True) will not build, and mtkd never unpickles code. Re-save the weights '
                'from code you trust as a plain state dict (torch.save(network.state_dict(), path)) or as '
                '.safetensors.') from error
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith('Unsupported')), lines[0] if lines else '')
        raise WeightLoadError(f'Cannot read checkpoint {path}: not a PyTorch checkpoint or corrupt ({reason}).') \
            from error
    except Exception as error:
        raise WeightLoadError(
            f'Cannot read checkpoint {path} with torch.load(weights_only=True): {error!s}. The file is truncated '
            'or not a PyTorch checkpoint.') from error


def safetensors_metadata(path: str) -> dict[str, str]:
    """The string metadata in a ``.safetensors`` header (empty when there is none)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework='pt', device='cpu') as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types
        raise WeightLoadError(f'Cannot read safetensors file {path}: {error}') from error


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def select_state_dict(checkpoint: Mapping, param_key: str | None = PARAM_KEY_AUTO, path: str = '') -> dict:
    """The state dict inside a checkpoint.

    ``param_key``: ``'auto'`` (``params_ema``, then ``params``, ``state_dict``, ``model``, else the raw dict),
    ``None`` (the checkpoint is the state dict) or a key such as ``'params'``.
    """
    if param_key == PARAM_KEY_AUTO:
        for key in AUTO_PARAM_KEYS:
            if isinstance(checkpoint, Mapping) and _is_state_dict(checkpoint.get(key)):
                return dict(checkpoint[key])
        param_key = None
    if param_key is None:
        if not _is_state_dict(checkpoint):
            keys = list(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise WeightLoadError(f'{path}: expected a state dict of tensors at the top level, found {keys}. '
                                  "Set param_key (e.g. 'params' or 'params_ema').")
        return dict(checkpoint)
    if not isinstance(checkpoint, Mapping) or param_key not in checkpoint:
        available = list(checkpoint) if isinstance(checkpoint, Mapping) else []
        raise WeightLoadError(f"{path}: no '{param_key}' in the checkpoint (top-level keys: {available[:8]}). "
                              "Use param_key 'auto' or one of those keys.")
    if not _is_state_dict(checkpoint[param_key]):
        raise WeightLoadError(f"{path}: '{param_key}' does not hold a state dict of tensors.")
    return dict(checkpoint[param_key])


def strip_prefix(state_dict: Mapping, prefix: str = 'module.') -> dict:
    """Remove a DataParallel/DDP ``module.`` prefix from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def read_state_dict(path: str, param_key: str | None = PARAM_KEY_AUTO, key_format: str = 'basicsr') -> dict:
    """A file's state dict, ``module.`` stripped and converted to mtkd/BasicSR key layout.

    ``key_format`` names the layout of the file's keys (see :mod:`mtkd.weights.formats`); it is checked before
    the file is read, so a typo fails fast. A file that does not have that layout raises
    :class:`WeightLoadError` naming the file and the offending keys.
    """
    from mtkd.weights.formats import CONVERTERS, WeightFormatError, convert_state_dict

    if key_format not in CONVERTERS:
        raise ValueError(f"Unknown key_format '{key_format}' for {path}; choose one of {sorted(CONVERTERS)}.")
    checkpoint = read_checkpoint(path)
    if path.endswith('.safetensors'):
        # A safetensors file is one flat state dict: mtkd's export writes the network as its option file loaded it
        # (param_key and key_format applied), so the option file written for the .pth loads it as well.
        if param_key not in (None, PARAM_KEY_AUTO) and param_key not in checkpoint and _is_state_dict(checkpoint):
            param_key = None
        if safetensors_metadata(path).get('key_format') == 'basicsr':
            key_format = 'basicsr'
    state_dict = strip_prefix(select_state_dict(checkpoint, param_key, path))
    try:
        return convert_state_dict(state_dict, key_format)
    except WeightFormatError as error:
        raise WeightLoadError(f'{path} (key_format {key_format!r}): {error}') from error


def describe_mismatch(network: torch.nn.Module, state_dict: Mapping, path: str = '') -> str | None:
    """A readable description of how ``state_dict`` differs from ``network``'s, or None when it fits."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict)
                         if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if not (missing or unexpected or wrong_shape):
        return None

    def listing(keys):
        return ', '.join(keys[:6]) + (f' ... ({len(keys)} in all)' if len(keys) > 6 else '')

    lines = [f'Checkpoint {path or "(state dict)"} does not fit {type(network).__name__}:']
    if missing:
        lines.append(f'  missing keys: {listing(missing)}')
    if unexpected:
        lines.append(f'  unexpected keys: {listing(unexpected)}')
    if wrong_shape:
        lines.append('  shape mismatches: ' + listing(
            [f'{k} (network {tuple(expected[k].shape)}, file {tuple(state_dict[k].shape)})' for k in wrong_shape]))
    if wrong_shape and not (missing or unexpected):
        cause = 'same layout, other sizes: another num_feat, scale (upsampler) or channel count.'
    elif missing and unexpected:
        cause = ('other key names: another arch, a checkpoint of another code base (set key_format, e.g. '
                 "'edsr_official' or 'rcan_official'), or a wrapper key (set param_key).")
    elif unexpected:
        cause = 'the file has more layers: a deeper network (num_block) or another upscale factor.'
    else:
        cause = 'the file has fewer layers: a shallower network (num_block) or another upscale factor.'
    lines.append(f'  likely cause: {cause}')
    return '\n'.join(lines)


def load_weights(network: torch.nn.Module, path: str, param_key: str | None = PARAM_KEY_AUTO,
                 strict: bool = True, key_format: str = 'basicsr', logger=None) -> dict:
    """Load a checkpoint into ``network`` (unwrapping DDP/DataParallel); returns the state dict used.

    ``strict=True`` (default) raises :class:`WeightLoadError` on any mismatch. ``strict=False`` loads the
    matching keys and logs every key it skips; it never skips silently.
    """
    bare = network.module if hasattr(network, 'module') and isinstance(network.module, torch.nn.Module) else network
    state_dict = read_state_dict(path, param_key, key_format)
    problem = describe_mismatch(bare, state_dict, path)
    if problem and strict:
        raise WeightLoadError(problem + '\n  (loading is strict; set strict_load: false to load what fits, '
                              'with every skipped key logged)')
    if problem:
        expected = bare.state_dict()
        state_dict = {k: v for k, v in state_dict.items()
                      if k in expected and tuple(expected[k].shape) == tuple(v.shape)}
        message = problem + '\n  non-strict load: the keys above were skipped.'
        if logger is not None:
            logger.warning(message)
        else:
            import warnings
            warnings.warn(message, stacklevel=2)
    bare.load_state_dict(state_dict, strict=not problem)
    return state_dict
