"""scripts/benchmark_speed.py's library (mtkd/analysis/benchmark.py): every mode runs the step it names (no wall-clock
assertions): the autograd mode really back-propagates into the teacher side, the cached-target mode never runs it."""
from __future__ import annotations

import json

import torch
import yaml

from mtkd.analysis import benchmark

OPTIONS = {
    'name': 'bench_unit', 'model_type': 'DistillModel', 'scale': 2, 'num_gpu': 0,
    'teachers': [{'name': 'a', 'network': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4,
                                           'num_block': 1, 'upscale': 2}}],
    'aggregator': {'network': {'type': 'DCTSwin', 'num_teachers': 1, 'num_feat': 8, 'num_block': 1, 'num_layer': 2,
                               'window_size': 4, 'num_heads': 2, 'upscale': 2}},
    'distill': {'target': 'aggregate', 'output_opt': {'type': 'WaveletDistillLoss', 'loss_weight': 1.0}},
    'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': '/tmp', 'dataroot_lq': '/tmp',
                           'gt_size': 16}},
    'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 1, 'upscale': 2},
    'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
              'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}},
}


def test_each_mode_runs_what_it_names():
    model, lq, gt = benchmark.build_model(OPTIONS, 'cpu', 'fp32', 2, 8)
    teacher = model.teachers.network('a')
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append('teacher'))
    model.aggregator.network.register_forward_hook(lambda *args: calls.append('aggregator'))
    grads = []

    def watch_backward(module, inputs, output):
        if output.requires_grad:  # the teacher built a graph: record the gradient that reaches its output
            output.register_hook(lambda grad: grads.append(grad.abs().sum()))

    teacher.register_forward_hook(watch_backward)
    benchmark._autograd_step(model, lq, gt)
    assert calls == ['teacher', 'aggregator'] and grads and grads[0] > 0  # the reference code's backward
    assert not teacher.conv_first.weight.requires_grad and teacher.conv_first.weight.grad is None  # restored
    calls.clear()
    benchmark._model_step(model, lq, gt, None)
    assert calls == ['teacher', 'aggregator']
    calls.clear()
    target = torch.rand(2, 3, 16, 16)
    benchmark._model_step(model, lq, gt, None, target)
    assert calls == [] and torch.equal(model.target, target)


def test_rows_cover_every_mode_and_precision_and_the_script_writes_json(tmp_path):
    rows = benchmark.benchmark_steps(OPTIONS, 'cpu', ('fp32', 'amp_bf16'), batch_size=1, lr_patch=8, warmup=0, steps=1)
    assert [(row.precision, row.mode) for row in rows] == [(p, m) for p in ('fp32', 'amp_bf16') for m in benchmark.MODES]
    assert all(row.ratio_to_student_alone == 1.0 for row in rows if row.mode == 'student_alone')
    assert '| fp32 | cached_target |' in benchmark.markdown_table(rows)
    from importlib.machinery import SourceFileLoader

    from conftest import REPO_ROOT

    script = SourceFileLoader('benchmark_speed', f'{REPO_ROOT}/scripts/benchmark_speed.py').load_module()
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(OPTIONS))
    assert script.main(['-opt', str(tmp_path / 'o.yml'), '--device', 'cpu', '--batch-size', '1', '--lr-patch', '8',
                        '--warmup', '0', '--steps', '1', '--precisions', 'fp32', '--json', str(tmp_path / 'r.json')]) == 0
    result = json.loads((tmp_path / 'r.json').read_text())
    assert [row['mode'] for row in result['steps']] == list(benchmark.MODES) and result['dct']['fft_over_matrix'] > 0
