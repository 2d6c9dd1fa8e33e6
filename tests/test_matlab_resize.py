"""MATLAB-exact bicubic: bit-exact against the published benchmark LR images, and why BasicSR's version is not."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from mtkd.transforms import matlab_resize
from mtkd.transforms.matlab_resize import imresize, modcrop, resize_contributions
from conftest import dataset_dir

SCALES = (2, 3, 4)


def _pairs(set_name: str, every: int = 1):
    """(name, HR read as colour, {scale: published LR read as colour}) for the images of a benchmark set."""
    root = dataset_dir(set_name)
    names = sorted(os.path.splitext(file)[0] for file in os.listdir(os.path.join(root, 'HR')))[::every]
    for name in names:
        hr = cv2.imread(os.path.join(root, 'HR', f'{name}.png'), cv2.IMREAD_COLOR)
        lrs = {scale: cv2.imread(os.path.join(root, 'LR_bicubic', f'X{scale}', f'{name}x{scale}.png'),
                                 cv2.IMREAD_COLOR) for scale in SCALES}
        yield name, hr, lrs


def _mismatches(set_name: str, resize, every: int = 1) -> list[str]:
    """Names (with scale) whose LR from ``resize(modcrop(HR, s), s)`` differs from the published one."""
    failures = []
    for name, hr, lrs in _pairs(set_name, every):
        for scale, published in lrs.items():
            made = resize(modcrop(hr, scale), scale)
            if made.shape != published.shape or not np.array_equal(made, published):
                failures.append(f'{name}x{scale}')
    return failures


def _ours(image, scale):
    return imresize(image, 1 / scale)


@pytest.mark.parametrize('set_name', ['Set5', 'Set14'])
def test_bit_exact_with_published_lr(set_name):
    assert _mismatches(set_name, _ours) == []


def test_bit_exact_on_bsd100_sample():
    # Every 10th image (10 of 100) at x2, x3, x4; the whole set also matches (about 5 s).
    assert _mismatches('BSD100', _ours, every=10) == []


def test_grayscale_bridge_matches_single_channel_published_lr():
    # Set14/bridge is single-channel in HR and LR: resizing the 2-D image gives the published 2-D LR, and the
    # colour read (three equal channels, what the data loaders see) gives three copies of it.
    root = dataset_dir('Set14')
    gray = cv2.imread(os.path.join(root, 'HR', 'bridge.png'), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2
    for scale in SCALES:
        published = cv2.imread(os.path.join(root, 'LR_bicubic', f'X{scale}', f'bridgex{scale}.png'),
                               cv2.IMREAD_UNCHANGED)
        assert published.ndim == 2
        made = imresize(modcrop(gray, scale), 1 / scale)
        assert np.array_equal(made, published)
        made_colour = imresize(modcrop(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), scale), 1 / scale)
        assert np.array_equal(made_colour, np.repeat(published[:, :, None], 3, axis=2))


def _two_passes(image, scale, order, round_between):
    """Reference variants of the two passes, to show which conventions the published files require."""
    values = image.astype(np.float64)
    for axis in order:
        weights, indices = resize_contributions(values.shape[axis], values.shape[axis] // scale, 1 / scale)
        values = matlab_resize._resize_along_axis(values, axis, weights, indices)
        if round_between is not None:
            values = np.clip(round_between(values), 0, 255)
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def test_conventions_that_the_published_files_require():
    # Each alternative convention breaks bit-exactness on Set5 (all 15 LR files), which is what pins ours down:
    # height pass first, uint8 rounding after each pass, ties rounded away from zero (not numpy's half-to-even).
    def round_half_away(values):
        return np.floor(values + 0.5)

    assert _mismatches('Set5', lambda image, s: _two_passes(image, s, (0, 1), round_half_away)) == []
    assert len(_mismatches('Set5', lambda image, s: _two_passes(image, s, (1, 0), round_half_away))) == 15
    assert len(_mismatches('Set5', lambda image, s: _two_passes(image, s, (0, 1), None))) == 15
    assert len(_mismatches('Set14', lambda image, s: _two_passes(image, s, (0, 1), np.round))) > 0


def test_basicsr_imresize_is_not_bit_exact():
    # BasicSR's matlab_functions.imresize works in float and rounds once at the end (no per-pass uint8 rounding),
    # so its LR differs from the published files by one grey level on some pixels: the reason this module exists.
    from basicsr.utils.matlab_functions import imresize as basicsr_imresize

    root = dataset_dir('Set5')
    hr = modcrop(cv2.imread(os.path.join(root, 'HR', 'baby.png'), cv2.IMREAD_COLOR), 4)
    published = cv2.imread(os.path.join(root, 'LR_bicubic', 'X4', 'babyx4.png'), cv2.IMREAD_COLOR)
    theirs = np.clip(np.round(basicsr_imresize(hr.astype(np.float32), 1 / 4)), 0, 255).astype(np.uint8)
    difference = np.abs(theirs.astype(np.int16) - published.astype(np.int16))
    assert theirs.shape == published.shape
    assert difference.max() == 1 and difference.sum() > 0
    assert np.array_equal(imresize(hr, 1 / 4), published)


def test_float_input_matches_basicsr_without_rounding():
    # Without intermediate rounding the two implementations compute the same function (BasicSR in float32).
    from basicsr.utils.matlab_functions import imresize as basicsr_imresize

    rng = np.random.default_rng(0)
    image = rng.random((37, 29, 3))
    for scale in (1 / 4, 1 / 3, 1 / 2, 2, 3):
        ours = imresize(image, scale)
        theirs = basicsr_imresize(image.astype(np.float32), scale)
        assert ours.dtype == np.float64 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_upscaling_reproduces_a_linear_ramp_exactly():
    # Keys' cubic (a = -0.5) reproduces polynomials up to degree 2; MATLAB's half-pixel mapping puts output
    # pixel x (0-based) of a x2 upscale at input coordinate (x + 0.5) / 2 - 0.5. Away from the mirrored edges
    # a ramp must come out as that coordinate.
    ramp = np.tile(np.arange(20, dtype=np.float64)[:, None], (1, 5))
    upscaled = imresize(ramp, 2)
    expected = (np.arange(40) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(upscaled[4:-4, 0], expected[4:-4], atol=1e-12)
    assert upscaled.shape == (40, 10)


def test_pass_order_follows_the_smaller_factor():
    # Unequal factors: MATLAB shrinks first along the dimension with the smaller factor (here the width).
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 48, 3), dtype=np.uint8)
    resized = imresize(image, output_shape=(12, 12))

    def one_pass(values, axis, out_length):
        weights, indices = resize_contributions(values.shape[axis], out_length, out_length / values.shape[axis])
        return matlab_resize._resize_along_axis(values, axis, weights, indices)

    width_first = one_pass(one_pass(image, 1, 12), 0, 12)
    height_first = one_pass(one_pass(image, 0, 12), 1, 12)
    assert np.array_equal(resized, width_first)
    assert not np.array_equal(resized, height_first)


def test_torch_tensor_matches_numpy():
    root = dataset_dir('Set5')
    hr = modcrop(cv2.imread(os.path.join(root, 'HR', 'bird.png'), cv2.IMREAD_COLOR), 3)
    tensor = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))[None]  # (1, C, H, W) uint8
    resized = imresize(tensor, 1 / 3)
    assert resized.dtype == torch.uint8 and resized.shape == (1, 3, hr.shape[0] // 3, hr.shape[1] // 3)
    assert np.array_equal(resized[0].numpy().transpose(1, 2, 0), imresize(hr, 1 / 3))
    as_float = imresize(tensor.float() / 255, 1 / 3)
    np.testing.assert_allclose(as_float[0].numpy().transpose(1, 2, 0), imresize(hr / 255.0, 1 / 3), atol=1e-6)


def test_modcrop_and_output_size():
    image = np.zeros((17, 23, 3), np.uint8)
    assert modcrop(image, 4).shape == (16, 20, 3)
    assert modcrop(image[:, :, 0], 3).shape == (15, 21)
    assert modcrop(torch.zeros(2, 3, 17, 23), 4).shape == (2, 3, 16, 20)
    # MATLAB's output size is ceil(scale * size), so an uncropped 17 x 23 image shrinks to 5 x 6 at 1/4.
    assert imresize(image, 1 / 4).shape == (5, 6, 3)


def test_bad_arguments_raise_with_the_argument_name():
    image = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match='exactly one of scale'):
        imresize(image)
    with pytest.raises(ValueError, match='exactly one of scale'):
        imresize(image, 0.5, output_shape=(4, 4))
    with pytest.raises(ValueError, match='scale must be positive'):
        imresize(image, -0.5)
    with pytest.raises(ValueError, match='output_shape'):
        imresize(image, output_shape=(4, 0))
    with pytest.raises(ValueError, match='modcrop: scale'):
        modcrop(image, 0)
    with pytest.raises(ValueError, match=r'\(H, W\) or \(H, W, C\)'):
        imresize(np.zeros((1, 2, 8, 8)), 0.5)
