"""The one-shot GPU check (issue 18): every training path of mtkd on a real CUDA GPU, in one command, one report.

``bash scripts/gpu_check.sh [--out DIR]`` (installs the wheels of ``shared/wheels`` when BasicSR is missing, then
runs :func:`main`). On one H100/H200 it takes about 8 minutes (``--budget``, default 510 s: the steps that no
longer fit are reported as skipped) and writes ``gpu_check.md`` and ``gpu_check.json`` into ``--out``:

1. ``environment``: torch, CUDA, the GPU, the fp32 settings (IEEE unless ``fast_matmul``) and the fp16/bf16
   rounding of SR images on this device (:func:`mtkd.training.precision.measure_amp_rounding`).
2. ``train/<model>/<config>``: a few iterations and one validation of each model type (MTKD stage 1, stage 2 from
   the ``I_MT`` cache, KD, AT, FAKD, DUKD, DTKD) through the real training entry point, in fp32 and with AMP fp16 +
   ``channels_last`` + ``compile``; per run: median step time, peak memory, the host synchronisations
   ``torch.cuda.set_sync_debug_mode`` reports inside the timed steps (the goal is none), compiled graphs and
   recompiles, validation PSNR.
3. ``kill_resume``: a run killed with SIGKILL after a checkpoint, then ``--auto_resume`` to the end.
4. ``torchrun_gloo_2proc`` (two processes on the one GPU, teacher cache and validation sharded, accumulation, the
   DDP wrapper compiled) and ``torchrun_nccl_1proc``.
5. ``benchmark``: ``scripts/benchmark_speed.py`` on the paper's networks at their real sizes (batch 16, LR patch
   64): the AMP speed-up of the paper's students (goal >= 1.5x) and the cached stage-2 step against the student
   alone (goal <= 1.10x).
6. ``amp_psnr``: the same short training in fp32 and in AMP fp16; goal: PSNR within 0.02 dB.

``--dry`` runs on the CPU in seconds with tiny networks (``make test`` runs it: tests/test_gpu_check.py), so the
check cannot rot: the model runs in fp32 plus one AMP + channels_last + compile run (dynamo with its ``eager``
backend, no C++ compiler needed), the benchmark, the report; the subprocess steps (resume, torchrun) and the AMP
training are skipped there (tests/test_resume.py and tests/test_ddp.py run them on the CPU); ``--dry --full`` runs
them too.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
SCALE = 2
MODEL_TYPES = ('stage1', 'stage2_imt', 'kd', 'at', 'fakd', 'dukd', 'dtkd')
#: Runs the training entry point with the check's work folder as the root (what mtkd/train.py does with its own).
LAUNCHER = ('import sys; sys.path.insert(0, sys.argv[1]); import mtkd; from mtkd.config.cli import run_pipeline; '
            'from basicsr.train import train_pipeline; root = sys.argv[2]; sys.argv = ["mtkd/train.py"] + '
            'sys.argv[3:]; run_pipeline(train_pipeline, root)')


@dataclass
class Step:
    """One line of the report: ``status`` is pass, fail, warn (ran, a goal missed) or skip."""
    name: str
    status: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Skip(Exception):
    """A step that does not apply here (no CUDA, dry mode, no time left)."""


class GoalMissed(Exception):
    """A step that ran but missed its goal (reported as warn)."""


# ---- sizes -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    train_images: int
    train_crop: int
    val_crop: int
    gt_size: int
    batch: int
    iterations: int
    timed_from: int  # iterations before this one are warm-up (compilation, cuDNN autotuning)
    student_feat: int
    teacher_feat: int
    second_teacher: str  # the second teacher's arch (RFDN needs LR inputs of 15 pixels or more)


GPU_SIZES = Sizes(train_images=8, train_crop=128, val_crop=96, gt_size=64, batch=8, iterations=12, timed_from=6,
                  student_feat=32, teacher_feat=48, second_teacher='RFDN')
DRY_SIZES = Sizes(train_images=4, train_crop=48, val_crop=32, gt_size=16, batch=2, iterations=3, timed_from=2,
                  student_feat=8, teacher_feat=8, second_teacher='EDSR')


# ---- the data and the option files ---------------------------------------------------------------------------------
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina',
          'motorcycle_left', 'cat', 'camera')


def make_data(work: str, sizes: Sizes) -> dict[str, str]:
    """Photo crops (scikit-image's bundled images) as train/val HR and MATLAB-bicubic x2 LR folders."""
    import cv2
    from skimage import data as skimage_data

    from mtkd.data.preparation import make_lr

    folders = {}
    for split, count, crop in (('train', sizes.train_images, sizes.train_crop), ('val', 2, sizes.val_crop)):
        for kind in ('HR', 'LR'):
            folders[f'{split}_{kind}'] = os.path.join(work, 'data', split, kind)
            os.makedirs(folders[f'{split}_{kind}'], exist_ok=True)
        names = PHOTOS[:count] if split == 'train' else PHOTOS[-2:]
        for index, name in enumerate(names):
            image = getattr(skimage_data, name)()
            image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
            top = (37 * index) % max(image.shape[0] - crop, 1)
            left = (53 * index) % max(image.shape[1] - crop, 1)
            hr = np.ascontiguousarray(image[top:top + crop, left:left + crop])
            cv2.imwrite(os.path.join(folders[f'{split}_HR'], f'{name}.png'), cv2.cvtColor(hr, cv2.COLOR_RGB2BGR))
            cv2.imwrite(os.path.join(folders[f'{split}_LR'], f'{name}.png'),
                        cv2.cvtColor(make_lr(hr, SCALE), cv2.COLOR_RGB2BGR))
    return folders


def make_teachers(work: str, sizes: Sizes) -> list[dict]:
    """Two small teachers (EDSR and, on a GPU, RFDN) with random weights saved to files (caches need weights files)."""
    from basicsr.archs import build_network

    networks = {'edsr': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': sizes.teacher_feat,
                         'num_block': 2, 'upscale': SCALE},
                'second': {'type': sizes.second_teacher, 'num_in_ch': 3, 'num_out_ch': 3,
                           'num_feat': sizes.teacher_feat + 4, 'num_block': 2, 'upscale': SCALE}}
    teachers = []
    for index, (name, network) in enumerate(networks.items()):
        path = os.path.join(work, 'weights', f'{name}.pth')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(index)
            torch.save(build_network(dict(network)).state_dict(), path)
        teachers.append({'name': name, 'network': network, 'weights': path})
    return teachers


def option_file(kind: str, config: str, work: str, folders: dict, teachers: list[dict], sizes: Sizes,
                on_cuda: bool, aggregator: str | None = None, **changes) -> dict:
    """The option dict of one check run: ``kind`` in :data:`MODEL_TYPES`, ``config`` 'fp32' or 'amp'."""
    student = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': sizes.student_feat, 'num_block': 2,
               'upscale': SCALE}
    train_set = {'name': 'check_train', 'type': 'PairedImageDataset', 'dataroot_gt': folders['train_HR'],
                 'dataroot_lq': folders['train_LR'], 'gt_size': sizes.gt_size, 'batch_size_per_gpu': sizes.batch,
                 'num_worker_per_gpu': 2 if on_cuda else 0, 'dataset_enlarge_ratio': 50}
    options = {'name': f'gpucheck_{kind}_{config}', 'model_type': 'DistillModel', 'scale': SCALE,
               'num_gpu': 1 if on_cuda else 0, 'manual_seed': 0, 'teachers': teachers, 'network_g': student,
               'datasets': {'train': train_set,
                            'val': {'name': 'check_val', 'type': 'PairedImageDataset', 'dataroot_gt': folders['val_HR'],
                                    'dataroot_lq': folders['val_LR']}},
               'train': {'optim_g': {'type': 'Adam', 'lr': 2e-4}, 'scheduler': {'type': 'MultiStepLR',
                                                                               'milestones': [100000]},
                         'total_iter': sizes.iterations, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}},
               'val': {'val_freq': 100000, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE,
                                                                  'test_y_channel': True}}},
               'logger': {'print_freq': 1000, 'save_checkpoint_freq': 100000, 'use_tb_logger': False}}
    cached = dict(train_set, type='TeacherPairedImageDataset', teacher_cache_root=os.path.join(work, 'cache'))
    l1_kd = {'type': 'L1Loss', 'loss_weight': 1.0}
    if kind == 'stage1':
        options.update(model_type='KnowledgeAggregationModel',
                       network_g={'type': 'DCTSwin', 'num_teachers': len(teachers), 'num_feat': 16, 'num_block': 1,
                                  'num_layer': 2, 'window_size': 8, 'num_heads': 2, 'upscale': SCALE,
                                  'global_residual': True},
                       train=dict(options['train'], pixel_opt={'type': 'L1Loss', 'loss_weight': 1.0}))
        options['datasets']['train'] = cached
    elif kind == 'stage2_imt':
        options['aggregator'] = {'network': {'type': 'DCTSwin', 'num_teachers': len(teachers), 'num_feat': 16,
                                             'num_block': 1, 'num_layer': 2, 'window_size': 8, 'num_heads': 2,
                                             'upscale': SCALE, 'global_residual': True}, 'weights': aggregator}
        options['distill'] = {'target': 'aggregate', 'output_opt': {'type': 'WaveletDistillLoss', 'loss_weight': 1.0}}
        options['datasets']['train'] = dict(cached, teacher_cache_content='aggregate')
    elif kind == 'kd':
        options['distill'] = {'target': 'teacher', 'teacher': 'edsr', 'output_opt': l1_kd}
    elif kind in ('at', 'fakd'):
        loss = ({'type': 'AttentionTransferLoss', 'loss_weight': 100.0} if kind == 'at' else
                {'type': 'FeatureAffinityLoss', 'loss_weight': 10.0})
        options['distill'] = {'target': 'teacher', 'teacher': 'edsr',
                              'feature_opt': dict(loss, student_layers=['body.1'], teacher_layers=['body.1'])}
    elif kind == 'dukd':
        options['distill'] = {'target': 'teacher', 'teacher': 'edsr', 'output_opt': l1_kd,
                              'dukd': {'zoom_out_pixel_weight': 0.1}}
    elif kind == 'dtkd':
        options.update(model_type='DualTeacherModel')
        options['dtkd'] = {'fidelity_teacher': 'edsr', 'perceptual_teacher': 'second',
                           'distill_opt': {'type': 'RoutedL1Loss', 'loss_weight': 1.0},
                           'reliability_opt': {'type': 'ReliabilityAttentionLoss', 'loss_weight': 1.0}}
        options['train']['edge_opt'] = {'type': 'EdgeLoss', 'loss_weight': 0.1}
        options['datasets']['train'] = cached
    else:
        raise ValueError(f'unknown model type {kind!r}; one of {MODEL_TYPES}')
    if config == 'amp':
        options.update(use_amp=True, amp_dtype='fp16', channels_last=True, compile=True)
    options.update(changes)
    return options


def write_options(options: dict, work: str) -> str:
    path = os.path.join(work, 'options', f"{options['name']}.yml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as handle:
        yaml.safe_dump(options, handle, sort_keys=False)
    return path


# ---- one training run in this process, instrumented ------------------------------------------------------------------
@contextlib.contextmanager
def dry_compile():
    """``torch.compile`` with dynamo's ``eager`` backend: traces like on a GPU (graph breaks, recompiles), builds
    nothing (no C++ compiler on CI machines)."""
    original = torch.compile

    def compile_eagerly(model=None, **kwargs):
        kwargs.pop('mode', None)
        kwargs['backend'] = 'eager'
        return original(model, **kwargs)

    torch.compile = compile_eagerly
    try:
        yield
    finally:
        torch.compile = original


def _dynamo_counts() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {'graphs': int(counters['stats'].get('unique_graphs', 0)),
            'recompiles': int(sum(counters.get('recompiles', {}).values()))}


def train_in_process(option_path: str, root: str, sizes: Sizes) -> dict[str, Any]:
    """Run ``mtkd/train.py -opt option_path`` with ``root`` as the repository root, in this process; returns the
    measurements of its timed steps (median time, host syncs per step, peak memory, compiled graphs, PSNR)."""
    import basicsr.train

    from mtkd.analysis.profiling import HostSyncDetector
    from mtkd.config.cli import run_pipeline
    from mtkd.tools.demo import _reset_basicsr_logger

    on_cuda = torch.cuda.is_available()
    built, times, syncs = [], [], []
    original_build = basicsr.train.build_model

    def build_model(opt):
        model = original_build(opt)
        original_step = model.optimize_parameters

        def timed_step(current_iter):
            timed = current_iter >= sizes.timed_from
            if on_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            if not timed:
                original_step(current_iter)
            elif on_cuda:  # the ground truth on a GPU
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter('always')
                    torch.cuda.set_sync_debug_mode('warn')
                    try:
                        original_step(current_iter)
                    finally:
                        torch.cuda.set_sync_debug_mode('default')
                syncs.append([str(item.message).splitlines()[0] for item in caught
                              if 'synchroniz' in str(item.message)])
            else:
                with HostSyncDetector() as detector:
                    original_step(current_iter)
                syncs.append([f'{name}: {detail}' for name, detail in detector.events])
            if on_cuda:
                torch.cuda.synchronize()
            if timed:
                times.append(time.perf_counter() - start)

        model.optimize_parameters = timed_step
        built.append(model)
        return model

    before = _dynamo_counts()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    saved_argv = sys.argv
    basicsr.train.build_model = build_model
    _reset_basicsr_logger()
    try:
        sys.argv = ['mtkd/train.py', '-opt', option_path]
        run_pipeline(basicsr.train.train_pipeline, root)
    finally:
        sys.argv = saved_argv
        basicsr.train.build_model = original_build
        _reset_basicsr_logger()
    after = _dynamo_counts()
    model = built[0]
    found = [message for step in syncs for message in step]
    result = {'median_step_ms': statistics.median(times) * 1000 if times else None,
              'host_syncs_per_step': len(found) / max(len(syncs), 1),
              'sync_examples': sorted(set(found))[:5],
              'peak_memory_mib': torch.cuda.max_memory_allocated() / 2 ** 20 if on_cuda else None,
              'compiled_graphs': after.get('graphs', 0) - before.get('graphs', 0),
              'recompiles': after.get('recompiles', 0) - before.get('recompiles', 0),
              'psnr': getattr(model, 'metric_results', {}).get('psnr')}
    del model, built
    from mtkd.analysis.benchmark import release_models

    release_models()
    return result


# ---- the check ---------------------------------------------------------------------------------------------------
class GpuCheck:
    """Runs the steps in order within ``budget`` seconds and writes the report."""

    def __init__(self, out: str, work: str, dry: bool, full: bool, budget: float):
        self.out, self.work, self.dry, self.full = out, work, dry, full
        self.deadline = time.monotonic() + budget
        self.on_cuda = torch.cuda.is_available() and not dry
        self.sizes = DRY_SIZES if dry else GPU_SIZES
        self.steps: list[Step] = []
        self.context: dict[str, Any] = {}
        os.makedirs(out, exist_ok=True)
        os.makedirs(work, exist_ok=True)

    # ---- running steps ----
    def run(self, name: str, function: Callable[[], dict | None], needs_cuda: bool = False,
            subprocess_step: bool = False, estimate: float = 0.0) -> Step:
        start = time.perf_counter()
        try:
            if needs_cuda and not self.on_cuda:
                raise Skip('needs CUDA' + (' (dry mode)' if self.dry else ''))
            if subprocess_step and self.dry and not self.full:
                raise Skip('dry mode (tests/test_resume.py and tests/test_ddp.py run this on the CPU; --full runs it)')
            if time.monotonic() + estimate > self.deadline:
                raise Skip('time budget spent')
            details = function() or {}
            status = 'pass'
            error = None
        except Skip as reason:
            details, status, error = {}, 'skip', str(reason)
        except GoalMissed as reason:
            details, status, error = reason.args[1] if len(reason.args) > 1 else {}, 'warn', str(reason.args[0])
        except Exception:  # noqa: BLE001  (a failed step is a report line, the next steps still run)
            details, status, error = {}, 'fail', traceback.format_exc()[-3000:]
        step = Step(name, status, round(time.perf_counter() - start, 2), details, error)
        self.steps.append(step)
        print(f'[gpu_check] {name}: {status} ({step.seconds:.1f} s)' + (f' - {error.splitlines()[-1]}' if error
                                                                           else ''), flush=True)
        return step

    def all_steps(self) -> None:
        self.run('environment', self.environment)
        self.run('data', self.data)
        if 'folders' not in self.context:
            return
        for config in ('fp32', 'amp'):
            for kind in MODEL_TYPES:
                if self.dry and config == 'amp' and kind != 'kd':
                    continue  # dry: one AMP + channels_last + compile run is enough to keep the path alive
                self.run(f'train/{kind}/{config}', functools.partial(self.train_run, kind, config),
                         estimate=5 if self.dry else 20)
        self.run('benchmark', self.benchmark, estimate=5 if self.dry else 90)
        self.run('torchrun_gloo_2proc', self.torchrun_gloo, subprocess_step=True, estimate=40)
        self.run('torchrun_nccl_1proc', self.torchrun_nccl, needs_cuda=True, estimate=30)
        self.run('kill_resume', self.kill_resume, subprocess_step=True, estimate=40)
        self.run('amp_psnr', self.amp_psnr, subprocess_step=True, estimate=60)

    # ---- the steps ----
    def environment(self) -> dict:
        from mtkd.training.precision import float32_precision, measure_amp_rounding, _photo_crops

        device = 'cuda' if self.on_cuda else 'cpu'
        rows = measure_amp_rounding(_photo_crops(2, 64 if self.dry else 128), device=device)
        details = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0],
                   'device': torch.cuda.get_device_name() if self.on_cuda else 'cpu (dry run)',
                   'float32': float32_precision(), 'amp_rounding': rows}
        by_dtype = {row['dtype']: row['max_grey_levels'] for row in rows if row['what'] == 'network under autocast'}
        if float32_precision() != {'matmul': 'ieee', 'conv': 'ieee'}:
            raise RuntimeError(f'fp32 is not IEEE after import mtkd: {float32_precision()}')
        if not by_dtype['fp16'] < by_dtype['bf16']:
            raise GoalMissed('fp16 rounded the network output more than bf16 on this device', details)
        return details

    def data(self) -> dict:
        self.context['folders'] = make_data(self.work, self.sizes)
        self.context['teachers'] = make_teachers(self.work, self.sizes)
        return {'train_images': self.sizes.train_images, 'train_crop': self.sizes.train_crop}

    def train_run(self, kind: str, config: str) -> dict:
        aggregator = self.context.get('stage1_checkpoint')
        if kind == 'stage2_imt' and aggregator is None:
            raise RuntimeError('stage 1 did not produce a checkpoint for the I_MT cache')
        options = option_file(kind, config, self.work, self.context['folders'], self.context['teachers'],
                              self.sizes, self.on_cuda, aggregator=aggregator)
        path = write_options(options, self.work)
        compile_context = dry_compile() if (config == 'amp' and not self.on_cuda) else contextlib.nullcontext()
        with compile_context:
            result = train_in_process(path, self.work, self.sizes)
        if kind == 'stage1' and config == 'fp32':
            self.context['stage1_checkpoint'] = os.path.join(self.work, 'experiments', options['name'], 'models',
                                                              'net_g_latest.pth')
        result['option_file'] = os.path.relpath(path, self.work)
        if result['host_syncs_per_step']:
            raise RuntimeError(f"{result['host_syncs_per_step']:.1f} host synchronisations per step: "
                               f"{result['sync_examples']}")
        if config == 'amp' and result['recompiles']:
            raise GoalMissed(f"{result['recompiles']} recompiles (validation should run uncompiled)", result)
        return result

    def benchmark(self) -> dict:
        from mtkd.analysis.benchmark import benchmark_steps, markdown_table, rows_as_dicts

        if self.dry:
            files = {'tiny': {'name': 'bench', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0,
                              'teachers': self.context['teachers'], 'network_g': {
                                  'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                                  'upscale': SCALE},
                              'distill': {'target': 'teacher', 'teacher': 'edsr',
                                          'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
                              'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': '/x',
                                                     'dataroot_lq': '/x', 'gt_size': 16}},
                              'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {
                                  'type': 'MultiStepLR', 'milestones': [9]}, 'total_iter': 9,
                                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}}}}
            settings = dict(batch_size=1, lr_patch=8, warmup=0, steps=1)
            modes = {'tiny': ('student_alone', 'on_the_fly_autograd', 'on_the_fly_no_grad', 'cached')}
        else:
            from mtkd.config.cli import load_option_file

            files = {name: load_option_file(os.path.join(REPO_ROOT, 'options', f'stage2_{name}_x4.yml'))
                     for name in ('rcan_light', 'edsr_baseline', 'swinir_light')}
            settings = dict(batch_size=16, lr_patch=64, warmup=2, steps=5)
            every = ('student_alone', 'on_the_fly_autograd', 'on_the_fly_no_grad', 'cached', 'cached_target')
            modes = {'rcan_light': every, 'edsr_baseline': ('student_alone', 'cached_target'),
                     'swinir_light': ('student_alone', 'cached_target')}
        device = 'cuda' if self.on_cuda else 'cpu'
        details: dict[str, Any] = {'settings': settings, 'tables': {}, 'rows': {}, 'amp_speedup': {},
                                   'cached_target_ratio': {}}
        for name, options in files.items():
            rows = benchmark_steps(options, device, ('fp32', 'amp_fp16'), modes=modes[name], **settings)
            details['tables'][name] = markdown_table(rows)
            details['rows'][name] = rows_as_dicts(rows)
            by = {(row.precision, row.mode): row for row in rows}
            details['amp_speedup'][name] = (by[('fp32', 'student_alone')].median_ms /
                                            by[('amp_fp16', 'student_alone')].median_ms)
            if ('fp32', 'cached_target') in by:
                details['cached_target_ratio'][name] = {precision: by[(precision, 'cached_target')]
                                                        .ratio_to_student_alone for precision in ('fp32', 'amp_fp16')}
        if not self.dry:
            missed = [f'AMP speed-up of {name} {value:.2f}x < 1.5x' for name, value in details['amp_speedup'].items()
                      if value < 1.5]
            missed += [f'cached stage-2 step of {name} ({precision}) {ratio:.2f}x > 1.10x'
                       for name, ratios in details['cached_target_ratio'].items() for precision, ratio in ratios.items()
                       if ratio > 1.10]
            if missed:
                raise GoalMissed('; '.join(missed), details)
        return details

    def _subprocess(self, command: list[str], log_name: str, timeout: float, env: dict | None = None) -> str:
        log_path = os.path.join(self.work, 'logs', log_name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, 'w', encoding='utf-8') as log:
            completed = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env=dict(os.environ, **(env or {})), timeout=timeout)
        with open(log_path, encoding='utf-8', errors='replace') as handle:
            output = handle.read()
        if completed.returncode != 0:
            raise RuntimeError(f'exit status {completed.returncode}: {shlex.join(command)}\n{output[-2000:]}')
        return output

    def _torchrun(self, processes: int, backend: str, name: str) -> dict:
        options = option_file('kd', 'fp32', self.work, self.context['folders'], self.context['teachers'], self.sizes,
                              self.on_cuda, name=name)
        options['datasets']['train'].update(type='TeacherPairedImageDataset',
                                            teacher_cache_root=os.path.join(self.work, f'cache_{name}'),
                                            num_worker_per_gpu=0)
        options['train'].update(accumulate=2, total_iter=2 * self.sizes.iterations)
        options['val']['val_freq'] = self.sizes.iterations
        options['dist_params'] = {'backend': backend, 'timeout': 300}
        options['compile'] = self.on_cuda  # the DDP wrapper compiled (dynamo's DDP optimizer); GPU only
        path = write_options(options, self.work)
        with socket.socket() as probe:  # a free port for the rendezvous
            probe.bind(('127.0.0.1', 0))
            port = probe.getsockname()[1]
        command = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', str(processes), '--master-port',
                   str(port), self.launcher(), REPO_ROOT, self.work, '-opt', path, '--launcher', 'pytorch']
        start = time.perf_counter()
        self._subprocess(command, f'{name}.log', timeout=600)
        latest = os.path.join(self.work, 'experiments', name, 'models', 'net_g_latest.pth')
        if not os.path.isfile(latest):
            raise RuntimeError(f'{latest} was not written')
        return {'processes': processes, 'backend': backend, 'seconds': time.perf_counter() - start,
                'command': shlex.join(command)}

    def launcher(self) -> str:
        """A script that runs mtkd/train.py's pipeline with the work folder as the root (torchrun needs a file)."""
        path = os.path.join(self.work, 'launch_train.py')
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(LAUNCHER.replace('; ', '\n') + '\n')
        return path

    def torchrun_gloo(self) -> dict:
        return self._torchrun(2, 'gloo', 'gpucheck_torchrun_gloo')

    def torchrun_nccl(self) -> dict:
        return self._torchrun(1, 'nccl', 'gpucheck_torchrun_nccl')

    def kill_resume(self) -> dict:
        total = 4 * self.sizes.iterations
        options = option_file('kd', 'fp32', self.work, self.context['folders'], self.context['teachers'], self.sizes,
                              self.on_cuda, name='gpucheck_kill_resume')
        options['train']['total_iter'] = total
        options['logger']['save_checkpoint_freq'] = self.sizes.iterations
        path = write_options(options, self.work)
        command = [sys.executable, self.launcher(), REPO_ROOT, self.work, '-opt', path]
        states = os.path.join(self.work, 'experiments', options['name'], 'training_states')
        log_path = os.path.join(self.work, 'logs', 'kill_resume_first.log')
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, 'w', encoding='utf-8') as log:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            wanted = os.path.join(states, f'{2 * self.sizes.iterations}.state')
            deadline = time.monotonic() + 300
            while not os.path.isfile(wanted) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            process.wait()
        if not os.path.isfile(wanted):
            raise RuntimeError(f'no {wanted} before the kill; see {log_path}')
        output = self._subprocess(command + ['--auto_resume'], 'kill_resume_second.log', timeout=600)
        resumed = [line for line in output.splitlines() if 'Resuming training from' in line]
        if not resumed:
            raise RuntimeError('the second run did not resume')
        return {'killed_after_state': os.path.basename(wanted), 'resumed': resumed[0].split('INFO: ')[-1],
                'total_iter': total}

    def amp_psnr(self) -> dict:
        iterations = 300 if self.on_cuda else 12
        results = {}
        for config in ('fp32', 'amp'):
            options = option_file('kd', config, self.work, self.context['folders'], self.context['teachers'],
                                  self.sizes, self.on_cuda, name=f'gpucheck_amp_psnr_{config}', compile=False,
                                  channels_last=False)
            options.pop('teachers')
            options.pop('distill')
            options['model_type'] = 'PlainSRModel'
            options['train'].update(total_iter=iterations, pixel_opt={'type': 'L1Loss', 'loss_weight': 1.0},
                                    optim_g={'type': 'Adam', 'lr': 1e-3})
            results[config] = train_in_process(write_options(options, self.work), self.work, self.sizes)['psnr']
        details = {'iterations': iterations, 'psnr_fp32': results['fp32'], 'psnr_amp_fp16': results['amp'],
                   'difference_db': results['amp'] - results['fp32']}
        if abs(details['difference_db']) > 0.02:
            raise GoalMissed(f"AMP PSNR differs from fp32 by {details['difference_db']:+.3f} dB (goal: 0.02)", details)
        return details

    # ---- the report ----
    def write_report(self) -> tuple[str, str]:
        summary = {status: sum(step.status == status for step in self.steps) for status in ('pass', 'fail', 'warn',
                                                                                              'skip')}
        payload = {'dry': self.dry, 'summary': summary, 'steps': [asdict(step) for step in self.steps]}
        json_path = os.path.join(self.out, 'gpu_check.json')
        with open(json_path, 'w', encoding='utf-8') as handle:
            json.dump(payload, handle, indent=2, default=str)
        lines = [f"# mtkd GPU check{' (dry run on the CPU)' if self.dry else ''}", '',
                 ', '.join(f'{count} {status}' for status, count in summary.items()), '',
                 '| step | status | seconds | step ms | syncs/step | peak MiB | graphs | recompiles | notes |',
                 '|---|---|---:|---:|---:|---:|---:|---:|---|']
        for step in self.steps:
            details = step.details
            cells = [_number(details.get('median_step_ms')), _number(details.get('host_syncs_per_step')),
                     _number(details.get('peak_memory_mib'), 0), _number(details.get('compiled_graphs'), 0),
                     _number(details.get('recompiles'), 0)]
            note = (step.error or '').strip().splitlines()[-1:] or [_note(step)]
            lines.append(f"| {step.name} | {step.status} | {step.seconds:.1f} | {' | '.join(cells)} | "
                         f"{note[0].replace('|', '/')[:160]} |")
        environment = next((step for step in self.steps if step.name == 'environment' and step.details), None)
        if environment:
            from mtkd.training.precision import rounding_table

            lines += ['', f"Device: {environment.details['device']}, torch {environment.details['torch']}, fp32 "
                      f"{environment.details['float32']}.", '', 'Rounding of SR images by the AMP dtypes:', '',
                      rounding_table(environment.details['amp_rounding'])]
        bench = next((step for step in self.steps if step.name == 'benchmark' and step.details), None)
        if bench:
            lines += ['', f"Benchmark ({bench.details['settings']}):"]
            for name, table in bench.details['tables'].items():
                lines += ['', f'{name}:', '', table]
            lines += ['', f"AMP speed-up of the student (fp32 / amp_fp16): {bench.details['amp_speedup']}",
                      f"cached stage-2 step / student alone: {bench.details['cached_target_ratio']}"]
        markdown_path = os.path.join(self.out, 'gpu_check.md')
        with open(markdown_path, 'w', encoding='utf-8') as handle:
            handle.write('\n'.join(lines) + '\n')
        return markdown_path, json_path


def _number(value, digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def _note(step: Step) -> str:
    details = step.details
    if 'psnr' in details and details['psnr'] is not None:
        return f"PSNR {details['psnr']:.2f} dB"
    if 'difference_db' in details:
        return f"fp32 {details['psnr_fp32']:.3f} dB, AMP {details['psnr_amp_fp16']:.3f} dB"
    if 'amp_speedup' in details:
        return 'AMP speed-up ' + ', '.join(f'{name} {value:.2f}x' for name, value in details['amp_speedup'].items())
    if 'resumed' in details:
        return details['resumed']
    if 'device' in details:
        return details['device']
    return ''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='One-shot check of mtkd on a CUDA GPU (docs/performance.md).')
    parser.add_argument('--out', default=os.path.join(REPO_ROOT, 'results', 'gpu_check'),
                        help='folder of gpu_check.md and gpu_check.json')
    parser.add_argument('--work', default=None, help='scratch folder (data, caches, runs); default <out>/../work')
    parser.add_argument('--dry', action='store_true', help='CPU, tiny networks, a few seconds (CI)')
    parser.add_argument('--full', action='store_true', help='with --dry: also the subprocess steps')
    parser.add_argument('--budget', type=float, default=510.0, help='seconds; later steps are skipped')
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print('gpu_check: no CUDA GPU here; run with --dry for the CPU check', file=sys.stderr)
        return 2
    work = args.work or os.path.join(os.path.dirname(os.path.abspath(args.out)), 'gpu_check_work')
    check = GpuCheck(os.path.abspath(args.out), os.path.abspath(work), args.dry, args.full, args.budget)
    check.all_steps()
    markdown_path, json_path = check.write_report()
    print(f'[gpu_check] report: {markdown_path} and {json_path}')
    return 1 if any(step.status == 'fail' for step in check.steps) else 0


__all__ = ['main', 'GpuCheck', 'Step', 'option_file', 'train_in_process', 'MODEL_TYPES']
