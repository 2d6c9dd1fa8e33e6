#!/usr/bin/env python
"""Which teacher does a region of the aggregated image MT come from: LAM over the KA network's input (MTKD Fig. 4).

    python scripts/teacher_attribution.py -opt options/stage1_ka_light_x4.yml \\
        --ka-weights experiments/stage1_ka_light_x4/models/net_g_latest.pth \\
        --image datasets/Set5/LR_bicubic/X4/babyx4.png --region 236 160 32 32 \\
        [--hr datasets/Set5/HR/baby.png] [--method lam|gradient|integrated_gradients] [--output attribution.png]

Builds the teachers of the option file's ``teachers:`` (relative weights from the repository root) and the KA
network of its ``network_g`` with the weights of ``--ka-weights`` (whose saved teacher list must match), runs the
teachers on the LR image, attributes the region of MT (``top left height width`` in HR pixels) to the teacher
outputs with :func:`mtkd.analysis.attribution.teacher_attribution`, prints each teacher's share and diffusion index, and
saves a PNG grid: top row the LR image (bicubic-upscaled for display), each teacher's output and MT with the region
boxed; bottom row the attribution of all teachers together (over the LR image), each teacher's attribution (over
its output, one colour scale for all teachers, its share written on it) and a legend. docs/attribution.md explains
the numbers.
"""
import argparse
import logging
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO_ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import mtkd  # noqa: E402,F401  (compat patches and arch registration, before basicsr)
from mtkd.analysis.attribution import (BASELINES, CHANNEL_REDUCTIONS, LAM_FOLD, LAM_KERNEL_SIZE,  # noqa: E402
                                       LAM_SIGMA, METHODS, AttributionResult, teacher_attribution)
from mtkd.config.cli import load_option_file  # noqa: E402
from mtkd.metrics.evaluation import image_to_tensor, read_image, score_images, tensor_to_image  # noqa: E402
from mtkd.teachers.ensemble import TeacherEnsemble, check_fingerprint, teacher_specs_from_options  # noqa: E402
from mtkd.weights.loading import load_weights, read_checkpoint  # noqa: E402

#: Height of the caption bar above every tile of the figure (pixels).
LABEL_HEIGHT = 22
#: Weight of the heat map when laid over an image (LAM's demo blends 0.5 / 0.5).
HEAT_ALPHA = 0.5
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_REGION_COLOUR = (0, 0, 255)  # red, BGR


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='stage-1 option file (teachers:, network_g:, scale:)')
    parser.add_argument('--ka-weights', default=None, help='KA checkpoint trained by stage 1 (required)')
    parser.add_argument('--image', required=True, help='LR image (PNG), e.g. datasets/Set5/LR_bicubic/X4/babyx4.png')
    parser.add_argument('--region', type=int, nargs=4, required=True, metavar=('TOP', 'LEFT', 'HEIGHT', 'WIDTH'),
                        help='region of MT to explain, in HR pixels')
    parser.add_argument('--hr', default=None, help='HR image: adds Y-channel PSNR (crop = scale) to the labels')
    parser.add_argument('--method', choices=METHODS, default='lam', help='attribution method (default lam)')
    parser.add_argument('--sigma', type=float, default=LAM_SIGMA, help=f'blur path sigma (LAM: {LAM_SIGMA})')
    parser.add_argument('--fold', type=int, default=LAM_FOLD, help=f'path steps (LAM: {LAM_FOLD})')
    parser.add_argument('--kernel-size', type=int, default=LAM_KERNEL_SIZE,
                        help=f'odd Gaussian kernel size (LAM: {LAM_KERNEL_SIZE})')
    parser.add_argument('--baseline', choices=BASELINES, default='blur', help='integrated_gradients baseline')
    parser.add_argument('--channel-reduction', choices=CHANNEL_REDUCTIONS, default='abs_sum',
                        help="per-teacher map: sum of |attribution| over its channels (default) or LAM's |sum|")
    parser.add_argument('--chunk-size', type=int, default=2,
                        help='path points per backward (memory: about 0.7 GB each for a 512x512 MT on the CPU)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--output', default='attribution.png', help='figure path (PNG)')
    return parser


def build_networks(options: dict, ka_weights: str, device: torch.device,
                   logger: logging.Logger) -> tuple[TeacherEnsemble, torch.nn.Module]:
    """The frozen teachers of ``teachers:`` and the KA network of ``network_g`` loaded from ``ka_weights``."""
    from basicsr.archs import build_network

    missing = [key for key in ('scale', 'teachers', 'network_g') if key not in options]
    if missing:
        raise ValueError(f'the option file has no {missing}: use a stage-1 option file (options/stage1_ka_*.yml)')
    specs = teacher_specs_from_options(options['teachers'], root=REPO_ROOT)
    teachers = TeacherEnsemble(specs, scale=options['scale'], device=device, logger=logger)
    network_options = dict(options['network_g'])
    if network_options.get('num_teachers', len(teachers)) != len(teachers):
        raise ValueError(f"network_g.num_teachers is {network_options['num_teachers']} but teachers: lists "
                         f'{len(teachers)} ({", ".join(teachers.names)})')
    try:
        network = build_network(network_options)
    except (TypeError, KeyError) as error:
        raise ValueError(f'network_g cannot be built: {error}') from None
    checkpoint = read_checkpoint(ka_weights)
    saved = checkpoint.get('teachers') if isinstance(checkpoint, dict) else None
    if saved is None:
        logger.warning(f'{ka_weights} records no teacher list: cannot check that its teachers and their order match '
                       f'{teachers.names}; the shares are only meaningful if they do.')
    else:
        # Teacher i is channel group i of the KA input: a reordered list would attribute to the wrong names.
        check_fingerprint(saved, teachers.fingerprint(), what=f'KA checkpoint {ka_weights}')
    load_weights(network, ka_weights, logger=logger)
    return teachers, network.to(device).eval()


def format_table(result: AttributionResult, psnrs: dict | None) -> str:
    """One row per teacher (share, share %, DI, PSNR) and a row for MT (all teachers)."""
    width = max(7, *(len(str(name)) for name in result.names))
    header = f"{'teacher':<{width}}  {'share':>6}  {'share%':>6}  {'DI':>6}" + (f"  {'PSNR':>6}" if psnrs else '')
    lines = [header]
    for name in result.names:
        row = (f'{str(name):<{width}}  {result.shares[name]:6.4f}  {100 * result.shares[name]:6.2f}  '
               f'{result.diffusion_index[name]:6.2f}')
        lines.append(row + (f'  {psnrs[name]:6.2f}' if psnrs else ''))
    total = sum(result.shares.values())
    row = f"{'MT':<{width}}  {total:6.4f}  {100 * total:6.2f}  {result.overall_diffusion_index:6.2f}"
    lines.append(row + (f"  {psnrs['MT']:6.2f}" if psnrs else ''))
    return '\n'.join(lines)


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, thickness: int = 1) -> None:
    """White text with a black outline, readable on any background."""
    cv2.putText(image, text, origin, _FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _draw_region(image: np.ndarray, result: AttributionResult) -> np.ndarray:
    image = image.copy()
    region = result.region
    thickness = max(1, round(min(image.shape[:2]) / 256))
    cv2.rectangle(image, (region.left, region.top), (region.left + region.width - 1, region.top + region.height - 1),
                  _REGION_COLOUR, thickness)
    return image


def _heat_overlay(attribution_map: np.ndarray, scale_max: float, background: np.ndarray) -> np.ndarray:
    """``attribution_map / scale_max`` as an inferno colour map blended over ``background`` (uint8 BGR)."""
    normalised = np.clip(attribution_map / scale_max, 0.0, 1.0) if scale_max > 0 else np.zeros_like(attribution_map)
    heat = cv2.applyColorMap(np.round(normalised * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.round(heat * (1.0 - HEAT_ALPHA) + background * HEAT_ALPHA).astype(np.uint8)


def _captioned(tile: np.ndarray, caption: str) -> np.ndarray:
    bar = np.zeros((LABEL_HEIGHT, tile.shape[1], 3), np.uint8)
    _put_text(bar, caption, (3, LABEL_HEIGHT - 7), 0.45)
    return np.concatenate([bar, tile], axis=0)


def compose_figure(lr_bgr: np.ndarray, teacher_bgr: list[np.ndarray], aggregated_bgr: np.ndarray,
                   result: AttributionResult, psnrs: dict | None) -> np.ndarray:
    """The PNG grid, uint8 BGR ``(2 (H + LABEL_HEIGHT), (N + 2) W, 3)`` for an ``H x W`` MT and N teachers."""
    height, width = aggregated_bgr.shape[:2]
    lr_up = cv2.resize(lr_bgr, (width, height), interpolation=cv2.INTER_CUBIC)

    def label(name, text):
        return f'{text} {psnrs[name]:.2f} dB' if psnrs else text

    top = [_captioned(_draw_region(lr_up, result), 'LR (bicubic up)')]
    top += [_captioned(_draw_region(image, result), label(name, str(name)))
            for name, image in zip(result.names, teacher_bgr)]
    top.append(_captioned(_draw_region(aggregated_bgr, result), label('MT', 'MT')))

    # One colour scale for every teacher, so brighter means more attribution across teachers too.
    common_max = max(float(value.max()) for value in result.maps.values())
    text_scale = max(0.4, width / 400)
    bottom = [_captioned(_draw_region(_heat_overlay(result.total_map, float(result.total_map.max()), lr_up), result),
                         f'all teachers, DI {result.overall_diffusion_index:.2f}')]
    for name, image in zip(result.names, teacher_bgr):
        tile = _draw_region(_heat_overlay(result.maps[name], common_max, image), result)
        _put_text(tile, f'{100 * result.shares[name]:.1f}%', (4, height - 6), text_scale, max(1, round(text_scale)))
        bottom.append(_captioned(tile, f'{name}: share {100 * result.shares[name]:.1f}%, '
                                       f'DI {result.diffusion_index[name]:.2f}'))
    legend = np.zeros((height, width, 3), np.uint8)
    settings = result.settings
    lines = [f'method {result.method}', 'region t,l,h,w', ','.join(map(str, result.region.as_tuple()))]
    if result.method == 'lam':
        lines.append(f"sigma {settings['sigma']} fold {settings['fold']} l {settings['kernel_size']}")
    for index, line in enumerate(lines):
        _put_text(legend, line, (4, 18 + 18 * index), 0.45)
    bottom.append(_captioned(legend, 'legend'))
    return np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)


def main(argv=None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    if not args.ka_weights:
        parser.error('--ka-weights is required: the attribution of an untrained (random) KA network means nothing. '
                     'Pass the checkpoint stage 1 trained with this option file, e.g. '
                     'experiments/<name>/models/net_g_latest.pth')
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    logger = logging.getLogger('mtkd')
    device = torch.device(args.device)

    options = load_option_file(args.opt)
    teachers, network = build_networks(options, args.ka_weights, device, logger)
    lr_bgr = read_image(args.image)
    teacher_outputs = teachers(image_to_tensor(lr_bgr).to(device))
    result = teacher_attribution(network, teacher_outputs, args.region, args.method, names=teachers.names,
                                 sigma=args.sigma, fold=args.fold, kernel_size=args.kernel_size,
                                 baseline=args.baseline, channel_reduction=args.channel_reduction,
                                 chunk_size=args.chunk_size)

    teacher_bgr = [tensor_to_image(output) for output in teacher_outputs]
    aggregated_bgr = tensor_to_image(result.aggregated)
    psnrs = None
    if args.hr:
        hr_bgr = read_image(args.hr)
        psnrs = {name: score_images(image, hr_bgr, teachers.scale).psnr
                 for name, image in zip(teachers.names, teacher_bgr)}
        psnrs['MT'] = score_images(aggregated_bgr, hr_bgr, teachers.scale).psnr

    print(f'{result.method} attribution of MT region (top, left, height, width) = {result.region.as_tuple()} of '
          f'{os.path.basename(args.image)}; detector {result.target:.4g}'
          + (f', at the baseline {result.baseline_target:.4g}, path error {result.completeness_gap:.3g}'
             if result.baseline_target is not None else ''))
    print(format_table(result, psnrs))
    figure = compose_figure(lr_bgr, teacher_bgr, aggregated_bgr, result, psnrs)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not cv2.imwrite(args.output, figure):
        raise OSError(f'cannot write the figure to {args.output}: use a .png path in a writable folder')
    print(f'figure: {args.output} ({figure.shape[1]}x{figure.shape[0]})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
