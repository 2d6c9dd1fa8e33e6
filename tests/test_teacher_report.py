"""mtkd/analysis/teacher_report.py and scripts/teacher_report.py: false-texture energy (known answers), the report's
PSNR/SSIM and NIQE against mtkd.metrics.evaluation and BasicSR called directly, and the script's error on missing
weights."""
from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from basicsr.metrics import calculate_niqe

from conftest import dataset_dir, load_script
from mtkd.analysis.teacher_report import (TeacherReportRow, false_texture_energy, niqe_score, report_markdown,
                                          report_teachers)
from mtkd.metrics.evaluation import image_to_tensor, read_image, score_images, tensor_to_image
from mtkd.transforms.matlab_resize import imresize


def checkerboard(height: int, width: int, amplitude: float) -> torch.Tensor:
    """``±amplitude`` alternating per pixel, the same on R, G, B: ``(1, 3, H, W)``."""
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    signs = 1.0 - 2.0 * ((rows + columns) % 2).float()
    return (amplitude * signs).expand(1, 3, height, width).clone()


def test_ground_truth_against_itself_has_no_false_texture():
    generator = torch.Generator().manual_seed(0)
    gt = torch.full((2, 3, 32, 40), 0.4)
    gt[..., 20:] = torch.rand(2, 3, 32, 20, generator=generator)  # half flat, half noise
    result = false_texture_energy(gt, gt, crop_border=4)
    assert torch.equal(result.energy, torch.zeros(2))
    assert 0.3 < result.flat_fraction.min() and result.flat_fraction.max() < 0.6
    # With every pixel counted as flat (threshold above any energy) the noise half counts too: still 0.
    assert torch.equal(false_texture_energy(gt, gt, flat_threshold=1e6, crop_border=4).energy, torch.zeros(2))


def test_checkerboard_on_flat_ground_truth_gives_twice_its_amplitude():
    # |HP| of a checkerboard ±a is a - (-a) = 2a (pixel minus the mean of its 4 neighbours); on a constant GT
    # every pixel is flat and |HP(GT)| = 0, so the energy is 2a in grey levels. Two images, two amplitudes.
    gt = torch.full((2, 3, 24, 24), 0.5)
    sr = gt.clone()
    sr[0:1] += checkerboard(24, 24, 4 / 255)
    sr[1:2] += checkerboard(24, 24, 1.5 / 255)
    result = false_texture_energy(sr, gt, flat_threshold=3.0, crop_border=2)
    assert result.energy.tolist() == pytest.approx([8.0, 3.0], abs=1e-4)
    assert result.flat_fraction.tolist() == [1.0, 1.0]


def test_pattern_counts_only_where_ground_truth_is_flat():
    # GT: left half constant, right half a checkerboard of amplitude b (textured, |HP| = 2b = 32 grey levels).
    height, width, half = 24, 32, 16
    b, a = 16 / 255, 4 / 255
    gt = torch.full((1, 3, height, width), 0.5)
    gt[..., half:] += checkerboard(height, width, b)[..., half:]
    # The same pattern added on the textured half: not flat there, so no false texture. The flat pixels (columns
    # at least 4 away from the texture: a 7x7 box there sees at most the column next to it, |HP| = b/4) have
    # |HP(SR)| = |HP(GT)|, and column half-1, whose |HP| changes, has texture in its box.
    on_texture = gt.clone()
    on_texture[..., half:] += checkerboard(height, width, a)[..., half:]
    result = false_texture_energy(on_texture, gt, flat_threshold=3.0, crop_border=3)
    assert result.energy.item() == pytest.approx(0.0, abs=1e-5)
    # Flat = columns 3..12 of the cropped image's 10+... : columns < half - 3 minus the crop.
    assert result.flat_fraction.item() == pytest.approx((half - 3 - 3) / (width - 6))
    # The same pattern on the flat half: every flat pixel has the full 2a excess.
    on_flat = gt.clone()
    on_flat[..., :half] += checkerboard(height, width, a)[..., :half]
    assert false_texture_energy(on_flat, gt, flat_threshold=3.0, crop_border=3).energy.item() == \
        pytest.approx(2 * a * 255, abs=1e-4)


def test_blur_invents_no_texture_but_loses_psnr():
    # GT: a smooth ramp with a noise-textured square; blur (Gaussian, sigma 1) has ~0 false texture, an SR with a
    # faint checkerboard on the flat area has a lot, yet the blurred one has the LOWER PSNR: the two measure
    # different failures.
    generator = np.random.default_rng(0)
    ramp = np.linspace(60, 180, 64)[None, :, None].repeat(64, axis=0).repeat(3, axis=2)
    texture = generator.uniform(-40, 40, (24, 24, 1)).repeat(3, axis=2)
    gt_bgr = ramp.copy()
    gt_bgr[20:44, 20:44] += texture
    gt_bgr = np.clip(np.round(gt_bgr), 0, 255).astype(np.uint8)
    gt = image_to_tensor(gt_bgr)
    blurred_bgr = cv2.GaussianBlur(gt_bgr, (5, 5), 1.0, borderType=cv2.BORDER_REPLICATE)
    textured = gt.clone()
    flat_area = torch.ones_like(gt, dtype=torch.bool)
    flat_area[..., 16:48, 16:48] = False
    textured[flat_area] += checkerboard(64, 64, 2 / 255)[flat_area]
    textured_bgr = tensor_to_image(textured)

    blur_energy = false_texture_energy(image_to_tensor(blurred_bgr), gt, crop_border=2).energy.item()
    texture_energy = false_texture_energy(image_to_tensor(textured_bgr), gt, crop_border=2).energy.item()
    assert blur_energy < 0.05
    assert texture_energy > 3.0  # about 2a = 4 grey levels on most flat pixels
    assert score_images(blurred_bgr, gt_bgr, 2).psnr < score_images(textured_bgr, gt_bgr, 2).psnr - 5


class Bicubic(torch.nn.Module):
    """A stand-in teacher: bicubic upsampling (torch's, not MATLAB's)."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, images):
        return F.interpolate(images, scale_factor=self.scale, mode='bicubic', align_corners=False)


def write_benchmark(root, sizes, scale=2, seed=0):
    """A benchmark folder ``HR/imgN.png`` + ``LR_bicubic/X<s>/imgNx<s>.png`` (MATLAB bicubic), smooth + texture."""
    generator = np.random.default_rng(seed)
    (root / 'HR').mkdir(parents=True)
    (root / 'LR_bicubic' / f'X{scale}').mkdir(parents=True)
    for index, (height, width) in enumerate(sizes):
        rows, columns = np.mgrid[0:height, 0:width]
        image = 120 + 60 * np.sin(rows / 13.0)[..., None] * np.cos(columns / 17.0)[..., None] * np.ones(3)
        image[height // 3:height // 2, width // 4:width // 2] += generator.uniform(-30, 30, (1, 1, 3)) + \
            generator.normal(0, 20, (height // 2 - height // 3, width // 2 - width // 4, 3))
        hr = np.clip(np.round(image), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'HR' / f'img{index}.png'), hr)
        cv2.imwrite(str(root / 'LR_bicubic' / f'X{scale}' / f'img{index}x{scale}.png'), imresize(hr, 1 / scale))
    return root


def test_report_matches_evaluation_and_niqe_on_a_synthetic_benchmark(tmp_path):
    # Cropped by 2, 200x104 and 104x200 hold two 96x96 NIQE blocks, the least NIQE can use.
    set_dir = write_benchmark(tmp_path / 'Tiny', [(200, 104), (104, 200)])
    network = Bicubic(2)
    rows = report_teachers({'bicubic': network}, [str(set_dir)], scale=2, niqe=True)
    assert len(rows) == 1
    row = rows[0]
    assert (row.teacher, row.dataset, row.scale, row.num_images) == ('bicubic', 'Tiny', 2, 2)
    psnrs, ssims, niqes, textures = [], [], [], []
    for index in range(2):
        hr_bgr = read_image(str(set_dir / 'HR' / f'img{index}.png'))
        lr = image_to_tensor(read_image(str(set_dir / 'LR_bicubic' / 'X2' / f'img{index}x2.png')))
        sr_bgr = tensor_to_image(network(lr))
        score = score_images(sr_bgr, hr_bgr, 2)
        psnrs.append(score.psnr)
        ssims.append(score.ssim)
        niqes.append(calculate_niqe(sr_bgr, crop_border=2, input_order='HWC', convert_to='y'))
        textures.append(false_texture_energy(image_to_tensor(sr_bgr), image_to_tensor(hr_bgr),
                                             crop_border=2).energy.item())
        assert row.per_image[f'img{index}']['niqe'] == pytest.approx(niqes[-1], rel=1e-12)
    assert row.psnr == pytest.approx(np.mean(psnrs), rel=1e-12)
    assert row.ssim == pytest.approx(np.mean(ssims), rel=1e-12)
    assert row.niqe == pytest.approx(np.mean(niqes), rel=1e-12)
    assert row.false_texture == pytest.approx(np.mean(textures), rel=1e-9)
    assert 25 < row.psnr < 60 and math.isfinite(row.niqe)


def test_report_measures_lpips_when_given_a_network(tmp_path):
    """The LPIPS column (EdgeSRN with vs without its VGG term is the DTKD use): each image's value is the metric's
    on the same 8-bit images, crop = scale; the markdown gets an LPIPS column per set."""
    from mtkd.metrics.lpips_metric import LPIPS, LPIPS_NETS, build_alexnet_features, calculate_lpips

    generator = torch.Generator().manual_seed(0)
    features = build_alexnet_features(11)
    torch.save({f'features.{name}': torch.randn(tensor.shape, generator=generator) * 0.05
                for name, tensor in features.state_dict().items()}, tmp_path / 'alexnet.pth')
    torch.save({f'lin{index}.model.1.weight': torch.rand(1, channels, 1, 1, generator=generator)
                for index, channels in enumerate(LPIPS_NETS['alex']['channels'])}, tmp_path / 'alex.pth')
    network = LPIPS('alex', str(tmp_path / 'alexnet.pth'), str(tmp_path / 'alex.pth'))
    set_dir = write_benchmark(tmp_path / 'Tiny', [(72, 80), (80, 72)])
    rows = report_teachers({'bicubic': Bicubic(2)}, [str(set_dir)], scale=2, niqe=False, lpips=network)
    expected = []
    for index in range(2):
        hr_bgr = read_image(str(set_dir / 'HR' / f'img{index}.png'))
        lr = image_to_tensor(read_image(str(set_dir / 'LR_bicubic' / 'X2' / f'img{index}x2.png')))
        sr_bgr = tensor_to_image(Bicubic(2)(lr))
        expected.append(calculate_lpips(sr_bgr, hr_bgr, crop_border=2, backbone_weights=str(tmp_path / 'alexnet.pth'),
                                        linear_weights=str(tmp_path / 'alex.pth'), device='cpu'))
        assert rows[0].per_image[f'img{index}']['lpips'] == pytest.approx(expected[-1], rel=1e-6)
    assert rows[0].lpips == pytest.approx(np.mean(expected), rel=1e-6) and rows[0].lpips > 0
    assert report_markdown(rows).splitlines()[0].endswith('| Tiny false texture | Tiny LPIPS |')


def test_niqe_refuses_images_with_fewer_than_two_blocks():
    image = np.full((100, 100, 3), 128, np.uint8)
    with pytest.raises(ValueError, match='two 96x96 blocks'):
        niqe_score(image, crop_border=2)


def test_niqe_of_baboon_equals_the_matlab_value():
    # BasicSR's calculate_niqe docstring: MATLAB R2021a gives 5.72957338 on baboon.png (Set14's HR image).
    baboon = read_image(os.path.join(dataset_dir('Set14'), 'HR', 'baboon.png'))
    assert niqe_score(baboon, crop_border=0) == pytest.approx(5.72957338, abs=1e-5)


def test_markdown_table_columns_and_formatting():
    rows = [TeacherReportRow('imdn', 'Set14', 4, 14, 28.58123, 0.781149, 6.12344, 0.1, 0.4),
            TeacherReportRow('imdn', 'Set5', 4, 5, 32.2096, 0.894761, 7.0, float('nan'), 0.0),
            TeacherReportRow('rlfn', 'Set5', 4, 5, 32.2385, 0.89534, None, 0.09876, 0.5)]
    assert report_markdown(rows) == '\n'.join([
        '| Teacher | Scale | Set5 PSNR/SSIM | Set5 NIQE | Set5 false texture | Set14 PSNR/SSIM | Set14 NIQE | '
        'Set14 false texture |',
        '|---|---|---|---|---|---|---|---|',
        '| imdn | x4 | 32.21/0.8948 | 7.0000 | - | 28.58/0.7811 | 6.1234 | 0.1000 |',
        '| rlfn | x4 | 32.24/0.8953 | - | 0.0988 | - | - | - |'])


@pytest.mark.parametrize('layout', ['teachers', 'test_file'])
def test_script_names_the_missing_weights_file(tmp_path, capsys, layout):
    missing = tmp_path / 'pretrained' / 'IMDN_x2_missing.pth'
    network = {'type': 'IMDN', 'num_feat': 16, 'num_block': 1, 'upscale': 2}
    if layout == 'teachers':
        options = {'scale': 2, 'teachers': [{'name': 'imdn', 'network': network, 'weights': str(missing)}]}
    else:
        options = {'name': 'test_imdn', 'scale': 2, 'network_g': network, 'path': {'pretrain_network_g': str(missing)}}
    option_file = tmp_path / 'options.yml'
    option_file.write_text(yaml.safe_dump(options))
    set_dir = write_benchmark(tmp_path / 'Tiny', [(16, 16)])
    exit_code = load_script('teacher_report').main(['--opt', str(option_file), '--sets', str(set_dir), '--no-niqe'])
    error = capsys.readouterr().err
    assert exit_code == 2
    assert str(missing) in error and 'not found' in error and 'make link-shared' in error
