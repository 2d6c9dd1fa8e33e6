"""scripts/make_table.py: rows from metrics.json files, columns in the field's order, PSNR/SSIM cells."""
from __future__ import annotations

import json

from mtkd.tables import markdown_table, read_metrics_file


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
