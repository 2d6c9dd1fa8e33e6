"""The field's SR evaluation protocol: Y-channel PSNR/SSIM on uint8 images, border of ``scale`` cropped.

Uses BasicSR's own metric functions (``calculate_psnr``/``calculate_ssim`` with ``test_y_channel=True``,
BT.601 Y on [0, 255]) on images rounded to uint8 by ``tensor2img``, exactly as ``SRModel.validation`` does,
so numbers from scripts, tests and ``mtkd/test.py`` agree to the last digit.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.metrics.metric_util import to_y_channel
from basicsr.utils import img2tensor, tensor2img

from mtkd.utils.errors import MtkdError


class ImageReadError(MtkdError, ValueError):
    """An image file that is missing, truncated or not an image."""


def read_image(path: str) -> np.ndarray:
    """Read an image file as uint8 BGR ``(H, W, 3)`` (grayscale files are read as colour)."""
    if not os.path.isfile(path):
        raise ImageReadError(f'Image file not found: {path}')
    with open(path, 'rb') as handle:
        content = handle.read()
    if not content:
        raise ImageReadError(f'Image file {path} is empty (0 bytes): re-create or re-download it.')
    try:
        image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ImageReadError(f'Cannot decode image {path} ({len(content)} bytes): the file is corrupt, truncated '
                             'or not an image. Re-create or re-download it.')
    return image


def image_to_tensor(image_bgr_uint8: np.ndarray) -> torch.Tensor:
    """uint8 BGR ``(H, W, 3)`` → float RGB ``(1, 3, H, W)`` in [0, 1], as BasicSR's datasets produce."""
    return img2tensor(image_bgr_uint8.astype(np.float32) / 255., bgr2rgb=True, float32=True).unsqueeze(0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """float RGB ``(1, 3, H, W)`` in [0, 1] → uint8 BGR ``(H, W, 3)``, clamped and rounded as BasicSR does."""
    return tensor2img([tensor.detach().float().cpu()], rgb2bgr=True, out_type=np.uint8, min_max=(0, 1))


@dataclass(frozen=True)
class ImageScore:
    """PSNR (dB) and SSIM of one image."""
    psnr: float
    ssim: float


def ground_truth_for(sr_bgr_uint8: np.ndarray, gt_bgr_uint8: np.ndarray) -> np.ndarray:
    """The ground truth cropped to the SR size (top-left: HR files keep the rows/columns the LR mod-crop dropped)."""
    height, width = sr_bgr_uint8.shape[:2]
    gt = gt_bgr_uint8[:height, :width]
    if gt.shape != sr_bgr_uint8.shape:
        raise ValueError(f'SR image {sr_bgr_uint8.shape} is larger than its ground truth {gt_bgr_uint8.shape}.')
    return gt


def y_planes(outputs: Mapping[str, np.ndarray], gt_bgr_uint8: np.ndarray,
             crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Y planes ``(N, H, W)`` of N SR images and ``(H, W)`` of their ground truth (float64, grey levels), as PSNR
    sees them: BasicSR's ``to_y_channel`` (BT.601, 0-255), the ground truth cropped to the SR size, then
    ``crop_border`` pixels off every side."""
    first = next(iter(outputs.values()))
    gt = ground_truth_for(first, gt_bgr_uint8)
    planes = [to_y_channel(image)[..., 0].astype(np.float64) for image in outputs.values()]
    if any(plane.shape != planes[0].shape for plane in planes):
        raise ValueError(f'SR images differ in size: {[image.shape for image in outputs.values()]}')
    teachers, target = np.stack(planes), to_y_channel(gt)[..., 0].astype(np.float64)
    if crop_border:
        teachers = teachers[:, crop_border:-crop_border, crop_border:-crop_border]
        target = target[crop_border:-crop_border, crop_border:-crop_border]
    if target.size == 0:
        raise ValueError(f'crop_border={crop_border} leaves no pixel of a {gt.shape[0]}x{gt.shape[1]} image')
    return teachers, target


def score_images(sr_bgr_uint8: np.ndarray, gt_bgr_uint8: np.ndarray, scale: int) -> ImageScore:
    """Y-channel PSNR/SSIM with ``crop_border = scale``; GT is cropped to the SR size first (top-left)."""
    gt = ground_truth_for(sr_bgr_uint8, gt_bgr_uint8)
    return ImageScore(psnr=float(calculate_psnr(sr_bgr_uint8, gt, crop_border=scale, test_y_channel=True)),
                      ssim=float(calculate_ssim(sr_bgr_uint8, gt, crop_border=scale, test_y_channel=True)))


def benchmark_pairs(set_dir: str, scale: int) -> list[tuple[str, str, str]]:
    """``(name, hr_path, lr_path)`` for a benchmark folder laid out as ``HR/<name>.png`` and
    ``LR_bicubic/X<s>/<name>x<s>.png``."""
    hr_dir = os.path.join(set_dir, 'HR')
    lr_dir = os.path.join(set_dir, 'LR_bicubic', f'X{scale}')
    for folder in (hr_dir, lr_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'Benchmark folder {folder} is missing. Run `make link-shared` or '
                                    '`python scripts/prepare_benchmark.py` (see datasets/README.md).')
    pairs = []
    for file_name in sorted(os.listdir(hr_dir)):
        name, ext = os.path.splitext(file_name)
        pairs.append((name, os.path.join(hr_dir, file_name), os.path.join(lr_dir, f'{name}x{scale}{ext}')))
    if not pairs:
        raise FileNotFoundError(f'No images in {hr_dir}.')
    return pairs


@torch.no_grad()
def evaluate_on_benchmark(network: torch.nn.Module, set_dir: str, scale: int,
                          device: str | torch.device = 'cpu') -> dict[str, ImageScore]:
    """Run ``network`` (RGB [0, 1] in and out) on every LR image of a benchmark set; per-image scores."""
    network.eval()
    scores = {}
    for name, hr_path, lr_path in benchmark_pairs(set_dir, scale):
        lr = image_to_tensor(read_image(lr_path)).to(device)
        sr = tensor_to_image(network(lr))
        scores[name] = score_images(sr, read_image(hr_path), scale)
    return scores


def mean_score(scores: dict[str, ImageScore]) -> ImageScore:
    """Mean PSNR and mean SSIM over images (the field averages per-image values)."""
    return ImageScore(psnr=float(np.mean([s.psnr for s in scores.values()])),
                      ssim=float(np.mean([s.ssim for s in scores.values()])))
