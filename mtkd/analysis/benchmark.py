"""Step-time benchmark of distillation against training the student alone (issue: speed and scale).

For a distillation option file (``DistillModel``, ``KnowledgeAggregationModel`` or ``DualTeacherModel``), one
training step is timed in several ways, all on the same batch, the same networks and the same optimizer:

* ``student_alone``: the student's forward, ``L1`` to GT, backward, optimizer step (the floor). Not for MTKD
  stage 1, whose trained network (the aggregator) reads teacher outputs: there ``cached`` is the floor;
* ``on_the_fly_autograd``: the teacher side (teachers, aggregator) run at every step *with autograd on* and the
  target not detached, as the reference MTKD code does: the backward also runs through the teacher side;
* ``on_the_fly_no_grad``: the teacher side at every step under ``no_grad`` (mtkd's on-the-fly path);
* ``cached``: the teacher outputs given with the batch as the teacher-output cache delivers them (float16; the
  cost of reading the cache files is data-loading time, overlapped with the step by the data-loader workers; not
  timed); MTKD stage 2 still runs the aggregator on them;
* ``cached_target`` (MTKD stage 2 only): ``I_MT`` itself given with the batch (``teacher_cache_content:
  aggregate``): neither teachers nor aggregator run.

Each is the median of ``steps`` timed steps after ``warmup`` untimed ones (CUDA synchronised before and after,
``cudnn.benchmark`` on as in training), with the peak CUDA memory of the timed steps (not measured on the CPU).
The same for each precision of :data:`PRECISIONS` (AMP in fp16, mtkd's default, or bf16, with ``channels_last``);
the models of one precision are freed before the next is built, so peaks do not add up. Networks keep random
weights where a weights file is missing, so any option file can be timed; the weights do not change the time.
"""
from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from mtkd.config import validate_options
from mtkd.transforms.dct import dct_2d, dct_2d_fft, dct_matrix

MODES = ('student_alone', 'on_the_fly_autograd', 'on_the_fly_no_grad', 'cached', 'cached_target')
PRECISIONS = {'fp32': {},
              'amp_fp16': {'use_amp': True, 'amp_dtype': 'fp16', 'channels_last': True},
              'amp_bf16': {'use_amp': True, 'amp_dtype': 'bf16', 'channels_last': True}}
DEFAULT_PRECISIONS = ('fp32', 'amp_fp16')


@dataclass
class StepTiming:
    precision: str
    mode: str
    median_ms: float
    peak_memory_mb: float | None
    ratio_to_student_alone: float | None = None  # to 'cached' for MTKD stage 1 (no student alone there)


def build_model(options: dict, device: str, precision: str, batch_size: int, lr_patch: int):
    """The option file's model on ``device``, with random weights where files are missing, ready to train."""
    from basicsr.utils.registry import MODEL_REGISTRY

    raw = dict(options, **PRECISIONS[precision], num_gpu=1 if device == 'cuda' else 0)
    plain = validate_options(raw, is_train=True, check_files=False).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path='.', allow_random_teachers=True)
    plain['path'].update(models='/tmp', training_states='/tmp', experiments_root='/tmp', pretrain_network_g=None)
    plain['logger']['loss_jsonl'] = False
    model = MODEL_REGISTRY.get(plain['model_type'])(plain)
    lq, gt = photo_batch(batch_size, lr_patch, plain['scale'])
    return model, lq.to(model.device), gt.to(model.device)


def photo_batch(batch_size: int, lr_patch: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of real photos (scikit-image's bundled images) and their bicubic LR: networks trained on photos
    can explode on uniform noise (PAN x4 reaches 1e20 on it), which would time the non-finite guard instead."""
    import numpy as np
    import torch.nn.functional as F
    from skimage import data as skimage_data

    names = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry', 'hubble_deep_field')
    size = lr_patch * scale
    crops = []
    for index in range(batch_size):
        image = getattr(skimage_data, names[index % len(names)])()
        top = (index * 37) % max(image.shape[0] - size, 1)
        left = (index * 53) % max(image.shape[1] - size, 1)
        crop = np.ascontiguousarray(image[top:top + size, left:left + size, :3])
        if crop.shape[:2] != (size, size):
            raise ValueError(f'LR patch {lr_patch} x{scale} is larger than the bundled photos')
        crops.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 255)
    gt = torch.stack(crops)
    lq = F.interpolate(gt, scale_factor=1 / scale, mode='bicubic', antialias=True, align_corners=False).clamp(0, 1)
    return lq, gt


def is_stage1(model) -> bool:
    """MTKD stage 1: the trained network is the aggregator, whose input is the teachers' stacked outputs."""
    return type(model).__name__ == 'KnowledgeAggregationModel'


def _teacher_networks(model) -> list[torch.nn.Module]:
    return [model.teachers.network(name) for name in model.teachers.names]


def _student_alone_step(model, lq, gt) -> None:
    with model.optimizer_step.autocast():
        output = model.net_g(lq)
    model.optimizer_step(torch.nn.functional.l1_loss(output.float(), gt), 1)


def _autograd_step(model, lq, gt) -> None:
    """The reference code's way: teacher side with autograd, target not detached (backward runs through it)."""
    frozen = model.frozen_networks()
    for network in frozen:
        network.requires_grad_(True)
    try:
        with model.optimizer_step.autocast():
            outputs = [network(lq) for network in _teacher_networks(model)]
            if is_stage1(model):  # the aggregator is the trained network; the teachers feed it
                output = model.net_g(torch.cat(outputs, dim=1))
                loss = (output.float() - gt).abs().mean()
            else:
                aggregator = getattr(model, 'aggregator', None)
                if aggregator is not None:
                    target = aggregator.network(torch.cat(outputs, dim=1))
                else:
                    target = outputs[getattr(model, 'target_teacher', 0)]
                output = model.net_g(lq)
                loss = (output.float() - gt).abs().mean() + (output.float() - target.float()).abs().mean()
        model.optimizer_step(loss, 1)
    finally:
        for network in frozen:
            network.requires_grad_(False)
            network.zero_grad(set_to_none=True)


def _model_step(model, lq, gt, cached: torch.Tensor | None, cached_target: torch.Tensor | None = None) -> None:
    data = {'lq': lq, 'gt': gt}
    if cached is not None:
        data['teacher_outputs'] = cached
    if cached_target is not None:
        data['cached_target'] = cached_target
    model.feed_data(data)
    model.optimize_parameters(1)


def _time(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float | None]:
    for _ in range(warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    durations = []
    for _ in range(steps):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda' else None
    return statistics.median(durations) * 1000, peak


def _cached_inputs(model, lq) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the caches deliver for this batch: teacher outputs and (stage 2) ``I_MT``, float16 as stored, computed
    in fp32 as the cache build does."""
    with torch.no_grad():
        outputs = [output.half() for output in model.teachers.forward(lq.float().contiguous())]
        aggregator = getattr(model, 'aggregator', None)
        target = None
        if aggregator is not None and not is_stage1(model):
            target = aggregator([output.float() for output in outputs]).half()
    return torch.stack(outputs, dim=1), target


def _benchmark_precision(options: dict, device: str, precision: str, batch_size: int, lr_patch: int, warmup: int,
                         steps: int, modes) -> list[StepTiming]:
    """The rows of one precision; every model and tensor made here is unreachable when it returns."""
    model, lq, gt = build_model(options, device, precision, batch_size, lr_patch)
    if model.opt.get('channels_last'):
        lq, gt = (tensor.contiguous(memory_format=torch.channels_last) for tensor in (lq, gt))
    cached, target = _cached_inputs(model, lq)
    stage1 = is_stage1(model)
    if stage1:
        modes = [mode for mode in modes if mode not in ('student_alone', 'cached_target')]
    elif target is None:
        modes = [mode for mode in modes if mode != 'cached_target']
    steps_by_mode = {
        'student_alone': lambda: _student_alone_step(model, lq, gt),
        'on_the_fly_autograd': lambda: _autograd_step(model, lq, gt),
        'on_the_fly_no_grad': lambda: _model_step(model, lq, gt, None),
        'cached': lambda: _model_step(model, lq, gt, cached),
        'cached_target': lambda: _model_step(model, lq, gt, None, target),
    }
    results = {mode: _time(steps_by_mode[mode], model.device, warmup, steps) for mode in modes}
    floor_mode = 'cached' if stage1 else 'student_alone'
    floor = results[floor_mode][0] if floor_mode in results else None
    return [StepTiming(precision, mode, median_ms, peak, median_ms / floor if floor else None)
            for mode, (median_ms, peak) in results.items()]


def release_models() -> None:
    """Drop what keeps a benchmarked model alive after its precision is done (the Ctrl-C callback that training
    registers holds the model), then free the CUDA cache, so the next precision's peak memory is its own."""
    from mtkd.training import resume

    resume.LOOP.on_interrupt = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def benchmark_steps(options: dict, device: str = 'cpu', precisions=DEFAULT_PRECISIONS, batch_size: int = 16,
                    lr_patch: int = 64, warmup: int = 3, steps: int = 10, modes=MODES) -> list[StepTiming]:
    """Median step time of each mode and precision (see the module docstring); ratios to the floor."""
    if not options.get('teachers'):
        raise ValueError('benchmark_speed needs a distillation option file (a teachers: list)')
    if device == 'cuda':
        torch.backends.cudnn.benchmark = True  # as BasicSR's training loop sets it
    rows = []
    for precision in precisions:
        rows += _benchmark_precision(options, device, precision, batch_size, lr_patch, warmup, steps, modes)
        release_models()
    return rows


def benchmark_dct(device: str = 'cpu', blocks: int = 16 * 64 * 24, size: int = 8, repeats: int = 20) -> dict:
    """Median time of the aggregator's per-window 2-D DCT: matrix products vs the FFT form (same result)."""
    tensor = torch.rand(blocks, size, size, device=device)
    matrix = dct_matrix(size, device=device)
    torch.testing.assert_close(dct_2d(tensor, matrix), dct_2d_fft(tensor), atol=1e-4, rtol=1e-4)
    timings = {}
    for name, function in (('matrix', lambda: dct_2d(tensor, matrix)), ('fft', lambda: dct_2d_fft(tensor))):
        timings[name] = _time(function, torch.device(device), 3, repeats)[0]
    return {'blocks': blocks, 'size': size, 'matrix_ms': timings['matrix'], 'fft_ms': timings['fft'],
            'fft_over_matrix': timings['fft'] / timings['matrix']}


def markdown_table(rows: list[StepTiming]) -> str:
    lines = ['| precision | mode | median step (ms) | × student alone | peak CUDA memory (MiB) |',
             '|---|---|---:|---:|---:|']
    for row in rows:
        ratio = f'{row.ratio_to_student_alone:.2f}' if row.ratio_to_student_alone is not None else '-'
        memory = f'{row.peak_memory_mb:.0f}' if row.peak_memory_mb is not None else '-'
        lines.append(f'| {row.precision} | {row.mode} | {row.median_ms:.1f} | {ratio} | {memory} |')
    return '\n'.join(lines)


def rows_as_dicts(rows: list[StepTiming]) -> list[dict]:
    return [asdict(row) for row in rows]


__all__ = ['MODES', 'PRECISIONS', 'DEFAULT_PRECISIONS', 'StepTiming', 'benchmark_steps', 'benchmark_dct',
           'markdown_table', 'rows_as_dicts', 'release_models', 'is_stage1']
