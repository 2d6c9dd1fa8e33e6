#!/usr/bin/env python
"""Markdown table (rows: models/methods, columns: datasets, cells PSNR/SSIM) from metrics.json files.

    python scripts/make_table.py results/test_imdn_x4 results/test_rlfn_x4=RLFN --digits 3
    python scripts/make_table.py results/run_seed0=MTKD results/run_seed1=MTKD results/run_seed2=MTKD --merge-runs
A path may be a results folder or a metrics.json file; ``=Label`` renames its row. ``--merge-runs``: rows with one
label (e.g. seeds of one method) become one row ``mean±sd`` (sample standard deviation), labelled with the count.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

from mtkd.metrics.tables import markdown_table, merge_runs, read_metrics_file  # noqa: E402
from mtkd.utils.errors import MtkdError, report_user_error  # noqa: E402


def main(argv=None) -> int:
    try:
        return make_table(argv)
    except MtkdError as error:  # a missing or broken results folder: the message alone
        return report_user_error(error, 'make_table')


def make_table(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('results', nargs='+', help='results/<name> folders or metrics.json files, optionally =Label')
    parser.add_argument('--digits', type=int, default=2, help='PSNR decimals')
    parser.add_argument('--ssim-digits', type=int, default=4, help='SSIM decimals')
    parser.add_argument('--with-other-outputs', action='store_true',
                        help='also rows for other outputs recorded in the file (teachers, teacher average)')
    parser.add_argument('--merge-runs', action='store_true',
                        help='one row per label: the mean±sd over the results given that label (seeds of a method)')
    parser.add_argument('--output', help='also write the table to this file')
    args = parser.parse_args(argv)
    rows = []
    for item in args.results:
        path, _, label = item.partition('=')
        rows += read_metrics_file(path, label or None, args.with_other_outputs)
    if args.merge_runs:
        try:
            rows = merge_runs(rows)
        except ValueError as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
    table = markdown_table(rows, args.digits, args.ssim_digits)
    print(table)
    if args.output:
        with open(args.output, 'w', encoding='utf-8') as handle:
            handle.write(table + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
