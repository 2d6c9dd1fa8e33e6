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
from mtkd.teachers.ensemble import TeacherEnsemble, teacher_specs_from_options

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
    assert item['cached_target'].dtype == torch.float16  # as stored: the model widens it on the device
    torch.testing.assert_close(item['cached_target'].float(), expected, atol=2e-3, rtol=0)
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
    assert calls == [] and torch.equal(model.target, batch['cached_target'].float())
    assert model.net_g.conv_first.weight.grad.abs().sum() > 0


def test_aggregate_cache_is_refused_for_methods_that_run_the_teachers(tmp_path, stage2):
    options, _, _ = stage2
    options['distill'] = {'target': 'teacher', 'teacher': 'a', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}
    with pytest.raises(OptionError, match="datasets.train.teacher_cache_content: an aggregate cache holds I_MT only"):
        validate_options(options, is_train=True)


def test_a_new_stage1_checkpoint_selects_a_new_i_mt_cache(tmp_path, stage2):
    """The I_MT cache is keyed by the stage-1 checkpoint's content (sha256), not its path: retraining stage 1 into
    the same file gives a new cache whose I_MT is the new aggregator's. Catches: the aggregate fingerprint
    ignoring the checkpoint hash, which would silently reuse the old I_MT."""
    import hashlib

    from mtkd.teachers.aggregated import AggregatedTeachers, aggregate_fingerprint_from_options

    options, ensemble, ka = stage2
    plain = _runtime(options, tmp_path)
    validation = dict(plain['datasets']['train'], phase='val')
    first = build_dataset(validation)[0]['cached_target']
    with open(tmp_path / 'ka.pth', 'rb') as handle:
        first_sha = hashlib.sha256(handle.read()).hexdigest()
    fingerprint = aggregate_fingerprint_from_options(options['teachers'], options['aggregator'])
    assert fingerprint[0]['weights_sha256'] == first_sha
    assert AggregatedTeachers(ensemble, options['aggregator']).fingerprint() == fingerprint

    with torch.no_grad():  # "retrain" stage 1: other weights, same file
        for parameter in ka.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    torch.save({'params': ka.state_dict(), 'teachers': ensemble.fingerprint()}, tmp_path / 'ka.pth')
    second_fingerprint = aggregate_fingerprint_from_options(options['teachers'], options['aggregator'])
    assert second_fingerprint[0]['weights_sha256'] != first_sha
    plain = _runtime(options, tmp_path)
    item = build_dataset(dict(plain['datasets']['train'], phase='val'))[0]
    assert len(glob.glob(str(tmp_path / 'cache' / '*' / 'manifest.json'))) == 2
    with torch.no_grad():
        expected = ka.eval()(torch.cat(ensemble.forward(item['lq'][None]), dim=1))[0]
    torch.testing.assert_close(item['cached_target'].float(), expected, atol=2e-3, rtol=0)
    assert (item['cached_target'] - first).abs().max() > 1e-2


class CacheProbeDCTSwin(build_network(dict(KA)).__class__):
    """DCTSwin under its own registered name, so that a test can change its forward and only its."""


from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

if 'CacheProbeDCTSwin' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register()(CacheProbeDCTSwin)


def test_a_changed_aggregator_forward_makes_the_i_mt_cache_stale(tmp_path, stage2, monkeypatch):
    """Same checkpoint, same arguments, other DCTSwin code: the I_MT cache's behavioural fingerprint (teachers and
    aggregator run on a fixed probe image) no longer matches, and opening the cache says so."""
    from mtkd.teachers.cache import StaleTeacherCacheError

    options, _, _ = stage2
    options['aggregator']['network'] = dict(KA, type='CacheProbeDCTSwin')
    plain = _runtime(options, tmp_path)
    validation = dict(plain['datasets']['train'], phase='val')
    build_dataset(validation)
    original = CacheProbeDCTSwin.forward
    monkeypatch.setattr(CacheProbeDCTSwin, 'forward', lambda self, x: original(self, x).clamp(0.2, 0.8))
    with pytest.raises(StaleTeacherCacheError, match=r"'aggregate': probe output changed by up to"):
        build_dataset(validation)
    dataset = build_dataset(dict(validation, accept_stale_teacher_cache=True))
    assert dataset[0]['cached_target'].shape[0] == 3
