"""The GPU path, checked on the CPU (issue 18): caches built by every rank, what runs in which precision, TF32 off
unless asked, no host synchronisation in a step, the input pipeline, compile at validation, the benchmark, and the
DDP wrapping details. CUDA placement is simulated on the ``meta`` device or by patching ``torch.cuda``; real
multi-process behaviour is in tests/test_ddp.py, what only a GPU shows in scripts/gpu_check.sh."""
from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import importlib
import weakref
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage import data as skimage_data

from basicsr.archs import build_network

import mtkd
from mtkd.analysis import benchmark
from mtkd.analysis.profiling import HostSyncDetector
from mtkd.config import validate_options
from mtkd.config.schema import SROptions
from mtkd.models.distill_model import DistillModel
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.teachers.cache import TeacherOutputCache, dataset_key, image_stem
from mtkd.teachers.ensemble import TeacherEnsemble, teacher_specs_from_options
from mtkd.training import precision, runtime
from mtkd.training.optimization import OptimizerStep

from conftest import load_script

SCALE = 2
STUDENT = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 1, 'upscale': SCALE}
KA = {'type': 'DCTSwin', 'num_teachers': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'window_size': 4,
      'num_heads': 2, 'upscale': SCALE, 'global_residual': True}
TRAIN = {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
         'total_iter': 8, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}}


@pytest.fixture
def world(tmp_path):
    """Two photo crops (HR 48, LR 24), two tiny teachers with weights and a stage-1 checkpoint on disk."""
    for folder in ('HR', 'LR'):
        (tmp_path / folder).mkdir()
    for name in ('astronaut', 'coffee'):
        hr = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[64:112, 64:112]), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(tmp_path / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(tmp_path / 'LR' / f'{name}.png'), cv2.resize(hr, (24, 24), interpolation=cv2.INTER_AREA))
    teachers = []
    for name, num_feat in (('a', 4), ('b', 6)):
        network = dict(STUDENT, num_feat=num_feat)
        torch.manual_seed(num_feat)
        torch.save(build_network(dict(network)).state_dict(), tmp_path / f'{name}.pth')
        teachers.append({'name': name, 'network': network, 'weights': str(tmp_path / f'{name}.pth')})
    ensemble = TeacherEnsemble(teacher_specs_from_options(teachers), SCALE)
    torch.manual_seed(1)
    ka = build_network(dict(KA))
    with torch.no_grad():
        for parameter in ka.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    torch.save({'params': ka.state_dict(), 'teachers': ensemble.fingerprint()}, tmp_path / 'ka.pth')
    lq_paths = sorted(str(path) for path in (tmp_path / 'LR').iterdir())
    return {'root': tmp_path, 'teachers': teachers, 'ensemble': ensemble, 'lq_paths': lq_paths,
            'aggregator': {'network': KA, 'weights': str(tmp_path / 'ka.pth')}}


def distill_options(world, distill, aggregator=False, **top):
    root = world['root']
    options = {'name': 'gpu_path', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
               'teachers': copy.deepcopy(world['teachers']), 'distill': distill, 'network_g': dict(STUDENT),
               'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'HR'),
                                      'dataroot_lq': str(root / 'LR'), 'gt_size': 16}},
               'train': copy.deepcopy(TRAIN), **top}
    if aggregator:
        options['aggregator'] = copy.deepcopy(world['aggregator'])
    return options


def build_model(raw, root, model_class=DistillModel, dist=False):
    plain = validate_options(raw, is_train=True).to_basicsr_dict()
    plain.update(dist=dist, rank=0, world_size=1, is_train=True, root_path=str(root), num_gpu=0)
    plain['path'].update(models=str(root / 'models'), training_states=str(root / 'states'),
                         experiments_root=str(root))
    return model_class(plain)


def whole_image(world, index=0):
    """An LR image and its HR as a batch of one (no crop, so a cache of whole images holds its targets)."""
    lq = cv2.cvtColor(cv2.imread(world['lq_paths'][index]), cv2.COLOR_BGR2RGB)
    hr = cv2.cvtColor(cv2.imread(world['lq_paths'][index].replace('/LR/', '/HR/')), cv2.COLOR_BGR2RGB)
    as_batch = (lambda image: torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255)
    return as_batch(lq), as_batch(hr)


# ---- 2: the teacher-output cache built by every rank, the process-group timeout, the build script -------------
def test_a_sharded_build_computes_each_image_once_and_equals_a_one_process_build(world, tmp_path):
    ensemble, paths = world['ensemble'], world['lq_paths']
    sharded = TeacherOutputCache(str(tmp_path / 'sharded'), ensemble.fingerprint(), dataset_key(paths), SCALE)
    reports = [sharded.build(ensemble, paths, progress=False, shard=(index, 2)) for index in (0, 1)]
    assert [report.computed for report in reports] == [1, 1]  # one image each: every rank does its share
    stems = [image_stem(path) for path in paths]
    assert not sharded.is_complete(stems)  # complete only once every shard is known to be done
    sharded.finish_sharded_build(paths)
    assert sharded.is_complete(stems)
    whole = TeacherOutputCache(str(tmp_path / 'whole'), ensemble.fingerprint(), dataset_key(paths), SCALE)
    whole.build(ensemble, paths, progress=False)
    for name in ensemble.names:
        for stem in stems:
            assert np.array_equal(sharded.read_full(name, stem), whole.read_full(name, stem))


def test_dist_params_timeout_bounds_every_collective(monkeypatch):
    import torch.distributed as dist

    from mtkd.config import cli

    seen = []
    monkeypatch.setattr(dist, 'init_process_group', lambda **arguments: seen.append(arguments))
    cli.init_distributed('pytorch', 'gloo', 77)
    cli.init_distributed('pytorch', 'gloo')
    assert [arguments['timeout'] for arguments in seen] == [datetime.timedelta(seconds=77),
                                                             datetime.timedelta(seconds=1800)]
    raw = {'name': 'x', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0, 'network_g': dict(STUDENT),
           'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': '/x', 'dataroot_lq': '/x',
                                  'gt_size': 16}}, 'train': TRAIN, 'dist_params': {'backend': 'gloo', 'timeout': 77}}
    assert validate_options(raw, is_train=True, check_files=False).to_basicsr_dict()['dist_params']['timeout'] == 77


def test_the_build_script_builds_the_aggregate_cache_that_training_finds(world, tmp_path, capsys):
    from mtkd.teachers.aggregated import aggregate_fingerprint_from_options

    options = distill_options(world, {'target': 'aggregate', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
                              aggregator=True)
    options['datasets']['train'].update(type='TeacherPairedImageDataset', teacher_cache_root=str(tmp_path / 'cache'))
    (tmp_path / 'stage2.yml').write_text(yaml.safe_dump(options))
    script = load_script('build_teacher_cache')
    assert script.main(['-opt', str(tmp_path / 'stage2.yml'), '--content', 'aggregate', '--device', 'cpu',
                        '--no-progress']) == 0
    assert '2 images computed' in capsys.readouterr().out
    fingerprint = aggregate_fingerprint_from_options(options['teachers'], options['aggregator'])
    cache = TeacherOutputCache.find(str(tmp_path / 'cache'), fingerprint, dataset_key(world['lq_paths']), SCALE)
    assert cache.teacher_names == ['aggregate']
    lq, _ = whole_image(world)
    model = build_model(options, tmp_path)
    stored = torch.from_numpy(cache.read_full('aggregate', image_stem(world['lq_paths'][0]))).permute(2, 0, 1)
    assert torch.equal(model.distillation_target(lq)[0], stored)  # I_MT as the step computes it


# ---- 3: what runs in which precision -----------------------------------------------------------------------------
def _dtypes_of(model, amp_teachers):
    seen = {}

    def record(name, value):  # a hook returning a value would replace the module's input or output
        seen.setdefault(name, value)

    model.net_g.conv_first.register_forward_hook(lambda m, i, o: record('student', o.dtype))
    model.teachers.network('a').conv_first.register_forward_hook(lambda m, i, o: record('teacher', o.dtype))
    for name in ('cri_pix', 'cri_distill', 'cri_feature'):  # the feature loss takes lists of tensors
        getattr(model, name).register_forward_pre_hook(lambda m, inputs, name=name: record(name, {
            tensor.dtype for item in inputs for tensor in (item if isinstance(item, list) else [item])}))
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(1)
    return seen


def test_under_amp_the_teachers_and_every_loss_run_in_fp32(world, tmp_path):
    kd = {'target': 'teacher', 'teacher': 'a', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
          'feature_opt': {'type': 'AttentionTransferLoss', 'loss_weight': 1.0, 'student_layers': ['body.0'],
                          'teacher_layers': ['body.0']}}
    seen = _dtypes_of(build_model(distill_options(world, kd, use_amp=True, amp_dtype='bf16'), tmp_path), False)
    assert seen == {'student': torch.bfloat16, 'teacher': torch.float32, 'cri_pix': {torch.float32},
                    'cri_distill': {torch.float32}, 'cri_feature': {torch.float32}}  # student features were bf16
    fast = build_model(distill_options(world, kd, use_amp=True, amp_dtype='bf16', amp_teachers=True), tmp_path)
    assert _dtypes_of(fast, True)['teacher'] == torch.bfloat16  # the explicit switch


def test_cached_and_on_the_fly_targets_are_identical_under_amp(world, tmp_path):
    """I_MT computed in the step, from a teacher-output cache, and read from an I_MT cache: the same bits."""
    from mtkd.teachers.aggregated import AggregatedTeachers

    ensemble, paths = world['ensemble'], world['lq_paths']
    teacher_cache = TeacherOutputCache(str(tmp_path / 'cache'), ensemble.fingerprint(), dataset_key(paths), SCALE)
    teacher_cache.build(ensemble, paths, progress=False)
    aggregated = AggregatedTeachers(ensemble, world['aggregator'])
    imt_cache = TeacherOutputCache(str(tmp_path / 'cache'), aggregated.fingerprint(), dataset_key(paths), SCALE)
    imt_cache.build(aggregated, paths, progress=False)
    stem = image_stem(paths[0])
    as_batch = (lambda array: torch.from_numpy(array.astype(np.float16)).permute(2, 0, 1)[None])  # as the loader
    model = build_model(distill_options(world, {'target': 'aggregate', 'output_opt': {
        'type': 'WaveletDistillLoss', 'loss_weight': 1.0}}, aggregator=True, use_amp=True, amp_dtype='bf16'), tmp_path)
    lq, gt = whole_image(world)
    targets = []
    for extra in ({}, {'teacher_outputs': torch.stack([as_batch(teacher_cache.read_full(name, stem))[0]
                                                      for name in ensemble.names])[None]},
                  {'cached_target': as_batch(imt_cache.read_full('aggregate', stem))}):
        model.feed_data({'lq': lq, 'gt': gt, **extra})
        model.optimize_parameters(1)
        targets.append(model.target)
    assert targets[0].dtype == torch.float32
    assert torch.equal(targets[0], targets[1]) and torch.equal(targets[0], targets[2])


def test_the_default_amp_dtype_is_the_one_that_rounds_images_less():
    crops = precision._photo_crops(2, 64)
    rows = {(row['dtype'], row['what']): row for row in precision.measure_amp_rounding(crops)}
    for what in ('round trip of the image', 'network under autocast'):
        fp16, bf16 = rows[('fp16', what)], rows[('bf16', what)]
        assert fp16['max_grey_levels'] * 4 < bf16['max_grey_levels'] and fp16['psnr_db'] > bf16['psnr_db'] + 12
    assert rows[('fp16', 'round trip of the image')]['max_grey_levels'] <= 255 * 2 ** -12 + 1e-9  # half an ulp at 1
    assert SROptions.model_fields['amp_dtype'].default == 'fp16'


# ---- 5: IEEE fp32 unless fast_matmul, at every entry point -------------------------------------------------------
def test_fp32_matmul_and_convolutions_are_ieee_unless_fast_matmul(tmp_path):
    from mtkd.config.cli import parse_options

    try:
        precision.set_float32_precision(True)  # as PyTorch's TF32 convolutions by default
        importlib.reload(mtkd)  # scripts: importing mtkd sets IEEE fp32
        assert precision.float32_precision() == {'matmul': 'ieee', 'conv': 'ieee'}
        runtime.configure({'fast_matmul': True, 'datasets': {}})
        assert precision.float32_precision() == {'matmul': 'tf32', 'conv': 'tf32'}
        for folder in ('HR', 'LR'):
            (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / 'HR' / 'a.png'), np.full((16, 16, 3), 90, np.uint8))
        cv2.imwrite(str(tmp_path / 'LR' / 'a.png'), np.full((8, 8, 3), 90, np.uint8))
        test_file = {'name': 'tf32', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0,
                     'network_g': dict(STUDENT), 'datasets': {'test_1': {
                         'name': 'x', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'HR'),
                         'dataroot_lq': str(tmp_path / 'LR')}}, 'path': {'results_root': str(tmp_path / 'results')},
                     'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}}}
        (tmp_path / 'test.yml').write_text(yaml.safe_dump(test_file))
        parse_options(str(tmp_path), is_train=False, argv=['-opt', str(tmp_path / 'test.yml')])  # mtkd/test.py
        assert precision.float32_precision() == {'matmul': 'ieee', 'conv': 'ieee'}
    finally:
        precision.set_float32_precision(False)


# ---- 6: no host synchronisation in a step; constants made once per device ----------------------------------------
def test_a_training_step_reads_nothing_back_from_the_device(world, tmp_path):
    from mtkd.models.dual_teacher_model import DualTeacherModel

    kd = {'target': 'teacher', 'teacher': 'a', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
          'dukd': {'augmentation_probability': 0.9}}
    edge = {'edge_opt': {'type': 'EdgeLoss', 'loss_weight': 0.1}}
    dtkd = {'fidelity_teacher': 'a', 'perceptual_teacher': 'b',
            'distill_opt': {'type': 'RoutedL1Loss', 'loss_weight': 1.0},
            'reliability_opt': {'type': 'ReliabilityAttentionLoss', 'loss_weight': 1.0}}
    models = [build_model(distill_options(world, kd, train=dict(TRAIN, **edge)), tmp_path)]
    dual = distill_options(world, None, model_type='DualTeacherModel', train=dict(TRAIN, **edge))
    dual.pop('distill')
    models.append(build_model(dict(dual, dtkd=dtkd), tmp_path, DualTeacherModel))
    generator = torch.Generator().manual_seed(0)
    batch = {'lq': torch.rand(2, 3, 8, 8, generator=generator), 'gt': torch.rand(2, 3, 16, 16, generator=generator)}
    for model in models:
        model.optimizer_step.defer_host_checks = True  # as on CUDA
        model.feed_data(batch)
        model.optimize_parameters(1)
        with HostSyncDetector() as detector:
            for iteration in (2, 3):
                model.feed_data(batch)
                model.optimize_parameters(iteration)
        assert detector.events == [], (type(model).__name__, detector.summary())
        assert model.get_current_log()['l_pix'] > 0  # logging reads the values back, at print_freq only


def test_loss_constants_are_made_once_per_device():
    from mtkd.losses.dct_loss import DCTDistillLoss
    from mtkd.losses.edge_loss import EdgeLoss
    from mtkd.losses.wavelet_loss import WaveletDistillLoss
    from mtkd.transforms.entropy import image_entropy

    prediction, target = (torch.rand(2, 3, 16, 16, device='meta') for _ in range(2))  # 'meta': a device not the CPU
    calls = [lambda: EdgeLoss(operator=operator)(prediction, target) for operator in ('sobel', 'laplacian',
                                                                                      'fractional')]
    calls += [lambda: DCTDistillLoss()(prediction, target), lambda: DCTDistillLoss(block_size=None)(prediction, target),
              lambda: WaveletDistillLoss(wavelet='db2')(prediction, target), lambda: image_entropy(target),
              lambda: image_entropy(target, window_size=4)]
    for call in calls:
        call()  # made and moved to the device once
        with HostSyncDetector() as detector:
            call()
        assert detector.events == [], detector.summary()


def test_dukd_decides_its_augmentations_on_the_host_once_per_batch():
    from mtkd.methods.dukd import OFFICIAL_AUGMENTATIONS, augment, deaugment, sample_augmentation_masks

    images = torch.rand(4, 3, 8, 8, device='meta')
    masks = sample_augmentation_masks(4, OFFICIAL_AUGMENTATIONS, 0.5, torch.Generator().manual_seed(3))
    for function in (augment, deaugment):
        with HostSyncDetector() as detector:
            assert function(images, OFFICIAL_AUGMENTATIONS, masks).shape == images.shape
        assert [name for name, _ in detector.events] == ['aten::_to_copy']  # the per-sample selection, once


def test_optimizer_step_defers_its_checks_and_never_applies_a_skipped_update(caplog):
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([parameter], lr=0.1, fused=True)
    import logging

    interrupted = []
    step = OptimizerStep(optimizer, [parameter], torch.device('cpu'), logger=logging.getLogger('test_gpu_path'),
                         interrupted=lambda: bool(interrupted), defer_host_checks=True)
    taken = step((parameter * float('nan')).sum(), 1)
    assert not bool(taken) and torch.equal(parameter.detach(), torch.ones(3)) and 'update skipped' not in caplog.text
    interrupted.append(True)
    taken = step(parameter.sum(), 2)  # reads step 1's flags now: the warning comes one step late
    assert bool(taken) and not torch.equal(parameter.detach(), torch.ones(3))
    assert 'iteration 1: the loss is nan; update skipped (1 in a row' in caplog.text and not step.stop_requested
    step(parameter.sum(), 3)
    assert step.stop_requested  # the Ctrl-C travelled with step 2's flags
    assert int(optimizer.state[parameter]['step']) == 2  # the skipped update did not count


# ---- 7: the input pipeline -----------------------------------------------------------------------------------
def test_pin_memory_and_persistent_workers_default_on_for_cuda_training(monkeypatch):
    raw = {'name': 'x', 'model_type': 'PlainSRModel', 'scale': SCALE, 'network_g': dict(STUDENT), 'num_gpu': 1,
           'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': '/x', 'dataroot_lq': '/x',
                                  'gt_size': 16, 'num_worker_per_gpu': 4},
                        'val': {'name': 'v', 'type': 'PairedImageDataset', 'dataroot_gt': '/x', 'dataroot_lq': '/x'}},
           'train': TRAIN}
    options = validate_options(raw, is_train=True, check_files=False).to_basicsr_dict()
    assert options['datasets']['train']['pin_memory'] is None  # "decide for this machine"
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    runtime.fill_data_loader_defaults(options)
    train, val = options['datasets']['train'], options['datasets']['val']
    assert (train['pin_memory'], train['persistent_workers']) == (True, True)
    assert (val['pin_memory'], val['persistent_workers']) == (False, False)  # read in the main process
    explicit = validate_options(dict(raw, num_gpu=0), is_train=True, check_files=False).to_basicsr_dict()
    explicit['datasets']['train'].update(pin_memory=False, num_worker_per_gpu=0)
    runtime.fill_data_loader_defaults(explicit)
    assert (explicit['datasets']['train']['pin_memory'], explicit['datasets']['train']['persistent_workers']) == (
        False, False)


def test_batches_are_copied_without_blocking_and_caches_widened_on_the_device(world, tmp_path):
    model = build_model(distill_options(world, {'target': 'aggregate', 'output_opt': {
        'type': 'L1Loss', 'loss_weight': 1.0}}, aggregator=True), tmp_path)
    batch = {key: mock.MagicMock(name=key) for key in ('lq', 'gt', 'teacher_outputs', 'cached_target')}
    model.feed_data(batch)
    for key, value in batch.items():
        assert value.to.call_args == mock.call(model.device, non_blocking=True), key
    batch['teacher_outputs'].to.return_value.float.assert_called_once()  # float16 from the loader, widened here
    batch['cached_target'].to.return_value.float.assert_called_once()


def test_the_cuda_prefetcher_marks_each_batch_as_used_by_the_training_stream(monkeypatch):
    from mtkd.data.prefetch import CUDAPrefetcher

    class Stream:
        def wait_stream(self, other):
            waited.append(other)

    consumer, waited, recorded = Stream(), [], []
    monkeypatch.setattr(torch.cuda, 'Stream', Stream)
    monkeypatch.setattr(torch.cuda, 'stream', lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda: consumer)
    monkeypatch.setattr(torch.Tensor, 'record_stream', lambda tensor, stream: recorded.append((tensor.shape, stream)))
    loader = [{'lq': torch.zeros(1, 3, 4, 4), 'gt': torch.zeros(1, 3, 8, 8), 'lq_path': ['a.png']}]
    prefetcher = CUDAPrefetcher(loader, {'num_gpu': 0})
    prefetcher.device = torch.device('meta')  # a device other than the CPU, as CUDA would be
    prefetcher.reset()
    batch = prefetcher.next()
    assert batch['lq'].device.type == 'meta' and waited == [prefetcher.stream]
    assert recorded == [((1, 3, 4, 4), consumer), ((1, 3, 8, 8), consumer)]


# ---- 9: compile at validation ------------------------------------------------------------------------------------
def test_validation_runs_the_uncompiled_network(world, tmp_path, monkeypatch):
    calls = []

    def fake_compile(function, **kwargs):  # stands for torch.compile: counts the compiled calls
        def compiled(*args, **inner):
            calls.append(args[0].shape if args else None)
            return function(*args, **inner)
        return compiled

    monkeypatch.setattr(torch, 'compile', fake_compile)
    options = distill_options(world, {'target': 'teacher', 'teacher': 'a', 'output_opt': {
        'type': 'L1Loss', 'loss_weight': 1.0}}, compile=True)
    model = build_model(options, tmp_path)
    assert runtime.is_compiled(model.net_g)
    model.feed_data({'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)})
    model.optimize_parameters(1)
    assert calls == [torch.Size([2, 3, 8, 8])]  # training runs the compiled network
    for size in (11, 13):  # every validation image has its own size
        model.feed_data({'lq': torch.rand(1, 3, size, size), 'gt': torch.rand(1, 3, 2 * size, 2 * size)})
        model.test()
        assert model.output.shape[-1] == 2 * size
    assert len(calls) == 1 and runtime.is_compiled(model.net_g)


def test_feature_taps_compile_into_one_graph():
    from mtkd.methods.feature_taps import FeatureTaps

    network = build_network(dict(STUDENT, num_block=2))
    taps = FeatureTaps(network, ['body.1', 'conv_after_body'], clone=True)
    images = torch.rand(1, 3, 8, 8)
    torch.compile(network, backend='eager', fullgraph=True)(images)  # fullgraph: any graph break raises
    compiled = [feature.clone() for feature in taps.feature_list()]
    network(images)
    assert all(torch.equal(a, b) for a, b in zip(compiled, taps.feature_list()))


# ---- 11: scripts/benchmark_speed.py ------------------------------------------------------------------------------
BENCH = {'name': 'bench', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0,
         'teachers': [{'name': 'a', 'network': dict(STUDENT, num_feat=4)}],
         'distill': {'target': 'teacher', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
         'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': '/tmp', 'dataroot_lq': '/tmp',
                                'gt_size': 16}},
         'network_g': dict(STUDENT), 'train': TRAIN}


def test_the_benchmark_frees_each_precision_before_the_next_and_turns_on_cudnn_benchmark(monkeypatch):
    built = []
    original = benchmark.build_model

    def recording_build(*args, **kwargs):
        gc.collect()
        assert all(reference() is None for reference in built), 'the previous precision\'s model is still alive'
        model, lq, gt = original(*args, **kwargs)
        built.append(weakref.ref(model))
        return model, lq, gt

    monkeypatch.setattr(benchmark, 'build_model', recording_build)
    rows = benchmark.benchmark_steps(BENCH, 'cpu', ('fp32', 'amp_bf16'), batch_size=1, lr_patch=8, warmup=0, steps=1,
                                     modes=('student_alone', 'cached'))
    assert len(built) == 2 and [row.precision for row in rows] == ['fp32', 'fp32', 'amp_bf16', 'amp_bf16']
    monkeypatch.setattr(benchmark, '_benchmark_precision', lambda *args: [])
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    benchmark.benchmark_steps(BENCH, 'cuda', ('fp32',))
    assert torch.backends.cudnn.benchmark is True


def test_the_benchmark_times_a_stage1_option_file():
    stage1 = {'name': 'ka', 'model_type': 'KnowledgeAggregationModel', 'scale': SCALE, 'num_gpu': 0,
              'teachers': [{'name': 'a', 'network': dict(STUDENT, num_feat=4)},
                           {'name': 'b', 'network': dict(STUDENT, num_feat=5)}],
              'datasets': BENCH['datasets'], 'network_g': KA, 'train': TRAIN}
    rows = benchmark.benchmark_steps(stage1, 'cpu', ('fp32',), batch_size=1, lr_patch=8, warmup=0, steps=1)
    assert [row.mode for row in rows] == ['on_the_fly_autograd', 'on_the_fly_no_grad', 'cached']
    assert rows[-1].ratio_to_student_alone == 1.0  # stage 1's floor: the aggregator on cached teacher outputs


# ---- 12: DDP wrapping, accumulation, GradScaler skips ----------------------------------------------------------
class RecordingDDP(torch.nn.parallel.DistributedDataParallel):
    """Stands for DistributedDataParallel without a process group: records what DDP would see."""
    built, synced = [], []

    def __init__(self, module, **kwargs):
        torch.nn.Module.__init__(self)
        self.module = module
        RecordingDDP.built.append(module.conv_first.weight.is_contiguous(memory_format=torch.channels_last))

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        RecordingDDP.synced[-1] = False
        yield


def test_ddp_wraps_a_channels_last_network_and_skips_the_all_reduce_inside_accumulation(world, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.parallel, 'DistributedDataParallel', RecordingDDP)
    RecordingDDP.built.clear()
    raw = {'name': 'ddp_unit', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0, 'channels_last': True,
           'network_g': dict(STUDENT), 'datasets': distill_options(world, {})['datasets'],
           'train': dict(TRAIN, accumulate=2)}
    model = build_model(raw, tmp_path, PlainSRModel, dist=True)
    assert RecordingDDP.built == [True]  # the buckets see the NHWC strides
    model.optimizer_step.distributed = False  # no process group here: the flag all-reduce is tests/test_ddp.py's
    RecordingDDP.synced.clear()
    for iteration in (1, 2, 3, 4):
        RecordingDDP.synced.append(True)
        model.feed_data({'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)})
        model.optimize_parameters(iteration)
    assert RecordingDDP.synced == [False, True, False, True]  # all-reduce once per optimizer step


def test_a_gradscaler_skip_is_not_a_taken_step(world, tmp_path, caplog):
    raw = {'name': 'scaler_unit', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0, 'use_amp': True,
           'amp_dtype': 'fp16', 'network_g': dict(STUDENT), 'datasets': distill_options(world, {})['datasets'],
           'train': dict(TRAIN, ema_decay=0.5)}
    model = build_model(raw, tmp_path, PlainSRModel)
    batch = {'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)}
    model.feed_data(batch)
    model.optimize_parameters(1)
    ema = {name: value.clone() for name, value in model.net_g_ema.state_dict().items()}
    weights = {name: value.clone() for name, value in model.net_g.state_dict().items()}
    assert any(not torch.equal(ema[name], weights[name]) for name in ema)
    model.optimizer_step.scaler.update(float('inf'))  # the scaled loss overflows: GradScaler skips the step
    model.feed_data(batch)
    model.optimize_parameters(2)
    assert not bool(model.optimizer_step.last_taken)
    assert all(torch.equal(value, weights[name]) for name, value in model.net_g.state_dict().items())
    assert all(torch.equal(value, ema[name]) for name, value in model.net_g_ema.state_dict().items())  # EMA still
    assert model.optimizer_step.nonfinite_in_a_row == 0 and 'update skipped' not in caplog.text  # not a bad loss
    state = model.optimizer_g.state[next(iter(model.net_g.parameters()))]
    assert int(state['step']) == 1
