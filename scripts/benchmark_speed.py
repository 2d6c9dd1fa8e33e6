#!/usr/bin/env python
"""Step time of distillation vs the student alone, fp32 and AMP (fp16 by default) + channels_last
(docs/performance.md).

    python scripts/benchmark_speed.py -opt options/stage2_light_edsr32_x4.yml --device cpu --batch-size 4 \
        --lr-patch 32 --json results/benchmark_cpu.json
    python scripts/benchmark_speed.py -opt options/stage2_rcan_light_x4.yml --device cuda     # paper sizes

Modes: student alone; teachers on the fly with autograd (the reference code); on the fly under no_grad; with the
teacher-output cache. Prints one table of ratios to the student alone (for a stage-1 file, whose trained network
reads teacher outputs, to the cached step), plus the aggregator DCT (matrix vs FFT). On CUDA, cudnn.benchmark is on
as in training, and each precision's models are freed before the next one's are built.
"""
import argparse
import json
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

import mtkd  # noqa: E402,F401  (compat patches, registration)
from mtkd.analysis.benchmark import (DEFAULT_PRECISIONS, MODES, PRECISIONS, benchmark_dct,  # noqa: E402
                                     benchmark_steps, markdown_table, rows_as_dicts)
from mtkd.config.cli import apply_overrides, load_option_file  # noqa: E402
from mtkd.config.errors import OptionError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='a distillation option file (with teachers:)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr-patch', type=int, default=64, help='LR patch side (the paper: 64)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--precisions', nargs='+', default=list(DEFAULT_PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES))
    parser.add_argument('--force_yml', nargs='+', default=None, help='key:subkey=value overrides of the option file')
    parser.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('error: --device cuda but no CUDA device is available', file=sys.stderr)
        return 2
    try:
        options = apply_overrides(load_option_file(args.opt), args.force_yml)
        rows = benchmark_steps(options, args.device, args.precisions, args.batch_size, args.lr_patch, args.warmup,
                               args.steps, args.modes)
    except (OptionError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    dct = benchmark_dct(args.device)
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f'{args.opt} on {device_name}, batch {args.batch_size}, LR patch {args.lr_patch}, median of {args.steps} '
          f'steps after {args.warmup} warm-up')
    print(markdown_table(rows))
    if rows and not any(row.mode == 'student_alone' for row in rows):
        print('(stage 1: the aggregator reads teacher outputs, so ratios are to the cached step)')
    print(f"\nAggregator DCT on {dct['blocks']} blocks of {dct['size']}x{dct['size']}: matrix {dct['matrix_ms']:.2f} ms, "
          f"FFT {dct['fft_ms']:.2f} ms ({dct['fft_over_matrix']:.1f}x)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump({'option_file': args.opt, 'device': device_name, 'batch_size': args.batch_size,
                       'lr_patch': args.lr_patch, 'steps': rows_as_dicts(rows), 'dct': dct,
                       'torch': torch.__version__}, handle, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
