"""DistillModel: frozen teacher side, gradients from every loss term, the aggregator's checkpoint checks."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from basicsr.archs import build_network

from mtkd.config import OptionError, validate_options
from mtkd.models.distill_model import DistillModel
from mtkd.teachers.ensemble import TeacherEnsemble, TeacherMismatchError, teacher_specs_from_options
from mtkd.transforms.self_ensemble import self_ensemble

SCALE = 2
STUDENT = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 1, 'upscale': SCALE}
AGGREGATOR = {'type': 'DCTSwin', 'num_teachers': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'window_size': 4,
              'num_heads': 2, 'upscale': SCALE}


@pytest.fixture
def teacher_side(tmp_path):
    """Two tiny teachers with weights on disk, and a stage-1 checkpoint whose params and params_ema differ."""
    teachers = []
    for name, num_feat in (('a', 4), ('b', 5)):
        network = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': num_feat, 'num_block': 1,
                   'upscale': SCALE}
        torch.save(build_network(dict(network)).state_dict(), tmp_path / f'{name}.pth')
        teachers.append({'name': name, 'network': network, 'weights': str(tmp_path / f'{name}.pth')})
    ensemble = TeacherEnsemble(teacher_specs_from_options(teachers), SCALE)
    params, params_ema = build_network(dict(AGGREGATOR)).state_dict(), build_network(dict(AGGREGATOR)).state_dict()
    torch.save({'params': params, 'params_ema': params_ema, 'teachers': ensemble.fingerprint()}, tmp_path / 'ka.pth')
    return teachers, params_ema


def options(tmp_path, teachers, distill, aggregator=True):
    folder = tmp_path / 'images'
    folder.mkdir(exist_ok=True)
    (folder / 'x.png').write_bytes(b'')
    plain = {'name': 'distill_unit', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0,
             'teachers': copy.deepcopy(teachers), 'distill': distill, 'network_g': copy.deepcopy(STUDENT),
             'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder),
                                    'dataroot_lq': str(folder), 'gt_size': 16}},
             'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                       'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}}}
    if aggregator:
        plain['aggregator'] = {'network': copy.deepcopy(AGGREGATOR), 'weights': str(tmp_path / 'ka.pth')}
    return plain


def build(raw, tmp_path):
    plain = validate_options(raw, is_train=True).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(tmp_path), num_gpu=0)
    return DistillModel(plain)


MTKD = {'target': 'aggregate', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}


def test_every_loss_term_reaches_the_student_and_nothing_reaches_the_teacher_side(tmp_path, teacher_side):
    teachers, _ = teacher_side
    model = build(options(tmp_path, teachers, MTKD), tmp_path)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(1)
    frozen = list(model.teachers.parameters()) + list(model.aggregator.network.parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    assert not model.aggregator.network.training
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in frozen}
    for loss in (model.cri_pix, model.cri_distill):  # each term alone gives every student parameter a gradient
        model.net_g.zero_grad()
        loss(model.net_g(lq), gt if loss is model.cri_pix else model.target).backward()
        for name, parameter in model.net_g.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (type(loss).__name__, name)


def test_target_is_the_aggregate_of_the_teachers_with_ema_weights(tmp_path, teacher_side):
    teachers, params_ema = teacher_side
    model = build(options(tmp_path, teachers, MTKD), tmp_path)
    for name, value in params_ema.items():
        assert torch.equal(model.aggregator.network.state_dict()[name], value)
    lq = torch.rand(1, 3, 8, 8)
    expected_network = build_network(dict(AGGREGATOR))
    expected_network.load_state_dict(params_ema)
    with torch.no_grad():
        expected = expected_network.eval()(torch.cat(model.teachers.forward(lq), dim=1))
    target = model.distillation_target(lq, like_cache=False)  # unrounded (training rounds like the cache)
    assert torch.equal(target, expected) and not target.requires_grad


def test_kd_target_is_the_named_teacher(tmp_path, teacher_side):
    teachers, _ = teacher_side
    model = build(options(tmp_path, teachers, {'target': 'teacher', 'teacher': 'b',
                                               'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
                          aggregator=False), tmp_path)
    lq = torch.rand(1, 3, 8, 8)
    assert model.aggregator is None
    assert torch.equal(model.distillation_target(lq, like_cache=False), model.teachers.forward(lq)[1])


def test_aggregator_trained_on_other_teachers_is_refused(tmp_path, teacher_side):
    teachers, _ = teacher_side
    with pytest.raises(TeacherMismatchError, match='saved order:   a, b'):
        build(options(tmp_path, teachers[::-1], MTKD), tmp_path)


@pytest.mark.parametrize('change, expected', [
    (lambda o: o.pop('aggregator'), "aggregator: distill.target 'aggregate' needs an aggregator block"),
    (lambda o: o['distill'].update(target='teacher'), "distill.teacher: distill.target 'teacher' with several teachers"),
    (lambda o: o['distill'].update(teacher='c'), "distill.teacher: no teacher named 'c'"),
    (lambda o: o['aggregator']['network'].update(num_teachers=3), 'aggregator.network.num_teachers: the aggregator takes 3'),
    (lambda o: o['distill'].update(output_opt={'type': 'L1Loss', 'loss_weigth': 1.0}),
     "distill.output_opt.loss_weigth: loss 'L1Loss' does not take 'loss_weigth'; did you mean 'loss_weight'?"),
])
def test_distill_options_are_checked(tmp_path, teacher_side, change, expected):
    teachers, _ = teacher_side
    raw = options(tmp_path, teachers, dict(MTKD))
    change(raw)
    with pytest.raises(OptionError) as caught:
        validate_options(raw, is_train=True)
    assert any(str(problem).startswith(expected) for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize('loss', ['AttentionTransferLoss', 'FeatureAffinityLoss'])
def test_feature_kd_reaches_the_student_up_to_the_tapped_layer(tmp_path, teacher_side, loss):
    """AT / FAKD through forward hooks on module paths: the feature term alone gives the student's layers up to
    the tap a gradient (published KD code shipped a feature loss that silently carried none), the teacher none."""
    teachers, _ = teacher_side
    distill = {'target': 'teacher', 'teacher': 'b', 'feature_opt': {
        'type': loss, 'loss_weight': 1.0, 'student_layers': ['body.0'], 'teacher_layers': ['body.0']}}
    model = build(options(tmp_path, teachers, distill, aggregator=False), tmp_path)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(1)
    assert model.log_dict['l_feature'] > 0 and 'l_distill' not in model.log_dict
    assert all(p.grad is None for p in model.teachers.parameters())

    model.net_g.zero_grad()
    model.distillation_target(lq)  # runs the teachers: the teacher tap holds this batch's features
    model.net_g(lq)
    model.cri_feature(model.student_taps.feature_list(), model.teacher_taps.feature_list()).backward()
    gradients = {name: p.grad for name, p in model.net_g.named_parameters()}
    assert all(gradients[name].abs().sum() > 0 for name in gradients if name.startswith(('conv_first', 'body.0')))
    assert all(gradients[name] is None or gradients[name].abs().sum() == 0
               for name in gradients if name.startswith(('conv_after_body', 'upsample', 'conv_last')))


def test_feature_layers_must_pair_up(tmp_path, teacher_side):
    teachers, _ = teacher_side
    distill = {'target': 'teacher', 'teacher': 'b', 'feature_opt': {
        'type': 'FeatureAffinityLoss', 'loss_weight': 1.0, 'student_layers': ['body.0'], 'teacher_layers': []}}
    with pytest.raises(OptionError, match='distill.feature_opt.teacher_layers'):
        validate_options(options(tmp_path, teachers, distill, aggregator=False), is_train=True)
    distill['feature_opt']['teacher_layers'] = ['body.0', 'conv_after_body']
    with pytest.raises(OptionError, match='1 student_layers but 2 teacher_layers'):
        validate_options(options(tmp_path, teachers, distill, aggregator=False), is_train=True)


def test_feature_kd_refuses_a_self_ensembled_teacher(tmp_path, teacher_side):
    # Its hooks would hold the features of the last of the 8 rotated runs, not of the batch the student sees.
    teachers, _ = teacher_side
    distill = {'target': 'teacher', 'teacher': 'b', 'feature_opt': {
        'type': 'AttentionTransferLoss', 'loss_weight': 1.0, 'student_layers': ['body.0'], 'teacher_layers': ['body.0']}}
    raw = options(tmp_path, teachers, distill, aggregator=False)
    raw['teachers'][1]['self_ensemble'] = True
    with pytest.raises(OptionError, match="feature KD taps one forward pass of the teacher"):
        validate_options(raw, is_train=True)
    raw['distill'] = {'target': 'teacher', 'teacher': 'b', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}
    model = build(raw, tmp_path)  # output KD from the self-ensembled teacher is fine
    lq = torch.rand(1, 3, 6, 6)
    plain = TeacherEnsemble(teacher_specs_from_options(teachers), SCALE)
    with torch.no_grad():
        expected = self_ensemble(plain.network('b'), lq)
    assert torch.allclose(model.distillation_target(lq, like_cache=False), expected, atol=1e-6)


STAGE2_FILES = sorted(__import__('glob').glob(__import__('os').path.join(
    __import__('conftest').REPO_ROOT, 'options', 'stage2_*.yml')))


@pytest.mark.parametrize('path', STAGE2_FILES, ids=[p.rsplit('/', 1)[-1] for p in STAGE2_FILES])
def test_stage2_option_file_builds_and_trains_two_iterations(path, tmp_path):
    """Each shipped stage-2 file (student, teachers and aggregator as written; random weights where files are
    missing) validates, builds and runs two optimisation steps on a tiny fixed batch: every configured loss term
    is logged with its weight (recomputed here), and the step lowers the loss on that batch."""
    import yaml
    from basicsr.losses import build_loss

    with open(path, encoding='utf-8') as handle:
        raw = yaml.safe_load(handle)
    scale = raw['scale']
    lr_size = 32 if (raw.get('distill') or {}).get('dukd') else 16  # DUKD zooms out by the scale: 32 / 4 = 8
    folder = tmp_path / 'images'
    folder.mkdir()
    (folder / 'x.png').write_bytes(b'')
    raw['datasets'] = {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder),
                                 'dataroot_lq': str(folder), 'gt_size': lr_size * scale}}
    raw.pop('val', None)
    plain = validate_options(raw, is_train=True, check_files=False).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(tmp_path), num_gpu=0,
                 allow_random_teachers=True)
    from basicsr.utils.registry import MODEL_REGISTRY

    # One Adam step moves every parameter by about lr in the gradient's sign: at the files' rates a first step can
    # overshoot a large term (FAKD's at weight 10 on a random teacher). A small rate keeps it a descent step.
    plain['train']['optim_g']['lr'] = 1e-5
    torch.manual_seed(0)  # the student's initialisation: the same whatever ran before in this process
    model = MODEL_REGISTRY.get(raw['model_type'])(plain)  # DistillModel, or PlainSRModel for the student alone
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 3, lr_size * scale, lr_size * scale, generator=generator)
    lq = torch.nn.functional.avg_pool2d(gt, scale) + 0.05 * torch.rand(1, 3, lr_size, lr_size, generator=generator)
    fixed_batch_terms = []  # the terms that depend on the batch only (DUKD's draw random tiles and augmentations)
    distill = raw.get('distill') or {}
    for step in (1, 2):
        model.feed_data({'lq': lq, 'gt': gt})
        model.optimize_parameters(step)
        logged = model.log_dict
        assert all(math.isfinite(value) for value in logged.values()), logged
        fixed_batch_terms.append(sum(logged.get(name, 0.0) for name in ('l_pix', 'l_distill', 'l_feature')))
        if step > 1:
            continue
        expected = {}
        with torch.no_grad():
            pixel = dict(plain['train']['pixel_opt'])
            expected['l_pix'] = pixel['loss_weight'] * build_loss(dict(pixel, loss_weight=1.0))(model.output, gt)
            if distill.get('output_opt'):
                output_opt = dict(plain['distill']['output_opt'])
                base = build_loss(dict(output_opt, loss_weight=1.0))
                expected['l_distill'] = output_opt['loss_weight'] * base(model.output, model.target)
        for name, value in expected.items():
            assert logged[name] == pytest.approx(float(value), rel=1e-5, abs=1e-8), name
        if distill.get('feature_opt'):
            assert logged['l_feature'] > 0
        if distill.get('dukd'):
            assert 'l_zoom_in' in logged
    assert model.output.shape == gt.shape
    assert fixed_batch_terms[1] < fixed_batch_terms[0]


@pytest.mark.parametrize('separate_step', [False, True])
def test_dukd_terms_train_the_student_in_one_or_two_steps(tmp_path, teacher_side, separate_step):
    """DUKD's zoom-in / zoom-out / consistency terms are logged and optimised: one Adam step on the paper's sum,
    or the official trainer's second step on the DUKD terms; the teacher side still gets no gradient."""
    teachers, _ = teacher_side
    distill = {'target': 'teacher', 'teacher': 'a', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
               'dukd': {'separate_step': separate_step}}
    model = build(options(tmp_path, teachers, distill, aggregator=False), tmp_path)
    model.feed_data({'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)})
    model.optimize_parameters(1)
    assert {'l_zoom_in', 'l_zoom_out_kd', 'l_zoom_out_pix'} <= set(model.log_dict)
    assert all(value > 0 for value in model.log_dict.values())
    steps = {int(state['step']) for state in model.optimizer_g.state_dict()['state'].values()}
    assert steps == ({2} if separate_step else {1})
    assert all(p.grad is None for p in model.teachers.parameters())


def test_dukd_zoom_out_needs_a_patch_divisible_twice(tmp_path, teacher_side):
    teachers, _ = teacher_side
    raw = options(tmp_path, teachers, {'target': 'teacher', 'teacher': 'a', 'dukd': {}}, aggregator=False)
    raw['datasets']['train']['gt_size'] = 14  # LR 7: cannot be shrunk by the scale 2 once more
    with pytest.raises(OptionError, match='gt_size must be a multiple of scale'):
        validate_options(raw, is_train=True)


def test_the_student_starts_from_the_same_weights_whatever_the_teacher_side(tmp_path, teacher_side):
    """Methods compared from one seed must start from one student: building teachers and the aggregator (which
    draw random initial weights before theirs are loaded) must not move the global RNG."""
    teachers, _ = teacher_side
    starts = []
    for raw in (options(tmp_path, teachers, MTKD),
                options(tmp_path, teachers[1:], {'target': 'teacher', 'output_opt': MTKD['output_opt']},
                        aggregator=False)):
        torch.manual_seed(0)
        starts.append(build(raw, tmp_path).net_g.state_dict())
    torch.manual_seed(0)
    alone = build_network(dict(STUDENT)).state_dict()
    for start in starts:
        assert all(torch.equal(start[name], alone[name]) for name in alone)


@pytest.mark.parametrize('zoom_out_pixel_weight, warned', [(0.1, False), (5.0, True)])
def test_dukd_warns_when_its_two_pixel_weights_differ(tmp_path, teacher_side, monkeypatch, zoom_out_pixel_weight,
                                                      warned):
    """DUKD weighs L_rec and the zoom-out pixel term with one lambda_pix; a file that sets them apart is told so."""
    import mtkd.models.distill_model as distill_model

    warnings = []

    class Recorder:
        def __getattr__(self, name):
            return warnings.append if name == 'warning' else (lambda *args, **kwargs: None)

    monkeypatch.setattr(distill_model, 'get_root_logger', lambda *args, **kwargs: Recorder())
    teachers, _ = teacher_side
    distill = {'target': 'teacher', 'teacher': 'a', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
               'dukd': {'zoom_out_pixel_weight': zoom_out_pixel_weight}}
    build(options(tmp_path, teachers, distill, aggregator=False), tmp_path)  # pixel_opt.loss_weight is 0.1
    assert any('zoom_out_pixel_weight is 5.0' in message for message in warnings) == warned


def test_total_loss_is_alpha_l1_to_gt_plus_the_distillation_term(tmp_path, teacher_side):
    """MTKD Eq. 2 (Jiang et al., ECCV 2024): ``L_total = α·L1(S, GT) + L_dis(S, I_MT)``, each term with its own
    weight, recomputed here from the student output and the target. Catches: ``compute_losses`` dropping the
    ``α·L1(S, GT)`` term (the student would then learn from I_MT alone), or weights swapped between terms."""
    from collections import OrderedDict

    teachers, _ = teacher_side
    raw = options(tmp_path, teachers, {'target': 'aggregate', 'output_opt': {'type': 'L1Loss', 'loss_weight': 0.7}})
    raw['train']['pixel_opt']['loss_weight'] = 0.3
    model = build(raw, tmp_path)
    torch.manual_seed(0)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    model.feed_data({'lq': lq, 'gt': gt})
    loss_dict = OrderedDict()
    total = model.compute_losses(loss_dict)
    with torch.no_grad():
        student = model.net_g(lq)
        # The target the step used: I_MT (rounded to float16 like a cache would store it).
        target = model.target
        torch.testing.assert_close(target, model.aggregator(model.teachers.forward(lq)), atol=1e-3, rtol=0)
    l1_gt, l1_target = (student - gt).abs().mean().item(), (student - target).abs().mean().item()
    assert abs(l1_gt - l1_target) > 1e-3  # the two terms are distinguishable
    assert total.item() == pytest.approx(0.3 * l1_gt + 0.7 * l1_target, rel=1e-6)
    assert loss_dict['l_pix'].item() == pytest.approx(0.3 * l1_gt, rel=1e-6)
    assert loss_dict['l_distill'].item() == pytest.approx(0.7 * l1_target, rel=1e-6)
