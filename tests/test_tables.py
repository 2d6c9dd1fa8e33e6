"""scripts/make_table.py: rows from metrics.json files, columns in the field's order, PSNR/SSIM cells."""
from __future__ import annotations

import json

import pytest

from mtkd.metrics.tables import TableRow, markdown_table, merge_runs, read_metrics_file


def write_metrics(folder, name, datasets, others=None):
    folder.mkdir(parents=True)
    content = {'name': name, 'scale': 4, 'datasets': {}}
    for dataset, (psnr, ssim) in datasets.items():
        entry = {'mean': {'psnr': psnr, 'ssim': ssim}, 'images': {}}
        if others:
            entry['other_outputs'] = {label: {'mean': {'psnr': p, 'ssim': s}, 'images': {}}
                                      for label, (p, s) in others.items()}
        content['datasets'][dataset] = entry
    (folder / 'metrics.json').write_text(json.dumps(content))
    return folder


def test_table_rows_columns_and_rounding(tmp_path):
    first = write_metrics(tmp_path / 'a', 'test_a', {'BSD100': (27.5600, 0.73530), 'Set5': (32.20960, 0.89476)})
    second = write_metrics(tmp_path / 'b', 'test_b', {'Set14': (28.6204, 0.781449), 'Set5': (32.2385, 0.89534)},
                           others={'teacher_average': (32.35, 0.9)})
    rows = read_metrics_file(str(first), 'IMDN') + read_metrics_file(str(second / 'metrics.json'),
                                                                      with_other_outputs=True)
    assert markdown_table(rows, psnr_digits=2) == '\n'.join([
        '| Method | Scale | Set5 | Set14 | BSD100 |',
        '|---|---|---|---|---|',
        '| IMDN | x4 | 32.21/0.8948 | - | 27.56/0.7353 |',
        '| test_b | x4 | 32.24/0.8953 | 28.62/0.7814 | - |',
        '| teacher_average | x4 | 32.35/0.9000 | 32.35/0.9000 | - |',
    ])


def test_script_prints_and_writes_the_table(tmp_path, capsys):
    from conftest import load_script

    module = load_script('make_table')
    folder = write_metrics(tmp_path / 'r', 'x', {'Set5': (30.123456, 0.8)})
    assert module.main([f'{folder}=Mine', '--digits', '3', '--output', str(tmp_path / 't.md')]) == 0
    assert '| Mine | x4 | 30.123/0.8000 |' in capsys.readouterr().out
    assert (tmp_path / 't.md').read_text().splitlines()[2] == '| Mine | x4 | 30.123/0.8000 |'


def test_runs_with_one_label_merge_into_mean_and_sample_deviation(tmp_path, capsys):
    from conftest import load_script

    seeds = [write_metrics(tmp_path / f's{seed}', f'run{seed}', {'Set5': (psnr, ssim), 'Set14': (psnr - 2, ssim)})
             for seed, (psnr, ssim) in enumerate([(30.0, 0.80), (30.3, 0.81), (30.6, 0.85)])]
    other = write_metrics(tmp_path / 'other', 'alone', {'Set5': (29.0, 0.7), 'Set14': (27.0, 0.7)})
    rows = merge_runs([row for folder in seeds for row in read_metrics_file(str(folder), 'MTKD')]
                      + read_metrics_file(str(other)))
    assert [row.label for row in rows] == ['MTKD (3 runs)', 'alone'] and rows[0].runs == 3
    assert rows[0].means['Set5']['psnr'] == pytest.approx(30.3) and rows[0].spread['Set5']['psnr'] == pytest.approx(0.3)
    assert rows[0].spread['Set14']['ssim'] == pytest.approx(((0.02 ** 2 + 0.01 ** 2 + 0.03 ** 2) / 2) ** 0.5)
    assert markdown_table(rows, psnr_digits=2).splitlines()[2:] == [
        '| MTKD (3 runs) | x4 | 30.30±0.30/0.8200±0.0265 | 28.30±0.30/0.8200±0.0265 |',
        '| alone | x4 | 29.00/0.7000 | 27.00/0.7000 |']
    with pytest.raises(ValueError, match="runs labelled 'MTKD' differ"):
        merge_runs([TableRow('MTKD', 4, {'Set5': {'psnr': 1.0}}), TableRow('MTKD', 4, {'Set14': {'psnr': 1.0}})])
    module = load_script('make_table')
    assert module.main([f'{folder}=MTKD' for folder in seeds] + ['--merge-runs', '--digits', '3']) == 0
    assert '| MTKD (3 runs) | x4 | 30.300±0.300/0.8200±0.0265 |' in capsys.readouterr().out
