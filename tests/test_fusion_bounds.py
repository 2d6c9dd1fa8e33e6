"""mtkd/analysis/fusion_bounds.py: oracle bounds of fusing the teachers, on constructed cases with known answers,
against a direct computation on the pooled pixels, and through scripts/teacher_report.py --fusion-bounds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import load_script
from mtkd.analysis.fusion_bounds import (FusionBounds, fit_global_weights, fusion_bounds_markdown,
                                         least_squares_weights, patch_oracle, pixel_best, psnr_of_mse)
from mtkd.metrics.evaluation import y_planes
from test_error_correlation import constructed_case, noisy, twin_teacher_option_file, write_tiny_teacher_files
from test_teacher_report import write_benchmark


def test_least_squares_recovers_known_weights_and_the_patch_oracle_known_local_weights():
    generator = np.random.default_rng(0)
    teachers = generator.uniform(0, 255, (2, 24, 20))
    target = np.empty((24, 20))
    target[:, :8] = 0.2 * teachers[0, :, :8] + 0.9 * teachers[1, :, :8]
    target[:, 8:] = 1.0 * teachers[0, :, 8:] - 0.1 * teachers[1, :, 8:]  # patches 8:16 and the edge patch 16:20
    assert np.allclose(least_squares_weights(teachers[:, :, :8], target[:, :8]), [0.2, 0.9])
    assert np.allclose(patch_oracle(teachers, target, 8), target, atol=1e-9)
    global_fit = np.tensordot(least_squares_weights(teachers, target), teachers, axes=1)
    assert np.mean((global_fit - target) ** 2) > 10.  # one pair of weights cannot fit both halves
    assert np.mean((patch_oracle(teachers, target, 16) - target) ** 2) > 1.  # a 16-patch straddles the halves


def _in_sample_patch_fit(teachers, target, size):
    fused = np.empty_like(target)
    for top in range(0, target.shape[0], size):
        for left in range(0, target.shape[1], size):
            window = np.s_[top:top + size, left:left + size]
            fused[window] = np.tensordot(least_squares_weights(teachers[(slice(None),) + window], target[window]),
                                         teachers[(slice(None),) + window], axes=1)
    return fused


def test_pixel_best_takes_the_closest_teacher_at_each_pixel():
    teachers = np.array([[[10., 50.], [30., 0.]], [[12., 40.], [35., 9.]]])
    target = np.array([[11.9, 46.], [20., 5.]])
    assert np.array_equal(pixel_best(teachers, target), [[12., 50.], [30., 9.]])


def test_row_matches_a_direct_computation_on_two_images_of_different_sizes():
    bounds = FusionBounds(patch_sizes=(8,))
    planes = []
    for seed, size in ((0, (40, 56)), (1, (72, 24))):
        gt, first, second = constructed_case(seed, size)
        outputs = {'a': noisy(gt, first), 'b': noisy(gt, (first + 2 * second) // 3), 'c': noisy(gt, second + 5)}
        bounds.add('Two', outputs, gt, crop_border=3)
        planes.append(y_planes(outputs, gt, crop_border=3))
    row = bounds.row('Two')
    weights = np.linalg.lstsq(np.concatenate([t.reshape(3, -1) for t, _ in planes], 1).T,
                              np.concatenate([y.reshape(-1) for _, y in planes]), rcond=None)[0]
    assert row.teachers == ['a', 'b', 'c'] and row.num_images == 2
    assert np.allclose(row.global_weights, weights, atol=1e-10)
    assert row.global_psnr == pytest.approx(np.mean([psnr_of_mse(np.mean((np.tensordot(weights, t, axes=1) - y) ** 2))
                                                     for t, y in planes]), abs=1e-9)
    assert row.average == pytest.approx(np.mean([psnr_of_mse(np.mean((t.mean(0) - y) ** 2)) for t, y in planes]))
    assert row.patch_psnr[8] == pytest.approx(np.mean([psnr_of_mse(np.mean((patch_oracle(t, y, 8) - y) ** 2))
                                                       for t, y in planes]))
    # The noises are stationary (no local structure): cross-fitted patch weights only add estimation noise to the
    # global fit, where an in-sample per-patch fit would have gained by fitting the noise.
    assert row.patch_psnr[8] < row.global_psnr and row.pixel_best > row.average
    in_sample = np.mean([psnr_of_mse(np.mean((_in_sample_patch_fit(t, y, 8) - y) ** 2)) for t, y in planes])
    assert in_sample > row.global_psnr


def test_weights_fitted_elsewhere_score_like_the_sets_own_fit_when_they_are_the_same():
    images = []
    for seed, size in ((0, (40, 56)), (1, (72, 24))):
        gt, first, second = constructed_case(seed, size)
        images.append(({'a': noisy(gt, first), 'b': noisy(gt, (first + 2 * second) // 3),
                        'c': noisy(gt, second + 5)}, gt))
    own = FusionBounds(patch_sizes=(8,))
    for outputs, gt in images:
        own.add('Two', outputs, gt, crop_border=3)
    row = own.row('Two')
    fitted = fit_global_weights(iter(images), crop_border=3)  # pooled normal equations, one image at a time
    assert list(fitted) == ['a', 'b', 'c'] and np.allclose(list(fitted.values()), row.global_weights, atol=1e-10)
    assert row.transfer_psnr is None
    # Fitted weights (given in another order) score exactly the set's own global fit; equal thirds, the average.
    for weights, expected in ((dict(reversed(fitted.items())), row.global_psnr),
                              ({'c': 1 / 3, 'a': 1 / 3, 'b': 1 / 3}, row.average)):
        transferred = FusionBounds(patch_sizes=(8,), transfer_weights=weights)
        for outputs, gt in images:
            transferred.add('Two', outputs, gt, crop_border=3)
        assert transferred.row('Two').transfer_psnr == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match=r"transfer weights are for teachers \['a', 'b'\]"):
        FusionBounds(transfer_weights={'a': 0.5, 'b': 0.5}).add('Two', *images[0], crop_border=3)
    with pytest.raises(ValueError, match='no image to fit'):
        fit_global_weights([], crop_border=3)
    with pytest.raises(ValueError, match="differ from the earlier images"):
        fit_global_weights([images[0], ({'a': images[1][0]['a']}, images[1][1])], crop_border=3)


def test_opposite_errors_average_to_the_ground_truth():
    gt, first, _ = constructed_case()
    bounds = FusionBounds()
    bounds.add('S', {'plus': noisy(gt, first), 'minus': noisy(gt, -first)}, gt, crop_border=4)
    row = bounds.row('S')
    assert row.average > 100. and row.global_psnr > 100. and row.patch_psnr[8] > 100.  # float rounding of Y only
    assert np.allclose(row.global_weights, [0.5, 0.5])
    # Both teachers are equally far from every pixel: the per-pixel best is as bad as either teacher.
    teachers, target = y_planes({'plus': noisy(gt, first)}, gt, crop_border=4)
    assert row.pixel_best == pytest.approx(psnr_of_mse(np.mean((teachers[0] - target) ** 2)))


def test_refusals():
    gt, first, _ = constructed_case()
    for sizes in ((0,), (1,), (), (2.5,)):
        with pytest.raises(ValueError, match='integers of at least 2'):
            FusionBounds(patch_sizes=sizes)
    bounds = FusionBounds()
    bounds.add('S', {'a': noisy(gt, first)}, gt, 0)
    with pytest.raises(ValueError, match=r"teachers \['b'\] differ"):
        bounds.add('S', {'b': noisy(gt, first)}, gt, 0)
    with pytest.raises(KeyError, match='no image was added for Q'):
        bounds.row('Q')


def test_script_prints_and_writes_the_bounds(tmp_path, capsys):
    # Two teachers with the same weights: their average is each of them, so it scores the teacher's own PSNR.
    option_file = twin_teacher_option_file(tmp_path)
    set_dir = write_benchmark(tmp_path / 'Tiny', [(24, 32), (16, 24)])
    report = tmp_path / 'report.json'
    script = load_script('teacher_report')
    assert script.main(['--opt', str(option_file), '--sets', str(set_dir), '--no-niqe', '--fusion-bounds',
                        '--patch-sizes', '8', '4', '--json', str(report)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert 'Tiny: 100%' in captured.err and '2/2' in captured.err  # the per-set progress bar, on stderr
    assert '| set | average | best global weights | patch 8 | patch 4 | pixel best |' in printed
    content = json.loads(report.read_text())
    bound = content['fusion_bounds']['Tiny']
    assert bound['teachers'] == ['first', 'second'] and bound['num_images'] == 2
    assert bound['average'] == pytest.approx(content['rows'][0]['psnr'], abs=1e-9)
    assert bound['global_psnr'] >= bound['average'] - 1e-9
    assert script.main(['--opt', str(option_file), '--sets', str(set_dir), '--no-niqe', '--no-progress']) == 0
    assert 'Tiny' not in capsys.readouterr().err
    assert script.main(['--opt', str(option_file), '--sets', str(set_dir), '--no-niqe', '--fusion-bounds',
                        '--patch-sizes', '0']) == 2
    assert 'patch sizes must be integers of at least 2' in capsys.readouterr().err


def test_script_scores_weights_fitted_on_the_training_images(tmp_path, capsys):
    option_file = twin_teacher_option_file(tmp_path)
    train_dir = write_benchmark(tmp_path / 'Train', [(32, 40), (24, 24), (40, 24)], seed=3)
    options = yaml.safe_load(option_file.read_text())
    options['datasets'] = {'train': {'name': 'train', 'type': 'TeacherPairedImageDataset',
                                     'dataroot_gt': str(train_dir / 'HR'), 'dataroot_lq': str(train_dir / 'LR_bicubic/X2'),
                                     'filename_tmpl': '{}x2', 'teacher_cache_root': str(tmp_path / 'cache')}}
    option_file.write_text(yaml.safe_dump(options))
    set_dir = write_benchmark(tmp_path / 'Tiny', [(24, 32)])
    report = tmp_path / 'report.json'
    script = load_script('teacher_report')
    arguments = ['--opt', str(option_file), '--sets', str(set_dir), '--no-niqe', '--fusion-bounds',
                 '--patch-sizes', '8']
    assert script.main(arguments + ['--fit-on-train', '--json', str(report)]) == 0
    printed = capsys.readouterr().out
    assert '| set | average | train-fitted weights | best global weights | patch 8 | pixel best |' in printed
    content = json.loads(report.read_text())
    weights, bound = content['train_fitted_weights'], content['fusion_bounds']['Tiny']
    # Twin teachers: the minimum-norm fit splits the weight evenly.
    assert list(weights) == ['first', 'second'] and weights['first'] == pytest.approx(weights['second'], abs=1e-9)
    # The random tiny teachers output a dimmed image: training and benchmark images alike (same generator) call for
    # about the same gain, far from the average's 1, and the transferred fit scores close to, not above, the own fit.
    assert sum(weights.values()) == pytest.approx(sum(bound['global_weights']), rel=0.05)
    assert abs(sum(weights.values()) - 1) > 0.5
    assert bound['global_psnr'] - 0.1 < bound['transfer_psnr'] <= bound['global_psnr'] and \
        bound['transfer_psnr'] > bound['average'] + 3
    assert len(list((tmp_path / 'cache').glob('*/first/*.npy'))) == 3  # the training cache was built on the way
    # Self-ensembled teachers are other teachers: reported as <name>+, fitted on a training cache of their own.
    assert script.main(arguments + ['--fit-on-train', '--self-ensemble', '--json', str(report)]) == 0
    content = json.loads(report.read_text())
    assert content['self_ensemble'] is True and list(content['train_fitted_weights']) == ['first+', 'second+']
    assert [row['teacher'] for row in content['rows']] == ['first+', 'second+']
    assert content['rows'][0]['psnr'] != pytest.approx(bound['average'], abs=1e-3)
    assert len(list((tmp_path / 'cache').glob('*/first+/*.npy'))) == 3
    assert len({path.parent.parent for path in (tmp_path / 'cache').glob('*/*/*.npy')}) == 2
    assert script.main(arguments[:-3] + ['--fit-on-train']) == 2
    assert '--fit-on-train adds a row to the fusion bounds' in capsys.readouterr().err
    third = write_tiny_teacher_files(tmp_path, seeds=(1,), scales=(2,), names=('third',))
    assert script.main(arguments[:1] + [str(option_file)] + third + arguments[2:] + ['--fit-on-train']) == 2
    assert "has teachers ['first', 'second'] but the report has ['first', 'second', 'third']" in capsys.readouterr().err


def test_markdown_layout():
    gt, first, _ = constructed_case()
    bounds = FusionBounds(patch_sizes=(16,))
    bounds.add('Set5', {'plus': noisy(gt, first), 'minus': noisy(gt, -first)}, gt, 0)
    row = bounds.row('Set5')
    assert fusion_bounds_markdown(bounds, digits=1).splitlines()[2:5] == [
        '| set | average | best global weights | patch 16 | pixel best |', '|---|---|---|---|---|',
        f'| Set5 | {row.average:.1f} | {row.global_psnr:.1f} | {row.patch_psnr[16]:.1f} | {row.pixel_best:.1f} |']
    assert fusion_bounds_markdown(bounds).splitlines()[-1] == \
        'Global weights, Set5: plus 0.500, minus 0.500 (sum 1.000)'
