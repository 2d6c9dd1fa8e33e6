"""Values that mutants of the formula modules got wrong and the rest of the suite did not check.

Each test was written against mutants that survived ``make mutation`` (scripts/mutation.py, docs/testing.md,
"Mutation testing"): it checks a value, shape, dtype or gradient that the mutated line changes, on tiny tensors,
against a hand computation or an inverse. The docstring of each test names the mutated line it guards.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.archs.dctswin_arch import DCTSwin, mixer_hidden_tokens
from mtkd.losses.dct_loss import DCTDistillLoss
from mtkd.losses.dtkd_loss import (DiscrepancyAttentionLoss, ReliabilityAttentionLoss, RoutedL1Loss, discrepancy_mask,
                                   reliability_mask)
from mtkd.losses.edge_loss import EdgeLoss
from mtkd.losses.feature_kd_loss import AttentionTransferLoss, FeatureAffinityLoss, attention_map, spatial_affinity
from mtkd.losses.vgg_perceptual_loss import VGGPerceptualLoss, build_vgg_features, load_vgg_features
from mtkd.losses.wavelet_loss import WaveletDistillLoss
from mtkd.methods.dukd import (INVERTIBLE_AUGMENTATIONS, DUKDLoss, augment, choose_zoom_in_tiles, deaugment,
                               invertible_augmentations, sample_augmentation_masks, zoom_in_inputs, zoom_out_inputs)
from mtkd.methods.entropy_routing import EntropyRouter
from mtkd.methods.feature_taps import FeatureTaps, describe_module_paths, list_module_paths
from mtkd.metrics.evaluation import (ImageReadError, ImageScore, benchmark_pairs, image_to_tensor, mean_score,
                                     read_image, tensor_to_image, y_planes)
from mtkd.transforms.dct import dct_2d, dct_2d_fft, dct_matrix, idct_2d
from mtkd.transforms.dwt import dwt2, dwt_output_length, idwt2, wavedec2, waverec2
from mtkd.transforms.edges import edge_map, fractional_kernel, rgb_to_luma
from mtkd.transforms.entropy import gray_levels, image_entropy
from mtkd.transforms.matlab_resize import imresize, modcrop, resize_contributions
from mtkd.transforms.padding import crop_padding, pad_to_multiple, run_padded
from mtkd.transforms.self_ensemble import dihedral, inverse_dihedral, self_ensemble


# ---- mtkd/methods/entropy_routing.py ----------------------------------------------------------------------------
def _textured(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_routing_off_gives_one_half_per_pixel_of_a_non_square_batch():
    """``'off'``: ``(B, 1, H, W)`` of 0.5 (guards the shape tuple: batch, one channel, H and W)."""
    images = _textured(2, 4, 6)  # B, C, H, W all different
    shares = EntropyRouter(threshold=4.0, mode='off')(images)
    assert shares.shape == (2, 1, 4, 6) and shares.dtype == images.dtype and (shares == 0.5).all()


def test_routing_keeps_the_image_dtype_and_the_soft_default_temperature_is_a_quarter_bit():
    """The map and the hard shares are in the images' dtype (float64 here, the entropy is float32 inside); the
    soft mode's default temperature is 0.25 bits and a zero temperature is refused."""
    images = _textured(2, 8, 8).double()
    images[1] = 0.25  # flat: 0 bits
    router = EntropyRouter(threshold=3.0)
    entropy = router.entropy_map(images)
    assert entropy.dtype == torch.float64 and entropy.shape == (2, 1, 8, 8)
    hard = router(images)
    assert hard.dtype == torch.float64 and hard[0].min() == 1 and hard[1].max() == 0
    windows = EntropyRouter(threshold=1.0, window_size=4)
    assert windows.entropy_map(images).dtype == torch.float64 and windows(images).dtype == torch.float64
    soft = EntropyRouter(threshold=3.0, mode='soft')(images)
    torch.testing.assert_close(soft, torch.sigmoid((entropy - 3.0) / 0.25))
    with pytest.raises(ValueError, match='temperature must be > 0'):
        EntropyRouter(threshold=3.0, mode='soft', temperature=0.0)


# ---- mtkd/transforms/padding.py -----------------------------------------------------------------------------------
def test_pad_to_multiple_pads_each_side_by_its_own_amount_on_unbatched_images():
    """(C, H, W) images: the padding of H and W computed from each side (-n % multiple), mirrored along its own
    axis (flip and cat along -2, then -1), the no-padding case returns zeros, and a side padded by exactly its
    length is accepted while one padded by more is refused."""
    image = torch.arange(6 * 7, dtype=torch.float32).view(1, 6, 7)
    padded, pad_h, pad_w = pad_to_multiple(image, 4)
    assert (pad_h, pad_w) == (2, 1) and padded.shape == (1, 8, 8)
    rows = torch.cat([image, image.flip(1)[:, :2]], dim=1)
    torch.testing.assert_close(padded, torch.cat([rows, rows.flip(2)[:, :, :1]], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(crop_padding(padded, pad_h, pad_w, 1), image, rtol=0, atol=0)
    only_width, pad_h, pad_w = pad_to_multiple(image[:, :4], 4)  # H a multiple already, W not
    assert (pad_h, pad_w) == (0, 1) and only_width.shape == (1, 4, 8)
    same, pad_h, pad_w = pad_to_multiple(image[:, :4, :4], 4)
    assert (pad_h, pad_w) == (0, 0) and same is not None and same.shape == (1, 4, 4)
    exactly, pad_h, pad_w = pad_to_multiple(torch.ones(1, 2, 2), 4)  # pad = length: the whole image mirrored
    assert (pad_h, pad_w) == (2, 2) and exactly.shape == (1, 4, 4)
    with pytest.raises(ValueError, match='image smaller than the pad'):
        pad_to_multiple(torch.ones(1, 1, 4), 4)
    with pytest.raises(ValueError, match='image smaller than the pad'):
        pad_to_multiple(torch.ones(1, 4, 1), 4)


def test_run_padded_pads_only_for_a_multiple_above_one_and_passes_the_mode():
    image = torch.arange(5 * 6, dtype=torch.float32).view(1, 1, 5, 6)
    seen = []

    def network(images):
        seen.append(images)
        return images.repeat_interleave(2, -2).repeat_interleave(2, -1)

    out = run_padded(network, image, None, 2)
    assert seen[-1] is image and out.shape == (1, 1, 10, 12)
    out = run_padded(network, image, 2, 2, mode='replicate')
    assert seen[-1].shape == (1, 1, 6, 6) and (seen[-1][..., 5, :] == image[..., 4, :]).all()
    torch.testing.assert_close(out, network(image), rtol=0, atol=0)
    out = run_padded(network, image, 4, 2)
    assert seen[-1].shape == (1, 1, 8, 8) and out.shape == (1, 1, 10, 12)


# ---- mtkd/transforms/self_ensemble.py ---------------------------------------------------------------------------
def test_self_ensemble_on_unbatched_images_keeps_float64_exactly_and_half_as_half():
    image = torch.rand(1, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 1e-9
    for index in range(8):
        transformed = dihedral(image, index)
        torch.testing.assert_close(inverse_dihedral(transformed, index), image, rtol=0, atol=0)
    assert dihedral(image, 1).shape == (1, 5, 3)
    torch.testing.assert_close(self_ensemble(lambda x: x, image), image, rtol=0, atol=1e-14)  # no float32 on the way
    half = image.half()
    result = self_ensemble(lambda x: x * 2, half)
    assert result.dtype == torch.float16
    torch.testing.assert_close(result, half * 2, rtol=0, atol=0)
    for bad in ([[1.0]], torch.ones(3, 3)):
        with pytest.raises(ValueError, match='at least 3 axes'):
            self_ensemble(lambda x: x, bad)


# ---- mtkd/transforms/dct.py --------------------------------------------------------------------------------------
def test_dct_functions_name_themselves_use_a_given_matrix_and_transform_unbatched_blocks():
    """Error messages name the function called; ``idct_2d`` uses the matrix passed (an identity here); the FFT
    form works on a single ``(n, n)`` block (transposes over the last two dims, not dims 2 and -1)."""
    for function, name in ((dct_2d, 'dct_2d'), (idct_2d, 'idct_2d'), (dct_2d_fft, 'dct_2d_fft')):
        with pytest.raises(ValueError, match=f'^{name}: expected blocks'):
            function(torch.ones(2, 3))
    block = torch.rand(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(idct_2d(block, torch.eye(4, dtype=torch.float64)), block, rtol=0, atol=0)
    torch.testing.assert_close(dct_2d(block, torch.eye(4, dtype=torch.float64)), block, rtol=0, atol=0)
    torch.testing.assert_close(dct_2d_fft(block), dct_2d(block), rtol=0, atol=1e-12)
    torch.testing.assert_close(dct_2d_fft(block[None]), dct_2d(block)[None], rtol=0, atol=1e-12)


# ---- mtkd/transforms/edges.py ------------------------------------------------------------------------------------
def _correlate_replicate(plane: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Plain-loop cross-correlation of an (H, W) plane with a (k, k) kernel, replicate-padded."""
    radius = kernel.shape[0] // 2
    height, width = plane.shape
    out = torch.zeros_like(plane)
    for row in range(height):
        for col in range(width):
            for i in range(-radius, radius + 1):
                for j in range(-radius, radius + 1):
                    source = plane[min(max(row + i, 0), height - 1), min(max(col + j, 0), width - 1)]
                    out[row, col] += kernel[i + radius, j + radius] * source
    return out


def _fractional_mask(order: float, size: int) -> torch.Tensor:
    """Pu et al.'s mask written out: 8 at the centre, a_d at distance d in the 8 directions (float32 values, as
    :func:`fractional_kernel` stores them)."""
    coefficients = [-order, -order * (1 - order) / 2, -order * (1 - order) * (2 - order) / 6]
    centre = size // 2
    mask = torch.zeros(size, size, dtype=torch.float64)
    mask[centre, centre] = 8
    for distance in range(1, centre + 1):
        for row, col in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
            mask[centre + row * distance, centre + col * distance] = coefficients[distance - 1]
    return mask.float().double()


def test_edge_maps_equal_plain_loops_in_float64_with_the_default_arguments(monkeypatch):
    """Luma, Sobel magnitude with eps = 1e-6, Laplacian and the fractional masks (default order 0.5, sizes 3, 5,
    7) against loops over a replicate-padded plane, in float64 (a float32 constant would show at 1e-8); a flat
    image gives sqrt(eps); gradients flow back to the image (the cached constants are not inference tensors);
    the same values through the uncached branch taken under torch.compile."""
    image = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    luma = 0.299 * image[0, 0] + 0.587 * image[0, 1] + 0.114 * image[0, 2]
    sobel_x = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], dtype=torch.float64)
    laplacian = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]], dtype=torch.float64)
    gx, gy = _correlate_replicate(luma, sobel_x), _correlate_replicate(luma, sobel_x.t())
    expected = {'sobel': torch.sqrt(gx ** 2 + gy ** 2 + 1e-6), 'laplacian': _correlate_replicate(luma, laplacian),
                'fractional': _correlate_replicate(luma, _fractional_mask(0.5, 3))}

    def check():
        torch.testing.assert_close(rgb_to_luma(image)[0, 0], luma, rtol=0, atol=1e-14)
        for operator, values in expected.items():
            torch.testing.assert_close(edge_map(image, operator)[0, 0], values, rtol=0, atol=1e-12)
        for size in (5, 7):
            torch.testing.assert_close(edge_map(image, 'fractional', kernel_size=size)[0, 0],
                                       _correlate_replicate(luma, _fractional_mask(0.5, size)), rtol=0, atol=1e-12)
        torch.testing.assert_close(edge_map(image, 'fractional', order=0.8, kernel_size=5)[0, 0],
                                   _correlate_replicate(luma, _fractional_mask(0.8, 5)), rtol=0, atol=1e-12)

    check()
    flat = edge_map(torch.full((1, 3, 4, 4), 0.5), 'sobel')
    torch.testing.assert_close(flat, torch.full((1, 1, 4, 4), 1e-3))
    torch.testing.assert_close(fractional_kernel(0.5), _fractional_mask(0.5, 3).float())
    with pytest.raises(ValueError, match='must be 3, 5 or 7'):
        fractional_kernel(0.5, 4)
    for operator in ('sobel', 'laplacian', 'fractional'):
        leaf = image.clone().requires_grad_()
        edge_map(leaf, operator).square().sum().backward()
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    check()


# ---- mtkd/transforms/dwt.py --------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Level value")
def test_dwt_defaults_messages_plain_images_and_the_uncached_kernel_branch(monkeypatch):
    """``dwt_output_length``'s defaults (Haar, symmetric) and the name in its message; a 2-D (H, W) image through
    wavedec2/waverec2 (odd sizes, so the last row/column is dropped) against PyWavelets; waverec2 refuses a
    bare tensor, a one-element list and details of the wrong size in one axis only; the db2 kernels give
    gradients (not inference tensors) and the same values on the uncached branch taken under torch.compile."""
    pywt = pytest.importorskip('pywt')
    assert dwt_output_length(7) == pywt.dwt_coeff_len(7, 2, 'symmetric') == 4
    with pytest.raises(ValueError, match='^dwt_output_length: mode'):
        dwt_output_length(7, mode='edge')
    image = torch.rand(7, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    coefficients = wavedec2(image, 'db2', level=2)
    reference = pywt.wavedec2(image.numpy(), 'db2', mode='symmetric', level=2)
    np.testing.assert_allclose(coefficients[0].numpy(), reference[0], atol=1e-12)
    np.testing.assert_allclose(waverec2(coefficients, 'db2').numpy(),
                               pywt.waverec2(reference, 'db2', mode='symmetric'), atol=1e-12)
    haar = wavedec2(image, level=2)
    np.testing.assert_allclose(waverec2(haar).numpy(), pywt.waverec2(pywt.wavedec2(image.numpy(), 'haar', level=2),
                                                                     'haar'), atol=1e-12)
    with pytest.raises(ValueError, match='waverec2: coefficients must be'):
        waverec2(torch.zeros(4, 4))
    with pytest.raises(ValueError, match='waverec2: coefficients must be'):
        waverec2([coefficients[0]])
    too_wide = [torch.zeros(3, 5), tuple(torch.zeros(3, 3) for _ in range(3))]
    with pytest.raises(ValueError, match='does not fit'):
        waverec2(too_wide)
    too_tall = [torch.zeros(5, 3), tuple(torch.zeros(3, 3) for _ in range(3))]
    with pytest.raises(ValueError, match='does not fit'):
        waverec2(too_tall)
    leaf = image.clone().requires_grad_()
    approximation, details = dwt2(leaf, 'db2')
    (approximation.sum() + details[2].square().sum()).backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    expected = dwt2(image, 'db2', mode='periodization'), idwt2(dwt2(image, 'db2'), 'db2')
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    uncached = dwt2(image, 'db2', mode='periodization'), idwt2(dwt2(image, 'db2'), 'db2')
    torch.testing.assert_close(uncached, expected, rtol=0, atol=0)


# ---- mtkd/transforms/entropy.py ----------------------------------------------------------------------------------
def _entropy_reference(images: torch.Tensor) -> list[float]:
    """Gray levels as OpenCV rounds them (fixed point, 15 bits) from the clamped image, then -sum p log2 p."""
    values = []
    for image in images:
        levels = (image.clamp(0, 1) * 255).round().long()
        gray = (levels[0] * 9798 + levels[1] * 19235 + levels[2] * 3735 + 16384) >> 15
        counts = torch.bincount(gray.flatten(), minlength=256).double() / gray.numel()
        values.append(float(-(counts[counts > 0] * counts[counts > 0].log2()).sum()))
    return values


def test_image_entropy_clamps_to_the_unit_range_and_checks_its_input(monkeypatch):
    """Values outside [0, 1] count as 0 or 255 (clamp both ends); a window must divide both sides; only
    (B, 3, H, W) is accepted; the uncached gray weights (under torch.compile) give the same levels."""
    palette = torch.tensor([-0.3, 0.0, 0.5, 1.0, 1.3])  # -0.3 must read as 0 and 1.3 as 1
    picks = torch.randint(0, 5, (2, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    images = palette[picks].expand(2, 3, 4, 4).clone()
    images[1, :, :2] = -0.3  # image 1: half of it below 0
    expected = _entropy_reference(images)
    assert expected[0] < 2.0  # few levels: collisions, so the clamping shows in the histogram
    torch.testing.assert_close(image_entropy(images).double(), torch.tensor(expected, dtype=torch.float64))
    assert (gray_levels(images) <= 255).all() and (gray_levels(images) >= 0).all()
    for bad in (torch.zeros(1, 1, 4, 4), torch.zeros(3, 4, 4)):
        with pytest.raises(ValueError, match=r'expected RGB images \(B, 3, H, W\)'):
            gray_levels(bad)
    for size in ((8, 6), (6, 8)):
        with pytest.raises(ValueError, match='not a multiple of the entropy window 4'):
            image_entropy(torch.zeros(1, 3, *size), window_size=4)
    levels = gray_levels(images)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert torch.equal(gray_levels(images), levels)


# ---- mtkd/transforms/matlab_resize.py ----------------------------------------------------------------------------
def _keys_cubic(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2 if x <= 2 else 0.0


def _float_resize_line(line: list[float], out_length: int, scale: float, antialiasing: bool = True) -> list[float]:
    """One MATLAB bicubic pass in float64 without rounding (imresize.m's ``contributions``)."""
    stretch = scale < 1 and antialiasing
    width = 4.0 / scale if stretch else 4.0
    mirror = list(range(len(line))) + list(range(len(line) - 1, -1, -1))
    output = []
    for x in range(1, out_length + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        taps = [math.floor(u - width / 2) + k for k in range(math.ceil(width) + 2)]
        weights = [scale * _keys_cubic(scale * (u - t)) if stretch else _keys_cubic(u - t) for t in taps]
        output.append(sum(w / sum(weights) * line[mirror[(t - 1) % (2 * len(line))]] for t, w in zip(taps, weights)))
    return output


def _float_imresize(image: np.ndarray, out_shape: tuple[int, int], antialiasing: bool = True,
                    scales: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) float64: the pass with the smaller factor first (height on ties), as MATLAB sorts them. The factors
    are the scale given, or out / in for an output shape."""
    scales = scales or (out_shape[0] / image.shape[0], out_shape[1] / image.shape[1])
    result = image
    for axis in sorted(range(2), key=lambda a: scales[a]):
        lines = result if axis == 1 else result.T
        done = np.array([_float_resize_line(list(line), out_shape[axis], scales[axis], antialiasing) for line in lines])
        result = done if axis == 1 else done.T
    return result


def test_imresize_of_float_images_equals_a_float_loop_reference_in_every_layout_and_argument_form():
    """Float64 images (no rounding) against loops: a 1.5x upscale (kernel not stretched), a 0.37 shrink with and
    without antialiasing (weights normalised by their sum), per-axis scales and non-square output shapes, a
    1-pixel line; torch (H, W), (C, H, W) and (B, C, H, W) and numpy (H, W, C) give the same values and keep
    their dtype (float32 stays float32)."""
    image = np.random.default_rng(6).random((5, 7))
    cases = [(dict(scale=1.5), (8, 11), True), (dict(scale=0.37), (2, 3), True),
             (dict(scale=0.37, antialiasing=False), (2, 3), False), (dict(scale=(0.5, 1.5)), (3, 11), True),
             (dict(output_shape=(3, 5)), (3, 5), True), (dict(output_shape=(1, 4)), (1, 4), True)]
    for arguments, out_shape, antialiasing in cases:
        scale = arguments.get('scale')
        scales = None if scale is None else (scale, scale) if np.ndim(scale) == 0 else tuple(scale)
        expected = _float_imresize(image, out_shape, antialiasing, scales)
        np.testing.assert_allclose(imresize(image, **arguments), expected, rtol=0, atol=1e-12)
        tensor = torch.from_numpy(image)
        np.testing.assert_allclose(imresize(tensor, **arguments).numpy(), expected, rtol=0, atol=1e-12)
        batch = tensor.expand(2, 3, 5, 7)
        np.testing.assert_allclose(imresize(batch, **arguments)[1, 2].numpy(), expected, rtol=0, atol=1e-12)
        stacked = np.stack([image, image], axis=-1)
        np.testing.assert_allclose(imresize(stacked, **arguments)[..., 1], expected, rtol=0, atol=1e-12)
    weights, _ = resize_contributions(7, 3, 0.37)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    line = np.array([[3.0, 5.0, 4.0]])  # one row: a 1-pixel height is valid
    np.testing.assert_allclose(imresize(line, scale=1), line, rtol=0, atol=1e-14)
    np.testing.assert_allclose(imresize(np.array([[7.0]]), scale=1), [[7.0]], rtol=0, atol=0)
    assert imresize(torch.rand(3, 4, 4), scale=0.5).dtype == torch.float32
    assert imresize(np.random.default_rng(0).random((4, 4)).astype(np.float32), scale=0.5).dtype == np.float32
    for bad in (dict(scale=(0.5, 0.5, 0.5)), dict(scale=0), dict(output_shape=(3,)), dict(output_shape=(0, 3))):
        with pytest.raises(ValueError, match='imresize: (scale|output_shape) must be'):
            imresize(image, **bad)


def test_modcrop_accepts_scale_one_and_every_layout_and_refuses_the_rest():
    array = np.zeros((5, 7, 3))
    assert modcrop(array, 1).shape == (5, 7, 3) and modcrop(array, 2).shape == (4, 6, 3)
    assert modcrop(torch.zeros(5, 7), 2).shape == (4, 6)  # a 2-D tensor
    assert modcrop(torch.zeros(3, 5, 7), 3).shape == (3, 3, 6)  # (C, H, W)
    for scale in (True, 0, 1.5):
        with pytest.raises(ValueError, match='modcrop: scale must be a positive integer'):
            modcrop(array, scale)
    for image in ([[1, 2], [3, 4]], np.zeros((1, 2, 2, 2))):
        with pytest.raises(ValueError, match='modcrop: image must be'):
            modcrop(image, 2)
    with pytest.raises(ValueError, match='modcrop: tensor must have at least 2 dimensions'):
        modcrop(torch.zeros(4), 2)


def test_dwt_functions_name_themselves_and_their_defaults_are_one_level_of_haar():
    image = torch.rand(2, 6, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for call, name in ((lambda **k: dwt2(image, **k), 'dwt2'), (lambda **k: wavedec2(image, **k), 'wavedec2'),
                       (lambda **k: idwt2(dwt2(image), **k), 'idwt2')):
        with pytest.raises(ValueError, match=f'^{name}: mode must be one of'):
            call(mode='edge')
    for function, name in ((dwt2, 'dwt2'), (wavedec2, 'wavedec2')):
        with pytest.raises(ValueError, match=f'^{name}: expected a tensor'):
            function([[1.0]])
    with pytest.raises(ValueError, match='^idwt2: expected a tensor'):
        idwt2((torch.zeros(3), (torch.zeros(3),) * 3))
    for level in (True, 2.0, 0):
        with pytest.raises(ValueError, match='wavedec2: level must be a positive integer'):
            wavedec2(image, level=level)
    default = wavedec2(image)
    assert len(default) == 2
    explicit = wavedec2(image, 'haar', 1)
    assert torch.equal(default[0], explicit[0]) and all(torch.equal(a, b) for a, b in zip(default[1], explicit[1]))
    assert torch.equal(idwt2(dwt2(image)), idwt2(dwt2(image, 'haar'), 'haar'))
    assert torch.equal(waverec2(default), waverec2(explicit, 'haar'))
    with pytest.raises(ValueError, match='too small'):
        idwt2((torch.zeros(1, 5),) + ((torch.zeros(1, 5),) * 3,), 'db2')
    with pytest.raises(ValueError, match='too small'):
        idwt2((torch.zeros(5, 1),) + ((torch.zeros(5, 1),) * 3,), 'db2')


def test_dct_matrix_refuses_a_bool_or_float_size():
    for size in (True, 2.0, 0):
        with pytest.raises(ValueError, match='n must be a positive integer'):
            dct_matrix(size)


def test_self_ensemble_of_integer_images_returns_the_dtype_of_the_outputs():
    integers = torch.arange(12).view(1, 3, 4)
    result = self_ensemble(lambda x: x.double() / 3, integers)
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, integers.double() / 3)


# ---- mtkd/losses/edge_loss.py, dtkd_loss.py ----------------------------------------------------------------------
def test_edge_loss_defaults_criteria_reductions_and_fractional_arguments():
    generator = torch.Generator().manual_seed(8)
    pred, target = torch.rand(2, 3, 6, 6, generator=generator), torch.rand(2, 3, 6, 6, generator=generator)
    sobel = edge_map(pred, 'sobel') - edge_map(target, 'sobel')
    torch.testing.assert_close(EdgeLoss()(pred, target), sobel.abs().mean())
    torch.testing.assert_close(EdgeLoss(criterion='l2', reduction='sum', loss_weight=0.5)(pred, target),
                               0.5 * sobel.square().sum())
    default_fractional = edge_map(pred, 'fractional', 0.5, 3) - edge_map(target, 'fractional', 0.5, 3)
    torch.testing.assert_close(EdgeLoss(operator='fractional')(pred, target), default_fractional.abs().mean())
    chosen = edge_map(pred, 'fractional', 0.8, 5) - edge_map(target, 'fractional', 0.8, 5)
    torch.testing.assert_close(EdgeLoss(operator='fractional', order=0.8, kernel_size=5)(pred, target),
                               chosen.abs().mean())


def test_dtkd_losses_name_a_bad_option_accept_every_listed_one_and_use_the_soft_temperature():
    for name, options in (('weighting', ('binary', 'magnitude')), ('reference', ('batch', 'image')),
                          ('normalize', ('all', 'weight')), ('reliability_mode', ('hard', 'soft'))):
        for option in options:
            DiscrepancyAttentionLoss(**{name: option})
        with pytest.raises(ValueError, match=f"^{name} 'other' is unknown"):
            DiscrepancyAttentionLoss(**{name: 'other'})
    with pytest.raises(ValueError, match="^normalize 'other' is unknown"):
        RoutedL1Loss(normalize='other')
    with pytest.raises(ValueError, match='reliability_temperature must be > 0'):
        DiscrepancyAttentionLoss(reliability_temperature=0.0)
    generator = torch.Generator().manual_seed(9)
    pred, target, gt = (torch.rand(1, 3, 4, 4, generator=generator) for _ in range(3))
    for temperature, loss in ((0.01, DiscrepancyAttentionLoss(reliability_mode='soft')),
                              (0.5, DiscrepancyAttentionLoss(reliability_mode='soft', reliability_temperature=0.5))):
        gate = reliability_mask(pred, target, gt, 'soft', temperature)
        mask = discrepancy_mask(pred, target, gate=gate)
        torch.testing.assert_close(loss(pred, target, gt), (mask * (pred - target).abs()).sum() / pred.numel())


def _plain_reliability(pred, target, gt, mode, temperature, per_pixel):
    student, teacher = (pred - gt).abs(), (target - gt).abs()
    if per_pixel:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    return (teacher <= student).float() if mode == 'hard' else torch.sigmoid((student - teacher) / temperature)


def test_reliability_attention_loss_options_soft_temperature_and_routing_weight():
    for mode in ('hard', 'soft'):
        ReliabilityAttentionLoss(mode=mode)
    for name in ('mode', 'normalize'):
        with pytest.raises(ValueError, match=f"^{name} 'other' is unknown"):
            ReliabilityAttentionLoss(**{name: 'other'})
    with pytest.raises(ValueError, match='temperature must be > 0'):
        ReliabilityAttentionLoss(temperature=0.0)
    generator = torch.Generator().manual_seed(10)
    pred, target, gt = (torch.rand(2, 3, 4, 5, generator=generator) for _ in range(3))
    weight = torch.rand(2, 1, 4, 5, generator=generator)
    for temperature, loss in ((0.01, ReliabilityAttentionLoss(mode='soft')),
                              (0.3, ReliabilityAttentionLoss(mode='soft', temperature=0.3))):
        mask = _plain_reliability(pred, target, gt, 'soft', temperature, True)
        torch.testing.assert_close(loss(pred, target, gt), (mask * (pred - target).abs()).mean())
        torch.testing.assert_close(loss(pred, target, gt, weight=weight),
                                   (mask * weight * (pred - target).abs()).mean())
    torch.testing.assert_close(reliability_mask(pred, target, gt, 'soft'),
                               _plain_reliability(pred, target, gt, 'soft', 0.01, True))
    assert reliability_mask(pred, target, gt.double(), 'soft').dtype == torch.float32  # in pred's dtype


def test_discrepancy_mask_per_image_reference_with_a_gate_and_its_ties():
    """The per-image mean of |S - T| (over channels too when not per pixel), gate-weighted; a pixel exactly at
    the mean is not selected; a bool gate counts as 0/1; the mask comes in pred's dtype."""
    pred = torch.zeros(2, 1, 1, 3)
    target = torch.tensor([0.0, 1.0, 2.0, 0.0, 2.0, 4.0]).view(2, 1, 1, 3)  # means 1 and 2: ties in the middle
    mask = discrepancy_mask(pred, target, reference='image')
    assert mask.flatten().tolist() == [0, 0, 1, 0, 0, 1]
    gate = torch.tensor([True, True, False, True, True, True]).view(2, 1, 1, 3)
    gated = discrepancy_mask(pred, target, reference='image', gate=gate)  # image 0 among {0, 1}: mean 0.5
    assert gated.flatten().tolist() == [0, 1, 0, 0, 0, 1]
    generator = torch.Generator().manual_seed(11)
    pred, target = torch.rand(2, 3, 2, 4, generator=generator), torch.rand(2, 3, 2, 4, generator=generator)
    soft_gate = torch.rand(2, 3, 2, 4, generator=generator)
    discrepancy = (pred - target).abs()
    mean = (soft_gate * discrepancy).sum((1, 2, 3), keepdim=True) / soft_gate.sum((1, 2, 3), keepdim=True)
    expected = torch.where(discrepancy > mean, discrepancy / mean, torch.zeros_like(discrepancy)) * soft_gate
    torch.testing.assert_close(discrepancy_mask(pred, target, 'magnitude', 'image', per_pixel=False, gate=soft_gate),
                               expected)
    plain_mean = discrepancy.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(discrepancy_mask(pred, target, reference='image', per_pixel=False),
                               (discrepancy > plain_mean).float())
    assert discrepancy_mask(pred, target.double()).dtype == torch.float32
    assert discrepancy_mask(pred, target.double(), 'magnitude').dtype == torch.float32


def test_discrepancy_attention_loss_per_element_reliability_and_routing_weight():
    generator = torch.Generator().manual_seed(12)
    pred, target, gt = (torch.rand(2, 3, 4, 4, generator=generator) for _ in range(3))
    weight = torch.rand(2, 1, 4, 4, generator=generator)
    gate = _plain_reliability(pred, target, gt, 'hard', 0.01, False)
    mask = discrepancy_mask(pred, target, per_pixel=False, gate=gate)
    loss = DiscrepancyAttentionLoss(per_pixel=False)
    torch.testing.assert_close(loss(pred, target, gt), (mask * (pred - target).abs()).mean())
    torch.testing.assert_close(loss(pred, target, gt, weight=weight), (mask * weight * (pred - target).abs()).mean())


# ---- mtkd/losses/feature_kd_loss.py, dct_loss.py, wavelet_loss.py, vgg_perceptual_loss.py -------------------------
def test_attention_transfer_defaults_exponents_and_messages():
    generator = torch.Generator().manual_seed(13)
    student, teacher = torch.randn(2, 4, 3, 5, generator=generator), torch.randn(2, 6, 3, 5, generator=generator)

    def at_map(features, p):
        flat = features.abs().pow(p).sum(1).flatten(1)
        return flat / flat.norm(dim=1, keepdim=True)

    torch.testing.assert_close(attention_map(student), at_map(student, 2))
    torch.testing.assert_close(AttentionTransferLoss()([student], [teacher]),
                               (at_map(student, 2) - at_map(teacher, 2)).pow(2).mean())
    torch.testing.assert_close(AttentionTransferLoss(p=1)([student], [teacher]),
                               (at_map(student, 1) - at_map(teacher, 1)).pow(2).mean())
    for p in (True, '2', 0):
        with pytest.raises(ValueError, match='p must be a positive number'):
            AttentionTransferLoss(p=p)
    for loss_class in (AttentionTransferLoss, FeatureAffinityLoss):
        name = loss_class.__name__
        with pytest.raises(TypeError, match=f'^{name}: loss_weight must be a number'):
            loss_class(loss_weight=True)
        with pytest.raises(ValueError, match=f'^{name}: student_features is empty'):
            loss_class()([], [])


def test_dct_and_wavelet_losses_check_their_numbers_and_accept_a_one_pixel_block():
    generator = torch.Generator().manual_seed(14)
    pred, target = torch.rand(1, 3, 4, 4, generator=generator), torch.rand(1, 3, 4, 4, generator=generator)
    torch.testing.assert_close(DCTDistillLoss(block_size=1)(pred, target), (pred - target).abs().mean())
    # reduction 'sum': with 1x1 blocks (the DCT of one pixel is the pixel) the sum of the 48 absolute differences.
    torch.testing.assert_close(DCTDistillLoss(block_size=1, reduction='sum')(pred, target), (pred - target).abs().sum())
    for block_size in (True, 2.0, 0):
        with pytest.raises(ValueError, match='block_size must be a positive integer'):
            DCTDistillLoss(block_size=block_size)
    for loss_class in (DCTDistillLoss, WaveletDistillLoss):
        with pytest.raises(TypeError, match='loss_weight must be a number'):
            loss_class(loss_weight=True)
    for levels in (True, 2.0, 0):
        with pytest.raises(ValueError, match='levels must be a positive integer'):
            WaveletDistillLoss(levels=levels)


def test_vgg_perceptual_loss_train_keeps_the_network_frozen_in_eval_mode(tmp_path):
    features = build_vgg_features('vgg19', 'relu1_1')
    torch.save({f'features.{key}': value for key, value in features.state_dict().items()}, tmp_path / 'vgg.pth')
    loss = VGGPerceptualLoss(str(tmp_path / 'vgg.pth'), layer_weights={'relu1_1': 1.0})
    assert loss.train() is loss and loss.training and not loss.features.training
    loss.train(False)
    assert not loss.training and not loss.features.training


def test_dct_loss_coefficients_in_float64_for_plain_and_unbatched_images_and_the_uncached_matrix(monkeypatch):
    """Block DCT coefficients of (H, W) and (C, H, W) images in float64 equal dct_2d per block (the matrix built
    in float64, not float32); whole-image coefficients; integer images refused; a 1-pixel-wide image cropped to
    1x1 blocks is valid; the matrices made on the uncached branch taken under torch.compile."""
    image = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    loss = DCTDistillLoss(block_size=2, remainder='crop')

    def check():
        blocks = loss.coefficients(image)
        assert blocks.shape == (3, 3, 2, 2, 2)
        torch.testing.assert_close(blocks[1, 2, 1], dct_2d(image[1, 4:6, 2:4]), rtol=0, atol=1e-14)
        torch.testing.assert_close(loss.coefficients(image[0])[2, 1], dct_2d(image[0, 4:6, 2:4]), rtol=0, atol=1e-14)
        whole = DCTDistillLoss(block_size=None).coefficients(image[0])
        torch.testing.assert_close(whole, dct_matrix(6, torch.float64) @ image[0] @ dct_matrix(5, torch.float64).T,
                                   rtol=0, atol=1e-14)
        backward = DCTDistillLoss(block_size=2, norm='backward').coefficients(image[0, :2, :2])
        torch.testing.assert_close(backward[0, 0], torch.from_numpy(scipy_fft.dctn(image[0, :2, :2].numpy())),
                                   rtol=0, atol=1e-14)

    scipy_fft = pytest.importorskip('scipy.fft')
    check()
    with pytest.raises(ValueError, match='expected a floating-point tensor'):
        loss.coefficients(torch.zeros(4, 4, dtype=torch.int64))
    thin = torch.rand(1, 1, 3, 1)
    torch.testing.assert_close(DCTDistillLoss(block_size=1, remainder='crop')(thin, torch.zeros_like(thin)),
                               thin.mean())
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    check()


def test_spatial_affinity_defaults_pooling_types_and_the_norm_epsilon_in_float64():
    features = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(16), dtype=torch.float64)

    def affinity(pooled):
        flat = pooled.flatten(2)
        unit = flat / (flat.norm(dim=1, keepdim=True) + 1e-8)
        return unit.transpose(1, 2) @ unit

    torch.testing.assert_close(spatial_affinity(features), affinity(features), rtol=0, atol=1e-14)
    max_pooled = F.max_pool2d(features, 2, 2, ceil_mode=True)
    avg_pooled = F.avg_pool2d(features, 2, 2, ceil_mode=True)
    torch.testing.assert_close(spatial_affinity(features, 2), affinity(max_pooled), rtol=0, atol=1e-14)
    torch.testing.assert_close(spatial_affinity(features, 2, 'avg'), affinity(avg_pooled), rtol=0, atol=1e-14)
    other = torch.randn(2, 5, 4, 5, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    loss = FeatureAffinityLoss(pool_size=2, pool_type='avg')
    expected = (affinity(F.avg_pool2d(other, 2, 2, ceil_mode=True)) - affinity(avg_pooled)).abs().mean()
    torch.testing.assert_close(loss([other], [features]).double(), expected, rtol=0, atol=1e-6)


def test_feature_losses_take_dicts_and_name_the_bad_argument():
    generator = torch.Generator().manual_seed(18)
    student, teacher = torch.randn(1, 2, 3, 3, generator=generator), torch.randn(1, 2, 3, 3, generator=generator)
    loss = AttentionTransferLoss()
    torch.testing.assert_close(loss({'body.1': student}, {'body.2': teacher}), loss([student], [teacher]))
    for bad in ('features', 5):
        with pytest.raises(TypeError, match='^student_features must be a tensor, a list'):
            loss(bad, [teacher])
        with pytest.raises(TypeError, match='^teacher_features must be a tensor, a list'):
            loss([student], bad)
    with pytest.raises(ValueError, match='^AttentionTransferLoss: student feature 0 has shape'):
        loss([student[0]], [teacher])
    with pytest.raises(ValueError, match='^AttentionTransferLoss: teacher feature 0 has shape'):
        loss([student], [teacher[0]])


def test_vgg_features_load_from_a_params_file_name_the_network_and_use_the_options(tmp_path):
    features = build_vgg_features('vgg19', 'relu2_1')
    assert features(torch.zeros(1, 3, 16, 16)).shape == (1, 128, 8, 8)  # 3x3 convs padded by 1, 2x2 pools
    state = {f'features.{key}': value for key, value in features.state_dict().items()}
    torch.save({'params': state}, tmp_path / 'params.pth')
    loaded = build_vgg_features('vgg19', 'relu2_1')
    load_vgg_features(loaded, str(tmp_path / 'params.pth'))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), features.state_dict().values()))
    torch.save({key: value for key, value in state.items() if not key.startswith('features.5')},
               tmp_path / 'partial.pth')
    with pytest.raises(ValueError, match='^VGG weights .* lack 2 tensors'):
        load_vgg_features(build_vgg_features('vgg19', 'relu2_1'), str(tmp_path / 'partial.pth'))
    wrong = dict(state, **{'features.0.bias': torch.zeros(3)})
    torch.save(wrong, tmp_path / 'wrong.pth')
    with pytest.raises(ValueError, match=r'features.0.bias: file \(3,\) vs network \(64,\)'):
        load_vgg_features(build_vgg_features('vgg19', 'relu2_1'), str(tmp_path / 'wrong.pth'))
    path = str(tmp_path / 'params.pth')
    with pytest.raises(ValueError, match=r"layers \['conv9_9'\] are not in vgg19"):
        VGGPerceptualLoss(path, layer_weights={'conv9_9': 1.0})
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(19)) * 2 - 1
    target = torch.zeros(1, 3, 8, 8)
    plain = VGGPerceptualLoss(path, layer_weights={'relu1_1': 1.0})
    ranged = VGGPerceptualLoss(path, layer_weights={'relu1_1': 1.0}, range_norm=True)
    torch.testing.assert_close(ranged(images, target)[0], plain((images + 1) / 2, (target + 1) / 2)[0])
    assert 'mean' not in plain.state_dict() and 'std' not in plain.state_dict()
    l2 = VGGPerceptualLoss(path, layer_weights={'relu1_1': 1.0}, criterion='l2')(images, target)[0]
    frobenius = VGGPerceptualLoss(path, layer_weights={'relu1_1': 1.0}, criterion='fro')(images, target)[0]
    prediction, reference = plain.layer_outputs(images)['relu1_1'], plain.layer_outputs(target)['relu1_1']
    torch.testing.assert_close(l2, F.mse_loss(prediction, reference))
    torch.testing.assert_close(frobenius, (prediction - reference).norm())


# ---- mtkd/methods/dukd.py ----------------------------------------------------------------------------------------
def test_dukd_augmentations_act_on_the_last_two_axes_of_unbatched_images_and_invert_in_the_given_range():
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # (C, H, W), H != W
    expected = {'hflip': image.flip(2), 'vflip': image.flip(1), 'transpose': image.transpose(1, 2),
                'rot90': torch.rot90(image, 1, (1, 2)), 'rot180': torch.rot90(image, 2, (1, 2)),
                'rot270': torch.rot90(image, 3, (1, 2)), 'anti_transpose': image.flip(1).flip(2).transpose(1, 2)}
    for name, value in expected.items():
        forward, inverse = INVERTIBLE_AUGMENTATIONS[name]
        assert torch.equal(forward(image), value), name
        assert torch.equal(inverse(forward(image)), image), name
    assert len(invertible_augmentations()) == len(INVERTIBLE_AUGMENTATIONS) == 9
    batch = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(20)) * 255
    masks = torch.tensor([[True, False]])
    inverted = augment(batch, ['invert'], masks, img_range=255.0)
    assert torch.equal(inverted[0], 255.0 - batch[0]) and torch.equal(inverted[1], batch[1])
    torch.testing.assert_close(deaugment(inverted, ['invert'], masks, img_range=255.0), batch)
    wide = torch.rand(2, 1, 3, 5)
    assert torch.equal(augment(wide, ['hflip'], masks), torch.stack([wide[0].flip(-1), wide[1]]))
    with pytest.raises(ValueError, match="'transpose' swaps height and width"):
        augment(wide, ['transpose'], masks)


def test_dukd_masks_come_from_the_generator_and_names_are_checked():
    first = sample_augmentation_masks(6, ['hflip', 'invert'], 0.5, torch.Generator().manual_seed(3))
    torch.manual_seed(99)  # the global generator must not matter
    second = sample_augmentation_masks(6, ['hflip', 'invert'], 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert torch.equal(first, torch.rand((2, 6), generator=torch.Generator().manual_seed(3)) < 0.5)
    with pytest.raises(ValueError, match='unknown augmentation'):
        sample_augmentation_masks(2, ['swirl'], 0.5)
    with pytest.raises(ValueError, match='unknown augmentation'):
        DUKDLoss(augmentations=['swirl'])
    with pytest.raises(ValueError, match='augmentation_probability must be in'):
        DUKDLoss(augmentation_probability=1.5)


def test_dukd_tiles_grids_of_one_cell_all_cells_and_zoom_out_scale_checks():
    assert choose_zoom_in_tiles((4, 6), (4, 6), generator=torch.Generator().manual_seed(0)) == [(0, 0)]
    cells = choose_zoom_in_tiles((8, 12), (4, 4), 6, torch.Generator().manual_seed(0))
    assert sorted(cells) == [(r, c) for r in range(2) for c in range(3)]
    assert len(choose_zoom_in_tiles((8, 12), 4, generator=torch.Generator().manual_seed(0))) == 1
    for gt_size in ((8, 3), (3, 8)):
        with pytest.raises(ValueError, match='is larger than the HR patch'):
            choose_zoom_in_tiles(gt_size, 4)
    assert zoom_in_inputs(torch.rand(3, 1, 8, 8), 4, torch.Generator().manual_seed(0)).shape == (3, 1, 4, 4)
    for scale in (1, 2.5):
        with pytest.raises(ValueError, match='scale must be an integer >= 2'):
            zoom_out_inputs(torch.rand(1, 1, 10, 10), scale)


def test_dukd_loss_terms_follow_their_weights_tiles_generator_and_image_range():
    lq = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(21)) * 255  # non-square, range 255
    gt = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(22)) * 255
    batches = []

    def student(images):
        batches.append(images.shape[0])
        return images.repeat_interleave(2, -2).repeat_interleave(2, -1) * 0.9

    def teacher(images):
        return images.repeat_interleave(2, -2).repeat_interleave(2, -1)

    loss = DUKDLoss(zoom_out_kd_weight=0.5, zoom_out_pixel_weight=0.0, num_tiles=2, augmentation_probability=1.0,
                    augmentations=['invert'], img_range=255.0)
    terms = loss(student, teacher, lq, gt, 2, torch.Generator().manual_seed(0))
    assert set(terms) == {'l_zoom_in', 'l_zoom_out_kd'} and batches[0] == 4  # 2 tiles of 2 images
    # invert, student, invert back: 255 - 0.9 (255 - t) against t, on the upsampled tiles
    tiles = zoom_in_inputs(gt, (4, 6), torch.Generator().manual_seed(0), 2)
    up = teacher(tiles)
    torch.testing.assert_close(terms['l_zoom_in'], (255 - 0.9 * (255 - up) - up).abs().mean())
    flips = ['invert', 'vflip', 'hflip']  # no transpose: the patches are not square
    assert set(DUKDLoss(zoom_out_kd_weight=0.0, zoom_out_pixel_weight=0.5, augmentations=flips)(
        student, teacher, lq, gt, 2)) == {'l_zoom_in', 'l_zoom_out_pix'}
    odd_lq, odd_gt = torch.rand(1, 1, 5, 5), torch.rand(1, 1, 10, 10)  # not a multiple of the scale: no zoom-out
    assert set(DUKDLoss(zoom_out_kd_weight=0.0, zoom_out_pixel_weight=0.0)(student, teacher, odd_lq, odd_gt, 2)) == {
        'l_zoom_in'}
    with pytest.raises(ValueError, match=r'lq and gt must be \(B, C, H, W\)'):
        DUKDLoss()(student, teacher, lq[0], gt, 2)
    twice = []
    for seed in (1, 2):  # the global generator differs, the given one does not
        torch.manual_seed(seed)
        twice.append(DUKDLoss(augmentation_probability=0.5, augmentations=flips)(
            student, teacher, lq, gt, 2, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(twice[0], twice[1], rtol=0, atol=0)


# ---- mtkd/methods/feature_taps.py --------------------------------------------------------------------------------
class _PairOutput(nn.Module):
    def forward(self, x):
        return x + 1, x * 2


class _ScalarOutput(nn.Module):
    def forward(self, x):
        return 3


class _TapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Identity()
        self.body = nn.Sequential(*[nn.Identity() for _ in range(7)])
        self.conv_first, self.conv_last = nn.Identity(), nn.Identity()
        self.pair, self.count, self.unused = _PairOutput(), _ScalarOutput(), nn.Identity()

    def forward(self, x):
        x = self.conv_last(self.body(self.conv_first(self.head(x))))
        self.count(x)
        first, _ = self.pair(x)
        return first


def test_feature_tap_messages_name_the_nearest_or_top_level_paths():
    net = _TapNet()
    tail = ' List all with mtkd.methods.feature_taps.list_module_paths(model) (or describe_module_paths).'
    with pytest.raises(ValueError) as error:
        FeatureTaps(net, ['module.body.9'])
    assert str(error.value).startswith(
        'paths: "module.body.9" is not a submodule of _TapNet. Paths refer to the bare network, without the '
        '"module." prefix of DataParallel / DistributedDataParallel: use "body.9". Nearest existing paths: ')
    with pytest.raises(ValueError) as error:
        FeatureTaps(net, ['body.9'])
    assert str(error.value) == ('paths: "body.9" is not a submodule of _TapNet. Nearest existing paths: body.6, '
                                'body.5, body.4, body.3, body.2.' + tail)
    with pytest.raises(ValueError, match=r'Nearest existing paths: count, conv_last, conv_first\.'):
        FeatureTaps(net, ['convx'])  # the last two are close only with cutoff 0.5
    with pytest.raises(ValueError) as error:
        FeatureTaps(net, ['zzz'])
    assert str(error.value) == ('paths: "zzz" is not a submodule of _TapNet. Top-level modules: head, body, '
                                'conv_first, conv_last, pair, count, unused.' + tail)
    with pytest.raises(ValueError, match=r'Top-level modules: \(none\)\.'):
        FeatureTaps(nn.Linear(1, 1), ['zzz'])
    with pytest.raises(ValueError, match='is not a submodule'):
        FeatureTaps(net, ['body:1:0'])  # the index is after the LAST colon


def test_feature_taps_describe_select_clone_and_repr():
    net, image = _TapNet(), torch.ones(1, 1, 2, 2)
    table = describe_module_paths(net, image, max_depth=1).splitlines()
    assert [row.split()[0] for row in table] == ['head', 'body', 'conv_first', 'conv_last', 'pair', 'count',
                                                 'unused']  # max_depth passed on: no 'body.0'
    rows = {row.split()[0]: row for row in table}
    assert rows['pair'].endswith('  _PairOutput  ((1, 1, 2, 2), (1, 1, 2, 2))')
    assert rows['count'].endswith('  _ScalarOutput  int') and rows['unused'].endswith('  Identity  -')
    assert describe_module_paths(nn.Linear(1, 1)) == ''
    for depth in (True, 1.5, 0):
        with pytest.raises(ValueError, match='max_depth must be a positive integer'):
            list_module_paths(net, depth)
    taps = FeatureTaps(net, ['pair:-2', 'pair:1', 'conv_last'], clone=True)
    assert taps.features == {}
    assert repr(taps) == ("FeatureTaps(_TapNet, paths=['pair:-2', 'pair:1', 'conv_last'], detach=False, clone=True, "
                          "active)")
    net(image)
    features = taps.features
    assert torch.equal(features['pair:-2'], image + 1) and torch.equal(features['pair:1'], image * 2)
    taps.remove()
    assert repr(taps).endswith('clone=True, removed)')
    with FeatureTaps(net, ['pair:2']) as out_of_range:
        with pytest.raises(IndexError, match='asks for element 2'):
            net(image)
    assert not out_of_range._handles


def test_feature_taps_without_clone_under_compile_record_no_version(monkeypatch):
    """Under torch.compile (here only its flag) version counters are not read: an in-place change after the module
    returned is not reported (clone=True is what the models use there)."""
    net = nn.Sequential(nn.Identity(), nn.Identity())
    taps = FeatureTaps(net, ['0'])
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    image = torch.ones(1, 1, 2, 2)
    net(image)
    image.add_(1)  # the captured tensor is the input itself (Identity)
    assert torch.equal(taps.features['0'], image)


# ---- mtkd/metrics/evaluation.py ----------------------------------------------------------------------------------
def test_image_tensor_conversions_swap_channels_and_scale_by_255():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 128, 255  # B, G, R
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 2, 3) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor[0, :, 0, 0], torch.tensor([255, 128, 10]) / 255.0)  # R, G, B
    back = tensor_to_image(tensor)
    assert back.dtype == np.uint8 and back.shape == (2, 3, 3) and (back == image).all()
    rgb = torch.tensor([1.2, 0.5, -0.1]).view(1, 3, 1, 1)  # clamped to [0, 1], rounded
    assert tensor_to_image(rgb)[0, 0].tolist() == [0, 128, 255]


def test_read_image_turns_a_decoder_error_into_an_image_read_error(tmp_path, monkeypatch):
    path = tmp_path / 'broken.png'
    path.write_bytes(b'not an image')

    def broken_decoder(*args):
        raise cv2.error('decoder failed')

    monkeypatch.setattr(cv2, 'imdecode', broken_decoder)
    with pytest.raises(ImageReadError, match='Cannot decode image'):
        read_image(str(path))


def test_y_planes_refuse_a_crop_that_leaves_nothing_and_accept_one_pixel():
    sr = np.full((3, 3, 3), 100, np.uint8)
    teachers, target = y_planes({'a': sr}, sr, 1)
    assert teachers.shape == (1, 1, 1) and target.shape == (1, 1) and target.dtype == np.float64
    with pytest.raises(ValueError, match='leaves no pixel'):
        y_planes({'a': sr}, sr, 2)


def test_benchmark_pairs_and_mean_score(tmp_path):
    (tmp_path / 'HR').mkdir()
    with pytest.raises(FileNotFoundError, match='LR_bicubic'):
        benchmark_pairs(str(tmp_path), 2)
    (tmp_path / 'LR_bicubic' / 'X2').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='No images in'):
        benchmark_pairs(str(tmp_path), 2)
    for name in ('b.png', 'a.png'):
        (tmp_path / 'HR' / name).write_bytes(b'')
    hr, lr = str(tmp_path / 'HR'), str(tmp_path / 'LR_bicubic' / 'X2')
    assert benchmark_pairs(str(tmp_path), 2) == [('a', f'{hr}/a.png', f'{lr}/ax2.png'),
                                                 ('b', f'{hr}/b.png', f'{lr}/bx2.png')]
    with pytest.raises(FileNotFoundError, match='X3 is missing'):
        benchmark_pairs(str(tmp_path), 3)
    mean = mean_score({'a': ImageScore(30.0, 0.75), 'b': ImageScore(32.0, 0.875)})
    assert (mean.psnr, mean.ssim) == (31.0, 0.8125)


# ---- mtkd/archs/dctswin_arch.py ----------------------------------------------------------------------------------
def _dctswin_by_hand(net: DCTSwin, teacher_outputs: torch.Tensor) -> torch.Tensor:
    """DCTSwin's forward as the paper and the docstring state it: input times img_range, pixel-unshuffle, conv;
    reflect padding to the window (replicate when the pad is not smaller than the side); blocks, each
    conv(layers(x)) + x; conv after the body plus the shallow features; upsampler; divided by img_range."""
    shallow = net.conv_first(F.pixel_unshuffle(teacher_outputs * net.img_range, net.upscale))
    height, width = shallow.shape[-2:]
    pad_h, pad_w = -height % net.window_size, -width % net.window_size
    mode = 'reflect' if pad_h < height and pad_w < width else 'replicate'
    deep = F.pad(shallow, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else shallow
    for block in net.blocks:
        tokens = deep.permute(0, 2, 3, 1)
        for layer in block.layers:
            tokens = layer(tokens)
        deep = block.conv(tokens.permute(0, 3, 1, 2)) + deep
    features = net.conv_after_body(deep[..., :height, :width]) + shallow
    return net.upsampler(features) / net.img_range


def test_dctswin_forward_equals_its_stated_composition_with_img_range_255_and_both_paddings():
    torch.manual_seed(0)
    net = DCTSwin(num_teachers=2, num_feat=8, num_block=2, num_layer=2, window_size=4, num_heads=2, upscale=2,
                  img_range=255.)
    for size in ((12, 10), (4, 6)):  # LR 6x5: reflect pads 2 and 3; LR 2x3: pad 2 = side, so replicate
        teacher_outputs = torch.rand(1, 6, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(net(teacher_outputs), _dctswin_by_hand(net, teacher_outputs))


def test_dctswin_bias_table_starts_small_and_the_mixer_width_formula():
    torch.manual_seed(0)
    table = DCTSwin(num_feat=8, num_block=1, window_size=4, num_heads=2).blocks[0].layers[0].mixer.relative_bias_table
    assert 0.01 < table.std() < 0.04  # trunc_normal_(std=0.02)
    for num_feat, window, heads in ((1, 8, 1), (60, 8, 6), (24, 8, 6)):
        tokens = window ** 2
        attention = 4 * num_feat ** 2 + 4 * num_feat + (2 * window - 1) ** 2 * heads
        assert mixer_hidden_tokens(num_feat, window, heads) == max(1, round((attention - tokens) / (2 * tokens + 1)))
    assert [mixer_hidden_tokens(*args) for args in ((1, 8, 1), (60, 8, 6))] == [1, 123]
