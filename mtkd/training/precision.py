"""What runs in which precision: fp32 matmul/convolution settings, mixed precision, losses and frozen targets.

Rules (docs/performance.md, "What runs in which precision"):

* fp32 means IEEE fp32 everywhere unless ``fast_matmul`` asks for TF32: :func:`set_float32_precision` sets the
  matmul AND the cuDNN convolution precision (cuDNN convolutions default to TF32 in PyTorch). ``import mtkd``
  sets IEEE fp32, so every script, test and cache is fp32; training and testing set it from ``fast_matmul``.
* ``use_amp``: the trained network's forward runs under autocast in ``amp_dtype`` (default ``fp16``, chosen by
  :func:`measure_amp_rounding`: fp16 keeps 11 significant bits, bf16 8, and SR images live in [0, 1] where fp16's
  narrower exponent range costs nothing); every loss is computed in fp32 (:func:`fp32_loss`).
* The teacher side (teachers, aggregator, DTKD's masks) runs in fp32 by default, outside the student's autocast
  (:func:`frozen_autocast`); ``amp_teachers: true`` runs it in ``amp_dtype`` for speed.
* Training targets and teacher outputs are rounded to float16 exactly as the teacher-output cache stores them
  (:func:`round_like_cache`), so a target is the same whether it was cached or computed during the step.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
#: How the teacher-output cache stores images (mtkd.teachers.cache.CACHE_DTYPE).
CACHE_TORCH_DTYPE = torch.float16


def set_float32_precision(fast: bool) -> None:
    """fp32 matmul and cuDNN convolutions in IEEE fp32 (``fast=False``) or TF32 (``fast=True``, Ampere and newer).

    PyTorch's defaults are IEEE matmul but TF32 convolutions; both are set here. Uses the per-backend
    ``fp32_precision`` API where torch has it (mixing it with the legacy ``allow_tf32`` flags is an error there).
    """
    value = 'tf32' if fast else 'ieee'
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, 'conv') and hasattr(cudnn.conv, 'fp32_precision'):
        torch.backends.cuda.matmul.fp32_precision = value
        cudnn.conv.fp32_precision = value
        cudnn.rnn.fp32_precision = value
    else:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = fast
        cudnn.allow_tf32 = fast
        torch.set_float32_matmul_precision('high' if fast else 'highest')


def float32_precision() -> dict[str, str]:
    """The current fp32 settings: ``{'matmul': 'ieee' | 'tf32', 'conv': ...}`` (for reports and tests)."""
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, 'conv') and hasattr(cudnn.conv, 'fp32_precision'):
        matmul = torch.backends.cuda.matmul.fp32_precision
        return {'matmul': 'ieee' if matmul == 'none' else matmul, 'conv': cudnn.conv.fp32_precision}
    return {'matmul': 'tf32' if torch.backends.cuda.matmul.allow_tf32 else 'ieee',
            'conv': 'tf32' if cudnn.allow_tf32 else 'ieee'}


def _autocast_device(tensor_or_device) -> str | None:
    device = tensor_or_device.device if torch.is_tensor(tensor_or_device) else torch.device(tensor_or_device)
    available = getattr(torch.amp, 'is_autocast_available', None)
    if available is not None and not available(device.type):
        return None
    return device.type


def autocast_off(tensor_or_device) -> contextlib.AbstractContextManager:
    """A region where autocast is disabled on the device of ``tensor_or_device`` (nothing for e.g. ``meta``)."""
    device_type = _autocast_device(tensor_or_device)
    if device_type is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def frozen_autocast(device: torch.device, use_amp: bool, amp_teachers: bool) -> contextlib.AbstractContextManager:
    """The precision of the teacher side inside a training step: fp32 (autocast off) unless ``amp_teachers``.

    With ``use_amp`` off there is no autocast to leave; with ``amp_teachers`` the surrounding autocast applies."""
    if use_amp and not amp_teachers:
        return autocast_off(device)
    return contextlib.nullcontext()


def _to_fp32(value: Any) -> Any:
    if torch.is_tensor(value) and value.is_floating_point():
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(item) for item in value)
    return value


def fp32_loss(criterion: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``criterion(*args, **kwargs)`` with every floating tensor (also inside lists) cast to fp32 and autocast off.

    Under AMP the network's output is fp16/bf16: residuals averaged in that precision lose the small errors that
    distillation is about (a bf16 mean of ``|S - T|`` over a 128x128 patch keeps 8 significant bits). ``.float()``
    of an fp32 tensor is the tensor itself, so fp32 training pays nothing."""
    device = next((item for item in list(args) + list(kwargs.values()) if torch.is_tensor(item)), None)
    context = autocast_off(device) if device is not None else contextlib.nullcontext()
    with context:
        return criterion(*_to_fp32(args), **{key: _to_fp32(value) for key, value in kwargs.items()})


def round_like_cache(images: torch.Tensor) -> torch.Tensor:
    """``images`` rounded to float16 and returned as float32: what a teacher-output cache would give back.

    The cache stores float16 (an error of at most 2^-12 in [0.5, 1], 1/16 of a grey level); rounding targets
    computed during the step the same way makes the cache a pure speed option."""
    return images.to(CACHE_TORCH_DTYPE).float()


def measure_amp_rounding(images: torch.Tensor | None = None, network: torch.nn.Module | None = None,
                         device: str = 'cpu') -> list[dict[str, float]]:
    """The measurement behind the default ``amp_dtype``: rounding error of fp16 and bf16 on SR images.

    For each dtype: the round trip of ``images`` (RGB [0, 1], default: crops of scikit-image's bundled photos)
    through that dtype, and the output of ``network`` (default: a random EDSR, 32 features, 4 blocks, x2) under
    autocast, both against fp32: maximum and mean absolute error in grey levels (1/255) and PSNR in dB.
    """
    if images is None:
        images = _photo_crops(4, 128)
    images = images.to(device)
    if network is None:
        from basicsr.archs.edsr_arch import EDSR

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = EDSR(3, 3, num_feat=32, num_block=4, upscale=2)
    network = network.to(device).eval()
    lq = torch.nn.functional.avg_pool2d(images, 2)
    with torch.no_grad(), autocast_off(images):
        reference = network(lq).float()
    rows = []
    for name, dtype in (('fp16', torch.float16), ('bf16', torch.bfloat16)):
        rounded = images.to(dtype).float()
        with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            output = network(lq).float()
        for what, value, truth in (('round trip of the image', rounded, images), ('network under autocast', output,
                                                                                   reference)):
            error = (value - truth).abs()
            mse = float(error.square().mean())
            rows.append({'dtype': name, 'what': what, 'max_grey_levels': float(error.max()) * 255,
                         'mean_grey_levels': float(error.mean()) * 255,
                         'psnr_db': 10 * math.log10(1 / mse) if mse > 0 else math.inf})
    return rows


def _photo_crops(count: int, size: int) -> torch.Tensor:
    import numpy as np
    from skimage import data as skimage_data

    names = ('astronaut', 'chelsea', 'coffee', 'rocket')
    crops = [np.ascontiguousarray(getattr(skimage_data, names[index % len(names)])()[:size, :size, :3])
             for index in range(count)]
    return torch.stack([torch.from_numpy(crop).permute(2, 0, 1).float() / 255 for crop in crops])


def rounding_table(rows: Sequence[dict[str, float]]) -> str:
    """Markdown table of :func:`measure_amp_rounding`."""
    lines = ['| dtype | what | max error (grey levels) | mean error (grey levels) | PSNR (dB) |',
             '|---|---|---:|---:|---:|']
    lines += [f"| {row['dtype']} | {row['what']} | {row['max_grey_levels']:.3f} | {row['mean_grey_levels']:.4f} | "
              f"{row['psnr_db']:.1f} |" for row in rows]
    return '\n'.join(lines)


__all__ = ['AMP_DTYPES', 'set_float32_precision', 'float32_precision', 'autocast_off', 'frozen_autocast', 'fp32_loss',
           'round_like_cache', 'measure_amp_rounding', 'rounding_table']
