#!/usr/bin/env python
"""Super-resolve an image file or a folder of images with any registered network and its weights.

    python scripts/infer.py --opt options/test_imdn_x4.yml --input photo.jpg --output results/infer
    python scripts/infer.py --arch '{"type": "RFDN", "num_feat": 50, "num_block": 4, "upscale": 4, "img_range": 255}' \\
        --weights pretrained/official/RFDN_AIM.pth --input datasets/Set5/LR_bicubic/X4 --output results/infer
    python scripts/infer.py --opt options/test_edsr_x4.yml --input big.png --output out --tile-size 256
    python scripts/infer.py --opt options/test_rlfn_x4.yml --input photo.jpg --output out --self-ensemble

Writes ``<output>/<name>_<suffix>.png`` (suffix default ``<arch>_x<scale>``). ``--opt`` uses the file's
``network_g``, ``path.pretrain_network_g`` (relative to the repository root), ``param_key_g``, ``key_format_g``,
``val.pad_multiple`` and ``val.self_ensemble``; ``--weights``/``--param-key``/``--key-format``/``--scale`` override
it, and ``--self-ensemble`` turns the self-ensemble on whatever the file says. Weights are loaded
strictly. docs/inference.md lists which networks tile exactly.
"""
import argparse
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches and arch registration, before basicsr)
from mtkd.tools.inference import (DEFAULT_TILE_OVERLAP, add_model_arguments, model_spec_from_arguments,  # noqa: E402
                                  run_inference)
from mtkd.utils.errors import MtkdError, report_user_error  # noqa: E402


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument('--input', required=True, help='an image file or a folder of images (not recursive)')
    parser.add_argument('--output', required=True, help='folder for the SR images')
    parser.add_argument('--suffix', default=None, help='output name suffix, default <arch>_x<scale>')
    parser.add_argument('--tile-size', type=int, default=None, help='run on LR tiles of this size (bounded memory)')
    parser.add_argument('--tile-overlap', type=int, default=DEFAULT_TILE_OVERLAP,
                        help=f'LR pixels of context around each tile (default {DEFAULT_TILE_OVERLAP})')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--self-ensemble', action='store_true',
                        help='average the 8 rotated/mirrored runs (EDSR\'s "+"; 8x the time, usually +0.1 dB)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    try:
        spec = model_spec_from_arguments(args, REPO_ROOT)
        written = run_inference(spec, args.input, args.output, suffix=args.suffix, device=args.device,
                                tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                                progress=not args.no_progress, logger=logging.getLogger('mtkd'),
                                self_ensemble=args.self_ensemble)
    except MtkdError as error:  # options, weights, unreadable images: the message alone
        return report_user_error(error, 'infer')
    except (FileNotFoundError, ValueError) as error:
        print(f'infer: {error}', file=sys.stderr)
        return 2
    print(f'{len(written)} image(s) written to {args.output} ({spec.name}, x{spec.scale})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
