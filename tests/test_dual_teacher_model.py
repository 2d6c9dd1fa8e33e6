"""DualTeacherModel (DTKD): frozen teachers, routing of each term to the right teacher, gradients from every
term, option checks, and every shipped DTKD option file builds and trains two iterations."""
from __future__ import annotations

import glob
import math
import os
from collections import OrderedDict

import pytest
import torch
import yaml

from basicsr.archs import build_network
from basicsr.utils.registry import MODEL_REGISTRY

from mtkd.config import OptionError, validate_options
from mtkd.losses.dtkd_loss import reliability_mask
from mtkd.models.dual_teacher_model import DualTeacherModel

from conftest import REPO_ROOT
from test_knowledge_aggregation_model import runtime, tiny_pairs  # noqa: F401  (fixture)

SCALE = 2
STUDENT = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 1, 'upscale': SCALE}
FIDELITY = {'name': 'fid', 'network': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4,
                                       'num_block': 1, 'upscale': SCALE}}
PERCEPTUAL = {'name': 'edge', 'network': {'type': 'EdgeSRN', 'num_feat': 4, 'num_block': 1, 'num_grow_ch': 2,
                                          'upscale': SCALE}}


@pytest.fixture
def teachers(tmp_path):
    entries = []
    for entry in (FIDELITY, PERCEPTUAL):
        path = tmp_path / f"{entry['name']}.pth"
        torch.save(build_network(dict(entry['network'])).state_dict(), path)
        entries.append(dict(entry, weights=str(path)))
    return entries


def dtkd_options(tiny_pairs, teachers, **dtkd):  # noqa: F811
    hr_dir, lr_dir = tiny_pairs
    paired = {'type': 'PairedImageDataset', 'dataroot_gt': str(hr_dir), 'dataroot_lq': str(lr_dir)}
    block = {'fidelity_teacher': 'fid', 'perceptual_teacher': 'edge',
             'routing': {'mode': 'hard', 'threshold': 4.0},
             'distill_opt': {'type': 'RoutedL1Loss', 'loss_weight': 1.0},
             'reliability_opt': {'type': 'ReliabilityAttentionLoss', 'loss_weight': 1.0, 'mode': 'soft',
                                 'temperature': 0.05},
             'discrepancy_opt': {'type': 'DiscrepancyAttentionLoss', 'loss_weight': 1.0, 'reliability_mode': 'soft',
                                 'reliability_temperature': 0.05}}
    block.update(dtkd)
    return {'name': 'dtkd_unit', 'model_type': 'DualTeacherModel', 'scale': SCALE, 'manual_seed': 0,
            'teachers': teachers, 'dtkd': block, 'network_g': STUDENT,
            'datasets': {'train': dict(paired, name='toy', gt_size=16, batch_size_per_gpu=2),
                         'val': dict(paired, name='toyval')},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                      'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
            'val': {'val_freq': 1, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE,
                                                        'test_y_channel': True}}}}


def _batch():
    generator = torch.Generator().manual_seed(0)
    gt = torch.cat([torch.full((1, 3, 16, 16), 0.4), torch.rand(1, 3, 16, 16, generator=generator)])
    return {'lq': torch.rand(2, 3, 8, 8, generator=generator), 'gt': gt}  # image 0 flat, image 1 textured


def test_terms_are_routed_to_the_right_teacher_with_known_values(tmp_path, tiny_pairs, teachers):  # noqa: F811
    model = DualTeacherModel(runtime(dtkd_options(tiny_pairs, teachers, perceptual_weight=3.0), tmp_path))
    batch = _batch()
    model.feed_data(batch)
    fidelity, perceptual = model.teachers.forward(batch['lq'])
    output = model.net_g(batch['lq']).detach()
    losses = {}
    model.distillation_terms(output, [fidelity, perceptual], batch['gt'], losses)
    # Hard routing at 4 bits: the flat image learns from the fidelity teacher only, the textured one from EdgeSRN.
    torch.testing.assert_close(losses['perceptual_share'], torch.tensor(0.5))
    expected_fidelity = (output[0] - fidelity[0]).abs().sum() / output.numel()
    expected_perceptual = 3.0 * (output[1] - perceptual[1]).abs().sum() / output.numel()
    torch.testing.assert_close(losses['l_kd_fidelity'], expected_fidelity)
    torch.testing.assert_close(losses['l_kd_perceptual'], expected_perceptual)
    mask = reliability_mask(output, perceptual, batch['gt'], mode='soft', temperature=0.05)
    expected = 3.0 * (mask[1] * (output[1] - perceptual[1]).abs()).sum() / output.numel()
    torch.testing.assert_close(losses['l_reliability_perceptual'], expected)


def test_every_term_reaches_the_student_and_nothing_reaches_the_teachers(tmp_path, tiny_pairs, teachers):  # noqa: F811
    model = DualTeacherModel(runtime(dtkd_options(tiny_pairs, teachers, routing={'mode': 'soft', 'threshold': 4.0}),
                                     tmp_path))
    model.feed_data(_batch())
    model.optimize_parameters(1)
    frozen = list(model.teachers.parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    assert not {id(p) for group in model.optimizer_g.param_groups for p in group['params']} & {id(p) for p in frozen}
    assert set(model.log_dict) >= {'l_pix', 'l_kd_fidelity', 'l_reliability_perceptual', 'l_discrepancy_fidelity'}
    batch = _batch()
    teacher_outputs = model.teachers.forward(batch['lq'])
    share = model.router(batch['gt'])
    for label, criterion in model.distill_terms:
        for target, weight in ((teacher_outputs[0], 1 - share), (teacher_outputs[1], share)):
            model.net_g.zero_grad()
            criterion(model.net_g(batch['lq']), target, batch['gt'], weight).backward()
            for name, parameter in model.net_g.named_parameters():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (label, name)


def test_validation_scores_both_teachers_once(tmp_path, tiny_pairs, teachers):  # noqa: F811
    from basicsr.data import build_dataloader, build_dataset

    options = runtime(dtkd_options(tiny_pairs, teachers), tmp_path)
    model = DualTeacherModel(options)
    loader = build_dataloader(build_dataset(options['datasets']['val']), options['datasets']['val'],
                              num_gpu=0, dist=False)
    model.validation(loader, 1, None, False)
    assert set(model.image_metric_results) == {'result', 'teacher_fid', 'teacher_edge'}
    model.validation(loader, 2, None, False)
    assert set(model.image_metric_results) == {'result'}


@pytest.mark.parametrize('change, expected', [
    ({'fidelity_teacher': 'imdn'}, "dtkd.fidelity_teacher: no teacher named 'imdn'"),
    ({'perceptual_teacher': 'fid'}, 'dtkd.perceptual_teacher: the fidelity and the perceptual teacher must be'),
    ({'distill_opt': None, 'reliability_opt': None, 'discrepancy_opt': None}, 'dtkd: no distillation term'),
    ({'discrepancy_opt': {'type': 'DiscrepancyAttentionLoss', 'among': 'all'}, 'routing': {'window_size': 8,
      'window_threshold': 4.0}}, None),  # valid: among: all needs no matching gate, 4 bits fit an 8x8 window
    ({'routing': {'window_size': 5}}, 'dtkd.routing.window_size: the GT patch (16) must be a multiple'),
    ({'routing': {'window_size': 8}}, 'dtkd.routing.window_threshold: required with window_size 8: the patch '
     'threshold (7.0 bits, calibrated on whole patches) does not transfer to 8x8 windows, which hold at most 6 bits; '
     'the median 8x8 window of the 291-image set has 4.75 bits'),
    ({'routing': {'window_size': 8, 'window_threshold': 6.0}}, 'dtkd.routing.window_threshold: 6.0 bits cannot be '
     'exceeded by a 8x8 window'),
    ({'routing': {'window_threshold': 5.0}}, 'dtkd.routing.window_threshold: set only with window_size'),
    ({'discrepancy_opt': {'type': 'DiscrepancyAttentionLoss'}}, "dtkd.discrepancy_opt.reliability_mode: 'hard' "
     "differs from reliability_opt.mode ('soft')"),
    ({'discrepancy_opt': {'type': 'DiscrepancyAttentionLoss', 'reliability_mode': 'soft', 'per_pixel': False,
                          'reliability_temperature': 0.05}}, 'dtkd.discrepancy_opt.per_pixel: False differs'),
    ({'teacher_terms': [{'target': 'imdn', 'loss': {'type': 'L1Loss'}}]},
     "dtkd.teacher_terms.0.target: no teacher named 'imdn'; the teachers are fid, edge (or gt)"),
    ({'teacher_terms': [{'target': 'fid', 'loss': {'type': 'L1Loss'}}, {'target': 'fid', 'loss': {'type': 'L1Loss'}}]},
     "dtkd.teacher_terms.1.name: two terms log as 'L1Loss_fid'"),
    ({'teacher_terms': [{'target': 'fid', 'loss': {'type': 'EdgeLoss', 'operatr': 'laplacian'}}]},
     "dtkd.teacher_terms.0.loss.operatr: loss 'EdgeLoss' does not take 'operatr'; did you mean 'operator'?"),
    ({'routing': {'mode': 'always'}}, 'dtkd.routing.mode'),
    ({'reliability_opt': {'type': 'ReliabilityAttentionLoss', 'mod': 'hard'}},
     "dtkd.reliability_opt.mod: loss 'ReliabilityAttentionLoss' does not take 'mod'; did you mean 'mode'?"),
])
def test_dtkd_options_are_checked(tiny_pairs, teachers, change, expected):  # noqa: F811
    if expected is None:
        validate_options(dtkd_options(tiny_pairs, teachers, **change), is_train=True)
        return
    with pytest.raises(OptionError) as caught:
        validate_options(dtkd_options(tiny_pairs, teachers, **change), is_train=True)
    assert any(str(problem).startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_teacher_terms_have_known_values_and_the_edge_term_reaches_the_student(tmp_path, tiny_pairs,  # noqa: F811
                                                                               teachers):
    """The MTKDSR recipe's terms: L1 to a teacher, Laplacian edges of a teacher (with a gradient, unlike the released
    ``.cpu().data``), and a term against the GT; no routed term, so no routing is computed."""
    from mtkd.transforms.edges import edge_map

    terms = [{'target': 'fid', 'loss': {'type': 'L1Loss', 'loss_weight': 1.0}},
             {'target': 'fid', 'loss': {'type': 'EdgeLoss', 'loss_weight': 0.1, 'operator': 'laplacian'}},
             {'target': 'gt', 'loss': {'type': 'L1Loss', 'loss_weight': 0.5}, 'name': 'hr'}]
    options = dtkd_options(tiny_pairs, teachers, distill_opt=None, reliability_opt=None, discrepancy_opt=None,
                           teacher_terms=terms)
    model = DualTeacherModel(runtime(options, tmp_path))
    batch = _batch()
    fidelity, perceptual = model.teachers.forward(batch['lq'])
    output = model.net_g(batch['lq'])
    losses = {}
    total = model.distillation_terms(output, [fidelity, perceptual], batch['gt'], losses)
    assert set(losses) == {'l_L1Loss_fid', 'l_EdgeLoss_fid', 'l_hr'}  # no perceptual_share: routing not computed
    torch.testing.assert_close(losses['l_L1Loss_fid'], (output - fidelity).abs().mean())
    laplacian = (edge_map(output, 'laplacian') - edge_map(fidelity, 'laplacian')).abs().mean()
    torch.testing.assert_close(losses['l_EdgeLoss_fid'], 0.1 * laplacian)
    torch.testing.assert_close(losses['l_hr'], 0.5 * (output - batch['gt']).abs().mean())
    torch.testing.assert_close(total, sum(losses.values()))
    model.net_g.zero_grad()
    losses['l_EdgeLoss_fid'].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters())


def test_window_routing_uses_the_window_threshold(tmp_path, tiny_pairs, teachers):  # noqa: F811
    options = dtkd_options(tiny_pairs, teachers, routing={'mode': 'hard', 'threshold': 7.0, 'window_size': 8,
                                                          'window_threshold': 2.5})
    model = DualTeacherModel(runtime(options, tmp_path))
    assert model.router.window_size == 8 and model.router.threshold == 2.5
    share = model.router(_batch()['gt'])
    assert share[0].max() == 0 and share[1].min() == 1  # flat image: 0 bits per window; noise: about 6 bits


def test_adan_optimizer_is_built_for_dtkd(tmp_path, tiny_pairs, teachers):  # noqa: F811
    from mtkd.training.adan import Adan

    model = DualTeacherModel(runtime(dtkd_options(tiny_pairs, teachers), tmp_path))
    optimizer = model.get_optimizer('Adan', model.net_g.parameters(), 1e-3, betas=(0.98, 0.92, 0.99), weight_decay=0.02)
    assert isinstance(optimizer, Adan) and optimizer.defaults['weight_decay'] == 0.02
    assert isinstance(model.get_optimizer('Adam', model.net_g.parameters(), 1e-3), torch.optim.Adam)


DTKD_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'options', 'dtkd_*.yml')))


def _load(path):
    with open(path, encoding='utf-8') as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize('path', DTKD_FILES, ids=[os.path.basename(p) for p in DTKD_FILES])
def test_dtkd_option_file_builds_and_trains_two_iterations(path, tmp_path, tiny_pairs):  # noqa: F811
    """Each shipped DTKD training file (networks as written, random weights where files are missing; the VGG
    loss on a random VGG cut after conv1_2) runs two optimisation steps on a tiny crop."""
    options = _load(path)
    hr_dir, lr_dir = tiny_pairs
    options['datasets'] = {'train': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(hr_dir),
                                     'dataroot_lq': str(lr_dir), 'gt_size': 64, 'batch_size_per_gpu': 1}}
    options.pop('val', None)
    vgg_blocks = [options['train'].get('perceptual_opt')] + [term['loss'] for term in
                                                              (options.get('dtkd') or {}).get('teacher_terms') or []]
    vgg_blocks = [block for block in vgg_blocks if block and block['type'] == 'VGGPerceptualLoss']
    if vgg_blocks:
        from mtkd.losses.vgg_perceptual_loss import build_vgg_features

        features = build_vgg_features('vgg19', 'conv1_2')
        torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, tmp_path / 'vgg.pth')
        for block in vgg_blocks:
            block.update(vgg_weights=str(tmp_path / 'vgg.pth'), layer_weights={'conv1_2': 1.0})
    perceptual = options['train'].get('perceptual_opt')
    plain = runtime(options, tmp_path)
    model = MODEL_REGISTRY.get(options['model_type'])(plain)
    gt = torch.rand(1, 3, 64, 64)
    for step in (1, 2):
        model.feed_data({'lq': torch.rand(1, 3, 16, 16), 'gt': gt})
        model.optimize_parameters(step)
        assert all(math.isfinite(float(value)) for value in model.log_dict.values())
    assert model.output.shape == gt.shape
    if perceptual:
        assert 'l_percep' in model.log_dict and 'l_edge' in model.log_dict
    for term in (options.get('dtkd') or {}).get('teacher_terms') or []:
        assert f"l_{term['loss']['type']}_{term['target']}" in model.log_dict


@pytest.mark.parametrize('file_name, location', [
    ('dtkd_edgesrn_x4.yml', 'train.perceptual_opt.vgg_weights'),
    ('dtkd_mtkdsr_rfdn_x4.yml', 'dtkd.teacher_terms.1.loss.vgg_weights')])
def test_vgg_file_missing_is_refused_at_validation(file_name, location):
    """The DTKD EdgeSRN recipe and the MTKDSR recipe need VGG19 weights; without them the file is refused by name
    (the no-VGG EdgeSRN is a separate, explicitly named file)."""
    options = _load(os.path.join(REPO_ROOT, 'options', file_name))
    with pytest.raises(OptionError) as caught:
        validate_options(options, is_train=True, root=REPO_ROOT)
    messages = [str(problem) for problem in caught.value.problems]
    assert any(message.startswith(f'{location}: vgg_weights file pretrained/vgg/vgg19-dcbd5c4.pth not found')
               for message in messages), messages
    if file_name == 'dtkd_edgesrn_x4.yml':  # the no-VGG variant differs by the perceptual term only
        no_vgg = _load(os.path.join(REPO_ROOT, 'options', 'dtkd_edgesrn_novgg_x4.yml'))
        without = {key: value for key, value in options['train'].items() if key != 'perceptual_opt'}
        assert no_vgg['train'] == without and no_vgg['network_g'] == options['network_g']


TEST_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'options', 'test_dtkd_*.yml')))


@pytest.mark.parametrize('path', TEST_FILES, ids=[os.path.basename(p) for p in TEST_FILES])
def test_dtkd_test_files_validate_and_name_their_training_file(path):
    options = _load(path)
    validate_options(options, is_train=False, check_files=False)
    trained = options['path']['pretrain_network_g'].split('/')[1]
    assert os.path.isfile(os.path.join(REPO_ROOT, 'options', f'{trained}.yml'))
    assert _load(os.path.join(REPO_ROOT, 'options', f'{trained}.yml'))['network_g'] == options['network_g']


def test_compute_losses_sums_every_term_from_the_cached_teachers_and_skips_a_zero_weight_teacher(
        tmp_path, tiny_pairs, teachers):  # noqa: F811
    """With a teacher-output cache the terms are computed against the cached images (constants here, unlike either
    teacher), the total is the pixel loss plus every term, and a teacher of weight 0 gets no term while the other
    keeps all of its terms."""
    model = DualTeacherModel(runtime(dtkd_options(tiny_pairs, teachers, fidelity_weight=0.0, perceptual_weight=2.0),
                                     tmp_path))
    batch = _batch()
    shape = batch['gt'].shape
    constants = [torch.full(shape, 0.25), torch.full(shape, 0.625)]  # exact in float16
    model.feed_data(dict(batch, teacher_outputs=torch.stack(constants, dim=1).half()))
    losses = OrderedDict()
    total = model.compute_losses(losses)
    expected = {}
    with torch.no_grad():
        output = model.net_g(batch['lq'])
        model.distillation_terms(output, constants, batch['gt'], expected)
    assert {key for key in losses if key.endswith('_fidelity')} == set()
    assert {key for key in losses if key.endswith('_perceptual')} == {
        'l_kd_perceptual', 'l_reliability_perceptual', 'l_discrepancy_perceptual'}
    for key, value in expected.items():
        torch.testing.assert_close(losses[key].detach(), value, msg=key)
    terms = [value for key, value in expected.items() if key != 'perceptual_share']
    torch.testing.assert_close(total.detach(), losses['l_pix'].detach() + sum(terms))


def test_a_perceptual_teacher_term_adds_both_parts_of_a_tuple_loss(tmp_path, tiny_pairs, teachers):  # noqa: F811
    """A teacher term whose loss returns ``(perceptual, style)`` (BasicSR's PerceptualLoss) logs and adds the sum of
    the parts that are not None."""
    terms = [{'target': 'fid', 'loss': {'type': 'L1Loss', 'loss_weight': 1.0}}]
    options = dtkd_options(tiny_pairs, teachers, distill_opt=None, reliability_opt=None, discrepancy_opt=None,
                           teacher_terms=terms)
    model = DualTeacherModel(runtime(options, tmp_path))
    model.teacher_terms = [('both', 'gt', lambda output, target: (output.mean(), 2 * target.mean())),
                           ('one', 'gt', lambda output, target: (3 * output.mean(), None))]
    batch = _batch()
    output = model.net_g(batch['lq']).detach()
    losses = {}
    total = model.distillation_terms(output, [None, None], batch['gt'], losses)
    torch.testing.assert_close(losses['l_both'], output.mean() + 2 * batch['gt'].mean())
    torch.testing.assert_close(losses['l_one'], 3 * output.mean())
    torch.testing.assert_close(total, losses['l_both'] + losses['l_one'])
