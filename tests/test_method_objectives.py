"""The stage-2 objective as a whole: for MTKD, its ablations and every baseline, ``DistillModel.compute_losses``
returns exactly the sum of the configured terms, each with its own weight, and logs each term.

Every term is recomputed here from the tiny networks' weights, without the code under test: teacher outputs and
``I_MT`` by calling the networks (rounded to float16 as the model's targets are), features by running the EDSR
layers by hand, the wavelet and DCT transforms from their definitions, AT and FAKD from their formulas, DUKD's
inputs from its documented random draws, CrossKD's hybrid image by running the teacher's layers by hand with the
student's feature put in. The weights are all different, so a dropped, duplicated or swapped term changes the
total. (Issue 21 adds the targeted check that ``α·L1(S, GT)`` cannot be dropped; this is the per-method sum.)
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from basicsr.archs import build_network

from mtkd.config import validate_options
from mtkd.models.distill_model import DistillModel
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.teachers.ensemble import TeacherEnsemble, teacher_specs_from_options
from mtkd.transforms.matlab_resize import imresize

SCALE = 2
LR = 8  # LR patch 8x8, HR 16x16: one 8x8 DCT block per 2x2 of the output
BATCH = 2
STUDENT = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 2, 'upscale': SCALE}
AGGREGATOR = {'type': 'DCTSwin', 'num_teachers': 2, 'num_feat': 8, 'num_block': 1, 'num_layer': 2, 'window_size': 4,
              'num_heads': 2, 'upscale': SCALE}
ALPHA = 0.3  # train.pixel_opt.loss_weight: different from every other weight below


@pytest.fixture(scope='module')
def teacher_side(tmp_path_factory):
    """Two tiny EDSR teachers with weights on disk and a stage-1 checkpoint for them."""
    folder = tmp_path_factory.mktemp('objectives')
    teachers = []
    for index, (name, num_feat) in enumerate((('a', 4), ('b', 5))):
        network = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': num_feat, 'num_block': 2,
                   'upscale': SCALE}
        torch.manual_seed(100 + index)
        torch.save(build_network(dict(network)).state_dict(), folder / f'{name}.pth')
        teachers.append({'name': name, 'network': network, 'weights': str(folder / f'{name}.pth')})
    ensemble = TeacherEnsemble(teacher_specs_from_options(teachers), SCALE)
    torch.manual_seed(200)
    params = build_network(dict(AGGREGATOR)).state_dict()
    torch.save({'params': params, 'teachers': ensemble.fingerprint()}, folder / 'ka.pth')
    (folder / 'images').mkdir()
    (folder / 'images' / 'x.png').write_bytes(b'')
    return folder, teachers


def build(folder, teachers, distill, aggregator=False, model_type='DistillModel'):
    raw = {'name': 'objective', 'model_type': model_type, 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 5,
           'network_g': dict(STUDENT),
           'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder / 'images'),
                                  'dataroot_lq': str(folder / 'images'), 'gt_size': LR * SCALE}},
           'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                     'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': ALPHA}}}
    if model_type == 'DistillModel':
        raw.update(teachers=copy.deepcopy(teachers), distill=distill)
        if aggregator:
            raw['aggregator'] = {'network': dict(AGGREGATOR), 'weights': str(folder / 'ka.pth')}
    plain = validate_options(raw, is_train=True).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(folder), num_gpu=0)
    torch.manual_seed(0)
    return MODEL_TYPES[model_type](plain)


MODEL_TYPES = {'DistillModel': DistillModel, 'PlainSRModel': PlainSRModel}


# ---- independent computations ------------------------------------------------------------------------------
def half(images):
    """The model's targets are rounded to float16 (as a teacher-output cache stores them)."""
    return images.to(torch.float16).float()


def l1(prediction, target):
    return (prediction - target).abs().mean()


def edsr_forward(network, lq, replace_block=None, feature=None, upto=None):
    """BasicSR's EDSR run layer by layer: the output, or (``upto``) the output of ``body.<upto>``; with
    ``replace_block``, the output of ``body.<replace_block>`` is replaced by ``feature`` (CrossKD's hybrid)."""
    mean = network.mean.type_as(lq)
    head = network.conv_first((lq - mean) * network.img_range)
    features = head
    for index, block in enumerate(network.body):
        features = block(features)
        if index == replace_block:
            features = feature
        if index == upto:
            return features
    body = network.conv_after_body(features) + head
    return network.conv_last(network.upsample(body)) / network.img_range + mean


def haar_subbands(images):
    """Level-1 Haar (PyWavelets' 'haar': orthonormal 2x2 sums and differences) of (B, C, H, W), H, W even."""
    a, b = images[..., 0::2, 0::2], images[..., 0::2, 1::2]
    c, d = images[..., 1::2, 0::2], images[..., 1::2, 1::2]
    return {'LL': (a + b + c + d) / 2, 'H': (a + b - c - d) / 2, 'V': (a - b + c - d) / 2, 'D': (a - b - c + d) / 2}


def dct_matrix(size):
    """Orthonormal DCT-II matrix (scipy's norm='ortho')."""
    k = torch.arange(size, dtype=torch.float64).view(-1, 1)
    n = torch.arange(size, dtype=torch.float64).view(1, -1)
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


def blockwise_dct(images, block=8):
    matrix = dct_matrix(block)
    batch, channels, height, width = images.shape
    blocks = images.reshape(batch, channels, height // block, block, width // block, block).transpose(3, 4)
    return matrix @ blocks @ matrix.T


def attention(features):
    squared = features.pow(2).sum(1).flatten(1)
    return squared / squared.norm(dim=1, keepdim=True).clamp_min(1e-12)


def affinity(features):
    flat = features.flatten(2)
    normalised = flat / (flat.norm(dim=1, keepdim=True) + 1e-8)
    return normalised.transpose(1, 2) @ normalised


def batch():
    generator = torch.Generator().manual_seed(11)
    return (torch.rand(BATCH, 3, LR, LR, generator=generator),
            torch.rand(BATCH, 3, LR * SCALE, LR * SCALE, generator=generator))


def check(model, loss_dict, total, expected):
    assert set(loss_dict) == set(expected), (sorted(loss_dict), sorted(expected))
    for name, value in expected.items():
        assert loss_dict[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    assert total.item() == pytest.approx(sum(value.item() for value in expected.values()), rel=1e-5)
    # Every term matters: leaving out any one changes the total by more than the tolerance.
    assert min(abs(value.item()) for value in expected.values()) > 1e-4 * abs(total.item())


def run(model, lq, gt):
    model.feed_data({'lq': lq, 'gt': gt})
    loss_dict = OrderedDict()
    total = model.compute_losses(loss_dict)
    return loss_dict, total


def teacher_outputs(model, lq):
    with torch.no_grad():
        return {name: half(model.teachers.network(name)(lq)) for name in model.teachers.names}


# ---- the methods -------------------------------------------------------------------------------------------
MTKD_LOSSES = {
    'mtkd': {'type': 'WaveletDistillLoss', 'loss_weight': 0.7, 'levels': 1},
    'v5_l1': {'type': 'L1Loss', 'loss_weight': 0.7},
    'v6_dct': {'type': 'DCTDistillLoss', 'loss_weight': 0.7, 'block_size': 8},
    'v7_highfreq': {'type': 'WaveletDistillLoss', 'loss_weight': 0.7, 'levels': 1, 'subbands': 'high'},
}


@pytest.mark.parametrize('method', sorted(MTKD_LOSSES))
def test_mtkd_and_its_loss_ablations(teacher_side, method):
    """MTKD Eq. 2: ``α·L1(S, GT) + L_dis(S, I_MT)`` with L_dis the wavelet loss (Eq. 3-4) or a Table 5 ablation."""
    folder, teachers = teacher_side
    model = build(folder, teachers, {'target': 'aggregate', 'output_opt': MTKD_LOSSES[method]}, aggregator=True)
    lq, gt = batch()
    loss_dict, total = run(model, lq, gt)
    with torch.no_grad():
        outputs = teacher_outputs(model, lq)
        target = half(model.aggregator.network(torch.cat([outputs['a'], outputs['b']], dim=1)))
        student = model.net_g(lq)
        difference = student - target
        if method == 'mtkd':
            bands = haar_subbands(difference)
            distill = sum(band.abs().mean() for band in bands.values()) / 4
        elif method == 'v7_highfreq':
            bands = haar_subbands(difference)
            distill = sum(bands[name].abs().mean() for name in ('H', 'V', 'D')) / 3
        elif method == 'v6_dct':
            distill = blockwise_dct(difference).abs().mean()
        else:
            distill = difference.abs().mean()
    check(model, loss_dict, total, {'l_pix': ALPHA * l1(student, gt), 'l_distill': 0.7 * distill})


def test_the_student_alone(teacher_side):
    folder, teachers = teacher_side
    model = build(folder, teachers, None, model_type='PlainSRModel')
    lq, gt = batch()
    loss_dict, total = run(model, lq, gt)
    with torch.no_grad():
        check(model, loss_dict, total, {'l_pix': ALPHA * l1(model.net_g(lq), gt)})


def test_output_kd(teacher_side):
    folder, teachers = teacher_side
    model = build(folder, teachers, {'target': 'teacher', 'teacher': 'b',
                                     'output_opt': {'type': 'L1Loss', 'loss_weight': 0.7}})
    lq, gt = batch()
    loss_dict, total = run(model, lq, gt)
    with torch.no_grad():
        student = model.net_g(lq)
        check(model, loss_dict, total, {'l_pix': ALPHA * l1(student, gt),
                                        'l_distill': 0.7 * l1(student, teacher_outputs(model, lq)['b'])})


@pytest.mark.parametrize('loss', ['AttentionTransferLoss', 'FeatureAffinityLoss'])
def test_feature_kd_with_and_without_the_output_term(teacher_side, loss):
    """AT (``pixel + β·Σ_j mean (q_s − q_t)²``) and FAKD (``pixel + output KD + w·Σ_j mean |A_s − A_t|``, the
    official FAKD mix), on two layer pairs."""
    folder, teachers = teacher_side
    distill = {'target': 'teacher', 'teacher': 'b', 'feature_opt': {
        'type': loss, 'loss_weight': 1.3, 'student_layers': ['body.0', 'body.1'],
        'teacher_layers': ['body.1', 'body.0']}}
    if loss == 'FeatureAffinityLoss':
        distill['output_opt'] = {'type': 'L1Loss', 'loss_weight': 0.7}
    model = build(folder, teachers, distill)
    lq, gt = batch()
    loss_dict, total = run(model, lq, gt)
    teacher = model.teachers.network('b')
    with torch.no_grad():
        student = model.net_g(lq)
        pairs = [(edsr_forward(model.net_g, lq, upto=0), edsr_forward(teacher, lq, upto=1)),
                 (edsr_forward(model.net_g, lq, upto=1), edsr_forward(teacher, lq, upto=0))]
        if loss == 'AttentionTransferLoss':
            feature = sum((attention(s) - attention(t)).pow(2).mean() for s, t in pairs)
        else:
            feature = sum((affinity(s) - affinity(t)).abs().mean() for s, t in pairs)
        expected = {'l_pix': ALPHA * l1(student, gt), 'l_feature': 1.3 * feature}
        if loss == 'FeatureAffinityLoss':
            expected['l_distill'] = 0.7 * l1(student, teacher_outputs(model, lq)['b'])
    check(model, loss_dict, total, expected)


def augment_by_hand(images, masks, inverse=False):
    """DUKD's augmentations [invert, vflip, hflip, transpose] per sample (masks: (4, N) bool), or their inverse."""
    operations = [lambda x: 1 - x, lambda x: x.flip(-2), lambda x: x.flip(-1), lambda x: x.transpose(-2, -1)]
    order = range(3, -1, -1) if inverse else range(4)
    for index in order:
        selected = masks[index].view(-1, 1, 1, 1)
        images = torch.where(selected, operations[index](images), images)
    return images


@pytest.mark.parametrize('separate_step', [False, True])
def test_dukd(teacher_side, separate_step):
    """``pixel + λ_kd·L1(S, T) + L_dukd`` (one step), or the official first step ``pixel + λ_kd·L1(S, T)`` whose
    second step is ``L_dukd``; L_dukd's terms rebuilt from the documented draws: a random permutation picks the
    zoom-in tiles, then one uniform draw per (augmentation, sample) with probability p."""
    folder, teachers = teacher_side
    dukd = {'zoom_in_weight': 1.1, 'zoom_out_kd_weight': 0.8, 'zoom_out_pixel_weight': 0.45, 'num_tiles': 2,
            'augmentation_probability': 0.5, 'separate_step': separate_step}
    model = build(folder, teachers, {'target': 'teacher', 'teacher': 'a',
                                     'output_opt': {'type': 'L1Loss', 'loss_weight': 0.7}, 'dukd': dukd})
    lq, gt = batch()
    generator = torch.Generator()
    generator.set_state(model.dukd_generator.get_state())
    loss_dict, total = run(model, lq, gt)
    if separate_step:  # the second step's loss, drawn as optimize_parameters does after the first step
        assert set(loss_dict) == {'l_pix', 'l_distill'}
        total = total + model._dukd_terms(loss_dict)
    teacher = model.teachers.network('a')
    with torch.no_grad():
        student = model.net_g(lq)
        cells = torch.randperm(SCALE * SCALE, generator=generator)[:2].tolist()
        tiles = torch.cat([gt[..., (c // SCALE) * LR:(c // SCALE + 1) * LR, (c % SCALE) * LR:(c % SCALE + 1) * LR]
                           for c in cells])
        masks = torch.rand((4, tiles.shape[0]), generator=generator) < 0.5
        restored = augment_by_hand(model.net_g(augment_by_hand(tiles, masks)), masks, inverse=True)
        small = imresize(lq, scale=1 / SCALE)
        small_output = model.net_g(small)
        expected = {'l_pix': ALPHA * l1(student, gt), 'l_distill': 0.7 * l1(student, half(teacher(lq))),
                    'l_zoom_in': 1.1 * l1(restored, half(teacher(tiles))),
                    'l_zoom_out_kd': 0.8 * l1(small_output, half(teacher(small))),
                    'l_zoom_out_pix': 0.45 * l1(small_output, lq)}
    check(model, loss_dict, total, expected)


@pytest.mark.parametrize('dual', [False, True])
def test_crosskd(teacher_side, dual):
    """``pixel + w_t·L1(H, T) + w_g·L1(H, GT)`` (+ the dual terms), H = the teacher's layers after ``body.0`` run by
    hand on the student's ``body.0`` feature through the 1x1 adapter (widths 6 → 5)."""
    folder, teachers = teacher_side
    crosskd = {'student_layer': 'body.0', 'teacher_layer': 'body.0', 'teacher_weight': 0.9, 'gt_weight': 0.4,
               'dual_teacher_weight': 0.6 if dual else 0.0, 'dual_gt_weight': 0.2 if dual else 0.0}
    model = build(folder, teachers, {'target': 'teacher', 'teacher': 'b', 'crosskd': crosskd})
    lq, gt = batch()
    loss_dict, total = run(model, lq, gt)
    teacher, adapters = model.teachers.network('b'), model.crosskd_adapters
    with torch.no_grad():
        student = model.net_g(lq)
        target = teacher_outputs(model, lq)['b']
        hybrid = edsr_forward(teacher, lq, replace_block=0,
                              feature=F.conv2d(edsr_forward(model.net_g, lq, upto=0), adapters.to_teacher.conv.weight,
                                               adapters.to_teacher.conv.bias))
        expected = {'l_pix': ALPHA * l1(student, gt), 'l_cross_teacher': 0.9 * l1(hybrid, target),
                    'l_cross_gt': 0.4 * l1(hybrid, gt)}
        if dual:
            dual_output = edsr_forward(model.net_g, lq, replace_block=0,
                                       feature=F.conv2d(edsr_forward(teacher, lq, upto=0),
                                                        adapters.to_student.conv.weight, adapters.to_student.conv.bias))
            expected.update(l_dual_teacher=0.6 * l1(dual_output, target), l_dual_gt=0.2 * l1(dual_output, gt))
    check(model, loss_dict, total, expected)


# ---- where the target comes from: a cache, or the teachers of this very batch -------------------------------
def cached(gt, *levels):
    """A teacher-output cache's batch entry: (B, N, 3, sH, sW) float16, one constant image per teacher (unlike any
    teacher's output)."""
    return torch.stack([torch.full(gt.shape, level) for level in levels], dim=1).half()


def test_cached_teacher_outputs_are_the_target_unless_the_method_needs_the_teachers_features(teacher_side):
    folder, teachers = teacher_side
    lq, gt = batch()
    # Output KD from teacher b: the cached b is the target; the loss is computed against it.
    kd = build(folder, teachers, {'target': 'teacher', 'teacher': 'b',
                                  'output_opt': {'type': 'L1Loss', 'loss_weight': 0.7}})
    kd.feed_data({'lq': lq, 'gt': gt, 'teacher_outputs': cached(gt, 0.25, 0.75)})
    loss_dict = OrderedDict()
    kd.compute_losses(loss_dict)
    assert torch.equal(kd.target, torch.full(gt.shape, 0.75))
    with torch.no_grad():
        assert loss_dict['l_distill'].item() == pytest.approx(0.7 * l1(kd.net_g(lq), torch.full(gt.shape, 0.75)).item())
    # MTKD: I_MT is the aggregator run on the cached teacher outputs (rounded as the I_MT cache stores it).
    mtkd = build(folder, teachers, {'target': 'aggregate', 'output_opt': MTKD_LOSSES['v5_l1']}, aggregator=True)
    mtkd.feed_data({'lq': lq, 'gt': gt, 'teacher_outputs': cached(gt, 0.25, 0.75)})
    mtkd.compute_losses(OrderedDict())
    with torch.no_grad():
        expected = half(mtkd.aggregator.network(torch.cat([torch.full(gt.shape, 0.25), torch.full(gt.shape, 0.75)], 1)))
    torch.testing.assert_close(mtkd.target, expected)
    # An I_MT cache entry is the target as it is: neither teachers nor aggregator run.
    mtkd.feed_data({'lq': lq, 'gt': gt, 'cached_target': torch.full(gt.shape, 0.5).half()})
    mtkd.compute_losses(OrderedDict())
    assert torch.equal(mtkd.target, torch.full(gt.shape, 0.5))
    # AT needs teacher b's features of this batch: the teachers run and their output is the target, not the cache.
    feature = {'type': 'AttentionTransferLoss', 'loss_weight': 1.3, 'student_layers': ['body.0'],
               'teacher_layers': ['body.0']}
    at = build(folder, teachers, {'target': 'teacher', 'teacher': 'b', 'feature_opt': feature})
    at.feed_data({'lq': lq, 'gt': gt, 'teacher_outputs': cached(gt, 0.25, 0.75)})
    at.compute_losses(OrderedDict())
    torch.testing.assert_close(at.target, teacher_outputs(at, lq)['b'])


def test_dukd_crops_an_lr_batch_to_a_multiple_of_the_scale_for_its_terms_only(teacher_side):
    """``crop_to_scale``: DUKD's terms see the top-left ``(h // s · s, w // s · s)`` of the LR batch and the matching
    GT; the other terms see the whole batch."""
    folder, teachers = teacher_side
    dukd = {'zoom_in_weight': 1.1, 'zoom_out_kd_weight': 0.8, 'zoom_out_pixel_weight': 0.45, 'num_tiles': 2,
            'crop_to_scale': True}
    model = build(folder, teachers, {'target': 'teacher', 'teacher': 'a',
                                     'output_opt': {'type': 'L1Loss', 'loss_weight': 0.7}, 'dukd': dukd})
    generator = torch.Generator().manual_seed(3)
    lq, gt = torch.rand(1, 3, 7, 9, generator=generator), torch.rand(1, 3, 14, 18, generator=generator)
    seen = []

    def fake_dukd(network, target, lq_seen, gt_seen, scale, generator):
        seen.append((lq_seen, gt_seen, scale))
        return {'l_zoom_in': lq_seen.sum() * 0}

    model.dukd = fake_dukd
    model.feed_data({'lq': lq, 'gt': gt})
    model._dukd_terms(OrderedDict())
    (lq_seen, gt_seen, scale), = seen
    assert scale == SCALE and torch.equal(lq_seen, lq[..., :6, :8]) and torch.equal(gt_seen, gt[..., :12, :16])
