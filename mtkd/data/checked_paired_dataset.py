"""Paired GT/LQ folders, BasicSR's ``PairedImageDataset`` behaviour with clear errors and the mod-crop convention.

Differences from BasicSR's class: an undecodable image names its file; GT is matched to LQ × scale by the
mod-crop convention in every phase, and a real size mismatch names both files (:mod:`mtkd.data.pairing`);
training images smaller than the patch can be left out and logged (``skip_images_smaller_than_patch``).
Subclasses add arrays that must be cropped and flipped exactly like GT (:meth:`extra_arrays`), e.g. the
cached teacher outputs of ``TeacherPairedImageDataset``.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils import data
from torchvision.transforms.functional import normalize

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from mtkd.config.schema import PairedImageDatasetOptions, register_dataset_options
from mtkd.data.pairing import match_gt_to_lq
from mtkd.metrics.evaluation import ImageReadError
from mtkd.teachers.cache import image_stem, paired_lq_paths


@register_dataset_options('CheckedPairedImageDataset')
class CheckedPairedImageDatasetOptions(PairedImageDatasetOptions):
    """BasicSR's paired-folder options (disk backend, RGB) plus the small-image switch."""
    skip_images_smaller_than_patch: bool = Field(
        default=False, description='training: leave out (and log) images whose HR is smaller than gt_size '
        'instead of stopping with an error (the 291-image set has 7 such images at gt_size 128, x4)')

    @model_validator(mode='after')
    def _normalisation(self):
        problem = normalisation_problem(DATASET_REGISTRY.get(self.type) if self.type in DATASET_REGISTRY else None,
                                        self.mean, self.std)
        if problem:
            raise ValueError(problem)
        return self


def normalisation_problem(dataset_class, mean, std) -> str | None:
    """Why ``mean``/``std`` cannot normalise this dataset's images, or None (also None when neither is set).

    BasicSR's convention: ``(x - mean) / std`` per RGB channel on LQ and GT. Refused for a dataset that returns
    extra images (teacher outputs, I_MT): those are in [0, 1], as the aggregator and the distillation losses
    expect, so normalising LQ/GT alone would compare two ranges, and normalising them too would feed the
    aggregator and the losses the wrong range.
    """
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        return 'mean and std go together ((x - mean) / std per RGB channel): give both or neither'
    if len(mean) != 3 or len(std) != 3:
        return f'mean and std need one value per RGB channel, got {len(mean)} and {len(std)}'
    if min(std) <= 0:
        return f'std values must be positive, got {list(std)}'
    if dataset_class is not None and dataset_class.extra_outputs is not CheckedPairedImageDataset.extra_outputs:
        return (f'{dataset_class.__name__} cannot normalise with mean/std: its teacher outputs (or I_MT) stay in '
                '[0, 1], which the aggregator and the distillation losses expect, so LQ/GT and targets would be in '
                'different ranges. Remove mean and std and normalise inside the network (img_range, rgb_mean)')
    return None


def decode_image(content: bytes, path: str) -> np.ndarray:
    """Bytes of an image file → float32 BGR ``(H, W, 3)`` in [0, 1]; grayscale files are read as colour."""
    import cv2

    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR) if content else None
    if image is None:
        raise ImageReadError(f'Cannot decode image {path} ({len(content)} bytes): the file is corrupt, truncated or '
                             'not an image. Re-create or re-download it.')
    return image.astype(np.float32) / 255.


@DATASET_REGISTRY.register()
class CheckedPairedImageDataset(data.Dataset):
    """GT/LQ pairs from two folders (``filename_tmpl`` maps a GT name to its LQ name); RGB [0, 1] tensors.

    Returns ``{'lq': (3, h, w), 'gt': (3, H, W), 'lq_path', 'gt_path'}`` plus what :meth:`extra_outputs` adds.
    Training: a random ``gt_size`` crop and BasicSR's flips/rotation, applied to GT, LQ and the extra arrays
    together; other phases: whole images, GT matched to LQ × scale.
    """

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        backend = dict(opt.get('io_backend') or {'type': 'disk'})
        if backend.get('type', 'disk') != 'disk':
            raise ValueError(f"{type(self).__name__} reads image folders: io_backend type must be 'disk' "
                             f"(got {backend.get('type')!r})")
        if opt.get('color') == 'y':
            raise ValueError(f"{type(self).__name__}: color 'y' is not supported (RGB only); remove color: y")
        self.io_backend_opt = backend
        self.file_client = None
        self.scale = opt['scale']
        self.mean, self.std = opt.get('mean'), opt.get('std')
        problem = normalisation_problem(type(self), self.mean, self.std)
        if problem:  # also for blocks that did not go through option validation
            raise ValueError(f"dataset '{opt.get('name')}' ({type(self).__name__}): {problem}")
        self.paths = paired_lq_paths(opt['dataroot_gt'], opt['dataroot_lq'], opt.get('filename_tmpl', '{}'),
                                     opt.get('meta_info_file'))
        if not self.paths:
            raise FileNotFoundError(f"dataset '{opt.get('name')}': no image pairs in {opt['dataroot_gt']} and "
                                    f"{opt['dataroot_lq']}")
        self.stems = [image_stem(pair['lq_path']) for pair in self.paths]
        self.setup()
        self.drop_images_smaller_than_patch()

    def setup(self) -> None:
        """Subclasses' extra set-up once the pairs are known (e.g. opening a cache); nothing here."""

    def drop_images_smaller_than_patch(self) -> None:
        """Training with ``skip_images_smaller_than_patch``: leave out images whose LR × scale is smaller than
        ``gt_size``, and log their names."""
        if self.opt['phase'] != 'train' or not self.opt.get('skip_images_smaller_than_patch'):
            return
        gt_size = self.opt['gt_size']
        keep = [index for index in range(len(self.paths)) if min(self.lq_size(index)) * self.scale >= gt_size]
        dropped = [self.stems[index] for index in range(len(self.paths)) if index not in set(keep)]
        if dropped:
            get_root_logger().warning(f"dataset '{self.opt.get('name')}': {len(dropped)} image(s) smaller than "
                                      f'gt_size {gt_size} left out (skip_images_smaller_than_patch): {dropped}')
        self.paths = [self.paths[index] for index in keep]
        self.stems = [self.stems[index] for index in keep]

    def lq_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of LQ image ``index`` (reads the file)."""
        with open(self.paths[index]['lq_path'], 'rb') as handle:
            return decode_image(handle.read(), self.paths[index]['lq_path']).shape[:2]

    def __len__(self) -> int:
        return len(self.paths)

    def extra_arrays(self, index: int, lq_shape: tuple[int, ...]) -> list[np.ndarray]:
        """HWC arrays at GT scale to crop and flip with GT (none here)."""
        return []

    def extra_outputs(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Batch entries made from the cropped, flipped extra arrays (none here)."""
        return {}

    def __getitem__(self, index: int) -> dict:
        if self.file_client is None:
            options = dict(self.io_backend_opt)
            self.file_client = FileClient(options.pop('type', 'disk'), **options)
        gt_path, lq_path = self.paths[index]['gt_path'], self.paths[index]['lq_path']
        # HWC, BGR, float32 in [0, 1], as BasicSR's PairedImageDataset reads them.
        image_gt = decode_image(self.file_client.get(gt_path, 'gt'), gt_path)
        image_lq = decode_image(self.file_client.get(lq_path, 'lq'), lq_path)
        extra = self.extra_arrays(index, image_lq.shape)
        image_gt = match_gt_to_lq(image_gt, image_lq, self.scale, gt_path, lq_path)
        if self.opt['phase'] == 'train':
            # One list: the extra arrays get GT's crop window and flips (memory maps: only the crop is read).
            cropped_gts, image_lq = paired_random_crop([image_gt] + extra, image_lq, self.opt['gt_size'],
                                                       self.scale, gt_path)
            if not isinstance(cropped_gts, list):  # BasicSR unwraps a one-element list
                cropped_gts = [cropped_gts]
            image_gt = cropped_gts[0]
            extra = [np.array(crop) for crop in cropped_gts[1:]]  # a copy in the stored dtype (float16 caches)
            augmented = augment([image_gt, image_lq] + extra, self.opt.get('use_hflip', True),
                                self.opt.get('use_rot', True))
            image_gt, image_lq, extra = augmented[0], augmented[1], augmented[2:]
        else:
            extra = [np.array(array) for array in extra]
        tensor_gt, tensor_lq = img2tensor([image_gt, image_lq], bgr2rgb=True, float32=True)
        outputs = self.extra_outputs(extra)
        if self.mean is not None:  # with std (checked at start); never with extra outputs (refused there)
            for tensor in (tensor_lq, tensor_gt):
                normalize(tensor, self.mean, self.std, inplace=True)
        return {'lq': tensor_lq, 'gt': tensor_gt, 'lq_path': lq_path, 'gt_path': gt_path, **outputs}


__all__ = ['CheckedPairedImageDataset', 'CheckedPairedImageDatasetOptions', 'decode_image', 'normalisation_problem']
