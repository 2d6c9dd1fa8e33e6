#!/usr/bin/env python
"""Parameters, multiply-accumulates and latency of SR networks, as a Markdown table.

    python scripts/profile_models.py options/test_imdn_x4.yml options/test_rfdn_aim_x4.yml
    python scripts/profile_models.py --arch '{"type": "EDSR", "num_feat": 64, "num_block": 16, "upscale": 4, \\
        "num_in_ch": 3, "num_out_ch": 3}' --input-size 64 64 --runs 3 --device cpu

Option files give ``network_g`` (and ``val.pad_multiple``); ``--arch`` takes network blocks as JSON/YAML. The
networks keep their random initialisation (counts and timings do not depend on the weights, so no weights file is
needed). MACs are for one ``--input-size WIDTH HEIGHT`` LR image (default 320 180: a 1280x720 output at x4);
latency is the median of ``--runs`` passes after ``--warmup`` passes (synchronised on CUDA). mtkd/analysis/profiling.py
says what the MAC counters count.
"""
import argparse
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import mtkd  # noqa: E402,F401  (compat patches and arch registration, before basicsr)
from mtkd.analysis.profiling import DEFAULT_INPUT_SIZE, MAC_COUNTERS, profile_network, profile_table  # noqa: E402
from mtkd.config.cli import load_option_file  # noqa: E402
from mtkd.config.errors import OptionError  # noqa: E402
from mtkd.tools.inference import (build_network, model_spec_from_arch, model_spec_from_options,  # noqa: E402
                                  resolve_device)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('options', nargs='*', help='option files with network_g')
    parser.add_argument('--arch', action='append', default=[], help='a network block as JSON/YAML (repeat)')
    parser.add_argument('--scale', type=int, default=None, help='scale for --arch blocks without upscale/scale')
    parser.add_argument('--input-size', type=int, nargs=2, default=list(DEFAULT_INPUT_SIZE),
                        metavar=('WIDTH', 'HEIGHT'), help='LR input size (default 320 180)')
    parser.add_argument('--runs', type=int, default=10, help='timed passes (0: no latency), default 10')
    parser.add_argument('--warmup', type=int, default=3, help='untimed passes first, default 3')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--counter', choices=MAC_COUNTERS, default='flop_counter',
                        help='MAC counter: flop_counter (default, includes attention matmuls) or hooks')
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    if not args.options and not args.arch:
        print('error: give option files and/or --arch blocks to profile', file=sys.stderr)
        return 2
    rows = []
    try:
        device = resolve_device(args.device)
        specs = [model_spec_from_options(load_option_file(path), root=REPO_ROOT,
                                         name=os.path.splitext(os.path.basename(path))[0]) for path in args.options]
        specs += [model_spec_from_arch(block, scale=args.scale) for block in args.arch]
        for spec in specs:
            if spec.self_ensemble:
                print(f'note: {spec.name} sets val.self_ensemble: profiled as one forward pass (the self-ensemble '
                      'costs 8 of them)', file=sys.stderr)
            rows.append(profile_network(spec.name, build_network(spec.network), spec.scale, args.input_size, device,
                                        args.runs, args.warmup, spec.pad_multiple, args.counter))
    except (OptionError, FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(profile_table(rows))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
