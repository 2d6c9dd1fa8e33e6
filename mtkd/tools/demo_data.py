"""The demo's embedded data set: fixed crops of the photos bundled with scikit-image, nothing downloaded.

``make demo`` must run the whole MTKD pipeline on a fresh machine, so its data comes from ``skimage.data``'s
bundled files (astronaut, rocket, the Hubble deep field, ...). Each HR image is a fixed crop; its LR image is
MATLAB's ``imresize(HR, 1/2, 'bicubic')`` (:func:`mtkd.data.preparation.make_lr`, bit-exact), so the data is made
exactly as the benchmark sets are. Greyscale photos are repeated on three channels (every network is RGB).

Scale x2: small networks trained for a few hundred iterations on a CPU gain clearly over bicubic at x2, and
a 256-pixel validation crop still gives a 128-pixel LR input (16 windows of 8 across for the transformers);
at x4 the same crops would leave 48-64-pixel LR images and teachers too weak to tell apart in minutes.

Layout (BasicSR's benchmark layout, ``filename_tmpl: '{}x2'``), under ``<root>/datasets/demo``::

    train/HR/<name>.png    train/LR_bicubic/X2/<name>x2.png    38 crops of 192 x 192 from 11 photos
    val/HR/<name>.png      val/LR_bicubic/X2/<name>x2.png      3 crops of 256 x 256 from 3 other photos
    manifest.json          the spec's digest and every file's sha256, written last

Validation photos (chelsea, coffee, camera) are never cropped for training. Building is deterministic (fixed
crop positions) and idempotent: :func:`prepare_demo_data` returns at once when ``manifest.json`` matches the
spec and every listed file is present with its recorded sha256; otherwise it rebuilds ``train/`` and ``val/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from mtkd.data.preparation import make_lr, write_png
from mtkd.utils.errors import MtkdError
from mtkd.utils.fileio import atomic_write_json, file_sha256

SCALE = 2
TRAIN_CROP = 192
VAL_CROP = 256
MANIFEST = 'manifest.json'
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DemoSource:
    """One bundled photo and where its crops are taken.

    ``region``: ``(top, left, height, width)`` of the photo the crops are spread over (None: the whole photo);
    ``rows`` x ``cols`` crops of ``size`` pixels, evenly spaced over it (they overlap when the region is small).
    """
    photo: str
    rows: int
    cols: int
    size: int
    region: tuple[int, int, int, int] | None = None


#: Training photos: three natural scenes, microscopy, the fundus, astronomy and four textures.
TRAIN_SOURCES = (
    DemoSource('astronaut', 2, 2, TRAIN_CROP),
    DemoSource('rocket', 2, 3, TRAIN_CROP),
    DemoSource('motorcycle', 2, 3, TRAIN_CROP),
    DemoSource('hubble_deep_field', 2, 2, TRAIN_CROP),
    DemoSource('immunohistochemistry', 2, 2, TRAIN_CROP),
    DemoSource('retina', 2, 2, TRAIN_CROP, region=(350, 350, 700, 700)),  # inside the fundus disc
    DemoSource('brick', 1, 2, TRAIN_CROP),
    DemoSource('grass', 1, 2, TRAIN_CROP),
    DemoSource('gravel', 1, 2, TRAIN_CROP),
    DemoSource('moon', 1, 2, TRAIN_CROP),
    DemoSource('coins', 1, 2, TRAIN_CROP),
)

#: Validation photos (never in training), one crop each: the cat's face, the cup, the cameraman's head.
VAL_SOURCES = (
    DemoSource('chelsea', 1, 1, VAL_CROP, region=(22, 100, 256, 256)),
    DemoSource('coffee', 1, 1, VAL_CROP, region=(20, 150, 256, 256)),
    DemoSource('camera', 1, 1, VAL_CROP, region=(40, 160, 256, 256)),
)

#: The crop of the comparison figure: ``(image name, (x, y, width, height))`` in HR pixels of the val image.
FIGURE_CROP = ('chelsea', (60, 40, 96, 72))


class DemoDataError(MtkdError, RuntimeError):
    """The demo data cannot be made (a bundled photo missing from scikit-image, a folder not writable)."""


def load_photo(photo: str) -> np.ndarray:
    """A bundled scikit-image photo as uint8 RGB ``(H, W, 3)`` (greyscale repeated on three channels)."""
    import skimage.data

    loader = (lambda: skimage.data.stereo_motorcycle()[0]) if photo == 'motorcycle' else \
        getattr(skimage.data, photo, None)
    if loader is None:
        raise DemoDataError(f"scikit-image has no bundled photo '{photo}' (skimage.data.{photo}); "
                            'install the pinned scikit-image from requirements.txt')
    try:
        image = np.asarray(loader())
    except Exception as error:  # a photo that needs a download (pooch) on this scikit-image version
        raise DemoDataError(f"cannot load skimage.data.{photo} ({error}); the demo uses only photos bundled "
                            'with scikit-image (requirements.txt pins the version)') from None
    if image.dtype != np.uint8:
        raise DemoDataError(f'skimage.data.{photo} is {image.dtype}, expected uint8')
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def crop_positions(source: DemoSource, photo_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(top, left)`` of each crop, row-major, evenly spaced over the source's region of the photo."""
    top, left, height, width = source.region or (0, 0, photo_shape[0], photo_shape[1])
    if top < 0 or left < 0 or top + height > photo_shape[0] or left + width > photo_shape[1]:
        raise DemoDataError(f'{source.photo}: region {source.region} leaves the photo '
                            f'({photo_shape[1]}x{photo_shape[0]})')
    if height < source.size or width < source.size:
        raise DemoDataError(f'{source.photo}: region {height}x{width} is smaller than the crop {source.size}')
    tops = np.linspace(top, top + height - source.size, source.rows).round().astype(int)
    lefts = np.linspace(left, left + width - source.size, source.cols).round().astype(int)
    return [(int(y), int(x)) for y in tops for x in lefts]


def source_crops(source: DemoSource) -> list[tuple[str, np.ndarray]]:
    """``(name, HR crop uint8 RGB (size, size, 3))`` of one source; names ``<photo>`` or ``<photo>_<k>``."""
    photo = load_photo(source.photo)
    positions = crop_positions(source, photo.shape)
    crops = []
    for index, (top, left) in enumerate(positions):
        name = source.photo if len(positions) == 1 else f'{source.photo}_{index + 1}'
        crops.append((name, photo[top:top + source.size, left:left + source.size].copy()))
    return crops


def spec_digest() -> str:
    """sha256 of everything that decides the data (sources, crops, scale, format): a change rebuilds it."""
    text = repr((FORMAT_VERSION, SCALE, TRAIN_SOURCES, VAL_SOURCES))
    return hashlib.sha256(text.encode()).hexdigest()


def demo_data_dir(root: str) -> str:
    """``<root>/datasets/demo``."""
    return os.path.join(root, 'datasets', 'demo')


def is_complete(data_dir: str) -> bool:
    """True when ``manifest.json`` matches the current spec and every listed file has its recorded sha256."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding='utf-8') as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    if manifest.get('spec') != spec_digest():
        return False
    files = manifest.get('files') or {}
    return bool(files) and all(os.path.isfile(os.path.join(data_dir, relative)) and
                               file_sha256(os.path.join(data_dir, relative)) == digest
                               for relative, digest in files.items())


def _write_split(data_dir: str, split: str, sources: tuple[DemoSource, ...]) -> dict[str, str]:
    files = {}
    for source in sources:
        for name, hr_rgb in source_crops(source):
            hr = np.ascontiguousarray(hr_rgb[:, :, ::-1])  # BGR for OpenCV
            lr = make_lr(hr, SCALE)
            for relative, image in ((f'{split}/HR/{name}.png', hr),
                                    (f'{split}/LR_bicubic/X{SCALE}/{name}x{SCALE}.png', lr)):
                path = os.path.join(data_dir, relative)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                write_png(path, image)
                files[relative] = file_sha256(path)
    return files


def prepare_demo_data(root: str, force: bool = False) -> tuple[str, bool]:
    """Make ``<root>/datasets/demo`` unless it is already complete; returns ``(folder, built)``.

    A rebuild deletes ``train/`` and ``val/`` first (no stale file survives), writes every image, then the
    manifest, so an interrupted build is redone next time. Other entries of the folder are left alone.
    """
    data_dir = demo_data_dir(root)
    if not force and is_complete(data_dir):
        return data_dir, False
    for split in ('train', 'val'):
        shutil.rmtree(os.path.join(data_dir, split), ignore_errors=True)
    manifest_path = os.path.join(data_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    files = {**_write_split(data_dir, 'train', TRAIN_SOURCES), **_write_split(data_dir, 'val', VAL_SOURCES)}
    atomic_write_json({'spec': spec_digest(), 'scale': SCALE, 'files': files}, manifest_path)
    return data_dir, True


def split_names(data_dir: str, split: str) -> list[str]:
    """Image names (stems) of one split, sorted."""
    folder = os.path.join(data_dir, split, 'HR')
    return sorted(os.path.splitext(name)[0] for name in os.listdir(folder) if name.endswith('.png'))


__all__ = ['DemoDataError', 'DemoSource', 'FIGURE_CROP', 'SCALE', 'TRAIN_SOURCES', 'VAL_SOURCES', 'crop_positions',
           'demo_data_dir', 'is_complete', 'load_photo', 'prepare_demo_data', 'source_crops', 'spec_digest',
           'split_names']
