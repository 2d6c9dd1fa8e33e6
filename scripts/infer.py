#!/usr/bin/env python
"""Super-resolve an image file or a folder of images with any registered network and its weights.

    python scripts/infer.py --opt options/test_imdn_x4.yml --input photo.jpg --output results/infer
    python scripts/infer.py --arch '{"type": "RFDN", "num_feat": 50, "num_block": 4, "upscale": 4, "img_range": 255}' \\
        --weights pretrained/official/RFDN_AIM.pth --input datasets/Set5/LR_bicubic/X4 --output results/infer
    python scripts/infer.py --opt options/test_edsr_x4.yml --input big.png --output out --tile-size 256

Writes ``<output>/<name>_<suffix>.png`` (suffix default ``<arch>_x<scale>``). ``--opt`` uses the file's
``network_g``, ``path.pretrain_network_g`` (relative to the repository root), ``param_key_g``, ``key_format_g`` and
``val.pad_multiple``; ``--weights``/``--param-key``/``--key-format``/``--scale`` override it. Weights are loaded
strictly. docs/inference.md lists which networks tile exactly.
"""
import argparse
import dataclasses
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches and arch registration, before basicsr)
from mtkd.config.cli import load_option_file  # noqa: E402
from mtkd.config.errors import OptionError  # noqa: E402
from mtkd.evaluation import ImageReadError  # noqa: E402
from mtkd.inference import (DEFAULT_TILE_OVERLAP, model_spec_from_arch, model_spec_from_options,  # noqa: E402
                            run_inference)
from mtkd.weights import WeightLoadError  # noqa: E402


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument('--opt', help='option file with network_g (and path.pretrain_network_g), e.g. '
                                     'options/test_imdn_x4.yml')
    model.add_argument('--arch', help='network block as JSON/YAML, e.g. \'{"type": "IMDN", "upscale": 4}\' '
                                      '(needs --weights)')
    parser.add_argument('--weights', default=None, help='checkpoint file (overrides path.pretrain_network_g)')
    parser.add_argument('--param-key', default=None,
                        help="key of the state dict in the checkpoint: auto (default), params, params_ema, none")
    parser.add_argument('--key-format', default=None,
                        help='key layout of the checkpoint (mtkd.weight_formats), default basicsr')
    parser.add_argument('--input', required=True, help='an image file or a folder of images (not recursive)')
    parser.add_argument('--output', required=True, help='folder for the SR images')
    parser.add_argument('--suffix', default=None, help='output name suffix, default <arch>_x<scale>')
    parser.add_argument('--scale', type=int, default=None,
                        help="upscaling factor (default: the option file's scale or the network's upscale)")
    parser.add_argument('--tile-size', type=int, default=None, help='run on LR tiles of this size (bounded memory)')
    parser.add_argument('--tile-overlap', type=int, default=DEFAULT_TILE_OVERLAP,
                        help=f'LR pixels of context around each tile (default {DEFAULT_TILE_OVERLAP})')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    raw_state_dict = args.param_key is not None and args.param_key.lower() == 'none'
    param_key = None if raw_state_dict else args.param_key  # None here: the option file's (or auto)
    try:
        if args.opt:
            spec = model_spec_from_options(load_option_file(args.opt), root=REPO_ROOT, weights=args.weights,
                                           param_key=param_key, key_format=args.key_format, scale=args.scale)
        else:
            if args.weights is None:
                raise ValueError('--arch needs --weights PATH')
            spec = model_spec_from_arch(args.arch, weights=args.weights, param_key=param_key,
                                        key_format=args.key_format, scale=args.scale)
        if raw_state_dict:
            spec = dataclasses.replace(spec, param_key=None)
        written = run_inference(spec, args.input, args.output, suffix=args.suffix, device=args.device,
                                tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                                progress=not args.no_progress, logger=logging.getLogger('mtkd'))
    except (ImageReadError, WeightLoadError, OptionError, FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{len(written)} image(s) written to {args.output} ({spec.name}, x{spec.scale})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
