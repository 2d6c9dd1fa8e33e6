"""CrossKD (mtkd/methods/crosskd.py, DistillModel's distill.crosskd): splicing by module path, gradients through the
frozen teacher's tail, the adapters' checkpoint and resume."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch

from basicsr.archs import build_network

from mtkd.config import OptionError, validate_options
from mtkd.methods.crosskd import CrossKD, CrossKDAdapters, OutputSplice
from mtkd.models.distill_model import DistillModel
from mtkd.teachers.ensemble import freeze_network
from mtkd.training import resume

SCALE = 2
TEACHER = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 2, 'upscale': SCALE}
STUDENT = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 2, 'upscale': SCALE}


def network(arguments, seed):
    torch.manual_seed(seed)
    return build_network(dict(arguments))


@pytest.mark.parametrize('layer', ['body.0', 'conv_after_body'])
def test_hybrid_equals_the_teachers_output_when_the_student_features_are_the_teachers(layer):
    """The cascade must be exact: where the student's feature equals the teacher's, the teacher's remaining modules
    give the teacher's own output (conv_after_body: EDSR then adds the skip in place, on the spliced copy)."""
    teacher = freeze_network(network(TEACHER, 0))
    student = copy.deepcopy(teacher).train().requires_grad_(True)  # the same function: the same features
    lq = torch.rand(2, 3, 8, 8)
    crosskd = CrossKD(student, teacher, layer, layer)
    student(lq)
    hybrid = crosskd.hybrid(lq, crosskd.student_feature())
    with torch.no_grad():
        expected = teacher(lq)
    assert torch.equal(hybrid.detach(), expected)
    assert torch.equal(student(lq).detach(), expected)  # the splice left the student's own forward alone
    assert torch.equal(teacher(lq), expected)  # and the teacher's ordinary forward (the hook is idle)

    other = network(TEACHER, 1)  # a different student: a different hybrid, so the splice does something
    crosskd_other = CrossKD(other, teacher, layer, layer)
    other(lq)
    assert (crosskd_other.hybrid(lq, crosskd_other.student_feature()) - expected).abs().max() > 1e-3


def test_gradients_reach_the_student_through_the_frozen_teacher_tail_and_never_the_teacher():
    teacher = freeze_network(network(TEACHER, 0))
    student = network(STUDENT, 1)
    adapters = CrossKDAdapters(4, 6, dual=True)
    crosskd = CrossKD(student, teacher, 'body.0', 'body.0', adapters, teacher_weight=1.0, gt_weight=0.5,
                      dual_teacher_weight=0.0, dual_gt_weight=0.0)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        teacher_output = teacher(lq)
    student(lq)
    terms = crosskd.terms(lq, gt, teacher_output)
    assert set(terms) == {'l_cross_teacher', 'l_cross_gt'}
    sum(terms.values()).backward()
    gradients = {name: parameter.grad for name, parameter in student.named_parameters()}
    # Up to the cut (conv_first, body.0) the student learns from the cascade; after it, nothing.
    assert all(gradients[name].abs().sum() > 0 for name in gradients if name.startswith(('conv_first', 'body.0')))
    assert all(gradients[name] is None for name in gradients if not name.startswith(('conv_first', 'body.0')))
    assert adapters.to_teacher.conv.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in teacher.parameters())


def test_the_dual_pass_trains_the_students_tail_from_the_teachers_features():
    teacher = freeze_network(network(TEACHER, 0))
    student = network(STUDENT, 1)
    adapters = CrossKDAdapters(4, 6, dual=True)
    crosskd = CrossKD(student, teacher, 'body.0', 'body.0', adapters, teacher_weight=0.0, gt_weight=0.0,
                      dual_teacher_weight=1.0, dual_gt_weight=0.0)
    lq = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        teacher_output = teacher(lq)  # fills the teacher's tap
    terms = crosskd.terms(lq, None, teacher_output)
    assert set(terms) == {'l_dual_teacher'}
    terms['l_dual_teacher'].backward()
    gradients = {name: parameter.grad for name, parameter in student.named_parameters()}
    # The replaced block learns nothing; the student's tail does, and so does its head, through EDSR's global skip
    # (conv_first's output is added after conv_after_body: part of the "remaining" computation).
    assert all(gradients[name] is None or gradients[name].abs().sum() == 0
               for name in gradients if name.startswith('body.0'))
    assert all(gradients[name].abs().sum() > 0 for name in gradients
               if name.startswith(('conv_first', 'body.1', 'conv_after_body', 'upsample', 'conv_last')))
    assert adapters.to_student.conv.weight.grad.abs().sum() > 0 and adapters.to_teacher.conv.weight.grad is None
    assert all(parameter.grad is None for parameter in teacher.parameters())


def test_a_splice_refuses_a_wrong_path_a_wrong_shape_and_a_module_that_did_not_run():
    teacher = freeze_network(network(TEACHER, 0))
    with pytest.raises(ValueError, match=r'Nearest existing paths: .*body\.0'):
        OutputSplice(teacher, 'body.O')
    splice = OutputSplice(teacher, 'body.0')
    with pytest.raises(ValueError, match=r'has shape \(1, 4, 8, 8\) but that module returns \(1, 6, 8, 8\)'):
        splice(torch.zeros(1, 4, 8, 8), torch.rand(1, 3, 8, 8))
    unused = OutputSplice(teacher, 'body')
    unused_module = teacher.body
    teacher.body = torch.nn.Identity()  # the hooked module no longer runs
    with pytest.raises(RuntimeError, match='did not run in the forward pass'):
        unused(torch.zeros(1, 6, 8, 8), torch.rand(1, 3, 8, 8))
    teacher.body = unused_module


# ---- in DistillModel --------------------------------------------------------------------------------------------
@pytest.fixture
def teacher_file(tmp_path):
    torch.save(network(TEACHER, 0).state_dict(), tmp_path / 'teacher.pth')
    return str(tmp_path / 'teacher.pth')


def model_options(tmp_path, teacher_file, crosskd, **extra):
    folder = tmp_path / 'images'
    folder.mkdir(exist_ok=True)
    (folder / 'x.png').write_bytes(b'')
    raw = {'name': 'crosskd_unit', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 3,
           'teachers': [{'name': 't', 'network': dict(TEACHER), 'weights': teacher_file}],
           'distill': {'target': 'teacher', 'teacher': 't', 'crosskd': crosskd},
           'network_g': dict(STUDENT),
           'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder),
                                  'dataroot_lq': str(folder), 'gt_size': 16}},
           'train': {'optim_g': {'type': 'Adam', 'lr': 1e-2}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                     'total_iter': 4, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}}
    raw.update(extra)
    return raw


def build(raw, tmp_path):
    plain = validate_options(raw, is_train=True).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(tmp_path), num_gpu=0)
    for key in ('models', 'training_states'):
        (tmp_path / key).mkdir(exist_ok=True)
        plain['path'][key] = str(tmp_path / key)
    plain['path']['experiments_root'] = str(tmp_path)
    return DistillModel(plain)


CROSS_AND_DUAL = {'student_layer': 'body.0', 'teacher_layer': 'body.0', 'teacher_weight': 1.0, 'gt_weight': 0.5,
                  'dual_teacher_weight': 0.25, 'dual_gt_weight': 0.125}


def test_a_distill_model_step_trains_the_student_and_the_adapters_and_leaves_the_teacher(tmp_path, teacher_file):
    model = build(model_options(tmp_path, teacher_file, CROSS_AND_DUAL), tmp_path)
    assert model.crosskd_adapters is not None  # 4 vs 6 channels
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert {id(p) for p in model.crosskd_adapters.parameters()} <= optimised
    assert not optimised & {id(p) for p in model.teachers.parameters()}
    before = copy.deepcopy(model.crosskd_adapters.state_dict())
    model.feed_data({'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)})
    model.optimize_parameters(1)
    assert {'l_pix', 'l_cross_teacher', 'l_cross_gt', 'l_dual_teacher', 'l_dual_gt'} == set(model.log_dict)
    assert all(not torch.equal(before[name], value) for name, value in model.crosskd_adapters.state_dict().items())
    assert all(p.grad is None for p in model.teachers.parameters())


def test_the_adapters_are_saved_beside_the_student_and_resume_exactly(tmp_path, teacher_file, monkeypatch):
    """The student's checkpoint stays loadable into the bare arch; the adapters get their own file per checkpoint,
    and a resumed run continues with the same adapters and optimizer moments: its next step equals the
    uninterrupted run's."""
    monkeypatch.setattr(resume, 'LOOP', type(resume.LOOP)())
    batches = [{'lq': torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)),
                'gt': torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(10 + i))} for i in range(3)]
    crosskd = dict(CROSS_AND_DUAL, dual_teacher_weight=0.0, dual_gt_weight=0.0)
    model = build(model_options(tmp_path, teacher_file, crosskd), tmp_path)
    for step in (1, 2):
        model.feed_data(batches[step - 1])
        model.optimize_parameters(step)
    model.save(0, 2)
    student_checkpoint = torch.load(tmp_path / 'models' / 'net_g_2.pth', weights_only=True)
    assert not any('to_teacher' in key for key in student_checkpoint['params'])
    build_network(dict(STUDENT)).load_state_dict(student_checkpoint['params'])  # strict: the bare student arch
    assert (tmp_path / 'models' / 'net_crosskd_adapter_2.pth').is_file()

    resumed = build(model_options(tmp_path, teacher_file, crosskd,
                                  path={'pretrain_network_g': str(tmp_path / 'models' / 'net_g_2.pth')}), tmp_path)
    resumed.resume_training(torch.load(tmp_path / 'training_states' / '2.state', weights_only=False))
    for name, value in model.crosskd_adapters.state_dict().items():
        assert torch.equal(resumed.crosskd_adapters.state_dict()[name], value), name
    for each in (model, resumed):
        each.feed_data(batches[2])
        each.optimize_parameters(3)
    assert resumed.log_dict['l_cross_teacher'].item() == model.log_dict['l_cross_teacher'].item()
    for name, value in model.crosskd_adapters.state_dict().items():
        assert torch.equal(resumed.crosskd_adapters.state_dict()[name], value), name

    (tmp_path / 'models' / 'net_crosskd_adapter_2.pth').unlink()
    again = build(model_options(tmp_path, teacher_file, crosskd), tmp_path)
    with pytest.raises(FileNotFoundError, match='net_crosskd_adapter_2.pth'):
        again.resume_training(torch.load(tmp_path / 'training_states' / '2.state', weights_only=False))


def test_equal_widths_need_no_adapter(tmp_path, teacher_file):
    raw = model_options(tmp_path, teacher_file, {'student_layer': 'body.1', 'teacher_layer': 'body.0'},
                        network_g=dict(STUDENT, num_feat=6))
    model = build(raw, tmp_path)
    assert model.crosskd_adapters is None
    model.feed_data({'lq': torch.rand(1, 3, 8, 8), 'gt': torch.rand(1, 3, 16, 16)})
    loss_dict = OrderedDict()
    model.compute_losses(loss_dict)
    assert set(loss_dict) == {'l_pix', 'l_cross_teacher'}


@pytest.mark.parametrize('change, expected', [
    (lambda raw: raw['distill'].update(target='aggregate'), "distill.target: crosskd runs one teacher's"),
    (lambda raw: raw['distill']['crosskd'].update(teacher_weight=0.0),
     'distill.crosskd: every CrossKD weight is 0'),
    (lambda raw: raw['teachers'][0].update(self_ensemble=True), 'distill.crosskd: CrossKD taps one forward pass'),
    (lambda raw: raw['teachers'][0].update(pad_multiple=16),
     'distill.crosskd: CrossKD uses teacher \'t\' features of the unpadded LR patch, but 8 LR pixels is not a multiple '
     'of its pad_multiple 16'),
])
def test_crosskd_options_are_checked(tmp_path, teacher_file, change, expected):
    raw = model_options(tmp_path, teacher_file, {'student_layer': 'body.0', 'teacher_layer': 'body.0'})
    change(raw)
    with pytest.raises(OptionError) as caught:
        validate_options(raw, is_train=True)
    assert any(str(problem).startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_wrong_layers_are_refused_at_start_up_with_the_option_named(tmp_path, teacher_file):
    raw = model_options(tmp_path, teacher_file, {'student_layer': 'upsample', 'teacher_layer': 'body.0'})
    with pytest.raises(ValueError, match='choose layers of the same spatial size'):
        build(raw, tmp_path)
    raw = model_options(tmp_path, teacher_file, {'student_layer': 'body.0', 'teacher_layer': 'body.9'})
    with pytest.raises(ValueError, match=r'distill.crosskd.teacher_layer: .*"body.9" is not a submodule of EDSR'):
        build(raw, tmp_path)
