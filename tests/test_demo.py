"""The demo (`make demo`): the embedded data and the whole quick chain, run once in a temporary root.

The quick demo (scripts/demo.py --quick: a few iterations per training) runs as a subprocess with
OMP_NUM_THREADS=1 and ``--root`` in a temporary folder, so the repository's own experiments are untouched.
Checks: the data (MATLAB-bicubic LR of fixed crops, train/validation photos disjoint, idempotent), the table
(every row, finite values, bicubic's known score), the global-residual KA at least at the teacher average, the
figure (exactly what mtkd.tools.figures draws from the saved images), and that a previous run's folders are replaced.
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

from mtkd.metrics.evaluation import read_image
from mtkd.tools import demo, demo_data
from mtkd.tools.figures import make_comparison_figure
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
    check_mtkd_claims_hold_as_in_the_full_demo(quick_demo)
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


def check_mtkd_claims_hold_as_in_the_full_demo(quick_demo):
    """The orderings the full demo shows (docs/demo.md), with the committed teachers and the quick iterations: MT
    above every teacher (not only their average) and the MTKD student above the same student trained alone."""
    _, stdout, summary, _ = quick_demo
    psnr = {row['label']: row['psnr'] for row in summary['rows']}
    teachers = [psnr[label] for label in ROWS[1:4]]
    assert psnr['MT (stage 1, DCTSwin)'] > max(teachers), psnr
    assert psnr['MTKD student (stage 2)'] > psnr['Student alone'], psnr
    assert [claim['held'] for claim in summary['claims']] == [True, True]
    for claim in summary['claims']:
        assert f"claim: {claim['claim']}: HELD" in stdout


def check_global_residual_aggregator_starts_at_the_teacher_average(quick_demo):
    rows = {row['label']: row for row in quick_demo[2]['rows']}
    # Its last conv starts at zero, so after a few steps MT is still the teacher average (or better).
    assert rows['MT (stage 1, DCTSwin)']['psnr'] >= rows['Teacher average']['psnr'] - 0.05


def check_stages_timed_and_commands_are_the_real_ones(quick_demo):
    _, stdout, summary, _ = quick_demo
    commands = [timing['command'] for timing in summary['timings'] if timing['command'].startswith('python mtkd/')]
    stages = demo.STAGES[len(demo.TEACHER_STAGES):]  # the teachers' committed weights: no teacher training
    assert len(commands) == len(stages) and 'committed weights in pretrained/demo/' in stdout
    for stage, command in zip(stages, commands):
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
    rows = {row['label']: row['psnr'] for row in quick_demo[2]['rows']}
    best = max(ROWS[1:4], key=rows.get)  # e.g. 'Teacher EDSR (CNN)' -> panel 'Best teacher (EDSR)', file ..._edsr
    name = best.split()[1]
    methods = {'Bicubic': root / 'results' / 'demo' / 'bicubic' / f'{image}_bicubic.png',
               f'Best teacher ({name})': root / 'results' / 'demo_test_ka' / visualization /
               f'{image}_demo_test_ka_teacher_{name.lower()}.png',
               'MT (stage 1)': root / 'results' / 'demo_test_ka' / visualization / f'{image}_demo_test_ka.png',
               'Student alone': root / 'results' / 'demo_test_student_alone' / visualization /
               f'{image}_demo_test_student_alone.png',
               'MTKD student': root / 'results' / 'demo_test_mtkd' / visualization / f'{image}_demo_test_mtkd.png'}
    expected, panels = make_comparison_figure(str(root / 'datasets' / 'demo' / 'val' / 'HR' / f'{image}.png'),
                                              {label: str(path) for label, path in methods.items()}, box,
                                              demo_data.SCALE, panel_height=192)
    assert figure is not None and figure.shape == expected.shape
    # The overview, then 6 crops enlarged to 192 px high (the 96 x 72 box: 256 px wide), captions below.
    height, width = figure.shape[:2]
    assert height > 192 and width > 6 * 256
    assert np.array_equal(figure, expected)
    assert [panel.label for panel in panels] == ['HR', *methods]


def check_previous_run_removed_other_experiments_kept(quick_demo):
    root, _, _, (stale, other) = quick_demo
    assert not stale.exists() and other.is_dir()
    assert not (root / 'results' / 'demo' / 'old').exists()
    for stage in demo.STAGES:
        folder = root / ('experiments' if stage.entry == 'train' else 'results') / stage.name
        trained = stage not in demo.TEACHER_STAGES  # the teachers come from pretrained/demo/
        assert folder.is_dir() == trained and not list(folder.parent.glob(stage.name + '_archived_*'))


def _demo_option_files_with_teachers():
    for name in sorted(os.listdir(os.path.join(REPO_ROOT, demo.OPTIONS_DIR))):
        options = demo.read_option_file(f'{demo.OPTIONS_DIR}/{name}')
        if options.get('teachers'):
            yield name, options


def test_committed_teachers_are_the_ones_every_demo_file_names_and_their_option_files_reproduce():
    """Each stage-1/2 file loads the committed teachers (pretrained/demo/<teacher stage>.pth) by the file's sha256,
    and each teacher's network is the one its training file (options/demo/demo_teacher_*_x2.yml) trains."""
    from mtkd.utils.fileio import file_sha256

    trained_by = {stage.name: demo.read_option_file(stage.option_file) for stage in demo.TEACHER_STAGES}
    files = list(_demo_option_files_with_teachers())
    assert {name for name, _ in files} == {'demo_stage1_ka_x2.yml', 'demo_stage2_mtkd_x2.yml', 'test_demo_ka_x2.yml'}
    for name, options in files:
        for teacher in options['teachers']:
            stage_name = os.path.splitext(os.path.basename(teacher['weights']))[0]
            assert teacher['weights'] == f'{demo.TEACHER_WEIGHTS_DIR}/{stage_name}.pth', (name, teacher['weights'])
            assert teacher['weights_sha256'] == file_sha256(os.path.join(REPO_ROOT, teacher['weights'])), name
            assert teacher['network'] == trained_by[stage_name]['network_g'], (name, stage_name)


def test_teacher_weights_overrides_point_at_this_runs_teachers_or_the_committed_files(tmp_path):
    stage1 = f'{demo.OPTIONS_DIR}/demo_stage1_ka_x2.yml'
    trained = demo.teacher_weights_overrides(stage1, str(tmp_path), train_teachers=True)
    assert trained == [entry for index, stage in enumerate(demo.TEACHER_STAGES) for entry in
                       (f'teachers:{index}:weights=experiments/{stage.name}/models/net_g_latest.pth',
                        f'teachers:{index}:weights_sha256=null')]
    elsewhere = demo.teacher_weights_overrides(stage1, str(tmp_path), train_teachers=False)
    assert elsewhere == [f'teachers:{index}:weights={REPO_ROOT}/{demo.TEACHER_WEIGHTS_DIR}/{stage.name}.pth'
                         for index, stage in enumerate(demo.TEACHER_STAGES)]
    assert demo.teacher_weights_overrides(stage1, REPO_ROOT, train_teachers=False) == []
    assert demo.teacher_weights_overrides(f'{demo.OPTIONS_DIR}/demo_student_alone_x2.yml', str(tmp_path), True) == []


def test_export_teachers_keeps_params_only_and_rewrites_each_files_sha256(tmp_path):
    import torch

    from mtkd.utils.fileio import file_sha256

    run_root, repo_root = tmp_path / 'run', tmp_path / 'repo'
    for index, stage in enumerate(demo.TEACHER_STAGES):
        path = run_root / 'experiments' / stage.name / 'models' / 'net_g_latest.pth'
        path.parent.mkdir(parents=True)
        torch.save({'params': {'weight': torch.full((2,), float(index))}, 'params_ema': {'weight': torch.zeros(2)}},
                   path)
    options = repo_root / demo.OPTIONS_DIR
    options.mkdir(parents=True)
    other = 'f' * 64
    text = ''.join(f'  - name: t{index}\n    weights: {demo.TEACHER_WEIGHTS_DIR}/{stage.name}.pth\n'
                   f'    weights_sha256: {"0" * 64}\n' for index, stage in enumerate(demo.TEACHER_STAGES))
    (options / 'stage.yml').write_text(f'teachers:\n{text}  - name: other\n    weights: other.pth\n'
                                       f'    weights_sha256: {other}\n')
    written = demo.export_teachers(str(run_root), echo=lambda *_: None, repo_root=str(repo_root))
    rewritten = (options / 'stage.yml').read_text()
    for index, stage in enumerate(demo.TEACHER_STAGES):
        relative = f'{demo.TEACHER_WEIGHTS_DIR}/{stage.name}.pth'
        state = torch.load(repo_root / relative, weights_only=True)
        assert list(state) == ['params'] and torch.equal(state['params']['weight'], torch.full((2,), float(index)))
        assert written[relative] == file_sha256(str(repo_root / relative))
        assert f'weights: {relative}\n    weights_sha256: {written[relative]}\n' in rewritten
    assert rewritten.count(other) == 1 and '0' * 64 not in rewritten
    with pytest.raises(demo.DemoError, match='train the teachers first'):
        demo.export_teachers(str(tmp_path / 'empty'), echo=lambda *_: None, repo_root=str(repo_root))


def test_claims_compare_mt_with_the_best_teacher_not_the_average():
    rows = [('Bicubic (MATLAB)', None, 32.0, 0.9), ('Teacher EDSR (CNN)', 1, 34.0, 0.9),
            ('Teacher RFDN (CNN)', 1, 33.0, 0.9), ('Teacher SwinIR (transformer)', 1, 33.5, 0.9),
            ('Teacher average', None, 33.9, 0.9), ('MT (stage 1, DCTSwin)', 1, 33.95, 0.9),
            ('Student alone', 1, 33.2, 0.9), ('MTKD student (stage 2)', 1, 33.3, 0.9)]
    above_average, student = demo.check_claims(rows)
    assert not above_average.held and 'best teacher EDSR (CNN) 34.000 dB' in above_average.detail
    assert student.held and '+0.100 dB' in student.detail
    assert demo.best_teacher_name(rows) == 'edsr'
