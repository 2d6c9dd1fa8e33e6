"""Dataset preparation: benchmark LR sets and DIV2K (download, MATLAB-bicubic LR images, aligned sub-images).

Every LR image is MATLAB's ``imresize(modcrop(HR, s), 1 / s, 'bicubic')`` computed by
:func:`mtkd.transforms.matlab_resize.imresize`, which reproduces the published Set5/Set14/BSD100 LR files bit for
bit. Layouts are BasicSR's:

* Benchmarks (``PairedImageDataset`` with ``filename_tmpl: '{}x{s}'``)::

      <out_dir>/<name>/HR/<image>.png                       the ORIGINAL HR, not mod-cropped
      <out_dir>/<name>/LR_bicubic/X<s>/<image>x<s>.png       from the HR mod-cropped to s

  One HR serves every scale, as in the published sets (Set14/baboon: 500 x 480 HR, 166 x 160 LR at x3):
  BasicSR's validation crops the GT to ``LR size * s`` (``PairedImageDataset``), which is exactly the mod-cropped
  HR the LR was made from. Greyscale sources stay single-channel (the published Set14/bridge is), colour stays
  3-channel; an alpha channel is dropped (``cv2.IMREAD_COLOR`` would drop it too).

* DIV2K (``root`` = ``datasets/DIV2K``)::

      DIV2K_<split>_HR/<id>.png                              extracted from the official archive
      DIV2K_<split>_LR_bicubic/X<s>/<id>x<s>.png             full LR, as the official DIV2K_<split>_LR_bicubic
      DIV2K_train_HR_sub/<id>_s<k:03d>.png                   sub-images (train split by default)
      DIV2K_train_LR_bicubic/X<s>_sub/<id>_s<k:03d>.png      LR sub-image k = HR sub-image k downscaled by s

  Sub-images follow BasicSR's ``scripts/data_preparation/extract_subimages.py`` for DIV2K (HR crop 480, step
  240, ``thresh_size`` 0; LR crop and step divided by s; PNG compression 3; names ``<id>_s<k:03d>.png`` with k
  counted row-major from 1), with one change so that LR sub-image k always covers exactly HR sub-image k: the crop
  positions are computed once, on the HR mod-cropped to ``lcm(scales)`` (12 for x2/x3/x4), and the LR crops are
  taken at ``position / s`` from the full LR. BasicSR computes the LR positions on the LR image itself; when an
  HR side is not a multiple of s its last row/column of LR crops is then shifted by ``side % s`` HR pixels
  against the HR crops. Where every HR side is a multiple of ``lcm(scales)`` the two give the same crops.
  LR images are made from the full HR first and cropped afterwards (the standard pipeline: cropping HR first
  would change the LR pixels near each crop border).

DIV2K archives: official URLs of the DIV2K site (Agustsson and Timofte, "NTIRE 2017 Challenge on Single Image
Super-Resolution: Dataset and Study", CVPR Workshops 2017); sizes and SHA-256 digests as recorded by TensorFlow
Datasets (``tensorflow_datasets/url_checksums/div2k.txt``). A custom ``url`` without a ``sha256`` is downloaded
unverified; its digest is printed and written next to the archive (``<archive>.sha256``) so it can be pinned.
"""
from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence
from urllib.parse import urlparse

import cv2
import numpy as np
from tqdm import tqdm

from mtkd.transforms.matlab_resize import imresize, modcrop
from mtkd.utils.errors import MtkdError
from mtkd.utils.fileio import file_sha256

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.webp')
PNG_COMPRESSION = 3  # BasicSR's extract_subimages default; lossless at any level, only size and speed change


class PreparationError(MtkdError, RuntimeError):
    """A dataset cannot be prepared: missing or empty folder, unreadable image, bad archive, bad arguments."""


@dataclass(frozen=True)
class ArchiveInfo:
    """One downloadable archive: where it is, what it must hash to, and the folder it unpacks to."""

    url: str
    size: int
    sha256: str
    folder: str


DIV2K_ARCHIVES = {
    'train': ArchiveInfo(url='https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip', size=3530603713,
                         sha256='9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335',
                         folder='DIV2K_train_HR'),
    'valid': ArchiveInfo(url='https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip', size=448993893,
                         sha256='20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc',
                         folder='DIV2K_valid_HR'),
}

# BasicSR's extract_subimages.py settings for DIV2K HR (the LR ones are these divided by the scale).
SUBIMAGE_CROP_SIZE = 480
SUBIMAGE_STEP = 240
SUBIMAGE_THRESH_SIZE = 0


# ----------------------------------------------------------------------------------------------------------------
# Images and folders
# ----------------------------------------------------------------------------------------------------------------
def list_images(folder: str) -> list[str]:
    """Sorted paths of the image files (by extension, case-insensitive) directly inside ``folder``."""
    if not os.path.isdir(folder):
        raise PreparationError(f'image folder {folder!r} does not exist: pass the folder holding the HR images')
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name)))
    if not paths:
        raise PreparationError(f'image folder {folder!r} holds no images (looked for {", ".join(IMAGE_EXTENSIONS)})')
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise PreparationError(f'image folder {folder!r} has several files with the same name stem '
                               f'({", ".join(duplicates)}): outputs are named by stem, keep one of each')
    return paths


def read_image(path: str) -> np.ndarray:
    """An 8-bit image as ``(H, W)`` (greyscale) or ``(H, W, 3)`` BGR uint8 ``[0, 255]``; errors name the file."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PreparationError(f'cannot read image {path!r}: not an image OpenCV can decode (corrupt or wrong '
                               'extension)')
    if image.dtype != np.uint8:
        raise PreparationError(f'image {path!r} is {image.dtype}, expected 8-bit: the benchmark LR images are made '
                               'from 8-bit HR images (convert it first)')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)  # as cv2.IMREAD_COLOR would read it
    elif image.ndim != 2 and not (image.ndim == 3 and image.shape[2] == 3):
        raise PreparationError(f'image {path!r} has shape {image.shape}: expected greyscale or 3-channel colour')
    return image


def write_png(path: str, image: np.ndarray, compression_level: int = PNG_COMPRESSION) -> None:
    """Write a lossless PNG, raising (with the path) if OpenCV cannot."""
    if not cv2.imwrite(path, np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, compression_level]):
        raise PreparationError(f'cannot write {path!r}: check that the folder is writable and the disk not full')


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The benchmark LR image: MATLAB ``imresize(modcrop(HR, s), 1/s, 'bicubic')``, uint8, bit-exact."""
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise PreparationError(f'image of size {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}')
    return imresize(modcrop(hr, scale), 1 / scale)


def _read_hr_and_make_lrs(path: str, scales: tuple[int, ...]) -> tuple[np.ndarray, str, dict[int, np.ndarray]]:
    """The HR image at ``path``, its file stem and ``{scale: make_lr(HR, scale)}``; errors name the file."""
    hr = read_image(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        lrs = {scale: make_lr(hr, scale) for scale in scales}
    except PreparationError as error:
        raise PreparationError(f'{path!r}: {error}') from None
    return hr, stem, lrs


def _check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    checked = tuple(scales)
    if not checked or not all(isinstance(scale, (int, np.integer)) and not isinstance(scale, bool) and scale >= 2
                               for scale in checked):
        raise PreparationError(f'scales must be integers >= 2 such as 2 3 4, got {list(scales)}')
    if len(set(checked)) != len(checked):
        raise PreparationError(f'scales has duplicates: {list(scales)}')
    return tuple(int(scale) for scale in checked)


def _run_per_image(function: Callable[[str], object], paths: Sequence[str], workers: int, description: str,
                   progress: bool) -> list:
    """``function(path)`` for every path, in order of ``paths``, optionally in ``workers`` processes."""
    if workers < 1:
        raise PreparationError(f'workers must be >= 1, got {workers}')
    results: list = [None] * len(paths)
    with tqdm(total=len(paths), desc=description, unit='img', disable=not progress) as bar:
        if workers == 1:
            for index, path in enumerate(paths):
                results[index] = function(path)
                bar.update()
        else:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(function, path): index for index, path in enumerate(paths)}
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
    return results


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------------------------
def _prepare_benchmark_image(path: str, set_root: str, scales: tuple[int, ...]) -> str:
    hr, stem, lrs = _read_hr_and_make_lrs(path, scales)
    write_png(os.path.join(set_root, 'HR', f'{stem}.png'), hr)
    for scale, lr in lrs.items():
        write_png(os.path.join(set_root, 'LR_bicubic', f'X{scale}', f'{stem}x{scale}.png'), lr)
    return stem


def prepare_benchmark(hr_dir: str, out_dir: str, name: str, scales: Sequence[int] = (2, 3, 4),
                      workers: int = 1, progress: bool = True) -> str:
    """Build ``<out_dir>/<name>/{HR, LR_bicubic/X<s>}`` from a folder of HR images (layout: module docstring).

    Args:
        hr_dir: folder of HR images (PNG, JPEG, BMP, TIFF, ...; 8-bit greyscale or colour).
        out_dir: parent folder of the set, e.g. ``datasets``.
        name: set name, e.g. ``Set5``.
        scales: integer downscaling factors.
        workers: processes (1: in this process).
        progress: show a tqdm bar.

    Returns:
        The set's folder ``<out_dir>/<name>``.
    """
    scales = _check_scales(scales)
    if not name or os.sep in name or name in ('.', '..'):
        raise PreparationError(f'name must be a plain folder name such as Set5, got {name!r}')
    paths = list_images(hr_dir)
    set_root = os.path.join(out_dir, name)
    os.makedirs(os.path.join(set_root, 'HR'), exist_ok=True)
    for scale in scales:
        os.makedirs(os.path.join(set_root, 'LR_bicubic', f'X{scale}'), exist_ok=True)
    worker = functools.partial(_prepare_benchmark_image, set_root=set_root, scales=scales)
    _run_per_image(worker, paths, workers, f'{name} LR x{"/".join(map(str, scales))}', progress)
    return set_root


# ----------------------------------------------------------------------------------------------------------------
# DIV2K: download and extraction
# ----------------------------------------------------------------------------------------------------------------
def download_div2k(split: str, archive_dir: str, url: str | None = None, sha256: str | None = None,
                   progress: bool = True) -> str:
    """Download (or reuse a verified copy of) the DIV2K HR archive of ``split`` into ``archive_dir``.

    The digest checked is ``sha256`` if given, else the manifest's when ``url`` is the official one; a custom
    ``url`` without ``sha256`` is not verified, and its computed digest is printed and written to
    ``<archive>.sha256``. A verified archive already at the destination is reused. A mismatch raises
    :class:`mtkd.weights.download.ChecksumError` and keeps nothing; network failures raise
    :class:`mtkd.weights.download.DownloadError`.

    Returns:
        The archive's path.
    """
    if split not in DIV2K_ARCHIVES:
        raise PreparationError(f'split must be one of {sorted(DIV2K_ARCHIVES)}, got {split!r}')
    info = DIV2K_ARCHIVES[split]
    url = url or info.url
    expected = sha256.lower() if sha256 else (info.sha256 if url == info.url else None)
    file_name = os.path.basename(urlparse(url).path)
    if not file_name:
        raise PreparationError(f'url {url!r} does not end in a file name (expected .../DIV2K_{split}_HR.zip)')
    os.makedirs(archive_dir, exist_ok=True)
    destination = os.path.join(archive_dir, file_name)

    from mtkd.weights.download import download_file  # imported here: only downloads need the HTTP helper

    # download_file keeps a destination that already matches ``expected`` (DIV2K train is 3.5 GB).
    path = download_file(url, destination, expected, progress=progress)
    if expected is None:
        computed = file_sha256(path)
        with open(path + '.sha256', 'w') as handle:
            handle.write(f'{computed}  {file_name}\n')
        print(f'{file_name}: not verified (no sha256 given for {url}); its sha256 is {computed} '
              f'(saved to {path}.sha256; pass it with --sha256 next time)')
    return path


def extract_zip(archive: str, destination: str, expected_folder: str | None = None) -> str:
    """Extract a zip archive into ``destination``, refusing members that would land outside it; files already
    there with the member's size are kept (a rerun does not unpack gigabytes again).

    Returns:
        ``destination/expected_folder`` if given (and checked to exist), else ``destination``.
    """
    try:
        with zipfile.ZipFile(archive) as handle:
            root = os.path.realpath(destination)
            for member in handle.namelist():
                target = os.path.realpath(os.path.join(root, member))
                if os.path.commonpath([root, target]) != root:
                    raise PreparationError(f'archive {archive!r} has a member outside its folder ({member!r}): '
                                           'refusing to extract it')
            os.makedirs(destination, exist_ok=True)
            for member in handle.infolist():
                target = os.path.join(root, member.filename)
                # A rerun skips files already extracted whole (the train archive holds 3.5 GB of PNG).
                if member.is_dir() or (os.path.isfile(target) and os.path.getsize(target) == member.file_size):
                    continue
                handle.extract(member, destination)
    except zipfile.BadZipFile as error:
        raise PreparationError(f'archive {archive!r} is not a valid zip file ({error}): delete it and download '
                               'again') from None
    if expected_folder is None:
        return destination
    folder = os.path.join(destination, expected_folder)
    if not os.path.isdir(folder):
        raise PreparationError(f'archive {archive!r} did not contain the folder {expected_folder!r}')
    return folder


# ----------------------------------------------------------------------------------------------------------------
# DIV2K: LR images and sub-images
# ----------------------------------------------------------------------------------------------------------------
def subimage_positions(length: int, crop_size: int, step: int, thresh_size: int) -> list[int]:
    """Start offsets of the crops along one side, as BasicSR's extract_subimages: every ``step``, plus a last
    crop flush with the end when more than ``thresh_size`` pixels would otherwise be left out.

    Returns an empty list when the side is shorter than ``crop_size``.
    """
    if length < crop_size:
        return []
    positions = list(range(0, length - crop_size + 1, step))
    if length - (positions[-1] + crop_size) > thresh_size:
        positions.append(length - crop_size)
    return positions


@dataclass(frozen=True)
class Div2kLayout:
    """BasicSR's folder names for one DIV2K split under ``root``."""

    root: str
    split: str

    @property
    def hr(self) -> str:
        return os.path.join(self.root, f'DIV2K_{self.split}_HR')

    @property
    def hr_sub(self) -> str:
        return os.path.join(self.root, f'DIV2K_{self.split}_HR_sub')

    def lr(self, scale: int) -> str:
        return os.path.join(self.root, f'DIV2K_{self.split}_LR_bicubic', f'X{scale}')

    def lr_sub(self, scale: int) -> str:
        return os.path.join(self.root, f'DIV2K_{self.split}_LR_bicubic', f'X{scale}_sub')


def _check_crop_settings(scales: tuple[int, ...], crop_size: int, step: int, thresh_size: int) -> None:
    if crop_size < 1 or step < 1 or thresh_size < 0:
        raise PreparationError(f'crop_size and step must be positive and thresh_size >= 0, got crop_size='
                               f'{crop_size}, step={step}, thresh_size={thresh_size}')
    for scale in scales:
        if crop_size % scale or step % scale:
            raise PreparationError(f'crop_size ({crop_size}) and step ({step}) must be multiples of every scale '
                                   f'({scale} does not divide them) so that LR crops align with HR crops')


def _prepare_div2k_image(path: str, layout: Div2kLayout, scales: tuple[int, ...], subimages: bool,
                         crop_size: int, step: int, thresh_size: int) -> int:
    """Full LR images of one HR image, then (optionally) its aligned HR/LR sub-images; returns the crop count."""
    hr, stem, lrs = _read_hr_and_make_lrs(path, scales)
    for scale, lr in lrs.items():
        write_png(os.path.join(layout.lr(scale), f'{stem}x{scale}.png'), lr)
    if not subimages:
        return 0

    # Positions on the HR cropped to a multiple of every scale: each is then a multiple of every scale too
    # (step and crop_size are), so position / s is an exact LR offset for all scales at once.
    aligned = modcrop(hr, math.lcm(*scales))
    rows = subimage_positions(aligned.shape[0], crop_size, step, thresh_size)
    columns = subimage_positions(aligned.shape[1], crop_size, step, thresh_size)
    index = 0
    for row in rows:
        for column in columns:
            index += 1
            name = f'{stem}_s{index:03d}.png'
            write_png(os.path.join(layout.hr_sub, name), hr[row:row + crop_size, column:column + crop_size])
            for scale, lr in lrs.items():
                lr_crop = lr[row // scale:(row + crop_size) // scale, column // scale:(column + crop_size) // scale]
                write_png(os.path.join(layout.lr_sub(scale), name), lr_crop)
    return index


def prepare_div2k_split(layout: Div2kLayout, scales: Sequence[int] = (2, 3, 4), subimages: bool = True,
                        crop_size: int = SUBIMAGE_CROP_SIZE, step: int = SUBIMAGE_STEP,
                        thresh_size: int = SUBIMAGE_THRESH_SIZE, workers: int = 1, progress: bool = True) -> int:
    """From ``layout.hr``: full MATLAB-bicubic LR images for every scale, then aligned sub-images if asked.

    Returns:
        The number of sub-images written per folder (0 without ``subimages``).
    """
    scales = _check_scales(scales)
    if subimages:
        _check_crop_settings(scales, crop_size, step, thresh_size)
    paths = list_images(layout.hr)
    for scale in scales:
        os.makedirs(layout.lr(scale), exist_ok=True)
        if subimages:
            os.makedirs(layout.lr_sub(scale), exist_ok=True)
    if subimages:
        os.makedirs(layout.hr_sub, exist_ok=True)
    worker = functools.partial(_prepare_div2k_image, layout=layout, scales=scales, subimages=subimages,
                               crop_size=crop_size, step=step, thresh_size=thresh_size)
    description = f'DIV2K {layout.split}: LR x{"/".join(map(str, scales))}' + (' + sub-images' if subimages else '')
    counts = _run_per_image(worker, paths, workers, description, progress)
    too_small = [os.path.basename(path) for path, count in zip(paths, counts) if subimages and count == 0]
    if too_small:
        print(f'{len(too_small)} image(s) smaller than crop_size {crop_size} gave no sub-image: '
              f'{", ".join(too_small[:5])}{" ..." if len(too_small) > 5 else ""}')
    return int(sum(counts))


def prepare_div2k(root: str, splits: Iterable[str] = ('train', 'valid'), scales: Sequence[int] = (2, 3, 4),
                  download: bool = True, archive_dir: str | None = None, url: str | None = None,
                  sha256: str | None = None, subimage_splits: Iterable[str] = ('train',),
                  crop_size: int = SUBIMAGE_CROP_SIZE, step: int = SUBIMAGE_STEP,
                  thresh_size: int = SUBIMAGE_THRESH_SIZE, workers: int = 1, progress: bool = True) -> dict:
    """Download, verify and extract the DIV2K HR archives, then make LR images and sub-images (module docstring).

    Args:
        root: DIV2K folder, e.g. ``datasets/DIV2K``.
        splits: ``train`` and/or ``valid``.
        scales: LR factors.
        download: fetch the archives; False uses the ``DIV2K_<split>_HR`` folders already under ``root``.
        archive_dir: where archives go (default ``root``).
        url, sha256: override the official URL / digest (only with a single split).
        subimage_splits: splits that also get ``_sub`` folders (BasicSR trains on train sub-images and validates
            on full images).
        crop_size, step, thresh_size: HR sub-image settings (LR ones are divided by each scale).
        workers: processes for the per-image work.
        progress: show tqdm bars.

    Returns:
        ``{split: number of sub-images}``.
    """
    splits = list(splits)
    unknown = [split for split in splits if split not in DIV2K_ARCHIVES]
    if not splits or unknown:
        raise PreparationError(f'splits must be among {sorted(DIV2K_ARCHIVES)}, got {splits}')
    if (url or sha256) and len(splits) != 1:
        raise PreparationError('url and sha256 apply to one archive: give a single split with them')
    subimage_splits = set(subimage_splits)
    counts = {}
    for split in splits:
        layout = Div2kLayout(root, split)
        if download:
            archive = download_div2k(split, archive_dir or root, url=url, sha256=sha256, progress=progress)
            extract_zip(archive, root, expected_folder=DIV2K_ARCHIVES[split].folder)
        elif not os.path.isdir(layout.hr):
            raise PreparationError(f'{layout.hr!r} does not exist: run with download enabled, or extract '
                                   f'{os.path.basename(DIV2K_ARCHIVES[split].url)} into {root!r}')
        counts[split] = prepare_div2k_split(layout, scales, subimages=split in subimage_splits,
                                            crop_size=crop_size, step=step, thresh_size=thresh_size,
                                            workers=workers, progress=progress)
    return counts
