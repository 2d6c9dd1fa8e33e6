"""Markdown result tables from ``metrics.json`` files, shaped like the MTKD paper's Tables 2-4.

Rows are models or methods, columns are datasets, each cell ``PSNR/SSIM`` (Y channel, as measured).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

#: Column order of the field's benchmark tables; other datasets follow in order of appearance.
BENCHMARK_ORDER = ('Set5', 'Set14', 'BSD100', 'Urban100', 'Manga109')


@dataclass(frozen=True)
class TableRow:
    """One row: a label, its scale, and ``dataset -> {metric: mean}``."""
    label: str
    scale: int | None
    means: dict[str, dict[str, float]]


def read_metrics_file(path: str, label: str | None = None, with_other_outputs: bool = False) -> list[TableRow]:
    """Rows from one ``metrics.json`` (the model's own, then any other outputs such as teachers)."""
    if os.path.isdir(path):
        path = os.path.join(path, 'metrics.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: run `python mtkd/test.py -opt <option file>` first.')
    with open(path, encoding='utf-8') as handle:
        content = json.load(handle)
    datasets = content.get('datasets', {})
    rows = [TableRow(label or content.get('name', os.path.basename(os.path.dirname(path))), content.get('scale'),
                     {name: entry['mean'] for name, entry in datasets.items()})]
    if with_other_outputs:
        other_labels = []
        for entry in datasets.values():
            other_labels += [label for label in entry.get('other_outputs', {}) if label not in other_labels]
        for other in other_labels:
            rows.append(TableRow(other, content.get('scale'),
                                 {name: entry['other_outputs'][other]['mean'] for name, entry in datasets.items()
                                  if other in entry.get('other_outputs', {})}))
    return rows


def dataset_columns(rows: list[TableRow]) -> list[str]:
    """Benchmarks in the field's usual order, then any others in order of appearance."""
    seen = []
    for row in rows:
        seen += [name for name in row.means if name not in seen]
    return [name for name in BENCHMARK_ORDER if name in seen] + [name for name in seen if name not in BENCHMARK_ORDER]


def format_cell(means: dict[str, float] | None, psnr_digits: int = 2, ssim_digits: int = 4) -> str:
    """``PSNR/SSIM`` (``-`` for a dataset the row was not tested on)."""
    if not means:
        return '-'
    parts = []
    if 'psnr' in means:
        parts.append(f"{means['psnr']:.{psnr_digits}f}")
    if 'ssim' in means:
        parts.append(f"{means['ssim']:.{ssim_digits}f}")
    parts += [f'{value:.4f}' for name, value in means.items() if name not in ('psnr', 'ssim')]
    return '/'.join(parts)


def markdown_table(rows: list[TableRow], psnr_digits: int = 2, ssim_digits: int = 4) -> str:
    """The Markdown table: ``| Method | Scale | Set5 | Set14 | BSD100 |`` with ``PSNR/SSIM`` cells."""
    columns = dataset_columns(rows)
    lines = ['| Method | Scale | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
    for row in rows:
        scale = f'x{row.scale}' if row.scale else '-'
        cells = [format_cell(row.means.get(name), psnr_digits, ssim_digits) for name in columns]
        lines.append(f'| {row.label} | {scale} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
