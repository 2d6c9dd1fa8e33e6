#!/usr/bin/env python
"""Teacher report (DTKD, Li et al., KBS 2025: good teachers give reliable textures, not false ones): PSNR/SSIM,
NIQE and false-texture energy of each teacher on benchmark sets, as a Markdown table.

    python scripts/teacher_report.py --opt options/stage1_ka_light_x4.yml --sets Set5 Set14 BSD100 --scale 4
    python scripts/teacher_report.py --opt options/test_imdn_x4.yml --sets Set5 --no-niqe --json report.json
    python scripts/teacher_report.py --opt options/stage1_ka_light_x4.yml --no-niqe --error-correlation
    python scripts/teacher_report.py --opt options/stage1_ka_light_x4.yml --no-niqe --fusion-bounds
    python scripts/teacher_report.py --opt options/stage1_ka_light_x4.yml --no-niqe --fusion-bounds --fit-on-train
    python scripts/teacher_report.py --opt options/stage1_ka_light_x4.yml options/test_lbnet_t_x4.yml --sets Set5
    python scripts/teacher_report.py --opt options/stage1_ka_light_x4.yml --no-niqe --fusion-bounds --self-ensemble
    python scripts/teacher_report.py --opt options/test_dtkd_edgesrn_x4.yml options/test_dtkd_edgesrn_novgg_x4.yml \
        --lpips

``--opt``: one or more option files, each with a ``teachers:`` list (name, network, weights) or a test option file
(``network_g`` + ``path.pretrain_network_g``, named after its ``name``); their teachers are reported together
(names must differ). Relative weights and set names are taken from the repository root
(``datasets/<set>``; a value with a ``/`` is used as a path). docs/teacher_report.md explains the numbers.
"""
import argparse
import dataclasses
import json
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

import mtkd  # noqa: E402,F401  (compat patches and arch registration, before basicsr)
from mtkd.analysis.error_correlation import ErrorCorrelation, correlation_markdown  # noqa: E402
from mtkd.analysis.fusion_bounds import (DEFAULT_PATCH_SIZES, FusionBounds, fit_global_weights,  # noqa: E402
                                         fusion_bounds_markdown)
from mtkd.analysis.teacher_report import (FLAT_THRESHOLD, SELF_ENSEMBLE_SUFFIX, networks_from_option_file,  # noqa: E402
                                          report_markdown, report_teachers)
from mtkd.config.cli import load_option_file  # noqa: E402
from mtkd.config.errors import OptionError  # noqa: E402
from mtkd.metrics.evaluation import read_image, tensor_to_image  # noqa: E402
from mtkd.metrics.lpips_metric import LPIPS  # noqa: E402
from mtkd.teachers.cache import (TeacherCacheError, build_cache_from_options, image_stem,  # noqa: E402
                                 training_pairs_from_options)
from mtkd.teachers.ensemble import TeacherWeightsError  # noqa: E402
from mtkd.weights.loading import WeightLoadError  # noqa: E402


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--opt', required=True, nargs='+',
                        help='option files (teachers: or network_g + path.pretrain_network_g), reported together')
    parser.add_argument('--sets', nargs='+', default=['Set5', 'Set14', 'BSD100'],
                        help='benchmark sets under datasets/ (or paths), default Set5 Set14 BSD100')
    parser.add_argument('--scale', type=int, default=None, help="upscaling factor (default: the option file's scale)")
    parser.add_argument('--no-niqe', action='store_true', help='skip NIQE (the slowest measure)')
    parser.add_argument('--error-correlation', action='store_true',
                        help='also print the correlation of the teachers\' Y errors per set (how much they overlap: '
                             'what a fusion of them can gain; mtkd/analysis/error_correlation.py)')
    parser.add_argument('--fusion-bounds', action='store_true',
                        help='also print oracle bounds of fusing the teachers per set: plain average, best global '
                             'weights, best weights per patch, best teacher per pixel (mtkd/analysis/fusion_bounds.py)')
    parser.add_argument('--patch-sizes', type=int, nargs='+', default=list(DEFAULT_PATCH_SIZES),
                        help=f'patch sizes of --fusion-bounds (default {" ".join(map(str, DEFAULT_PATCH_SIZES))})')
    parser.add_argument('--fit-on-train', action='store_true',
                        help='with --fusion-bounds: also score global weights fitted on the training images of the '
                             'first --opt file (datasets.train, through its teacher cache, built if missing): what a '
                             'fixed weighting learned there gives on the sets')
    parser.add_argument('--flat-threshold', type=float, default=FLAT_THRESHOLD,
                        help=f'false texture: GT high-frequency energy below which a pixel is flat, grey levels '
                             f'(default {FLAT_THRESHOLD})')
    parser.add_argument('--self-ensemble', action='store_true',
                        help='report every teacher as its x8 self-ensemble, named <name>+ (8x the time; with '
                             '--fit-on-train the training cache of the + teachers is built too)')
    parser.add_argument('--lpips', action='store_true',
                        help='also LPIPS to the ground truth (lower = perceptually closer; weights from local files, '
                             'mtkd/metrics/lpips_metric.py)')
    parser.add_argument('--lpips-net', choices=['alex', 'vgg'], default='alex', help='LPIPS backbone (default alex)')
    parser.add_argument('--lpips-backbone-weights', default=None,
                        help='torchvision backbone file (default pretrained/lpips/alexnet-owt-7be5be79.pth or '
                             'vgg16-397923af.pth)')
    parser.add_argument('--lpips-linear-weights', default=None,
                        help='LPIPS v0.1 linear layers (default pretrained/lpips/alex.pth or vgg.pth)')
    parser.add_argument('--tile-size', type=int, default=None, help='run teachers on LR tiles of this size')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar per set on stderr')
    parser.add_argument('--json', default=None, help='also write the rows (with per-image values) to this JSON file')
    return parser


def resolve_set(name: str) -> str:
    """``datasets/<name>`` under the repository root for a bare name; a value with a path separator as is."""
    return name if os.sep in name or '/' in name else os.path.join(REPO_ROOT, 'datasets', name)


def networks_of_files(paths: list[str], scale: int | None, device: str,
                      logger: logging.Logger, self_ensemble: bool = False) -> tuple[int, dict]:
    """The upscaling factor and ``name -> network`` of every teacher in the option files, in their order
    (each one self-ensembled and named ``<name>+`` with ``self_ensemble``)."""
    all_options = [(path, load_option_file(path)) for path in paths]
    if scale is None:
        scale = next((options['scale'] for _, options in all_options if options.get('scale') is not None), None)
        if not isinstance(scale, int):
            raise ValueError(f'{", ".join(paths)}: no scale given: pass --scale')
    networks, origin = {}, {}
    for path, options in all_options:
        if options.get('scale') not in (None, scale):
            raise ValueError(f"the report is at x{scale} but {path} is for x{options['scale']}: pass option files "
                             f'of one scale (or --scale matching them)')
        for name, network in networks_from_option_file(options, scale, root=REPO_ROOT, device=device,
                                                       logger=logger, self_ensemble=self_ensemble).items():
            if name in networks:
                raise ValueError(f'teacher name {name!r} appears in {origin[name]} and in {path}: names must differ '
                                 '(rename the teacher, or the test file\'s name:)')
            networks[name], origin[name] = network, path
    return scale, networks


def train_fitted_weights(option_file: str, scale: int, teacher_names: list[str], device: str,
                         logger: logging.Logger, self_ensemble: bool = False) -> dict[str, float]:
    """Global least-squares teacher weights on the option file's training images (Y, crop = scale), read from
    its teacher cache (built first if missing); its teachers must be the reported ones (its scale,
    :func:`networks_of_files` has checked). ``self_ensemble``: of the self-ensembled teachers (their own cache)."""
    options = load_option_file(option_file)
    if self_ensemble:
        teachers = [entry if entry.get('self_ensemble') else
                    {**entry, 'name': entry['name'] + SELF_ENSEMBLE_SUFFIX, 'self_ensemble': True}
                    for entry in options.get('teachers') or []]
        options = {**options, 'teachers': teachers}
    names = [entry.get('name') for entry in options.get('teachers') or []]
    if sorted(names) != sorted(teacher_names):
        raise ValueError(f'--fit-on-train: {option_file} has teachers {names} but the report has {teacher_names}; '
                         'the training cache must hold every reported teacher (report that file\'s teachers only)')
    cache, _ = build_cache_from_options(options, root=REPO_ROOT, device=device, logger=logger)

    def images():
        for pair in training_pairs_from_options(options, REPO_ROOT):
            stem = image_stem(pair['lq_path'])
            outputs = {name: tensor_to_image(torch.from_numpy(cache.read_full(name, stem)).permute(2, 0, 1)[None])
                       for name in cache.teacher_names}
            yield outputs, read_image(pair['gt_path'])

    return fit_global_weights(images(), crop_border=scale)


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    logger = logging.getLogger('mtkd')
    if args.fit_on_train and not args.fusion_bounds:
        print('error: --fit-on-train adds a row to the fusion bounds: pass --fusion-bounds too', file=sys.stderr)
        return 2
    try:
        scale, networks = networks_of_files(args.opt, args.scale, args.device, logger, args.self_ensemble)
        correlation = ErrorCorrelation() if args.error_correlation else None
        transfer = (train_fitted_weights(args.opt[0], scale, list(networks), args.device, logger, args.self_ensemble)
                    if args.fit_on_train else None)
        bounds = FusionBounds(args.patch_sizes, transfer_weights=transfer) if args.fusion_bounds else None
        lpips = (LPIPS(args.lpips_net, args.lpips_backbone_weights, args.lpips_linear_weights).to(args.device)
                 if args.lpips else None)
        rows = report_teachers(networks, [resolve_set(name) for name in args.sets], scale, niqe=not args.no_niqe,
                               tile_size=args.tile_size, flat_threshold=args.flat_threshold, logger=logger,
                               observers=[observer for observer in (correlation, bounds) if observer is not None],
                               progress=not args.no_progress, lpips=lpips)
    except (TeacherWeightsError, WeightLoadError, OptionError, TeacherCacheError, FileNotFoundError,
            ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(report_markdown(rows))
    if correlation is not None:
        print()
        print(correlation_markdown(correlation))
    if bounds is not None:
        print()
        print(fusion_bounds_markdown(bounds))
    if args.json:
        content = {'option_files': args.opt, 'scale': scale, 'flat_threshold': args.flat_threshold,
                   'self_ensemble': args.self_ensemble,
                   'rows': [dataclasses.asdict(row) for row in rows]}
        if correlation is not None:
            content['error_correlation'] = {}
            for dataset in correlation.datasets:
                names, matrix = correlation.matrix(dataset)
                content['error_correlation'][dataset] = {'teachers': names, 'matrix': matrix.tolist()}
        if transfer is not None:
            content['train_fitted_weights'] = transfer
        if bounds is not None:
            content['fusion_bounds'] = {dataset: dataclasses.asdict(bounds.row(dataset)) for dataset in bounds.datasets}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(content, handle, indent=2, allow_nan=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
