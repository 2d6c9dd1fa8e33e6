"""CheckedPairedImageDataset: BasicSR's pairs and tensors, with clear errors and the small-image switch."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skimage_data

from basicsr.data.paired_image_dataset import PairedImageDataset

from mtkd.data.checked_paired_dataset import CheckedPairedImageDataset
from mtkd.data.pairing import PairSizeError
from mtkd.metrics.evaluation import ImageReadError


@pytest.fixture
def folders(tmp_path):
    hr, lr = tmp_path / 'HR', tmp_path / 'LR'
    hr.mkdir()
    lr.mkdir()
    for name, size in (('astronaut', 66), ('coffee', 40)):  # 66 = 2 * 33: no mod-crop remainder at x2
        image = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[:size, :size]), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(hr / f'{name}.png'), image)
        cv2.imwrite(str(lr / f'{name}.png'), cv2.resize(image, (size // 2, size // 2), interpolation=cv2.INTER_AREA))
    return hr, lr


def options(folders, phase='val', **extra):
    hr, lr = folders
    return {'name': 'toy', 'type': 'CheckedPairedImageDataset', 'dataroot_gt': str(hr), 'dataroot_lq': str(lr),
            'io_backend': {'type': 'disk'}, 'phase': phase, 'scale': 2, 'gt_size': 32, 'use_hflip': True,
            'use_rot': True, **extra}


def test_same_tensors_as_basicsr_at_validation(folders):
    ours, theirs = CheckedPairedImageDataset(options(folders)), PairedImageDataset(options(folders))
    assert len(ours) == len(theirs) == 2
    for index in range(2):
        mine, reference = ours[index], theirs[index]
        assert torch.equal(mine['lq'], reference['lq']) and torch.equal(mine['gt'], reference['gt'])
        assert mine['gt_path'] == reference['gt_path']


def test_corrupt_image_is_named(folders):
    hr, _ = folders
    (hr / 'coffee.png').write_bytes(b'\x89PNG truncated')
    dataset = CheckedPairedImageDataset(options(folders))
    with pytest.raises(ImageReadError, match='coffee.png'):
        dataset[dataset.stems.index('coffee')]


def test_pair_of_another_scale_is_named(folders):
    hr, lr = folders
    cv2.imwrite(str(lr / 'astronaut.png'), np.zeros((20, 20, 3), np.uint8))  # x2 of 66 would be 33
    dataset = CheckedPairedImageDataset(options(folders))
    with pytest.raises(PairSizeError, match='astronaut.png is 66x66 but its LR .*astronaut.png is 20x20'):
        dataset[dataset.stems.index('astronaut')]


def test_small_training_images_are_left_out_only_when_asked(folders):
    # coffee is 40 px: smaller than gt_size 48, astronaut (66 px) is kept.
    assert len(CheckedPairedImageDataset(options(folders, phase='train', gt_size=48))) == 2
    dataset = CheckedPairedImageDataset(options(folders, phase='train', gt_size=48,
                                                 skip_images_smaller_than_patch=True))
    assert dataset.stems == ['astronaut']
    sample = dataset[0]
    assert sample['gt'].shape == (3, 48, 48) and sample['lq'].shape == (3, 24, 24)


MEAN, STD = [0.4488, 0.4371, 0.404], [0.25, 0.5, 0.125]


def test_mean_std_normalise_lq_and_gt_as_basicsr_does(folders):
    """``(x - mean) / std`` per RGB channel on LQ and GT, BasicSR's ``PairedImageDataset`` convention."""
    ours = CheckedPairedImageDataset(options(folders, mean=MEAN, std=STD))
    plain = CheckedPairedImageDataset(options(folders))
    theirs = PairedImageDataset(options(folders, mean=MEAN, std=STD))
    for index in range(2):
        for key in ('lq', 'gt'):
            expected = (plain[index][key] - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
            torch.testing.assert_close(ours[index][key], expected)
            assert torch.equal(ours[index][key], theirs[index][key])


@pytest.mark.parametrize('extra, message', [
    ({'mean': MEAN}, 'mean and std go together'),
    ({'mean': MEAN, 'std': [0.5, 0.5]}, 'one value per RGB channel, got 3 and 2'),
    ({'mean': MEAN, 'std': [0.5, 0.0, 0.5]}, 'std values must be positive'),
])
def test_inconsistent_mean_std_are_refused_at_validation_and_at_construction(folders, extra, message):
    from mtkd.config.validate import dataset_problems

    block = options(folders, **extra)
    block.pop('phase'), block.pop('scale')
    _, problems = dataset_problems({'val': block}, 2, False)
    assert len(problems) == 1 and message in problems[0].message
    with pytest.raises(ValueError, match=message):
        CheckedPairedImageDataset(options(folders, **extra))


def test_a_dataset_with_cached_teacher_outputs_refuses_mean_std(folders):
    """Teacher outputs and I_MT are in [0, 1] (the aggregator's and the losses' range): normalising LQ/GT only, or
    iterating a (3, H, W) I_MT into planes as the old code did, would be wrong. Refused before anything is built."""
    from mtkd.config.validate import dataset_problems
    from mtkd.data.teacher_paired_dataset import TeacherPairedImageDataset

    block = dict(options(folders, mean=MEAN, std=STD), type='TeacherPairedImageDataset', teacher_cache_dir='x')
    block.pop('phase'), block.pop('scale')
    _, problems = dataset_problems({'train': block}, 2, True)
    assert len(problems) == 1 and 'TeacherPairedImageDataset cannot normalise with mean/std' in problems[0].message
    with pytest.raises(ValueError, match='cannot normalise with mean/std: its teacher outputs'):
        TeacherPairedImageDataset(dict(options(folders, mean=MEAN, std=STD), teacher_cache_dir='x'))
