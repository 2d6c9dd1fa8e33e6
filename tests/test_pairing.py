"""HR/LR pairing: the mod-crop convention is applied, real mismatches are named."""
import numpy as np
import pytest

from mtkd.data.pairing import PairSizeError, match_gt_to_lq


def test_modcrop_remainder_is_cropped_top_left():
    gt = np.arange(321 * 481).reshape(321, 481)
    lq = np.zeros((80, 120))
    assert np.array_equal(match_gt_to_lq(gt, lq, 4), gt[:320, :480])


@pytest.mark.parametrize('gt_shape', [(319, 480), (324, 480), (320, 484)])
def test_mismatched_pairs_are_refused_with_both_sizes(gt_shape):
    with pytest.raises(PairSizeError, match=r'HR a.png is \d+x\d+ but its LR b.png is 120x80'):
        match_gt_to_lq(np.zeros(gt_shape), np.zeros((80, 120)), 4, 'a.png', 'b.png')
