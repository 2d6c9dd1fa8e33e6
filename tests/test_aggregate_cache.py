"""The I_MT cache (teacher_cache_content: aggregate): built once from the teachers and the frozen KA, it returns
I_MT aligned with GT, and a stage-2 step with it runs neither the teachers nor the aggregator."""
from __future__ import annotations

import glob
import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skimage_data

from basicsr.archs import build_network
from basicsr.data import build_dataset

from mtkd.config import OptionError, validate_options
from mtkd.config.cli import attach_teacher_cache
from mtkd.models.distill_model import DistillModel
from mtkd.teachers import TeacherEnsemble, teacher_specs_from_options

SCALE = 2
KA = {'type': 'DCTSwin', 'num_teachers': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'window_size': 4,
      'num_heads': 2, 'upscale': SCALE, 'global_residual': True}


@pytest.fixture
def stage2(tmp_path):
    (tmp_path / 'HR').mkdir()
    (tmp_path / 'LR').mkdir()
    for name in ('astronaut', 'coffee'):
        hr = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[64:112, 64:112]), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(tmp_path / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(tmp_path / 'LR' / f'{name}.png'), cv2.resize(hr, (24, 24), interpolation=cv2.INTER_AREA))
    teachers = []
    for name, num_feat in (('a', 4), ('b', 6)):
        network = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': num_feat, 'num_block': 1,
                   'upscale': SCALE}
        torch.manual_seed(num_feat)
        torch.save(build_network(dict(network)).state_dict(), tmp_path / f'{name}.pth')
        teachers.append({'name': name, 'network': network, 'weights': str(tmp_path / f'{name}.pth')})
    ensemble = TeacherEnsemble(teacher_specs_from_options(teachers), SCALE)
    torch.manual_seed(1)
    ka = build_network(dict(KA))
    with torch.no_grad():
        for parameter in ka.parameters():  # the zero-initialised upsampler would make I_MT the plain average
            parameter.add_(torch.randn_like(parameter) * 0.05)
    torch.save({'params': ka.state_dict(), 'teachers': ensemble.fingerprint()}, tmp_path / 'ka.pth')
    options = {
        'name': 'imt_cache', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
        'teachers': teachers, 'aggregator': {'network': KA, 'weights': str(tmp_path / 'ka.pth')},
        'distill': {'target': 'aggregate', 'output_opt': {'type': 'WaveletDistillLoss', 'loss_weight': 1.0}},
        'datasets': {'train': {'name': 'tiny', 'type': 'TeacherPairedImageDataset', 'dataroot_gt': str(tmp_path / 'HR'),
                               'dataroot_lq': str(tmp_path / 'LR'), 'gt_size': 16, 'batch_size_per_gpu': 2,
                               'teacher_cache_root': str(tmp_path / 'cache'), 'teacher_cache_content': 'aggregate'}},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 1, 'upscale': SCALE},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                  'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}},
    }
    return options, ensemble, ka


def _runtime(options, tmp_path):
    plain = validate_options(options, is_train=True).to_basicsr_dict()
    attach_teacher_cache(plain, str(tmp_path))
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(tmp_path))
    return plain


def test_aggregate_cache_holds_i_mt_and_the_step_skips_the_teacher_side(tmp_path, stage2):
    options, ensemble, ka = stage2
    plain = _runtime(options, tmp_path)
    validation = dict(plain['datasets']['train'], phase='val')  # whole images: compare with I_MT computed here
    dataset = build_dataset(validation)
    manifests = glob.glob(str(tmp_path / 'cache' / '*' / 'manifest.json'))
    assert len(manifests) == 1
    with open(manifests[0]) as handle:
        manifest = json.load(handle)
    assert manifest['complete'] and [entry['name'] for entry in manifest['teachers']] == ['aggregate']
    assert [entry['name'] for entry in manifest['teachers'][0]['teachers']] == ['a', 'b']
    item = dataset[0]
    assert 'teacher_outputs' not in item and item['cached_target'].shape == item['gt'].shape
    with torch.no_grad():
        expected = ka.eval()(torch.cat(ensemble.forward(item['lq'][None]), dim=1))[0]
    torch.testing.assert_close(item['cached_target'], expected, atol=2e-3, rtol=0)  # stored as float16
    assert (expected - ensemble.average(ensemble.forward(item['lq'][None]))[0]).abs().max() > 1e-2  # not the mean

    model = DistillModel(plain)
    calls = []
    for name in model.teachers.names:
        model.teachers.network(name).register_forward_hook(lambda *args: calls.append('teacher'))
    model.aggregator.network.register_forward_hook(lambda *args: calls.append('aggregator'))
    train_item = build_dataset(plain['datasets']['train'])[1]
    batch = {key: value[None] for key, value in train_item.items() if torch.is_tensor(value)}
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert calls == [] and torch.equal(model.target, batch['cached_target'])
    assert model.net_g.conv_first.weight.grad.abs().sum() > 0


def test_aggregate_cache_is_refused_for_methods_that_run_the_teachers(tmp_path, stage2):
    options, _, _ = stage2
    options['distill'] = {'target': 'teacher', 'teacher': 'a', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}
    with pytest.raises(OptionError, match="datasets.train.teacher_cache_content: an aggregate cache holds I_MT only"):
        validate_options(options, is_train=True)
