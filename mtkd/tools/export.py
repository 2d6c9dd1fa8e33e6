"""Export a trained SR network for deployment: its state dict as ``.safetensors`` and the network as ONNX, checked
against PyTorch with onnxruntime (``scripts/export_model.py``).

The ONNX graph is written by PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, which needs
the ``onnx`` package to serialise), opset :data:`ONNX_OPSET`, one input ``'lr'`` ``(1, C, H, W)`` in [0, 1] and one
output ``'sr'`` ``(1, C, sH, sW)``, not clamped, with dynamic height and width (the batch stays 1). Networks that
need a multiple of a window size (``val.pad_multiple``: SwinIR) are exported with the padding inside
(:class:`PaddedNetwork`: symmetric, as ``scripts/infer.py`` pads), so the ONNX model takes any size too. For the
DCTSwin aggregation network the input ``'lr'`` holds the N teacher outputs concatenated, ``(1, 3N, sH, sW)``.

Tracing records one run of the network: a Python branch on the input size is frozen at the export size, and a
graph that is valid at that size can be wrong at another. So the export is only accepted after onnxruntime
reproduces PyTorch, to :data:`DEFAULT_TOLERANCE` in max absolute difference, on random inputs of sizes other than
the export size (:data:`DEFAULT_CHECK_SIZES`; the export size :data:`DEFAULT_EXPORT_SIZE` is not a multiple of 8
so that padding code is traced rather than skipped). docs/inference.md lists which archs pass.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.analysis.profiling import count_parameters
from mtkd.tools.inference import ModelSpec, load_model
from mtkd.utils.errors import MtkdError

#: ONNX operator set of the exported graph.
ONNX_OPSET = 17
INPUT_NAME = 'lr'
OUTPUT_NAME = 'sr'
#: LR (height, width) of the traced example input: not multiples of 8, so window padding is traced.
DEFAULT_EXPORT_SIZE = (20, 28)
#: LR (height, width) of the random inputs compared between onnxruntime and PyTorch: neither is the export size.
DEFAULT_CHECK_SIZES = ((24, 40), (37, 29))
#: Largest accepted max absolute difference between the ONNX and PyTorch outputs (images in [0, 1]).
DEFAULT_TOLERANCE = 1e-4
#: Random check inputs: uniform noise on a grid this many pixels coarser, upsampled, plus this much fine noise.
RANDOM_INPUT_COARSENESS = 4
RANDOM_INPUT_NOISE = 0.1


class ExportError(MtkdError, RuntimeError):
    """A network that cannot be exported, or whose ONNX model cannot be run."""


@dataclass(frozen=True)
class SizeCheck:
    """One comparison: network input ``(channels, height, width)``, output size and the max absolute difference."""
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int]
    max_abs_diff: float


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured. ``checks`` is empty when onnxruntime was not run."""
    name: str
    arch: str
    parameters: int
    safetensors_path: str
    onnx_path: str
    tolerance: float
    checks: list[SizeCheck] = field(default_factory=list)
    tracer_warnings: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float | None:
        return max((check.max_abs_diff for check in self.checks), default=None)

    @property
    def label(self) -> str:
        """``name (arch)``, or the arch alone when the name is the arch."""
        return f'{self.name} ({self.arch})' if self.name != self.arch else self.arch

    @property
    def matches(self) -> bool:
        """True when every check ran and stayed within the tolerance (False when none ran)."""
        return bool(self.checks) and all(check.max_abs_diff <= self.tolerance for check in self.checks)


class PaddedNetwork(nn.Module):
    """``network`` on its input padded at the bottom/right to a multiple of ``multiple``, output cropped back.

    The same numbers as :func:`mtkd.transforms.padding.run_padded` in ``'symmetric'`` mode (mirror including the
    edge row), written without Python branches on the size so that a traced graph pads any input size: the padding
    ``(-H) mod m`` is always concatenated, empty when H is already a multiple. ``(B, C, H, W)`` → ``(B, C', sH, sW)``.
    """

    def __init__(self, network: nn.Module, multiple: int, scale: int):
        super().__init__()
        self.network = network
        self.multiple = multiple
        self.scale = scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2], images.shape[-1]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        padded = torch.cat([images, images.flip(-2)[..., :pad_h, :]], dim=-2)
        padded = torch.cat([padded, padded.flip(-1)[..., :pad_w]], dim=-1)
        return self.network(padded)[..., :height * self.scale, :width * self.scale]


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (``pip install -r requirements.txt`` installs it)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def input_channels(network: nn.Module, block: Mapping) -> int:
    """Channels of the network input: ``num_in_ch`` (DCTSwin: 3 per teacher), ``in_chans`` (SwinIR), else 3."""
    for value in (getattr(network, 'num_in_ch', None), block.get('num_in_ch'), block.get('in_chans')):
        if isinstance(value, int) and value > 0:
            return value
    return 3


def input_size(network: nn.Module, scale: int, lr_size: Sequence[int]) -> tuple[int, int]:
    """Network input (height, width) for an LR size: the LR size itself, or ``scale`` x it for an aggregation
    network (DCTSwin, ``num_teachers`` attribute) whose input is the teachers' SR outputs."""
    factor = scale if hasattr(network, 'num_teachers') else 1
    return lr_size[0] * factor, lr_size[1] * factor


def random_input(network: nn.Module, block: Mapping, scale: int, lr_size: Sequence[int], seed: int) -> torch.Tensor:
    """A random image-like ``(1, C, H, W)`` input in [0, 1] of the LR size ``lr_size`` = (height, width).

    Uniform noise on a grid :data:`RANDOM_INPUT_COARSENESS` times coarser, bilinearly upsampled, plus uniform noise
    of amplitude :data:`RANDOM_INPUT_NOISE`, clipped to [0, 1]; reproducible by ``seed``. Not plain white noise:
    PAN's released weights blow up on it (outputs near 1e21 for uniform noise in [0, 1], about 1 for these inputs
    and for real images), which would hide the export error under float rounding of huge numbers.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = input_size(network, scale, lr_size)
    channels = input_channels(network, block)
    coarse = RANDOM_INPUT_COARSENESS
    grid = torch.rand(1, channels, -(-height // coarse) + 1, -(-width // coarse) + 1, generator=generator)
    smooth = F.interpolate(grid, scale_factor=coarse, mode='bilinear', align_corners=False)[..., :height, :width]
    noise = RANDOM_INPUT_NOISE * (torch.rand(1, channels, height, width, generator=generator) - 0.5)
    return (smooth + noise).clamp(0, 1)


def save_safetensors(network: nn.Module, path: str, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``network.state_dict()`` (parameters and persistent buffers, on the CPU) to ``path``.

    Tensors are copied, so weights shared between modules are stored once per key and the file reloads strictly
    with :func:`mtkd.weights.loading.load_weights`. ``metadata``: strings stored in the header (the network block here).
    """
    from safetensors.torch import save_file

    bare = network.module if isinstance(getattr(network, 'module', None), nn.Module) else network
    tensors = {key: value.detach().to('cpu').contiguous().clone() for key, value in bare.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=dict(metadata) if metadata else None)
    return path


def export_onnx(network: nn.Module, path: str, example_input: torch.Tensor, name: str = '',
                opset: int = ONNX_OPSET) -> list[str]:
    """Trace ``network`` (eval mode, CPU) on ``example_input`` ``(1, C, H, W)`` into ONNX at ``path``: input
    ``'lr'``, output ``'sr'``, dynamic height and width. Returns the tracer's warnings (Python values frozen at
    the export size: a graph to check at other sizes). Raises :class:`ExportError` naming ``name`` on failure."""
    label = name or type(network).__name__
    try:
        import onnx  # noqa: F401  (torch's TorchScript exporter serialises the model with it)
    except ImportError:
        raise ExportError(f'{label}: ONNX export needs the onnx package, which is not installed: run '
                          '`pip install -r requirements.txt` (or `make install`)') from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)  # no stale model from an earlier run is left behind when this export fails
    network = network.eval()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), _exporter_log(path) as log_path:
        warnings.simplefilter('always', torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export', category=DeprecationWarning)
        try:
            torch.onnx.export(network, (example_input,), path, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {2: 'height', 3: 'width'},
                                            OUTPUT_NAME: {2: 'out_height', 3: 'out_width'}})
        except Exception as error:  # the exporter raises many types; all mean "cannot export this network"
            message = str(error).strip().splitlines()[0] if str(error).strip() else ''
            raise ExportError(f'{label}: ONNX export (TorchScript exporter, opset {opset}) failed: '
                              f'{type(error).__name__}: {message} (exporter log: {log_path})') from error
    return sorted({f'{os.path.basename(warning.filename)}:{warning.lineno}: {str(warning.message).split(". ")[0]}'
                   for warning in caught if issubclass(warning.category, torch.jit.TracerWarning)})


@contextlib.contextmanager
def _exporter_log(onnx_path: str):
    """Send what the exporter prints to the process's stdout (it dumps the whole TorchScript graph there when an
    export fails) to ``<onnx_path>.log``; the file is removed when the export succeeds. Yields its path."""
    log_path = f'{onnx_path}.log'
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    try:
        with open(log_path, 'wb') as log:
            os.dup2(log.fileno(), 1)
            try:
                yield log_path
            finally:
                sys.stdout.flush()
                os.dup2(saved_stdout, 1)
    finally:
        os.close(saved_stdout)
    os.remove(log_path)  # reached only when the export did not raise


def onnx_session(path: str, name: str = ''):
    """An onnxruntime CPU session for ``path``, using as many threads as PyTorch does."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f'{name or path}: checking the ONNX model needs onnxruntime, which is not installed: run '
                          '`pip install -r requirements.txt` (or `make install`)') from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: a failing run is reported by compare_with_onnx's ExportError
    try:
        return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as error:  # onnxruntime raises its own error types
        raise ExportError(f'{name or path}: onnxruntime cannot load {path}: {error}') from error


def compare_with_onnx(network: nn.Module, session, inputs: Sequence[torch.Tensor], name: str = '') -> list[SizeCheck]:
    """Run each ``(1, C, H, W)`` input through PyTorch and through the onnxruntime ``session``; the max absolute
    difference per input. A run that fails or gives another shape raises :class:`ExportError` naming ``name``."""
    checks = []
    for images in inputs:
        with torch.no_grad():
            expected = network(images).numpy()
        try:
            actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
        except Exception as error:  # onnxruntime raises its own error types
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ExportError(f'{name}: onnxruntime failed on a {tuple(images.shape)} input (the traced graph does '
                              f'not fit this size): {first_line}') from error
        if actual.shape != expected.shape:
            raise ExportError(f'{name}: onnxruntime gave {actual.shape} for a {tuple(images.shape)} input, PyTorch '
                              f'{expected.shape}: the traced graph froze a size')
        difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        max_abs_diff = float(difference.max()) if np.isfinite(difference).all() else float('inf')
        checks.append(SizeCheck(tuple(images.shape[1:]), tuple(expected.shape[-2:]), max_abs_diff))
    return checks


def export_model(spec: ModelSpec, output_prefix: str, export_size: Sequence[int] = DEFAULT_EXPORT_SIZE,
                 check_sizes: Sequence[Sequence[int]] = DEFAULT_CHECK_SIZES, tolerance: float = DEFAULT_TOLERANCE,
                 allow_random_weights: bool = False, check: bool = True, opset: int = ONNX_OPSET,
                 logger=None) -> ExportResult:
    """Build and load ``spec`` (weights strictly), write ``<output_prefix>.safetensors`` and ``<output_prefix>.onnx``,
    then (``check``) compare onnxruntime with PyTorch on random inputs of the LR sizes ``check_sizes``.

    Sizes are LR (height, width). The result says whether every check is within ``tolerance``; it does not raise
    for a mismatch (the caller decides). Raises :class:`ExportError` when the export or onnxruntime fails.
    """
    network = load_model(spec, 'cpu', allow_random_weights=allow_random_weights, logger=logger)
    arch = spec.network['type']
    label = f'{spec.name} ({arch})' if spec.name != arch else arch
    # key_format: the state dict is the built network's (mtkd/BasicSR layout, whatever the source file's layout).
    metadata = {'network': json.dumps(spec.network, sort_keys=True), 'scale': str(spec.scale),
                'pad_multiple': str(spec.pad_multiple or 1), 'key_format': 'basicsr',
                'param_key': str(spec.param_key)}
    safetensors_path = save_safetensors(network, f'{output_prefix}.safetensors', metadata)
    runnable = network
    if spec.pad_multiple and spec.pad_multiple > 1:
        if spec.pad_mode != 'symmetric':
            raise ExportError(f"{label}: only 'symmetric' padding is exported, the option file asks for "
                              f"'{spec.pad_mode}'")
        output_per_input = 1 if hasattr(network, 'num_teachers') else spec.scale  # DCTSwin: HR in, HR out
        runnable = PaddedNetwork(network, spec.pad_multiple, output_per_input).eval()
    onnx_path = f'{output_prefix}.onnx'
    tracer_warnings = export_onnx(runnable, onnx_path, random_input(network, spec.network, spec.scale, export_size, 0),
                                  label, opset)
    result = ExportResult(spec.name, arch, count_parameters(network), safetensors_path, onnx_path, tolerance,
                          tracer_warnings=tracer_warnings)
    if check:
        inputs = [random_input(network, spec.network, spec.scale, size, seed + 1)
                  for seed, size in enumerate(check_sizes)]
        result.checks = compare_with_onnx(runnable, onnx_session(onnx_path, label), inputs, label)
    return result


def export_table(results: Sequence[ExportResult]) -> str:
    """Markdown: one row per model and checked input, ``| Model | Params | Input | Output | Max abs diff | Match |``."""
    lines = ['| Model | Params | Input (C x H x W) | Output | Max abs diff | Match |', '|---|---:|---|---|---:|---|']
    for result in results:
        label = result.label
        if not result.checks:
            lines.append(f'| {label} | {result.parameters:,} | - | - | not checked | - |')
        for check in result.checks:
            channels, height, width = check.input_shape
            verdict = 'yes' if check.max_abs_diff <= result.tolerance else f'NO (> {result.tolerance:g})'
            lines.append(f'| {label} | {result.parameters:,} | {channels}x{height}x{width} | '
                         f'{check.output_shape[0]}x{check.output_shape[1]} | {check.max_abs_diff:.2e} | {verdict} |')
    return '\n'.join(lines)


__all__ = ['DEFAULT_CHECK_SIZES', 'DEFAULT_EXPORT_SIZE', 'DEFAULT_TOLERANCE', 'INPUT_NAME', 'ONNX_OPSET',
           'OUTPUT_NAME', 'ExportError', 'ExportResult', 'PaddedNetwork', 'SizeCheck', 'compare_with_onnx',
           'export_model', 'export_onnx', 'export_table', 'input_channels', 'input_size', 'onnx_session',
           'onnxruntime_available', 'random_input', 'save_safetensors']
