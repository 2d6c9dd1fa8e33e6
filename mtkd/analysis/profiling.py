"""Model size and cost as the efficient-SR papers report them (NTIRE/AIM efficient SR challenges, IMDN, RFDN, RLFN):
parameters, multiply-accumulates (MACs) for one LR input (1280x720 output at x4: a 320x180 input), and latency.

MACs, two counters (they agree on convolution/linear networks; tested):

- ``'flop_counter'`` (default): :class:`torch.utils.flop_counter.FlopCounterMode`, MACs = FLOPs / 2. It counts
  every convolution (``Conv*``, ``ConvTranspose*`` and functional ``F.conv2d``), matrix product (``Linear``,
  ``matmul``, ``bmm``, ``baddbmm``, ``addmm``) and ``scaled_dot_product_attention``, whichever module or function
  calls them: the attention matrices of SwinIR/LBNet/DCTSwin are included.
- ``'hooks'``: forward hooks on ``nn.Conv2d`` (output elements x in_channels/groups x kernel area),
  ``nn.ConvTranspose2d`` (input elements x out_channels/groups x kernel area) and ``nn.Linear`` (output elements x
  in_features). Functional convolutions and matmuls (attention) are missed.

Neither counts additions of biases, activations, normalisation, pooling, softmax, pixel shuffle, interpolation or
other element-wise work (the convention of the papers' tables). Latency is the median wall time of ``runs``
forward passes after ``warmup`` passes, under ``torch.inference_mode``, with ``torch.cuda.synchronize`` around each
pass on CUDA; it depends on the machine, the threads and the PyTorch build.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mtkd.transforms.padding import run_padded

MAC_COUNTERS = ('flop_counter', 'hooks')
#: LR width and height whose x4 output is 1280x720, the size the efficient-SR papers report MACs for.
DEFAULT_INPUT_SIZE = (320, 180)


@dataclass(frozen=True)
class ProfileRow:
    """One model: ``parameters`` (count), ``macs`` for ``input_size`` = (width, height) LR pixels, ``latency_ms``
    (median, None when not measured) on ``device``, ``output_size`` = (width, height)."""
    name: str
    parameters: int
    macs: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    latency_ms: float | None
    device: str


def count_parameters(network: nn.Module) -> int:
    """Number of parameters (every tensor in ``network.parameters()``, trainable or not; buffers excluded)."""
    return sum(parameter.numel() for parameter in network.parameters())


def _hook_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        return output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.ConvTranspose2d):
        return inputs[0].numel() * (module.out_channels // module.groups) * module.kernel_size[0] \
            * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs_with_hooks(run: Callable[[], object], network: nn.Module) -> int:
    """MACs of ``run()`` (which calls ``network``) from forward hooks on its Conv2d, ConvTranspose2d and Linear."""
    total = [0]
    handles = [module.register_forward_hook(lambda module, inputs, output: total.__setitem__(
        0, total[0] + _hook_macs(module, inputs, output)))
        for module in network.modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def count_macs_with_flop_counter(run: Callable[[], object]) -> int:
    """MACs of ``run()`` = FLOPs of :class:`torch.utils.flop_counter.FlopCounterMode` / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run()
    return counter.get_total_flops() // 2


def count_macs(network: nn.Module, images: torch.Tensor, counter: str = 'flop_counter',
               forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """MACs of one forward pass on ``images`` ``(B, C, H, W)``; ``forward`` defaults to ``network`` itself (pass a
    wrapper, e.g. padding, to count what inference really runs). ``counter``: see the module docstring."""
    if counter not in MAC_COUNTERS:
        raise ValueError(f"MAC counter '{counter}' is not one of {MAC_COUNTERS}")
    forward = forward or network
    if counter == 'hooks':
        return count_macs_with_hooks(lambda: forward(images), network)
    return count_macs_with_flop_counter(lambda: forward(images))


def measure_latency(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, runs: int = 10,
                    warmup: int = 3) -> float:
    """Median wall time in milliseconds of ``forward(images)`` over ``runs`` passes, after ``warmup`` passes."""
    if runs < 1 or warmup < 0:
        raise ValueError(f'runs must be >= 1 and warmup >= 0, got {runs} and {warmup}')
    on_cuda = images.device.type == 'cuda'
    times = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            if on_cuda:
                torch.cuda.synchronize(images.device)
            start = time.perf_counter()
            forward(images)
            if on_cuda:
                torch.cuda.synchronize(images.device)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def profile_network(name: str, network: nn.Module, scale: int, input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                    device: str | torch.device = 'cpu', runs: int = 10, warmup: int = 3,
                    pad_multiple: int | None = None, counter: str = 'flop_counter') -> ProfileRow:
    """Parameters, MACs and latency (``runs`` 0: not measured) of ``network`` on a random ``(1, 3, height, width)``
    input in [0, 1]; ``input_size`` is (width, height). Inputs are padded to ``pad_multiple`` as inference does."""
    width, height = input_size
    device = torch.device(device)
    network = network.eval().to(device)
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return run_padded(network, batch, pad_multiple, scale)

    with torch.inference_mode():
        output = forward(images)
    macs = count_macs(network, images, counter, forward)
    latency = measure_latency(forward, images, runs, warmup) if runs > 0 else None
    return ProfileRow(name=name, parameters=count_parameters(network), macs=macs, input_size=(width, height),
                      output_size=(output.shape[-1], output.shape[-2]), latency_ms=latency, device=str(device))


def format_count(value: float) -> str:
    """``715176`` → ``'715.18K'``, ``40_900_000_000`` → ``'40.90G'``."""
    for unit, size in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(value) >= size:
            return f'{value / size:.2f}{unit}'
    return str(int(value))


def profile_table(rows: Sequence[ProfileRow]) -> str:
    """A Markdown table: model, parameters (exact and rounded), MACs, input -> output size, latency."""
    lines = ['| Model | Params | MACs | Input -> output | Latency (ms) |', '|---|---:|---:|---|---:|']
    for row in rows:
        latency = '-' if row.latency_ms is None else f'{row.latency_ms:.1f} ({row.device})'
        lines.append(f'| {row.name} | {row.parameters:,} ({format_count(row.parameters)}) | {format_count(row.macs)} '
                     f'| {row.input_size[0]}x{row.input_size[1]} -> {row.output_size[0]}x{row.output_size[1]} '
                     f'| {latency} |')
    return '\n'.join(lines)


# ---- host synchronisation: what would stall the CPU on a GPU, found on any device ---------------------------------
#: Operators that make the host wait for the device on CUDA: reading a value back (``.item()``, ``bool(t)``,
#: ``if t:``) or an output whose size depends on the data (PyTorch must read it to allocate).
SYNCING_OPERATORS = ('aten::_local_scalar_dense', 'aten::nonzero', 'aten::nonzero_static', 'aten::bincount',
                     'aten::masked_select', 'aten::unique_dim', 'aten::_unique2', 'aten::unique_consecutive',
                     'aten::repeat_interleave')


class HostSyncDetector(TorchDispatchMode):
    """Records, inside its ``with`` block, every operation that would synchronise the host with a GPU.

    Works on any device, the CPU included (where nothing really waits), so CPU tests can assert that a training
    step has none: reads of device values (``.item()``, ``bool(tensor)``, ``.tolist()`` of a device tensor go
    through ``aten::_local_scalar_dense``), data-dependent shapes (:data:`SYNCING_OPERATORS`), and copies from the
    CPU to another device (``_to_copy``/``copy_`` from a CPU tensor: a host-to-device transfer, e.g. a constant
    rebuilt on the host at every call; run the code on the ``meta`` device to see them on a CPU-only machine).
    ``events``: ``(operator, detail)`` in order. On a real GPU, ``torch.cuda.set_sync_debug_mode`` is the ground
    truth (scripts/gpu_check.sh uses both).
    """

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        result = func(*args, **kwargs)
        if name in SYNCING_OPERATORS:
            self.events.append((name, 'reads device data on the host'))
        elif name in ('aten::_to_copy', 'aten::copy_'):
            source = args[1] if name == 'aten::copy_' else args[0]
            destination = args[0] if name == 'aten::copy_' else result
            if (isinstance(source, torch.Tensor) and isinstance(destination, torch.Tensor)
                    and source.device.type == 'cpu' and destination.device.type != 'cpu'):
                self.events.append((name, f'host-to-device copy of {tuple(source.shape)} to {destination.device}'))
        return result

    def summary(self) -> str:
        """One line per distinct event with its count."""
        counts: dict[tuple[str, str], int] = {}
        for event in self.events:
            counts[event] = counts.get(event, 0) + 1
        return '\n'.join(f'{count} x {name}: {detail}' for (name, detail), count in counts.items()) or 'none'


__all__ = ['DEFAULT_INPUT_SIZE', 'MAC_COUNTERS', 'ProfileRow', 'count_macs', 'count_macs_with_flop_counter',
           'count_macs_with_hooks', 'count_parameters', 'format_count', 'measure_latency', 'profile_network',
           'profile_table', 'HostSyncDetector', 'SYNCING_OPERATORS']
