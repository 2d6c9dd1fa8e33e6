"""The demo (`make demo`): the embedded data and the whole quick chain, run once in a temporary root.

The quick demo (scripts/demo.py --quick: a few iterations per training) runs as a subprocess with
OMP_NUM_THREADS=1 and ``--root`` in a temporary folder, so the repository's own experiments are untouched.
Checks: the data (MATLAB-bicubic LR of fixed crops, train/validation photos disjoint, idempotent), the table
(every row, finite values, bicubic's known score), the global-residual KA at least at the teacher average, the
figure (exactly what mtkd.figures draws from the saved images), and that a previous run's folders are replaced.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mtkd import demo, demo_data
from mtkd.evaluation import read_image
from mtkd.figures import make_comparison_figure
from mtkd.transforms.matlab_resize import imresize

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ['Bicubic (MATLAB)', 'Teacher EDSR (CNN)', 'Teacher RFDN (CNN)', 'Teacher SwinIR (transformer)',
        'Teacher average', 'MT (stage 1, DCTSwin)', 'Student alone', 'MTKD student (stage 2)']
# Mean Y-PSNR/SSIM (border 2) of MATLAB-bicubic x2 on the three validation crops, measured once when the demo data
# was designed (camera 30.9656, chelsea 32.8549, coffee 33.3027 dB); fixed by the pinned scikit-image photos.
BICUBIC_PSNR, BICUBIC_SSIM = 32.3744, 0.9134


def run_quick_demo(root):
    """The quick demo in ``root``, after planting a previous run's leftovers: ``(root, stdout, summary, planted)``."""
    # Leftovers of an earlier run (must go) and someone else's experiment (must stay).
    stale = root / 'experiments' / 'demo_teacher_edsr_archived_20240101_000000'
    other = root / 'experiments' / 'my_experiment'
    for folder in (stale, other, root / 'results' / 'demo' / 'old'):
        folder.mkdir(parents=True)
    environment = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    completed = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'scripts', 'demo.py'), '--quick', '--root',
                                str(root), '--in-process'], cwd=REPO_ROOT, env=environment, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(root / 'results' / 'demo' / 'summary.json', encoding='utf-8') as handle:
        summary = json.load(handle)
    return root, completed.stdout, summary, (stale, other)


def test_quick_demo_end_to_end(tmp_path):
    """One test, so that pytest-xdist never runs the demo twice (a module fixture runs once per worker)."""
    quick_demo = run_quick_demo(tmp_path)
    check_table_has_every_row_with_finite_values(quick_demo)
    check_global_residual_aggregator_starts_at_the_teacher_average(quick_demo)
    check_stages_timed_and_commands_are_the_real_ones(quick_demo)
    check_figure_is_the_comparison_of_the_saved_images(quick_demo)
    check_previous_run_removed_other_experiments_kept(quick_demo)
    check_demo_data_is_bicubic_of_fixed_crops_and_idempotent(quick_demo)  # last: it rebuilds the data


def check_demo_data_is_bicubic_of_fixed_crops_and_idempotent(quick_demo):
    root = str(quick_demo[0])
    data_dir = demo_data.demo_data_dir(root)
    assert demo_data.is_complete(data_dir)
    train, val = demo_data.split_names(data_dir, 'train'), demo_data.split_names(data_dir, 'val')
    assert len(train) == 38 and val == ['camera', 'chelsea', 'coffee']
    train_photos = {name.rsplit('_', 1)[0] if name.rsplit('_', 1)[-1].isdigit() else name for name in train}
    assert not train_photos & set(val), 'a validation photo is used for training'
    # HR is the crop of the bundled photo; LR is MATLAB's bicubic of it (bit-exact, so equal to imresize's).
    hr = read_image(os.path.join(data_dir, 'val', 'HR', 'chelsea.png'))
    photo = demo_data.load_photo('chelsea')
    assert np.array_equal(hr[:, :, ::-1], photo[22:278, 100:356])
    lr = read_image(os.path.join(data_dir, 'val', 'LR_bicubic', 'X2', 'chelseax2.png'))
    assert lr.shape == (128, 128, 3) and np.array_equal(lr, imresize(hr, 0.5))
    positions = demo_data.crop_positions(demo_data.TRAIN_SOURCES[1], (427, 640))  # rocket: 2 x 3 over the photo
    assert positions == [(0, 0), (0, 224), (0, 448), (235, 0), (235, 224), (235, 448)]
    # Complete: nothing rebuilt. A changed file: rebuilt, identical to before.
    assert demo_data.prepare_demo_data(root) == (data_dir, False)
    with open(os.path.join(data_dir, 'manifest.json'), encoding='utf-8') as handle:
        files = json.load(handle)['files']
    path = os.path.join(data_dir, 'train', 'HR', f'{train[0]}.png')
    before = read_image(path)
    cv2.imwrite(path, np.zeros_like(before))
    assert not demo_data.is_complete(data_dir)
    assert demo_data.prepare_demo_data(root) == (data_dir, True)
    with open(os.path.join(data_dir, 'manifest.json'), encoding='utf-8') as handle:
        assert json.load(handle)['files'] == files


def check_table_has_every_row_with_finite_values(quick_demo):
    _, stdout, summary, _ = quick_demo
    rows = {row['label']: row for row in summary['rows']}
    assert [row['label'] for row in summary['rows']] == ROWS
    for row in summary['rows']:
        assert math.isfinite(row['psnr']) and 0 < row['ssim'] <= 1, row
        assert f"| {row['label']} |" in stdout
    assert rows['Bicubic (MATLAB)']['psnr'] == pytest.approx(BICUBIC_PSNR, abs=5e-4)
    assert rows['Bicubic (MATLAB)']['ssim'] == pytest.approx(BICUBIC_SSIM, abs=5e-5)
    # Same student in both rows; the teachers are larger than it.
    assert rows['Student alone']['parameters'] == rows['MTKD student (stage 2)']['parameters'] == 21_763
    assert min(rows[label]['parameters'] for label in ROWS[1:4]) > rows['Student alone']['parameters']


def check_global_residual_aggregator_starts_at_the_teacher_average(quick_demo):
    rows = {row['label']: row for row in quick_demo[2]['rows']}
    # Its last conv starts at zero, so after a few steps MT is still the teacher average (or better).
    assert rows['MT (stage 1, DCTSwin)']['psnr'] >= rows['Teacher average']['psnr'] - 0.05


def check_stages_timed_and_commands_are_the_real_ones(quick_demo):
    _, stdout, summary, _ = quick_demo
    commands = [timing['command'] for timing in summary['timings'] if timing['command'].startswith('python mtkd/')]
    assert len(commands) == len(demo.STAGES)
    for stage, command in zip(demo.STAGES, commands):
        assert command.startswith(f'python mtkd/{stage.entry}.py -opt {stage.option_file}')
        assert f'$ {command}' in stdout
        assert os.path.isfile(os.path.join(REPO_ROOT, stage.option_file))
    assert all(timing['seconds'] > 0 and timing['cpu_seconds'] >= 0 for timing in summary['timings'])
    assert 'total' in stdout and 'QUICK mode' in stdout


def check_figure_is_the_comparison_of_the_saved_images(quick_demo):
    root = quick_demo[0]
    figure_path = root / 'results' / 'demo' / 'comparison.png'
    figure = cv2.imread(str(figure_path), cv2.IMREAD_UNCHANGED)
    image, box = demo_data.FIGURE_CROP
    visualization = 'visualization/demo_val'
    methods = {'Bicubic': root / 'results' / 'demo' / 'bicubic' / f'{image}_bicubic.png',
               'MT (stage 1)': root / 'results' / 'demo_test_ka' / visualization / f'{image}_demo_test_ka.png',
               'Student alone': root / 'results' / 'demo_test_student_alone' / visualization /
               f'{image}_demo_test_student_alone.png',
               'MTKD student': root / 'results' / 'demo_test_mtkd' / visualization / f'{image}_demo_test_mtkd.png'}
    expected, panels = make_comparison_figure(str(root / 'datasets' / 'demo' / 'val' / 'HR' / f'{image}.png'),
                                              {label: str(path) for label, path in methods.items()}, box,
                                              demo_data.SCALE, panel_height=192)
    assert figure is not None and figure.shape == expected.shape
    # The overview, then 5 crops enlarged to 192 px high (the 96 x 72 box: 256 px wide), captions below.
    height, width = figure.shape[:2]
    assert height > 192 and width > 5 * 256
    assert np.array_equal(figure, expected)
    assert [panel.label for panel in panels] == ['HR', *methods]


def check_previous_run_removed_other_experiments_kept(quick_demo):
    root, _, _, (stale, other) = quick_demo
    assert not stale.exists() and other.is_dir()
    assert not (root / 'results' / 'demo' / 'old').exists()
    for stage in demo.STAGES:
        folder = root / ('experiments' if stage.entry == 'train' else 'results') / stage.name
        assert folder.is_dir() and not list(folder.parent.glob(stage.name + '_archived_*'))
