"""mtkd/analysis/error_correlation.py: correlation of the teachers' errors, on constructed errors with known
correlation, against numpy on the pooled pixels, through report_teachers and through scripts/teacher_report.py."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from basicsr.archs import build_network

from conftest import load_script
from mtkd.analysis.error_correlation import ErrorCorrelation, correlation_markdown, mean_pairwise, y_error
from mtkd.analysis.teacher_report import report_teachers
from mtkd.metrics.evaluation import image_to_tensor, read_image, tensor_to_image
from test_teacher_report import Bicubic, write_benchmark


def noisy(gt: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``gt + noise`` on all three channels (no clipping happens: gt is in [60, 190], |noise| <= 40)."""
    return (gt.astype(np.int16) + noise[..., None]).astype(np.uint8)


def constructed_case(seed=0, size=(96, 80)):
    generator = np.random.default_rng(seed)
    gt = generator.integers(60, 191, size + (3,)).astype(np.uint8)
    first = generator.integers(-20, 21, size).astype(np.int16)
    second = generator.integers(-20, 21, size).astype(np.int16)
    return gt, first, second


def test_known_correlations_of_constructed_errors():
    # The same error on B, G and R shifts Y by 219/255 of it (BT.601), a linear map: correlations are those of the
    # integer noises. Same error: 1; negated: -1; independent: 0; n1 + n2 (equal variances): 1/sqrt(2).
    accumulator = ErrorCorrelation()
    for seed in (0, 1):
        gt, first, second = constructed_case(seed)
        outputs = {'same_a': noisy(gt, first), 'same_b': noisy(gt, first), 'negated': noisy(gt, -first),
                   'independent': noisy(gt, second), 'sum': noisy(gt, first + second)}
        accumulator.add('Constructed', outputs, gt, crop_border=4)
    names, correlation = accumulator.matrix('Constructed')
    assert names == ['same_a', 'same_b', 'negated', 'independent', 'sum']
    assert np.allclose(np.diag(correlation), 1.0)
    assert np.allclose(correlation, correlation.T)
    assert correlation[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert correlation[0, 2] == pytest.approx(-1.0, abs=1e-12)
    assert abs(correlation[0, 3]) < 0.03  # 2 x 88 x 72 pixels: the estimate's spread is about 0.008
    assert correlation[0, 4] == pytest.approx(1 / np.sqrt(2), abs=0.03)


def test_pooled_correlation_equals_numpy_on_the_concatenated_errors():
    # Two images of different sizes: the sums must pool pixels, not average per-image correlations.
    accumulator = ErrorCorrelation()
    errors = {'a': [], 'b': [], 'c': []}
    for seed, size in ((3, (40, 56)), (4, (72, 24))):
        gt, first, second = constructed_case(seed, size)
        outputs = {'a': noisy(gt, first), 'b': noisy(gt, (first + 2 * second) // 3), 'c': noisy(gt, second + 5)}
        accumulator.add('Two', outputs, gt, crop_border=3)
        for name, image in outputs.items():
            errors[name].append(y_error(image, gt, crop_border=3))
    expected = np.corrcoef(np.stack([np.concatenate(errors[name]) for name in 'abc']))
    names, correlation = accumulator.matrix('Two')
    assert names == ['a', 'b', 'c']
    assert np.allclose(correlation, expected, atol=1e-10)
    assert mean_pairwise(correlation) == pytest.approx((expected[0, 1] + expected[0, 2] + expected[1, 2]) / 3)


def test_y_error_crops_the_border_and_the_ground_truth():
    gt = np.full((20, 22, 3), 100, np.uint8)
    sr = np.full((18, 20, 3), 110, np.uint8)  # GT is larger than SR by less than the scale: cropped top-left
    error = y_error(sr, gt, crop_border=2)
    assert error.shape == (14 * 16,)
    assert np.allclose(error, 10 * 219 / 255)


def test_refuses_one_teacher_a_changed_teacher_list_and_a_perfect_teacher():
    gt, first, _ = constructed_case()
    accumulator = ErrorCorrelation()
    with pytest.raises(ValueError, match='at least two teachers'):
        accumulator.add('S', {'a': noisy(gt, first)}, gt, 0)
    accumulator.add('S', {'a': noisy(gt, first), 'b': noisy(gt, -first)}, gt, 0)
    with pytest.raises(ValueError, match=r"teachers \['a', 'c'\] differ"):
        accumulator.add('S', {'a': noisy(gt, first), 'c': noisy(gt, first)}, gt, 0)
    accumulator.add('P', {'a': noisy(gt, first), 'perfect': gt.copy()}, gt, 0)
    with pytest.raises(ValueError, match=r"\['perfect'\] have no error"):
        accumulator.matrix('P')
    with pytest.raises(KeyError, match='no image was added for Q'):
        accumulator.matrix('Q')


class Nearest(torch.nn.Module):
    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, images):
        return F.interpolate(images, scale_factor=self.scale, mode='nearest')


def test_report_teachers_feeds_the_accumulator_with_each_teachers_image(tmp_path):
    set_dir = write_benchmark(tmp_path / 'Tiny', [(40, 48), (32, 32)])
    networks = {'bicubic': Bicubic(2), 'nearest': Nearest(2), 'bicubic_again': Bicubic(2)}
    accumulator = ErrorCorrelation()
    report_teachers(networks, [str(set_dir)], scale=2, niqe=False, observers=[accumulator])
    errors = {name: [] for name in networks}
    for index in range(2):
        hr = read_image(str(set_dir / 'HR' / f'img{index}.png'))
        lr = image_to_tensor(read_image(str(set_dir / 'LR_bicubic' / 'X2' / f'img{index}x2.png')))
        for name, network in networks.items():
            errors[name].append(y_error(tensor_to_image(network(lr)), hr, crop_border=2))
    expected = np.corrcoef(np.stack([np.concatenate(errors[name]) for name in networks]))
    names, correlation = accumulator.matrix('Tiny')
    assert names == list(networks)
    assert np.allclose(correlation, expected, atol=1e-10)
    assert correlation[0, 2] == pytest.approx(1.0, abs=1e-12) and 0.0 < correlation[0, 1] < 0.99


def tiny_imdn(folder, name: str, seed: int, scale: int) -> tuple[dict, str]:
    """A tiny IMDN's network options and its weights file (random weights from ``torch.manual_seed(seed)``)."""
    network = {'type': 'IMDN', 'num_feat': 16, 'num_block': 1, 'upscale': scale}
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f'{name}_{seed}.pth'
    torch.save({'params': build_network(dict(network)).state_dict()}, weights)
    return network, str(weights)


def twin_teacher_option_file(folder):
    """An x2 option file with two teachers, 'first' and 'second', of the same tiny IMDN weights."""
    network, weights = tiny_imdn(folder, 'imdn', seed=0, scale=2)
    options = {'scale': 2, 'teachers': [{'name': name, 'network': network, 'weights': weights}
                                        for name in ('first', 'second')]}
    option_file = folder / 'options.yml'
    option_file.write_text(yaml.safe_dump(options))
    return option_file


def test_script_prints_and_writes_the_correlation(tmp_path, capsys):
    # Two teachers with the same weights make the same errors: correlation exactly 1.
    option_file = twin_teacher_option_file(tmp_path)
    set_dir = write_benchmark(tmp_path / 'Tiny', [(24, 32)])
    report = tmp_path / 'report.json'
    exit_code = load_script('teacher_report').main(['--opt', str(option_file), '--sets', str(set_dir), '--no-niqe',
                                                    '--error-correlation', '--json', str(report)])
    assert exit_code == 0
    printed = capsys.readouterr().out
    assert 'Error correlation, Tiny' in printed and 'Mean over pairs: 1.000' in printed
    content = json.loads(report.read_text())
    assert content['error_correlation']['Tiny']['teachers'] == ['first', 'second']
    assert np.allclose(content['error_correlation']['Tiny']['matrix'], 1.0)


def test_markdown_layout():
    accumulator = ErrorCorrelation()
    gt, first, second = constructed_case()
    accumulator.add('Set5', {'a': noisy(gt, first), 'b': noisy(gt, -first)}, gt, 0)
    assert correlation_markdown(accumulator, digits=2) == '\n'.join([
        'Error correlation, Set5 (Y channel, pooled pixels):', '',
        '| | a | b |', '|---|---|---|',
        '| a | 1.00 | -1.00 |', '| b | -1.00 | 1.00 |', '',
        'Mean over pairs: -1.00'])


def write_tiny_teacher_files(tmp_path, seeds=(0, 0), scales=(2, 2), names=('first', 'second')):
    """One test option file per teacher (tiny IMDN, weights from ``torch.manual_seed(seed)``)."""
    paths = []
    for seed, scale, name in zip(seeds, scales, names):
        network, weights = tiny_imdn(tmp_path, name, seed, scale)
        options = {'name': name, 'scale': scale, 'network_g': network, 'path': {'pretrain_network_g': weights}}
        path = tmp_path / f'test_{name}.yml'
        path.write_text(yaml.safe_dump(options))
        paths.append(str(path))
    return paths


def test_script_reports_the_teachers_of_several_option_files_together(tmp_path, capsys):
    # Two test files, the second teacher with other weights: both rows, and a correlation between them below 1.
    paths = write_tiny_teacher_files(tmp_path, seeds=(0, 1))
    set_dir = write_benchmark(tmp_path / 'Tiny', [(24, 32)])
    report = tmp_path / 'report.json'
    exit_code = load_script('teacher_report').main(['--opt', *paths, '--sets', str(set_dir), '--no-niqe',
                                                    '--error-correlation', '--json', str(report)])
    assert exit_code == 0
    content = json.loads(report.read_text())
    assert [row['teacher'] for row in content['rows']] == ['first', 'second']
    assert content['option_files'] == paths
    matrix = np.array(content['error_correlation']['Tiny']['matrix'])
    assert matrix[0, 1] < 0.999 and np.allclose(np.diag(matrix), 1.0)


@pytest.mark.parametrize('problem', ['same_name', 'two_scales'])
def test_script_refuses_clashing_option_files(tmp_path, capsys, problem):
    if problem == 'same_name':
        first = write_tiny_teacher_files(tmp_path / 'a', seeds=(0,), names=('imdn',))
        second = write_tiny_teacher_files(tmp_path / 'b', seeds=(1,), names=('imdn',))
        expected = "teacher name 'imdn' appears in"
    else:
        first = write_tiny_teacher_files(tmp_path / 'a', seeds=(0,), scales=(2,), names=('x2',))
        second = write_tiny_teacher_files(tmp_path / 'b', seeds=(0,), scales=(3,), names=('x3',))
        expected = 'the report is at x2 but .*test_x3.yml is for x3'
    set_dir = write_benchmark(tmp_path / 'Tiny', [(24, 24)])
    exit_code = load_script('teacher_report').main(['--opt', *first, *second, '--sets', str(set_dir), '--no-niqe'])
    assert exit_code == 2
    assert re.search(expected, capsys.readouterr().err)
