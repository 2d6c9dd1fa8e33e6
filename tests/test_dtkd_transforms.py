"""Edge maps and image entropy (mtkd/transforms/edges.py, entropy.py): reference values and known answers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.measure import shannon_entropy

from mtkd.transforms.edges import edge_map, fractional_kernel, rgb_to_luma
from mtkd.transforms.entropy import gray_levels, image_entropy


def test_gray_levels_equal_opencv_bgr2gray_bit_for_bit():
    images = torch.rand(3, 3, 37, 41, generator=torch.Generator().manual_seed(0))
    levels = gray_levels(images).numpy()
    for index in range(3):
        rgb = (images[index].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        reference = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY)
        np.testing.assert_array_equal(levels[index], reference)


def test_entropy_known_answers_and_skimage_reference():
    flat = torch.full((1, 3, 8, 8), 0.5)
    halves = torch.zeros(1, 3, 8, 8)
    halves[..., 4:] = 1.0  # two gray levels, equally frequent: 1 bit
    ramp = (torch.arange(256.) / 255).view(1, 1, 16, 16).expand(1, 3, 16, 16)  # 256 levels once each: 8 bits
    values = image_entropy(torch.cat([flat, halves, torch.zeros(1, 3, 8, 8)]))
    torch.testing.assert_close(values, torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(image_entropy(ramp), torch.tensor([8.0]))
    photo = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) ** 2
    reference = [shannon_entropy(gray_levels(photo)[index].numpy(), base=2) for index in range(2)]
    torch.testing.assert_close(image_entropy(photo), torch.tensor(reference, dtype=torch.float32))


def test_windowed_entropy_is_the_entropy_of_each_window():
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    images[0, :, :8, :8] = 0.25  # one flat window
    windows = image_entropy(images, window_size=8)
    assert windows.shape == (2, 2, 3) and windows[0, 0, 0] == 0
    torch.testing.assert_close(windows[1, 1, 2], image_entropy(images[1:, :, 8:, 16:])[0])
    with pytest.raises(ValueError, match='multiple of the entropy window'):
        image_entropy(images, window_size=5)


def test_edge_maps_reference_values():
    # A vertical step of height 1 in luma: Sobel |gx| = 4 on the two columns next to the step, 0 elsewhere.
    step = torch.zeros(1, 3, 6, 6)
    step[..., 3:] = 1.0
    sobel = edge_map(step, 'sobel', eps=0.0)
    torch.testing.assert_close(sobel[0, 0, :, 2:4], torch.full((6, 2), 4.0))
    assert sobel[0, 0, :, [0, 1, 4, 5]].abs().max() == 0  # replicate padding: no border edge
    laplacian = edge_map(step, 'laplacian')
    torch.testing.assert_close(laplacian[0, 0, 0], torch.tensor([0., 0., 1., -1., 0., 0.]))
    constant = torch.full((1, 3, 5, 5), 0.7)
    assert edge_map(constant, 'laplacian').abs().max() < 1e-6
    assert edge_map(constant, 'fractional', order=1.0).abs().max() < 1e-5  # v = 1, 3x3: a pure derivative
    torch.testing.assert_close(rgb_to_luma(torch.tensor([1., 0., 0.]).view(1, 3, 1, 1)), torch.tensor([[[[0.299]]]]))


def test_fractional_kernel_is_the_authors_mask():
    order = 0.5
    a1, a2 = -order, -order * (1 - order) / 2
    expected = torch.tensor([[a2, 0, a2, 0, a2], [0, a1, a1, a1, 0], [a2, a1, 8, a1, a2],
                             [0, a1, a1, a1, 0], [a2, 0, a2, 0, a2]])
    torch.testing.assert_close(fractional_kernel(order, 5), expected)
    a3 = -order * (1 - order) * (2 - order) / 6
    kernel7 = fractional_kernel(order, 7)
    assert kernel7[0, 0] == a3 and kernel7[3, 6] == a3 and kernel7[0, 1] == 0 and kernel7[1, 3] == a2
