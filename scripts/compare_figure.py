#!/usr/bin/env python
"""Paper-style visual comparison: the HR image with a box, then the boxed crop of HR and of each method's SR image,
captioned with the method and its PSNR/SSIM on the whole image (Y channel, border of --scale cropped).

    python scripts/compare_figure.py --hr datasets/Set14/HR/barbara.png --box 300 60 80 60 --scale 4 \\
        --method IMDN=results/infer_imdn/barbarax4_IMDN_x4.png --method RFDN=results/infer_rfdn/barbarax4_RFDN_x4.png \\
        --output figures/barbara.png
    python scripts/compare_figure.py --hr datasets/Set5/HR/baby.png --box 200 200 64 64 --scale 4 \\
        --results-dir IMDN=results/test_imdn_x4/visualization/Set5 --results-dir results/rfdn_sr --output baby.png

``--results-dir [LABEL=]FOLDER`` finds ``<hr name>.<ext>``, ``<hr name>_<suffix>.<ext>`` or, for files named after
the LR image, ``<hr name>x<scale>_<suffix>.<ext>`` in FOLDER (label default: the folder name). Methods appear in
the order given, --method entries first. Prints each method's PSNR/SSIM.
"""
import argparse
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches, before basicsr)
from mtkd.metrics.evaluation import ImageReadError  # noqa: E402
from mtkd.tools.figures import find_result_image, make_comparison_figure, score_caption  # noqa: E402


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='ground-truth HR image')
    parser.add_argument('--box', type=int, nargs=4, required=True, metavar=('X', 'Y', 'W', 'H'),
                        help='crop box in HR pixels: top-left x y, width, height')
    parser.add_argument('--scale', type=int, required=True, help='upscaling factor (border cropped for PSNR/SSIM)')
    parser.add_argument('--method', action='append', default=[], metavar='LABEL=PATH',
                        help="a method's SR image (repeat)")
    parser.add_argument('--results-dir', action='append', default=[], metavar='[LABEL=]FOLDER',
                        help="a method's results folder (repeat)")
    parser.add_argument('--output', required=True, help='PNG file to write')
    parser.add_argument('--panel-height', type=int, default=160, help='height of each enlarged crop in pixels')
    parser.add_argument('--columns', type=int, default=None, help='crops per row (default: all in one row)')
    return parser


def split_label(entry: str, option: str, default_label: str | None = None) -> tuple[str, str]:
    """``LABEL=PATH`` → (label, path); a bare path gets ``default_label`` or is refused."""
    if '=' in entry:
        label, path = entry.split('=', 1)
        if label and path:
            return label, path
    elif default_label is not None:
        return default_label, entry
    raise ValueError(f'{option} {entry!r}: expected LABEL=PATH')


def collect_methods(args) -> dict[str, str]:
    hr_name = os.path.splitext(os.path.basename(args.hr))[0]
    methods: dict[str, str] = {}
    entries = [split_label(entry, '--method') for entry in args.method]
    for entry in args.results_dir:
        label, folder = split_label(entry, '--results-dir', os.path.basename(os.path.normpath(entry)))
        try:
            path = find_result_image(folder, hr_name)
        except FileNotFoundError:
            path = find_result_image(folder, f'{hr_name}x{args.scale}')  # named after the LR file (babyx4_...)
        entries.append((label, path))
    for label, path in entries:
        if label in methods:
            raise ValueError(f"two methods are labelled '{label}': give each a distinct LABEL=")
        methods[label] = path
    return methods


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    try:
        methods = collect_methods(args)
        _, panels = make_comparison_figure(args.hr, methods, args.box, args.scale, args.output,
                                           panel_height=args.panel_height, columns=args.columns)
    except (ImageReadError, FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    width = max(len(panel.label) for panel in panels)
    for panel in panels[1:]:
        print(f'{panel.label:<{width}}  {score_caption(panel.score)}')
    print(f'figure written to {args.output}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
