"""Geometric self-ensemble (x8): exact inverses, the mean it must give, and where it is switched on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd.transforms.self_ensemble import NUM_TRANSFORMS, dihedral, inverse_dihedral, self_ensemble

SCALE = 2


def nearest_upsample(images: torch.Tensor) -> torch.Tensor:
    """Commutes with every rotation and mirror: its self-ensemble is itself."""
    return images.repeat_interleave(SCALE, dim=-2).repeat_interleave(SCALE, dim=-1)


def row_ramp(images: torch.Tensor) -> torch.Tensor:
    """``nearest_upsample`` plus the output row index: not rotation-equivariant."""
    output = nearest_upsample(images)
    rows = torch.arange(output.shape[-2], dtype=output.dtype).view(-1, 1)
    return output + rows


def numpy_dihedral(array: np.ndarray, index: int) -> np.ndarray:
    if index >= 4:
        array = np.flip(array, axis=-1)
    return np.rot90(array, index % 4, axes=(-2, -1))


@pytest.mark.parametrize('index', range(NUM_TRANSFORMS))
def test_each_transform_matches_numpy_and_is_undone_by_its_inverse(index):
    images = torch.rand(2, 3, 5, 7)
    transformed = dihedral(images, index)
    assert np.array_equal(transformed.numpy(), numpy_dihedral(images.numpy(), index))
    assert torch.equal(inverse_dihedral(transformed, index), images)


def test_the_eight_transforms_are_distinct():
    image = torch.arange(12.0).view(1, 1, 3, 4)[..., :3]  # 3x3, no symmetry
    images = [dihedral(image, index).flatten().tolist() for index in range(NUM_TRANSFORMS)]
    assert len({tuple(values) for values in images}) == NUM_TRANSFORMS


def test_an_equivariant_network_is_its_own_self_ensemble():
    images = torch.rand(2, 3, 5, 7)  # not square: odd rotations give 7x5 inputs
    assert torch.allclose(self_ensemble(nearest_upsample, images), nearest_upsample(images), atol=1e-7)


def test_a_position_dependent_term_averages_over_the_group():
    # T_k^-1(up(T_k x) + R) = up(x) + T_k^-1(R); the orbit of the row ramp R = i under the 8 transforms is i,
    # S-1-i, j and S-1-j, twice each, so their mean is the constant (S - 1) / 2 on an S x S output.
    images = torch.rand(1, 3, 6, 6)
    size = 6 * SCALE
    expected = nearest_upsample(images) + (size - 1) / 2
    assert torch.allclose(self_ensemble(row_ramp, images), expected, atol=1e-5)
    assert not torch.allclose(row_ramp(images), expected, atol=0.1)


def test_a_conv_network_equals_the_explicit_mean_of_its_eight_runs():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 3 * SCALE ** 2, 3, padding=1), torch.nn.PixelShuffle(SCALE))
    images = torch.rand(1, 3, 4, 6)
    with torch.no_grad():
        runs = []
        for index in range(NUM_TRANSFORMS):
            output = network(torch.from_numpy(numpy_dihedral(images.numpy(), index).copy())).numpy()
            undo = np.rot90(output, -(index % 4), axes=(-2, -1))
            runs.append(np.flip(undo, axis=-1) if index >= 4 else undo)
        ensembled = self_ensemble(network, images)
        assert np.allclose(ensembled.numpy(), np.mean(runs, axis=0), atol=1e-6)
        assert not torch.allclose(ensembled, network(images), atol=1e-3)


def test_a_network_that_ignores_orientation_is_refused():
    with pytest.raises(ValueError, match='transform 1 gave an output of shape'):
        self_ensemble(lambda images: torch.zeros(1, 3, 4, 6), torch.rand(1, 3, 2, 3))


def test_half_precision_outputs_are_accumulated_in_float32():
    images = torch.full((1, 1, 2, 2), 0.1)
    # Eight float16 outputs of 10000 sum to 80000, past float16's largest value (65504): a float16 sum is inf.
    result = self_ensemble(lambda batch: torch.full_like(batch, 10000.0, dtype=torch.float16), images)
    assert result.dtype == torch.float32 and torch.all(result == 10000.0)


def test_bad_transform_index_is_refused():
    with pytest.raises(ValueError, match='0..7'):
        dihedral(torch.rand(1, 1, 2, 2), 8)
