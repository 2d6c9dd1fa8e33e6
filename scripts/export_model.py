#!/usr/bin/env python
"""Export a trained SR network for deployment: ``<output>.safetensors`` (state dict) and ``<output>.onnx`` (opset 17,
input 'lr' (1, C, H, W) in [0, 1], output 'sr', dynamic height and width), checked against PyTorch with onnxruntime.

    python scripts/export_model.py --opt options/test_dtkd_light_rfdn_alone_x4.yml --output results/export/rfdn
    python scripts/export_model.py --arch '{"type": "RFDN", "num_feat": 50, "num_block": 4, "upscale": 4, \\
        "img_range": 255}' --weights pretrained/official/RFDN_AIM.pth --output results/export/rfdn_aim
    python scripts/export_model.py --opt options/test_swinir_light_x4.yml --random-weights --output /tmp/swinir

``--opt`` uses the file's ``network_g``, ``path.pretrain_network_g`` (relative to the repository root),
``param_key_g``, ``key_format_g`` and ``val.pad_multiple`` (padding is built into the ONNX graph); weights are
loaded strictly. onnxruntime runs the ONNX model on random image-like inputs of two LR sizes other than the export
size; the max absolute difference to PyTorch must be at most ``--tolerance`` (1e-4). Exit status: 0 exported and
matching, 1 export failed or the outputs differ, 2 bad arguments, options or weights. docs/inference.md lists which
archs export.
"""
import argparse
import dataclasses
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches and arch registration, before basicsr)
from mtkd.config.errors import OptionError  # noqa: E402
from mtkd.tools.export import (DEFAULT_CHECK_SIZES, DEFAULT_EXPORT_SIZE, DEFAULT_TOLERANCE, ONNX_OPSET,  # noqa: E402
                               ExportError, export_model, export_table)
from mtkd.tools.inference import add_model_arguments, model_spec_from_arguments  # noqa: E402
from mtkd.weights.loading import WeightLoadError  # noqa: E402


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, arch_needs='--weights or --random-weights')
    parser.add_argument('--random-weights', action='store_true',
                        help='no checkpoint: export the random initialisation (to see whether an arch exports)')
    parser.add_argument('--output', required=True,
                        help='output path without extension: writes <output>.safetensors and <output>.onnx')
    parser.add_argument('--export-size', type=int, nargs=2, default=list(DEFAULT_EXPORT_SIZE),
                        metavar=('HEIGHT', 'WIDTH'),
                        help=f'LR size of the traced input (default {DEFAULT_EXPORT_SIZE})')
    parser.add_argument('--check-size', type=int, nargs=2, action='append', default=None, metavar=('HEIGHT', 'WIDTH'),
                        help=f'LR size of a checked input (repeat; default {DEFAULT_CHECK_SIZES})')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help=f'largest accepted max absolute difference (default {DEFAULT_TOLERANCE:g})')
    parser.add_argument('--opset', type=int, default=ONNX_OPSET, help=f'ONNX opset (default {ONNX_OPSET})')
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    stem, extension = os.path.splitext(args.output)
    prefix = stem if extension in ('.onnx', '.safetensors') else args.output  # 'out.onnx' means 'out'
    try:
        spec = model_spec_from_arguments(args, REPO_ROOT, weights_optional=args.random_weights)
        if args.random_weights:
            if args.weights is not None:
                raise ValueError('--random-weights and --weights exclude each other')
            spec = dataclasses.replace(spec, weights=None)
        if spec.self_ensemble:
            logging.getLogger('mtkd').warning('the option file sets val.self_ensemble: the export is the plain network '
                                              '(one forward pass); average its 8 rotated/mirrored runs at inference '
                                              'to get the self-ensemble')
        result = export_model(spec, prefix, args.export_size, args.check_size or DEFAULT_CHECK_SIZES,
                              args.tolerance, allow_random_weights=args.random_weights, opset=args.opset,
                              logger=logging.getLogger('mtkd'))
    except ExportError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    except (WeightLoadError, OptionError, FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(export_table([result]))
    print(f'wrote {result.safetensors_path} and {result.onnx_path}'
          + (' (random weights)' if spec.weights is None else ''))
    if result.tracer_warnings:
        print(f'note: {len(result.tracer_warnings)} tracer warning(s), Python values frozen at the export size:')
        for warning in result.tracer_warnings:
            print(f'  {warning}')
    if not result.matches:
        print(f'error: {result.label}: the ONNX model does not reproduce PyTorch (max abs diff '
              f'{result.max_abs_diff:.3g} > {args.tolerance:g}): do not deploy {result.onnx_path}; the tracer '
              'warnings above show which Python values were frozen at the export size', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
