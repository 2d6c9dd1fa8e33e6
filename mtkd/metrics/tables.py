"""Markdown result tables from ``metrics.json`` files, shaped like the MTKD paper's Tables 2-4.

Rows are models or methods, columns are datasets, each cell ``PSNR/SSIM`` (Y channel, as measured).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field

from mtkd.utils.errors import MtkdError

#: Column order of the field's benchmark tables; other datasets follow in order of appearance.
BENCHMARK_ORDER = ('Set5', 'Set14', 'BSD100', 'Urban100', 'Manga109')


@dataclass(frozen=True)
class TableRow:
    """One row: a label, its scale, and ``dataset -> {metric: mean}``; a row merged from several runs
    (:func:`merge_runs`) also has ``dataset -> {metric: sample standard deviation over the runs}``."""
    label: str
    scale: int | None
    means: dict[str, dict[str, float]]
    spread: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: int = 1


def merge_runs(rows: list[TableRow]) -> list[TableRow]:
    """One row per label, in order of first appearance: rows with the same label (runs of one method, e.g. seeds)
    become their mean, with the sample standard deviation (n - 1) as ``spread`` and the label ``<label> (n runs)``.

    The runs must share the scale and be measured on the same datasets and metrics, else the mean would mix
    different things: that raises ValueError naming the label.
    """
    groups: dict[str, list[TableRow]] = {}
    for row in rows:
        groups.setdefault(row.label, []).append(row)

    def layout(run: TableRow) -> tuple:
        return run.scale, {dataset: sorted(metrics) for dataset, metrics in run.means.items()}

    merged = []
    for label, runs in groups.items():
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        if any(layout(run) != layout(runs[0]) for run in runs):
            raise ValueError(f"the runs labelled '{label}' differ in scale, datasets or metrics: "
                             f'{[layout(run) for run in runs]}')
        means = {dataset: {metric: statistics.mean(run.means[dataset][metric] for run in runs) for metric in metrics}
                 for dataset, metrics in runs[0].means.items()}
        spread = {dataset: {metric: statistics.stdev([run.means[dataset][metric] for run in runs])
                            for metric in metrics} for dataset, metrics in runs[0].means.items()}
        merged.append(TableRow(f'{label} ({len(runs)} runs)', runs[0].scale, means, spread, len(runs)))
    return merged


class ResultsError(MtkdError, ValueError):
    """A results folder without ``metrics.json``, or a file that is not one."""


def read_metrics_file(path: str, label: str | None = None, with_other_outputs: bool = False) -> list[TableRow]:
    """Rows from one ``metrics.json`` (the model's own, then any other outputs such as teachers)."""
    folder = path if os.path.isdir(path) or not path.endswith('.json') else os.path.dirname(path)
    if os.path.isdir(path):
        path = os.path.join(path, 'metrics.json')
    if not os.path.isfile(path):
        name = os.path.basename(os.path.normpath(folder))
        option_file = os.path.join('options', f'{name}.yml')
        repository = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
        command = (f'python mtkd/test.py -opt {option_file}' if os.path.isfile(os.path.join(repository, option_file))
                   else 'python mtkd/test.py -opt <option file>')
        where = f'{folder} does not exist' if not os.path.exists(folder) else f'{path} not found'
        raise ResultsError(f'{where}: test the model first with `{command}` (it writes results/<name>/metrics.json)')
    with open(path, encoding='utf-8') as handle:
        try:
            content = json.load(handle)
        except json.JSONDecodeError as error:
            raise ResultsError(f'{path} is not valid JSON ({error}): re-run the test that wrote it') from None
    if not isinstance(content, dict) or not isinstance(content.get('datasets'), dict):
        raise ResultsError(f"{path} is not an mtkd metrics file (no 'datasets'): give a results/<name> folder that "
                           'mtkd/test.py wrote')
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


def format_cell(means: dict[str, float] | None, psnr_digits: int = 2, ssim_digits: int = 4,
                spread: dict[str, float] | None = None) -> str:
    """``PSNR/SSIM`` (``-`` for a dataset the row was not tested on); with ``spread``, ``PSNR±sd/SSIM±sd``."""
    if not means:
        return '-'
    spread = spread or {}

    def number(name: str, digits: int) -> str:
        return f'{means[name]:.{digits}f}' + (f'±{spread[name]:.{digits}f}' if name in spread else '')

    parts = []
    if 'psnr' in means:
        parts.append(number('psnr', psnr_digits))
    if 'ssim' in means:
        parts.append(number('ssim', ssim_digits))
    parts += [number(name, 4) for name in means if name not in ('psnr', 'ssim')]
    return '/'.join(parts)


def markdown_table(rows: list[TableRow], psnr_digits: int = 2, ssim_digits: int = 4) -> str:
    """The Markdown table: ``| Method | Scale | Set5 | Set14 | BSD100 |`` with ``PSNR/SSIM`` cells."""
    columns = dataset_columns(rows)
    lines = ['| Method | Scale | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
    for row in rows:
        scale = f'x{row.scale}' if row.scale else '-'
        cells = [format_cell(row.means.get(name), psnr_digits, ssim_digits, row.spread.get(name)) for name in columns]
        lines.append(f'| {row.label} | {scale} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
