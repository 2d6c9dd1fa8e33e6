"""Feature KD from a teacher run with ``pad_multiple`` (SwinIR's window): accepted when the LR patch needs no padding
(the features are then exactly the unpadded teacher's), refused with the size to use when padding would change
them, at validation and for every batch."""
from __future__ import annotations

import pytest
import torch

from basicsr.archs import build_network

from mtkd.config import OptionError, validate_options
from mtkd.models.distill_model import DistillModel

SCALE = 2
TEACHER = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 5, 'num_block': 1, 'upscale': SCALE}
STUDENT = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': SCALE}


def options(tmp_path, gt_size, pad_multiple=8, loss='FeatureAffinityLoss'):
    torch.manual_seed(0)
    torch.save(build_network(dict(TEACHER)).state_dict(), tmp_path / 't.pth')
    folder = tmp_path / 'images'
    folder.mkdir(exist_ok=True)
    (folder / 'x.png').write_bytes(b'')
    return {'name': 'padding', 'model_type': 'DistillModel', 'scale': SCALE, 'num_gpu': 0,
            'teachers': [{'name': 'swin_like', 'network': dict(TEACHER), 'weights': str(tmp_path / 't.pth'),
                          'pad_multiple': pad_multiple}],
            'distill': {'target': 'teacher', 'feature_opt': {'type': loss, 'loss_weight': 1.0,
                                                             'student_layers': ['body.0'],
                                                             'teacher_layers': ['body.0']}},
            'network_g': dict(STUDENT),
            'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder),
                                   'dataroot_lq': str(folder), 'gt_size': gt_size}},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [9]},
                      'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}}


def build(raw, tmp_path):
    plain = validate_options(raw, is_train=True).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(tmp_path), num_gpu=0)
    return DistillModel(plain)


def test_a_padded_teacher_is_accepted_when_the_patch_needs_no_padding(tmp_path):
    model = build(options(tmp_path, gt_size=32), tmp_path)  # LR 16: a multiple of 8, nothing is padded
    lq, gt = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(1)
    assert model.log_dict['l_feature'] > 0
    model.distillation_target(lq)
    teacher = model.teachers.network('swin_like')
    with torch.no_grad():
        expected = teacher.body[0](teacher.conv_first((lq - teacher.mean) * teacher.img_range))
    assert torch.equal(model.teacher_taps.feature_list()[0], expected)  # the unpadded teacher's own features


@pytest.mark.parametrize('loss', ['FeatureAffinityLoss', 'AttentionTransferLoss'])
def test_a_padded_teacher_is_refused_when_padding_would_change_its_features(tmp_path, loss):
    with pytest.raises(OptionError) as caught:
        validate_options(options(tmp_path, gt_size=20, loss=loss), is_train=True)  # LR 10: padded to 16
    message = str(caught.value)
    assert "distill.feature_opt: feature KD uses teacher 'swin_like' features of the unpadded LR patch, but 10 LR " \
           'pixels is not a multiple of its pad_multiple 8' in message
    assert 'set datasets.train.gt_size to a multiple of scale x pad_multiple = 16 (e.g. 16 or 32)' in message


def test_every_batch_is_checked(tmp_path):
    """A dataset that delivers another size than gt_size (e.g. none set, whole images) is stopped at that batch."""
    model = build(options(tmp_path, gt_size=32), tmp_path)
    model.feed_data({'lq': torch.rand(1, 3, 12, 16), 'gt': torch.rand(1, 3, 24, 32)})
    with pytest.raises(ValueError, match=r'but 12 LR pixels is not a multiple of its pad_multiple 8.*'
                                         r'this batch is \(12, 16\)'):
        model.optimize_parameters(1)
