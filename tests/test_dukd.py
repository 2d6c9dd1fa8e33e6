"""DUKD terms (``mtkd.methods.dukd``): exact inverses, zoom-in tile positions, zoom-out values, label consistency,
gradients."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import mtkd  # noqa: F401  (before basicsr)
from mtkd.methods.dukd import (INVERTIBLE_AUGMENTATIONS, OFFICIAL_AUGMENTATIONS, DUKDLoss, augment,
                               choose_zoom_in_tiles, deaugment, invertible_augmentations, sample_augmentation_masks,
                               zoom_in_inputs, zoom_out_inputs)


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_augmentation_is_exactly_inverted():
    images = torch.rand(2, 3, 5, 7, generator=_seeded())
    for name, (forward, inverse) in INVERTIBLE_AUGMENTATIONS.items():
        changed = forward(images)
        assert torch.equal(inverse(changed), images), name
        if name != 'identity':
            assert changed.shape != images.shape or not torch.equal(changed, images), name
    # The 8 geometric maps are distinct (D4 has 8 elements) on a generic square image.
    square = torch.rand(1, 1, 4, 4, generator=_seeded(1))
    outputs = [INVERTIBLE_AUGMENTATIONS[name][0](square) for name in INVERTIBLE_AUGMENTATIONS if name != 'invert']
    assert len({tuple(output.flatten().tolist()) for output in outputs}) == 8
    assert torch.equal(INVERTIBLE_AUGMENTATIONS['invert'][0](square), 1 - square)
    with pytest.raises(ValueError, match='unknown augmentation'):
        invertible_augmentations(['hflip', 'shear'])


def test_per_sample_composition_is_exactly_inverted_for_every_combination():
    # All 16 subsets of the official 4 operations, one per sample, including transpose + one flip (a 90° rotation,
    # where re-applying the forward operations in forward order would NOT restore the image).
    names = list(OFFICIAL_AUGMENTATIONS)
    masks = torch.tensor(list(itertools.product([False, True], repeat=4))).T  # (4, 16)
    images = torch.rand(16, 3, 6, 6, generator=_seeded(2))
    augmented = augment(images, names, masks)
    assert torch.equal(deaugment(augmented, names, masks), images)
    # Sample 0 has no augmentation; sample with only 'invert' is 1 - x; transpose + vflip is a 90° rotation.
    assert torch.equal(augmented[0], images[0])
    only_invert = [index for index in range(16) if masks[:, index].tolist() == [True, False, False, False]][0]
    assert torch.equal(augmented[only_invert], 1 - images[only_invert])
    rotation = [index for index in range(16) if masks[:, index].tolist() == [False, True, False, True]][0]
    assert torch.equal(augmented[rotation], torch.rot90(images[rotation], -1, dims=(-2, -1)))
    with pytest.raises(ValueError, match='square'):
        augment(torch.rand(2, 3, 4, 6), names, torch.ones(4, 2, dtype=torch.bool))


def test_augmentation_draws_follow_probability():
    masks = sample_augmentation_masks(20000, OFFICIAL_AUGMENTATIONS, 0.3, _seeded(3))
    assert masks.shape == (4, 20000)
    assert torch.allclose(masks.float().mean(1), torch.full((4,), 0.3), atol=0.015)
    assert not sample_augmentation_masks(50, OFFICIAL_AUGMENTATIONS, 0.0, _seeded()).any()
    assert sample_augmentation_masks(50, OFFICIAL_AUGMENTATIONS, 1.0, _seeded()).all()
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        sample_augmentation_masks(4, OFFICIAL_AUGMENTATIONS, 1.5)


def test_zoom_in_tiles_are_grid_sub_arrays_of_gt():
    scale, lq_size, batch = 4, 3, 2
    # Each pixel holds its own (sample, row, column) code, so a crop tells where it came from.
    rows = torch.arange(scale * lq_size).view(1, 1, -1, 1).float()
    columns = torch.arange(scale * lq_size).view(1, 1, 1, -1).float()
    gt = (torch.arange(batch).view(-1, 1, 1, 1) * 10000 + rows * 100 + columns).expand(batch, 3, -1, -1).clone()
    tiles = choose_zoom_in_tiles(gt.shape[-2:], lq_size, 3, _seeded(5))
    crops = zoom_in_inputs(gt, lq_size, _seeded(5), num_tiles=3)
    assert crops.shape == (3 * batch, 3, lq_size, lq_size)
    assert len(set(tiles)) == 3 and all(0 <= row < scale and 0 <= column < scale for row, column in tiles)
    for tile_index, (row, column) in enumerate(tiles):
        for sample in range(batch):
            crop = crops[tile_index * batch + sample]  # tile-major, as the official torch.cat
            expected = gt[sample, :, row * lq_size:(row + 1) * lq_size, column * lq_size:(column + 1) * lq_size]
            assert torch.equal(crop, expected)
            assert crop[0, 0, 0].item() == sample * 10000 + row * lq_size * 100 + column * lq_size
    # Every grid cell can be drawn; a different seed draws differently.
    seen = {choose_zoom_in_tiles((12, 12), 3, 1, _seeded(seed))[0] for seed in range(300)}
    assert seen == {(row, column) for row in range(4) for column in range(4)}
    with pytest.raises(ValueError, match='num_tiles'):
        zoom_in_inputs(gt, lq_size, num_tiles=17)


def test_zoom_out_matches_basicsr_matlab_imresize_and_keeps_constants():
    from basicsr.utils.matlab_functions import imresize as basicsr_imresize  # what the official code calls

    constant = torch.full((2, 3, 8, 12), 0.375)
    small = zoom_out_inputs(constant, 4)
    assert small.shape == (2, 3, 2, 3)
    assert torch.allclose(small, torch.full_like(small, 0.375), atol=1e-7, rtol=0)
    lq = torch.rand(2, 3, 12, 12, generator=_seeded(6))
    small = zoom_out_inputs(lq, 3)
    reference = torch.stack([basicsr_imresize(image, 1 / 3) for image in lq])
    assert small.shape == (2, 3, 4, 4)
    assert torch.allclose(small, reference.float(), atol=2e-6, rtol=0)
    # A bicubic shrink is a local weighted mean: not a plain subsampling of the input.
    assert not torch.allclose(small, lq[..., 1::3, 1::3], atol=1e-3)
    with pytest.raises(ValueError, match='multiple of the scale'):
        zoom_out_inputs(torch.rand(1, 3, 10, 12), 4)


class _CenteredGain(torch.nn.Module):
    """``up(w·(x - ½) + ½)``: equivariant to flips, transposes and colour inversion for any ``w``."""

    def __init__(self, scale, gain=0.5):
        super().__init__()
        self.scale = scale
        self.gain = torch.nn.Parameter(torch.tensor(gain))

    def forward(self, x):
        return F.interpolate(self.gain * (x - 0.5) + 0.5, scale_factor=self.scale, mode='nearest')


class _TinyConvSR(torch.nn.Module):
    """A non-equivariant student: an asymmetric 3x3 convolution, then nearest upsampling."""

    def __init__(self, scale, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.scale = scale
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=self.scale, mode='nearest')


def _dyadic_pair(scale, batch=2, lq_size=4, seed=7):
    # Multiples of 1/64: every operation in _CenteredGain(gain=0.5) is then exact in float32.
    gt = torch.randint(0, 65, (batch, 3, lq_size * scale, lq_size * scale), generator=_seeded(seed)).float() / 64
    lq = zoom_out_inputs(gt, scale)
    return lq, gt


@pytest.mark.parametrize('names', [[name] for name in INVERTIBLE_AUGMENTATIONS] + [list(OFFICIAL_AUGMENTATIONS)])
def test_label_consistency_is_zero_for_an_equivariant_student_equal_to_the_teacher(names):
    scale = 2
    lq, gt = _dyadic_pair(scale)
    network = _CenteredGain(scale)
    loss = DUKDLoss(zoom_out_kd_weight=0, zoom_out_pixel_weight=0, augmentation_probability=1.0,
                    augmentations=names, num_tiles=2)
    terms = loss(network, network, lq, gt, scale, _seeded(8))
    assert set(terms) == {'l_zoom_in'}
    assert terms['l_zoom_in'].item() == 0.0

    # The same loss with a non-equivariant student that equals the teacher: only the identity gives zero.
    student = _TinyConvSR(scale)
    terms = loss(student, student, lq, gt, scale, _seeded(8))
    if names == ['identity']:
        assert terms['l_zoom_in'].item() == 0.0
    else:
        assert terms['l_zoom_in'].item() > 1e-3, names


def test_terms_match_hand_computation_and_weights():
    scale = 2
    lq, gt = _dyadic_pair(scale, seed=9)
    student, teacher = _TinyConvSR(scale, seed=1), _TinyConvSR(scale, seed=2)
    loss = DUKDLoss(zoom_in_weight=2.0, zoom_out_kd_weight=3.0, zoom_out_pixel_weight=5.0,
                    augmentation_probability=0.0, num_tiles=1)
    terms = loss(student, teacher, lq, gt, scale, _seeded(10))
    tiles = zoom_in_inputs(gt, lq.shape[-2:], _seeded(10), 1)
    small = zoom_out_inputs(lq, scale)
    with torch.no_grad():
        assert torch.allclose(terms['l_zoom_in'], 2.0 * (student(tiles) - teacher(tiles)).abs().mean())
        assert torch.allclose(terms['l_zoom_out_kd'], 3.0 * (student(small) - teacher(small)).abs().mean())
        assert torch.allclose(terms['l_zoom_out_pix'], 5.0 * (student(small) - lq).abs().mean())
    assert set(DUKDLoss(zoom_in_weight=0)(student, teacher, lq, gt, scale)) == {'l_zoom_out_kd', 'l_zoom_out_pix'}
    with pytest.raises(ValueError, match='zoom_in_weight'):
        DUKDLoss(zoom_in_weight=-1)
    with pytest.raises(ValueError, match='not scale=3'):
        loss(student, teacher, lq, gt, 3)


def test_every_term_trains_the_student_and_never_the_teacher():
    scale = 2
    lq, gt = _dyadic_pair(scale, seed=11)
    student, teacher = _TinyConvSR(scale, seed=3), _TinyConvSR(scale, seed=4)
    loss = DUKDLoss(augmentation_probability=0.5, num_tiles=2)
    terms = loss(student, teacher, lq, gt, scale, _seeded(12))
    assert set(terms) == {'l_zoom_in', 'l_zoom_out_kd', 'l_zoom_out_pix'}
    for name, term in terms.items():
        student.zero_grad(set_to_none=True)
        assert term.ndim == 0 and term.requires_grad, name
        term.backward(retain_graph=True)  # the two zoom-out terms share one student forward
        for parameter in student.parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        for parameter in teacher.parameters():
            assert parameter.grad is None, name
