"""Test-time padding to a window multiple: numpy's definitions of the modes, exact crop back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd.transforms.padding import crop_padding, pad_to_multiple, run_padded


@pytest.mark.parametrize('mode', ['symmetric', 'reflect'])
def test_padding_matches_numpy(mode):
    images = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    padded, pad_h, pad_w = pad_to_multiple(images, 4, mode)
    assert (pad_h, pad_w) == (3, 2)
    expected = np.pad(images.numpy(), ((0, 0), (0, 0), (0, 3), (0, 2)), mode=mode)
    assert np.array_equal(padded.numpy(), expected)


def test_run_padded_crops_back_exactly():
    scale = 3
    network = torch.nn.Upsample(scale_factor=scale, mode='nearest')
    images = torch.rand(1, 3, 7, 9)
    output = run_padded(network, images, 8, scale)
    assert output.shape == (1, 3, 21, 27)
    assert torch.equal(output, network(images))
    assert torch.equal(crop_padding(torch.zeros(1, 1, 24, 24), 1, 0, scale), torch.zeros(1, 1, 21, 24))


def test_no_padding_needed_and_bad_mode():
    images = torch.rand(1, 3, 8, 16)
    assert pad_to_multiple(images, 8)[0] is images
    with pytest.raises(ValueError, match="pad mode 'wrap'"):
        pad_to_multiple(images, 3, 'wrap')
