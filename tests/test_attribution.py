"""mtkd.analysis.attribution (LAM over the KA network's input, Gu and Dong CVPR 2021; MTKD Fig. 4) and
scripts/teacher_attribution.py: known answers on constructed aggregators, LAM's definitions, the command line."""
from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mtkd.analysis.attribution import (METHODS, blur_path_kernels, diffusion_index, gini_coefficient, local_attribution,
                                       teacher_attribution)
from mtkd.teachers.ensemble import TeacherMismatchError

from conftest import REPO_ROOT, load_script
FAST = {'fold': 12}  # path steps for the tests (LAM: 50); the known answers below do not depend on it


def selecting_conv(num_teachers: int, weights: dict[int, float], kernel_size: int = 1) -> nn.Conv2d:
    """A fixed "KA network" whose output is sum_k weights[k] * teacher k (channel by channel)."""
    conv = nn.Conv2d(3 * num_teachers, 3, kernel_size, padding=kernel_size // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        for teacher, weight in weights.items():
            for channel in range(3):
                conv.weight[channel, 3 * teacher + channel, kernel_size // 2, kernel_size // 2] = weight
    return conv


def random_teachers(count: int, size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, size, size, generator=generator, dtype=torch.float64) for _ in range(count)]


# ---- known answers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('method', ['lam', 'gradient'])
@pytest.mark.parametrize('teacher', [0, 2])
def test_a_copy_of_teacher_k_is_attributed_to_teacher_k(method, teacher):
    network = selecting_conv(3, {teacher: 1.0})
    result = teacher_attribution(network, random_teachers(3), (4, 5, 6, 6), method, names=['a', 'b', 'c'], **FAST)
    name = 'abc'[teacher]
    assert result.shares[name] > 0.99
    # The other teachers' channels do not reach the output at all: their gradient is exactly 0.
    assert all(result.shares[other] == 0.0 for other in 'abc' if other != name)
    assert sum(result.shares.values()) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(result.diffusion_index['a' if teacher else 'b'])  # all-zero map: no Gini coefficient


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('channel_reduction', ['abs_sum', 'lam'])
def test_weighted_average_of_identical_teachers_gives_the_weights(method, channel_reduction):
    # Output 0.75 T0 + 0.25 T1 with T0 = T1 = x. Every path moves both teachers alike, so along the path the output is
    # always F(gamma) = gamma and the gradient on teacher k's channels is w_k * dD/dy(gamma); the path derivative is
    # the same for both. Hence A_0 = 0.75 G and A_1 = 0.25 G pixel by pixel: shares 0.75 / 0.25 exactly, for LAM
    # as for gradient x input (and for any detector), up to float rounding.
    image = random_teachers(1, seed=3)[0]
    network = selecting_conv(2, {0: 0.75, 1: 0.25})
    result = teacher_attribution(network, [image, image.clone()], (3, 3, 8, 8), method,
                                 channel_reduction=channel_reduction, **FAST)
    assert result.shares[0] == pytest.approx(0.75, abs=1e-12)
    assert result.shares[1] == pytest.approx(0.25, abs=1e-12)
    np.testing.assert_allclose(result.maps[0], 3 * result.maps[1], rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize('method', METHODS)
def test_attribution_is_local_for_a_3x3_conv(method):
    torch.manual_seed(1)
    network = nn.Conv2d(6, 3, 3, padding=1).double()
    top, left, height, width = 5, 6, 4, 3
    result = teacher_attribution(network, random_teachers(2), (top, left, height, width), method, **FAST)
    support = np.abs(result.attribution).sum(axis=0) > 0
    # The 3x3 conv adds 1 pixel on every side; LAM's forward-difference detector also reads output row top+height
    # and column left+width (y[i+1, j], y[i, j+1]), one more at the bottom and right.
    expected = np.zeros_like(support)
    expected[top - 1:top + height + 2, left - 1:left + width + 2] = True
    assert not support[~expected].any()  # exactly 0 outside
    assert support[top - 1].any() and support[top + height + 1].any()  # and the support reaches every edge
    assert support[:, left - 1].any() and support[:, left + width + 1].any()
    assert np.array_equal(result.total_map > 0, support)


# ---- LAM's definitions -------------------------------------------------------------------------------------------
def test_diffusion_index_exact_values():
    one_hot = np.zeros((8, 8))
    one_hot[3, 5] = 7.0
    assert gini_coefficient(one_hot) == 63 / 64  # (n - 1) / n: all attribution on one pixel
    assert diffusion_index(one_hot) == 100 / 64
    assert diffusion_index(np.full((8, 8), 0.3)) == 100.0  # spread evenly: Gini 0
    assert diffusion_index(np.array([0.0, 0.0, 1.0, 1.0])) == 50.0
    assert np.isnan(diffusion_index(np.zeros((4, 4))))
    with pytest.raises(ValueError, match='non-negative'):
        gini_coefficient(np.array([1.0, -1.0]))


def test_gini_equals_lams_mean_absolute_difference_form():
    values = np.random.default_rng(0).gamma(0.5, size=300)
    # LAM's definition: mean absolute difference over twice the mean.
    pairwise = np.abs(values[:, None] - values[None, :]).sum() / (2 * values.size ** 2 * values.mean())
    assert gini_coefficient(values) == pytest.approx(pairwise, rel=1e-12)
    assert gini_coefficient(5 * values) == pytest.approx(gini_coefficient(values), rel=1e-12)  # scale invariant


def test_gini_relates_to_lams_offset_version_as_documented():
    # LAM's code normalises the map by its maximum and adds 1e-7 to every value before its Gini; adding a constant keeps
    # the order, so its coefficient is ours times S / (S + n 1e-7), S the sum of the normalised map.
    values = np.random.default_rng(1).gamma(0.3, size=(40, 50))
    normalised = values / values.max() + 1e-7
    ordered = np.sort(normalised.ravel())
    ranks = np.arange(1, ordered.size + 1)
    lams = np.sum((2 * ranks - ordered.size - 1) * ordered) / (ordered.size * ordered.sum())
    total = (values / values.max()).sum()
    assert lams == pytest.approx(gini_coefficient(values) * total / (total + values.size * 1e-7), rel=1e-9)


def _reference_lam(network, image, region, sigma, fold, kernel_size):
    """LAM's GaussianBlurPath + Path_gradient + saliency_map_PG one step at a time, blurring with cv2.filter2D."""
    offsets = np.arange(kernel_size) - kernel_size // 2
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernels = [np.exp(-squared / (2 * (s + 1e-5) ** 2)) for s in np.linspace(sigma, 0, fold + 1)]
    kernels = [kernel / kernel.sum() for kernel in kernels]
    hwc = image[0].permute(1, 2, 0).numpy()
    top, left, height, width = region
    total = np.zeros(image.shape[1:])
    for step in range(fold):
        point = torch.from_numpy(np.ascontiguousarray(cv2.filter2D(hwc, -1, kernels[step + 1]).transpose(2, 0, 1)))
        derivative = cv2.filter2D(hwc, -1, (kernels[step + 1] - kernels[step]) * fold).transpose(2, 0, 1)
        point = point[None].requires_grad_(True)
        output = network(point)
        rows = (output[:, :, :-1, :] - output[:, :, 1:, :]) ** 2
        cols = (output[:, :, :, :-1] - output[:, :, :, 1:]) ** 2
        magnitude = torch.sqrt(rows[:, :, :, :-1] + cols[:, :, :-1, :])
        magnitude[:, :, top:top + height, left:left + width].sum().backward()
        total += point.grad[0].numpy() * derivative
    return total / fold


def test_lam_matches_a_step_by_step_reference_on_cv2_filter2d():
    torch.manual_seed(2)
    network = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 3, padding=1)).double()
    image = torch.cat(random_teachers(2, size=12, seed=5), dim=1)
    region, sigma, fold, kernel_size = (3, 4, 5, 4), 1.2, 7, 5
    expected = _reference_lam(network, image, region, sigma, fold, kernel_size)
    # chunk_size 3 splits the 7 steps as 3 + 3 + 1.
    result = local_attribution(network, image, region, 'lam', sigma=sigma, fold=fold, kernel_size=kernel_size,
                               chunk_size=3)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-10, atol=1e-14)


def test_blur_path_runs_from_sigma_to_the_image_itself():
    kernels = blur_path_kernels(1.2, 4, 9)
    assert kernels.shape == (5, 9, 9)
    delta = torch.zeros(9, 9, dtype=torch.float64)
    delta[4, 4] = 1
    assert torch.equal(kernels[-1], delta)  # sigma 0 (+1e-5): the last path point is the input exactly
    assert kernels[0][4, 4] < kernels[1][4, 4] < kernels[2][4, 4]  # sharper at every step
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(5, dtype=torch.float64))


def test_lam_path_integral_is_complete_and_converges():
    # LAM is a path integral: the attribution sums to D(F(x)) - D(F(baseline)), up to the Riemann error.
    torch.manual_seed(4)
    network = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 3, padding=1)).double()
    teachers = random_teachers(2, seed=6)
    coarse = teacher_attribution(network, teachers, (4, 4, 6, 6), 'lam', fold=25)
    fine = teacher_attribution(network, teachers, (4, 4, 6, 6), 'lam', fold=100)
    difference = coarse.target - coarse.baseline_target
    assert abs(coarse.completeness_gap) < 0.05 * abs(difference)
    assert abs(fine.completeness_gap) < 0.5 * abs(coarse.completeness_gap)


def test_chunking_does_not_change_the_result_and_the_network_is_left_as_it_was():
    torch.manual_seed(7)
    network = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).double()
    network.train()
    teachers = random_teachers(2, seed=8)
    one = teacher_attribution(network, teachers, (2, 2, 5, 5), 'lam', fold=6, chunk_size=1)
    all_at_once = teacher_attribution(network, teachers, (2, 2, 5, 5), 'lam', fold=6, chunk_size=6)
    np.testing.assert_allclose(one.attribution, all_at_once.attribution, rtol=1e-12, atol=1e-16)
    assert network.training
    assert all(parameter.grad is None for parameter in network.parameters())


def test_bad_arguments_are_refused_with_the_argument_named():
    network = selecting_conv(2, {0: 1.0})
    teachers = random_teachers(2)
    with pytest.raises(ValueError, match='region'):
        teacher_attribution(network, teachers, (10, 10, 8, 8))
    with pytest.raises(ValueError, match='method'):
        teacher_attribution(network, teachers, (1, 1, 4, 4), 'saliency')
    with pytest.raises(ValueError, match='teacher_outputs'):
        teacher_attribution(network, torch.cat(teachers, dim=1), (1, 1, 4, 4))
    flat = [torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)] * 2
    with pytest.raises(ValueError, match='flat region'):
        teacher_attribution(network, flat, (1, 1, 4, 4), 'gradient')


# ---- the command line --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    """Two tiny EDSR teachers (x2) with saved weights, their option file, a tiny DCTSwin KA checkpoint, LR/HR images."""
    from basicsr.archs import build_network

    from mtkd.teachers.ensemble import TeacherEnsemble, teacher_specs_from_options

    folder = tmp_path_factory.mktemp('attribution')
    torch.manual_seed(0)
    teachers = []
    for index in range(2):
        network_options = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1,
                           'upscale': 2}
        path = folder / f'edsr_{index}.pth'
        torch.save(build_network(dict(network_options)).state_dict(), path)
        teachers.append({'name': f'edsr_{index}', 'network': network_options, 'weights': str(path)})
    network_g = {'type': 'DCTSwin', 'num_teachers': 2, 'num_out_ch': 3, 'num_feat': 6, 'num_block': 1,
                 'num_layer': 2, 'window_size': 4, 'num_heads': 2, 'upscale': 2}
    options = {'name': 'tiny', 'model_type': 'KnowledgeAggregationModel', 'scale': 2, 'teachers': teachers,
               'network_g': network_g}
    option_path = folder / 'tiny.yml'
    option_path.write_text(yaml.safe_dump(options))
    fingerprint = TeacherEnsemble(teacher_specs_from_options(teachers), scale=2).fingerprint()
    ka_path = folder / 'ka.pth'
    torch.save({'params': build_network(dict(network_g)).state_dict(), 'teachers': fingerprint}, ka_path)
    swapped_path = folder / 'ka_swapped.pth'
    torch.save({'params': torch.load(ka_path)['params'], 'teachers': fingerprint[::-1]}, swapped_path)
    rng = np.random.default_rng(0)
    lr_path, hr_path = folder / 'imgx2.png', folder / 'img.png'
    cv2.imwrite(str(lr_path), rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    cv2.imwrite(str(hr_path), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    return {'folder': folder, 'options': str(option_path), 'ka': str(ka_path), 'swapped': str(swapped_path),
            'lr': str(lr_path), 'hr': str(hr_path)}


@pytest.mark.parametrize('method', ['lam', 'gradient'])
def test_script_end_to_end(tiny_setup, capsys, method):
    script = load_script('teacher_attribution')
    output = tiny_setup['folder'] / f'figure_{method}.png'
    code = script.main(['-opt', tiny_setup['options'], '--ka-weights', tiny_setup['ka'], '--image', tiny_setup['lr'],
                        '--hr', tiny_setup['hr'], '--region', '6', '8', '5', '7', '--method', method, '--fold', '4',
                        '--kernel-size', '5', '--device', 'cpu', '--output', str(output)])
    assert code == 0
    printed = capsys.readouterr().out
    shares = [float(match) for match in re.findall(r'^edsr_\d\s+([0-9.]+)\s', printed, flags=re.MULTILINE)]
    assert len(shares) == 2
    assert sum(shares) == pytest.approx(1.0, abs=2e-4)  # printed with 4 decimals
    assert re.search(r'^MT\s+1\.0000\s', printed, flags=re.MULTILINE)
    figure = cv2.imread(str(output))
    # Two rows of (caption + 20x24 HR tile); columns: LR, 2 teachers, MT.
    assert figure.shape == (2 * (20 + script.LABEL_HEIGHT), 4 * 24, 3)


def test_script_refuses_without_ka_weights(tiny_setup, capsys):
    script = load_script('teacher_attribution')
    with pytest.raises(SystemExit) as raised:
        script.main(['-opt', tiny_setup['options'], '--image', tiny_setup['lr'], '--region', '0', '0', '4', '4'])
    assert raised.value.code == 2
    assert '--ka-weights is required' in capsys.readouterr().err


def test_script_refuses_a_ka_checkpoint_of_other_teachers(tiny_setup, tmp_path):
    script = load_script('teacher_attribution')
    with pytest.raises(TeacherMismatchError, match='order matters'):
        script.main(['-opt', tiny_setup['options'], '--ka-weights', tiny_setup['swapped'], '--image', tiny_setup['lr'],
                     '--region', '0', '0', '4', '4', '--output', str(tmp_path / 'never.png')])


def test_script_on_the_real_teachers_with_a_mean_aggregator(tmp_path, capsys):
    """The light stage-1 teachers (IMDN, RLFN, PAN, RFDN_AIM) on a crop of Set5 baby, with a DCTSwin whose learned
    part is zero and global_residual on: MT is exactly the teacher mean, so each teacher's gradient is 1/4 of the
    same detector gradient and gradient x input gives each about 1/4 (exactly 1/4 if the outputs were equal)."""
    from basicsr.archs import build_network

    from conftest import dataset_dir, official_weight
    from mtkd.teachers.ensemble import fingerprint_specs, teacher_specs_from_options

    for file_name in ('IMDN_x4.pth', 'rlfn_x4.pth', 'PANx4_DF2K.pth', 'RFDN_AIM.pth'):
        official_weight(file_name)
    lr = cv2.imread(os.path.join(dataset_dir('Set5'), 'LR_bicubic', 'X4', 'babyx4.png'))[40:72, 30:62]  # left eye
    lr_path = tmp_path / 'eye.png'
    cv2.imwrite(str(lr_path), lr)
    option_path = os.path.join(REPO_ROOT, 'options', 'stage1_ka_light_x4_global_residual.yml')
    with open(option_path) as handle:
        options = yaml.safe_load(handle)
    network = build_network(dict(options['network_g']))
    with torch.no_grad():
        network.upsampler[0].weight.zero_()
        network.upsampler[0].bias.zero_()
    ka_path = tmp_path / 'mean_ka.pth'
    torch.save({'params': network.state_dict(),
                'teachers': fingerprint_specs(teacher_specs_from_options(options['teachers'], root=REPO_ROOT))},
               ka_path)
    output = tmp_path / 'eye_attribution.png'
    script = load_script('teacher_attribution')
    assert script.main(['-opt', option_path, '--ka-weights', str(ka_path), '--image', str(lr_path),
                        '--region', '30', '30', '24', '24', '--method', 'gradient', '--device', 'cpu',
                        '--output', str(output)]) == 0
    printed = capsys.readouterr().out
    shares = dict(re.findall(r'^(imdn|rlfn|pan|rfdn_aim)\s+([0-9.]+)\s', printed, flags=re.MULTILINE))
    assert sorted(shares) == ['imdn', 'pan', 'rfdn_aim', 'rlfn']
    for share in shares.values():
        assert float(share) == pytest.approx(0.25, abs=0.01)
    assert cv2.imread(str(output)).shape == (2 * (128 + script.LABEL_HEIGHT), 6 * 128, 3)
