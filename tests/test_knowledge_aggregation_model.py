"""MTKD stage 1: frozen teachers, a trained aggregator, teacher lists in checkpoints, every option file runs."""
from __future__ import annotations

import glob
import math
import os
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage import data as skimage_data

from mtkd.config import validate_options
from mtkd.models.knowledge_aggregation_model import KnowledgeAggregationModel
from mtkd.teachers.ensemble import TeacherMismatchError
from mtkd.transforms.self_ensemble import NUM_TRANSFORMS, dihedral, inverse_dihedral

from conftest import REPO_ROOT

SCALE = 2


def tiny_teacher(name, num_feat=4):
    return {'name': name, 'network': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': num_feat,
                                      'num_block': 1, 'upscale': SCALE}, 'weights': None}


@pytest.fixture
def tiny_pairs(tmp_path):
    hr_dir, lr_dir = tmp_path / 'HR', tmp_path / 'LR'
    hr_dir.mkdir()
    lr_dir.mkdir()
    for name in ('astronaut', 'coffee'):
        hr = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[64:96, 64:96]), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(hr_dir / f'{name}.png'), hr)
        cv2.imwrite(str(lr_dir / f'{name}.png'), cv2.resize(hr, (16, 16), interpolation=cv2.INTER_AREA))
    return hr_dir, lr_dir


def runtime(options: dict, tmp_path, is_train=True) -> dict:
    plain = validate_options(options, is_train=is_train, check_files=False).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=is_train, root_path=str(tmp_path),
                 allow_random_teachers=True, num_gpu=0)
    plain['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'),
                         visualization=str(tmp_path / 'vis'), results_root=str(tmp_path / 'results'))
    return plain


def stage1_options(tiny_pairs, teachers) -> dict:
    hr_dir, lr_dir = tiny_pairs
    paired = {'type': 'PairedImageDataset', 'dataroot_gt': str(hr_dir), 'dataroot_lq': str(lr_dir)}
    return {
        'name': 'ka_unit', 'model_type': 'KnowledgeAggregationModel', 'scale': SCALE, 'manual_seed': 0,
        'teachers': teachers,
        'datasets': {'train': dict(paired, name='toy', gt_size=16, batch_size_per_gpu=2),
                     'val': dict(paired, name='toyval')},
        'network_g': {'type': 'DCTSwin', 'num_teachers': len(teachers), 'num_feat': 8, 'num_block': 1,
                      'num_layer': 2, 'window_size': 4, 'num_heads': 2, 'upscale': SCALE},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                  'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 1, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE,
                                                    'test_y_channel': True}}},
    }


def one_batch(tiny_pairs):
    hr_dir, lr_dir = tiny_pairs
    gt = cv2.imread(str(hr_dir / 'coffee.png'))[None, :16, :16, ::-1] / 255.
    lq = cv2.imread(str(lr_dir / 'coffee.png'))[None, :8, :8, ::-1] / 255.
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()  # noqa: E731
    return {'lq': to_tensor(lq), 'gt': to_tensor(gt)}


def test_training_step_reaches_every_aggregator_parameter_and_no_teacher(tmp_path, tiny_pairs):
    model = KnowledgeAggregationModel(runtime(stage1_options(tiny_pairs, [tiny_teacher('a'), tiny_teacher('b')]),
                                              tmp_path))
    model.feed_data(one_batch(tiny_pairs))
    model.optimize_parameters(1)
    teacher_parameters = list(model.teachers.parameters())
    assert teacher_parameters and all(p.grad is None and not p.requires_grad for p in teacher_parameters)
    for name, parameter in model.net_g.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in teacher_parameters}


def test_teacher_list_is_saved_and_a_reordered_list_is_refused(tmp_path, tiny_pairs):
    teachers = [tiny_teacher('a'), tiny_teacher('b', num_feat=6)]
    model = KnowledgeAggregationModel(runtime(stage1_options(tiny_pairs, teachers), tmp_path))
    model.save_network(model.net_g, 'net_g', 1)
    path = tmp_path / 'models' / 'net_g_1.pth'
    checkpoint = torch.load(path, weights_only=True)
    assert [entry['name'] for entry in checkpoint['teachers']] == ['a', 'b']
    assert all(not any(torch.is_tensor(v) for v in entry.values()) for entry in checkpoint['teachers'])

    same = stage1_options(tiny_pairs, teachers)
    same['path'] = {'pretrain_network_g': str(path)}
    reloaded = KnowledgeAggregationModel(runtime(same, tmp_path))
    for name, value in model.net_g.state_dict().items():
        assert torch.equal(reloaded.net_g.state_dict()[name], value)

    swapped = stage1_options(tiny_pairs, teachers[::-1])
    swapped['path'] = {'pretrain_network_g': str(path)}
    with pytest.raises(TeacherMismatchError) as caught:
        KnowledgeAggregationModel(runtime(swapped, tmp_path))
    assert 'saved order:   a, b' in str(caught.value) and 'current order: b, a' in str(caught.value)


def test_validation_scores_teachers_and_average_once(tmp_path, tiny_pairs):
    from basicsr.data import build_dataloader, build_dataset

    options = runtime(stage1_options(tiny_pairs, [tiny_teacher('a'), tiny_teacher('b')]), tmp_path)
    model = KnowledgeAggregationModel(options)
    loader = build_dataloader(build_dataset(options['datasets']['val']), options['datasets']['val'], num_gpu=0,
                              dist=False, sampler=None, seed=0)
    model.validation(loader, 1, None, False)
    assert set(model.image_metric_results) == {'result', 'teacher_a', 'teacher_b', 'teacher_average'}
    # The average row is the PSNR of the pixel mean of the two teachers' outputs on each image.
    lq = one_batch(tiny_pairs)['lq']
    outputs = model.teachers.forward(lq)
    assert torch.allclose(model.teachers.average(outputs), (outputs[0] + outputs[1]) / 2)
    model.validation(loader, 2, None, False)
    assert set(model.image_metric_results) == {'result'}  # teachers are scored at the first validation only


def test_self_ensemble_runs_teachers_and_aggregator_on_each_transformed_input(tmp_path, tiny_pairs):
    options = stage1_options(tiny_pairs, [tiny_teacher('a'), tiny_teacher('b')])
    options['val']['self_ensemble'] = True
    model = KnowledgeAggregationModel(runtime(options, tmp_path))
    batch = one_batch(tiny_pairs)
    batch['lq'] = batch['lq'][..., :6]  # not square: odd rotations give the teachers 6x8 inputs
    model.feed_data(batch)
    model.test()
    network = model.net_g.eval()
    with torch.no_grad():
        runs = [inverse_dihedral(network(model.teachers.stacked(dihedral(batch['lq'], k).contiguous())), k)
                for k in range(NUM_TRANSFORMS)]
        plain = network(model.teachers.stacked(batch['lq']))
    assert torch.allclose(model.output, torch.stack(runs).mean(dim=0), atol=1e-6)
    assert not torch.allclose(model.output, plain, atol=1e-4)
    # The reference rows stay the teachers as configured (plain here), not their self-ensembles.
    assert torch.equal(model.reference_outputs()['teacher_a'], model.teachers.forward(batch['lq'])[0])


def test_num_teachers_must_match_the_list(tiny_pairs):
    options = stage1_options(tiny_pairs, [tiny_teacher('a'), tiny_teacher('b')])
    options['network_g']['num_teachers'] = 3
    with pytest.raises(Exception, match='the aggregator takes 3 teachers but 2 are listed'):
        validate_options(options, is_train=True, check_files=False)


STAGE1_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'options', 'stage1_*.yml')))


@pytest.mark.parametrize('path', STAGE1_FILES, ids=[os.path.basename(p) for p in STAGE1_FILES])
def test_stage1_option_file_builds_and_trains_two_iterations(path, tmp_path, tiny_pairs):
    """Each shipped stage-1 file (its teachers and aggregator as written, random weights where files are
    missing) runs two optimisation steps on a tiny fixed batch: the logged L1 is its weight times L1(I_MT, GT)
    (MTKD stage 1), and the step lowers it."""
    with open(path, encoding='utf-8') as handle:
        options = yaml.safe_load(handle)
    hr_dir, lr_dir = tiny_pairs
    scale = options['scale']
    options['datasets'] = {'train': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(hr_dir),
                                     'dataroot_lq': str(lr_dir), 'gt_size': 16 * scale, 'batch_size_per_gpu': 1}}
    options.pop('val', None)
    plain = runtime(options, tmp_path)
    plain['train']['optim_g']['lr'] = 1e-5  # one Adam step of about lr per parameter: a descent step
    torch.manual_seed(0)
    model = KnowledgeAggregationModel(plain)
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 3, 16 * scale, 16 * scale, generator=generator)  # LR 16x16: the smallest every teacher takes
    lq = torch.nn.functional.avg_pool2d(gt, scale)
    losses = []
    for step in (1, 2):
        model.feed_data({'lq': lq, 'gt': gt})
        model.optimize_parameters(step)
        assert set(model.log_dict) == {'l_pix'} and math.isfinite(float(model.log_dict['l_pix']))
        losses.append(float(model.log_dict['l_pix']))
        if step == 1:
            weight = plain['train']['pixel_opt']['loss_weight']
            expected = weight * (model.output.detach() - gt).abs().mean().item()
            assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert model.output.shape == gt.shape
    assert losses[1] < losses[0]


def test_stage1_run_builds_the_teacher_cache_and_trains_from_it(tmp_path, tiny_pairs):
    """``python mtkd/train.py`` on a TeacherPairedImageDataset: the cache is built at start (after BasicSR's
    logger is set up, so the run keeps its log file), training reads it, the KA checkpoint records the teachers."""
    import json
    import shutil
    import subprocess
    import sys

    from basicsr.archs import build_network

    from mtkd.weights.loading import file_sha256

    teachers = []
    for name, num_feat in (('a', 4), ('b', 6)):
        entry = tiny_teacher(name, num_feat)
        weights = tmp_path / f'{name}.pth'
        torch.save(build_network(dict(entry['network'])).state_dict(), weights)
        teachers.append(dict(entry, weights=str(weights)))
    options = stage1_options(tiny_pairs, teachers)
    options['name'] = f'pytest_ka_cached_{os.getpid()}'
    options['datasets']['train'].update(type='TeacherPairedImageDataset', teacher_cache_root=str(tmp_path / 'cache'),
                                        dataset_enlarge_ratio=4, num_worker_per_gpu=0)
    options['train']['total_iter'] = 3
    options['logger'] = {'print_freq': 1, 'save_checkpoint_freq': 100, 'use_tb_logger': False}
    options['num_gpu'] = 0
    path = tmp_path / 'ka_cached.yml'
    path.write_text(yaml.safe_dump(options))
    experiment = os.path.join(REPO_ROOT, 'experiments', options['name'])
    try:
        completed = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'mtkd', 'train.py'), '-opt', str(path)],
                                   capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert completed.returncode == 0, completed.stderr[-3000:]
        manifests = glob.glob(str(tmp_path / 'cache' / '*' / 'manifest.json'))
        assert len(manifests) == 1
        with open(manifests[0]) as handle:
            manifest = json.load(handle)
        assert manifest['complete'] and [t['name'] for t in manifest['teachers']] == ['a', 'b']
        checkpoint = torch.load(os.path.join(experiment, 'models', 'net_g_latest.pth'), weights_only=True)
        assert [t['weights_sha256'] for t in checkpoint['teachers']] == [file_sha256(t['weights']) for t in teachers]
        logs = glob.glob(os.path.join(experiment, f"train_{options['name']}_*.log"))
        assert len(logs) == 1
        with open(logs[0]) as handle:
            log = handle.read()
        assert 'iter:       3' in log and 'Validation toyval' in log and 'teacher_average' in log
    finally:
        shutil.rmtree(experiment, ignore_errors=True)


@pytest.mark.parametrize('channels_last', [False, True])
def test_cached_teacher_outputs_are_the_aggregators_input_in_either_memory_format(tmp_path, tiny_pairs,
                                                                                   channels_last):
    """With a teacher-output cache, ``compute_losses`` feeds the cached images (float16, widened) to the network,
    not the teachers' outputs (constants here, unlike any teacher's), and the loss is L1 of that output to GT;
    ``channels_last`` changes the memory format only."""
    options = stage1_options(tiny_pairs, [tiny_teacher('a'), tiny_teacher('b')])
    options['channels_last'] = channels_last
    model = KnowledgeAggregationModel(runtime(options, tmp_path))
    batch = one_batch(tiny_pairs)
    shape = batch['gt'].shape
    cached = torch.stack([torch.full(shape, 0.25), torch.full(shape, 0.75)], dim=1).half()  # NCHW-contiguous
    model.feed_data(dict(batch, teacher_outputs=cached))
    losses = OrderedDict()
    total = model.compute_losses(losses)
    expected_input = torch.cat([torch.full(shape, 0.25), torch.full(shape, 0.75)], dim=1)
    assert torch.equal(model.teacher_stack, expected_input)
    assert model.teacher_stack.is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():
        expected = (model.net_g(expected_input) - batch['gt']).abs().mean()
    torch.testing.assert_close(total.detach(), expected)
