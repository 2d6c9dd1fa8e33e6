"""Teacher outputs computed once per training image and kept on disk, so training never runs the teachers.

Teachers are fixed, so running them at every iteration repeats the same work: this module runs each teacher
once on every full LR training image and stores its SR output; the dataset
(:class:`mtkd.data.teacher_paired_dataset.TeacherPairedImageDataset`) then crops teacher outputs at the GT
crop position. Running a teacher on the full image, not on the training crop as per-iteration code does,
differs within the teacher's receptive field of the crop border and for image-global operations (IMDN's
contrast-aware channel attention); the full-image output is what the teacher produces at test time.

Layout (``npy`` backend)::

    <cache_root>/<key>/manifest.json
    <cache_root>/<key>/<teacher name>/<LR image stem>.npy     # float16, (sH, sW, 3), RGB, nominally [0, 1]

The ``lmdb`` backend keeps the same arrays in ``<cache_root>/<key>/teacher_outputs.lmdb`` under the keys
``<teacher name>/<stem>`` (a 12-byte header of three little-endian uint32: H, W, C; then the float16 data).

``<key>`` is the first 16 hex digits of a sha256 over: the teacher fingerprints in order
(:meth:`mtkd.teachers.TeacherEnsemble.fingerprint`, which includes each weights file's sha256), the dataset
key, the scale, the dtype, the backend, the tiling and the format version. A changed teacher, weights file
or LR image gives another key, hence a new folder that is built from scratch; old folders are left for
the user to delete. The dataset key (:func:`dataset_key`) hashes the content of every LR file; the build
and each construction of the dataset compute it once. Cost: reading the LR set (sha256 runs at ~1 GB/s on
one core here; the 62 MB of T91+BSD200 HR PNGs took 0.10 s warm), so DIV2K x4 LR (~0.25 GB) takes well
under a second warm, plus the disk read when cold. Names, sizes and mtimes alone would miss a file
rewritten in place with the same size.

Size on disk: 6 bytes per SR pixel per teacher (float16 RGB): DIV2K (800 images, ~2.3 Gpixel of HR)
takes about 14 GB per teacher, the 291-image T91+BSD200 set (36 Mpixel) 0.22 GB per teacher.

Outputs are float16: an absolute error of at most 2^-12 (2.4e-4) for values in [0.5, 1], about 1/16 of a
uint8 grey level. They are not clamped (see :mod:`mtkd.teachers`); a non-finite output is refused.
Building writes each file atomically (temporary file, fsync, ``os.replace``), so an interrupted build
resumes: files already present are kept when the folder's manifest matches. Reading memory-maps the array
(``np.load(mmap_mode='r')``) and copies only the crop; the LMDB backend copies the crop out of LMDB's own
memory map inside a short read transaction (:class:`LmdbArray`), and is safe in forked data-loader workers.
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtkd.fileio import atomic_write, atomic_write_json, exclusive_lock, file_sha256
from mtkd.teachers import TeacherEnsemble, TeacherMismatchError, check_fingerprint

FORMAT_VERSION = 1
CACHE_DTYPE = 'float16'
BACKENDS = ('npy', 'lmdb')
MANIFEST_NAME = 'manifest.json'
#: Lock file a build holds (:func:`mtkd.fileio.exclusive_lock`), so that runs started together build a cache once.
BUILD_LOCK_NAME = '.build.lock'
LMDB_NAME = 'teacher_outputs.lmdb'
DEFAULT_CACHE_ROOT = 'datasets/teacher_cache'
DEFAULT_TILE_OVERLAP = 16
KEY_LENGTH = 16
BUILD_COMMAND = 'python scripts/build_teacher_cache.py -opt <your stage-1 option file>'
#: Manifest fields that say which outputs a folder holds (a resumed build must agree on all of them).
IDENTITY_FIELDS = ('format_version', 'key', 'teachers', 'dataset_key', 'scale', 'dtype', 'backend', 'tile_size',
                   'tile_overlap')
_LMDB_HEADER = struct.Struct('<III')


class TeacherCacheError(RuntimeError):
    """A teacher-output cache that is missing, incomplete, or made for other teachers or data."""


def image_stem(path: str) -> str:
    """The cache's name of an LR image: its file name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def dataset_key(lq_paths: Sequence[str]) -> str:
    """sha256 over the sorted LR file names with their sizes and content hashes (reads every file once)."""
    paths = sorted(lq_paths, key=os.path.basename)
    if not paths:
        raise ValueError('dataset_key: no LR images given (is dataroot_lq empty?)')
    stems = [image_stem(path) for path in paths]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f'LR images {duplicates} appear twice (same name, other extension or folder); the cache '
                         'names outputs by file stem, so stems must be unique')
    entries = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'LR image not found: {path}')
        entries.append([os.path.basename(path), os.path.getsize(path), file_sha256(path)])
    return hashlib.sha256(json.dumps(entries).encode('utf-8')).hexdigest()


def cache_key(fingerprints: Sequence[Mapping], data_key: str, scale: int, backend: str = 'npy',
              tile_size: int | None = None, tile_overlap: int | None = None) -> str:
    """The folder name of a cache: sha256 (first 16 hex digits) of everything that decides its content."""
    payload = {'format_version': FORMAT_VERSION, 'teachers': [dict(entry) for entry in fingerprints],
               'dataset_key': data_key, 'scale': scale, 'dtype': CACHE_DTYPE, 'backend': backend,
               'tile_size': tile_size, 'tile_overlap': tile_overlap if tile_size else None}
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:KEY_LENGTH]


def paired_lq_paths(dataroot_gt: str, dataroot_lq: str, filename_tmpl: str = '{}',
                    meta_info_file: str | None = None) -> list[dict[str, str]]:
    """``[{'lq_path', 'gt_path'}]`` exactly as BasicSR's ``PairedImageDataset`` pairs a GT and an LQ folder."""
    from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_meta_info_file

    for label, folder in (('dataroot_gt', dataroot_gt), ('dataroot_lq', dataroot_lq)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'{label} folder {folder} does not exist')
    if meta_info_file:
        return paired_paths_from_meta_info_file([dataroot_lq, dataroot_gt], ['lq', 'gt'], meta_info_file,
                                                filename_tmpl)
    return paired_paths_from_folder([dataroot_lq, dataroot_gt], ['lq', 'gt'], filename_tmpl)


# ---- storage backends: where the arrays live ---------------------------------------------------------------
class NpyStorage:
    """One ``.npy`` file per teacher and image, read through a memory map."""

    def __init__(self, folder: str):
        self.folder = folder

    def file(self, teacher: str, stem: str) -> str:
        return os.path.join(self.folder, teacher, f'{stem}.npy')

    def has(self, teacher: str, stem: str) -> bool:
        return os.path.isfile(self.file(teacher, stem))

    def write(self, teacher: str, stem: str, array: np.ndarray) -> None:
        atomic_write(self.file(teacher, stem), lambda handle: np.save(handle, array, allow_pickle=False))

    def open(self, teacher: str, stem: str) -> np.ndarray:
        """A read-only memory map ``(sH, sW, 3)`` float16: nothing is read until it is sliced and copied."""
        return np.load(self.file(teacher, stem), mmap_mode='r', allow_pickle=False)

    def prepare_for_writing(self) -> None:
        """Remove temporary files left by a build that was killed mid-write."""
        for path in glob.glob(os.path.join(self.folder, '*', '.*.tmp')):
            os.remove(path)

    def close(self) -> None:
        pass


#: LMDB environments open in this process (``'pid'``: which process), by real path: (environment, writable).
#: One per path, because py-lmdb refuses to open a path twice in a process.
_LMDB_ENVIRONMENTS: dict[str, Any] = {}


def close_lmdb_environments() -> None:
    """Close every LMDB environment this process opened (they reopen lazily on the next access)."""
    if _LMDB_ENVIRONMENTS.get('pid') == os.getpid():
        for key, entry in _LMDB_ENVIRONMENTS.items():
            if key != 'pid':
                entry[0].close()
    _LMDB_ENVIRONMENTS.clear()


# LMDB handles must not cross fork (data-loader workers), and py-lmdb refuses to open in the child a path the
# parent holds open: close them before forking. Safe because no transaction or view outlives a read.
os.register_at_fork(before=close_lmdb_environments)


def _lmdb_environment(path: str, writable: bool):
    import lmdb

    if _LMDB_ENVIRONMENTS.get('pid') != os.getpid():
        # Inherited through fork without the before-fork hook (os.fork in C code): never use the parent's handles.
        _LMDB_ENVIRONMENTS.clear()
        _LMDB_ENVIRONMENTS['pid'] = os.getpid()
    key = os.path.realpath(path)
    entry = _LMDB_ENVIRONMENTS.get(key)
    if entry is not None and (entry[1] or not writable):
        return entry[0]
    if entry is not None:
        entry[0].close()
        del _LMDB_ENVIRONMENTS[key]
    if writable:
        os.makedirs(path, exist_ok=True)
        environment = lmdb.open(path, map_size=LmdbStorage.map_size, readahead=False, meminit=False)
    else:
        if not os.path.isdir(path):
            raise FileNotFoundError(f'no LMDB teacher cache at {path}')
        environment = lmdb.open(path, readonly=True, lock=False, readahead=False)
    _LMDB_ENVIRONMENTS[key] = (environment, writable)
    return environment


class LmdbArray:
    """A stored ``(sH, sW, 3)`` float16 array in LMDB: ``shape``/``dtype`` like an ndarray; indexing copies the
    selected part out of LMDB's memory map inside one short read transaction (so only the crop is read)."""

    dtype = np.dtype(np.float16)
    ndim = 3

    def __init__(self, path: str, key: bytes, shape: tuple[int, int, int]):
        self.path, self.key, self.shape = path, key, shape

    def __getitem__(self, index) -> np.ndarray:
        with _lmdb_environment(self.path, writable=False).begin(buffers=True) as transaction:
            value = transaction.get(self.key)
            array = np.frombuffer(value, dtype='<f2', offset=_LMDB_HEADER.size).reshape(self.shape)
            return np.array(array[index], dtype=np.float16)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[...]
        return array if dtype is None else array.astype(dtype)


class LmdbStorage:
    """All arrays in one LMDB environment (``teacher_outputs.lmdb``), one commit per array.

    The environment is opened lazily, once per process, writable while building and read-only
    (``lock=False``) otherwise; reads copy what they select inside a short transaction (:class:`LmdbArray`).
    """

    map_size = 1 << 40  # address space only: the file grows as data is written

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LMDB_NAME)

    @staticmethod
    def _key(teacher: str, stem: str) -> bytes:
        return f'{teacher}/{stem}'.encode('utf-8')

    def has(self, teacher: str, stem: str) -> bool:
        if not os.path.isdir(self.path):
            return False
        with _lmdb_environment(self.path, writable=False).begin() as transaction:
            return transaction.get(self._key(teacher, stem)) is not None

    def write(self, teacher: str, stem: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype='<f2')
        value = _LMDB_HEADER.pack(*array.shape) + array.tobytes()
        with _lmdb_environment(self.path, writable=True).begin(write=True) as transaction:
            transaction.put(self._key(teacher, stem), value)

    def open(self, teacher: str, stem: str) -> LmdbArray:
        key = self._key(teacher, stem)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f'no LMDB teacher cache at {self.path}')
        with _lmdb_environment(self.path, writable=False).begin(buffers=True) as transaction:
            value = transaction.get(key)
            if value is None:
                raise FileNotFoundError(f'{self.path} has no entry {teacher}/{stem}')
            shape = _LMDB_HEADER.unpack_from(value)
        return LmdbArray(self.path, key, shape)

    def prepare_for_writing(self) -> None:
        """Open the environment writable (LMDB commits are atomic: nothing to clean up)."""
        _lmdb_environment(self.path, writable=True)

    def close(self) -> None:
        entry = _LMDB_ENVIRONMENTS.pop(os.path.realpath(self.path), None)
        if entry is not None:
            entry[0].close()


@dataclass(frozen=True)
class BuildReport:
    """What :meth:`TeacherOutputCache.build` did: images computed and reused, seconds, the cache folder."""
    computed: int
    reused: int
    seconds: float
    path: str


class TeacherOutputCache:
    """Each teacher's SR output of every LR training image, on disk under a key of teachers and data.

    ``ensemble_fingerprint``: :meth:`TeacherEnsemble.fingerprint` (order matters); ``dataset_key``:
    :func:`dataset_key` of the LR files; ``scale``: the SR factor. ``backend``: ``npy`` (default) or
    ``lmdb``. ``tile_size``: run a teacher on overlapping tiles of ``tile_size`` LR pixels (plus
    ``tile_overlap`` of context) when an image side exceeds it, None (default) for whole images; see
    :func:`mtkd.teachers.run_tiled` for when that is exact. Arrays are ``(sH, sW, 3)``, HWC, RGB, float16.
    """

    def __init__(self, cache_root: str, ensemble_fingerprint: Sequence[Mapping], dataset_key: str, scale: int,
                 backend: str = 'npy', tile_size: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 1):
            raise ValueError(f'tile_size must be a positive integer or None, got {tile_size!r}')
        if not isinstance(tile_overlap, int) or tile_overlap < 0:
            raise ValueError(f'tile_overlap must be a non-negative integer, got {tile_overlap!r}')
        self.ensemble_fingerprint = json.loads(json.dumps([dict(entry) for entry in ensemble_fingerprint],
                                                          default=repr))
        if not self.ensemble_fingerprint:
            raise ValueError('ensemble_fingerprint is empty: a cache needs at least one teacher')
        self.dataset_key = dataset_key
        self.scale = scale
        self.backend = backend
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap if tile_size else None
        self.key = cache_key(self.ensemble_fingerprint, dataset_key, scale, backend, tile_size, tile_overlap)
        self.cache_root = cache_root
        self._path = os.path.join(cache_root, self.key)
        self._storage = NpyStorage(self._path) if backend == 'npy' else LmdbStorage(self._path)

    @classmethod
    def from_directory(cls, path: str) -> TeacherOutputCache:
        """The cache built in ``path`` (a ``<cache_root>/<key>`` folder), described by its manifest."""
        manifest_path = os.path.join(path, MANIFEST_NAME)
        if not os.path.isfile(manifest_path):
            raise TeacherCacheError(f'{path} is not a teacher-output cache (no {MANIFEST_NAME}); build one with '
                                    f'`{BUILD_COMMAND}`, which prints the folder to use')
        with open(manifest_path, encoding='utf-8') as handle:
            manifest = json.load(handle)
        if manifest.get('format_version') != FORMAT_VERSION:
            raise TeacherCacheError(f'{path} has cache format {manifest.get("format_version")}, this mtkd reads '
                                    f'{FORMAT_VERSION}; rebuild it with `{BUILD_COMMAND}`')
        cache = cls(os.path.dirname(os.path.abspath(path)), manifest['teachers'], manifest['dataset_key'],
                    manifest['scale'], manifest['backend'], manifest['tile_size'],
                    manifest['tile_overlap'] if manifest['tile_overlap'] is not None else DEFAULT_TILE_OVERLAP)
        # A copied or renamed folder is still the cache its manifest describes.
        cache._path = path
        cache._storage = NpyStorage(path) if cache.backend == 'npy' else LmdbStorage(path)
        return cache

    @classmethod
    def find(cls, cache_root: str, ensemble_fingerprint: Sequence[Mapping], dataset_key: str,
             scale: int) -> TeacherOutputCache:
        """The one complete cache under ``cache_root`` for these teachers, LR files and scale (any backend/tiling)."""
        wanted = json.loads(json.dumps([dict(entry) for entry in ensemble_fingerprint], default=repr))
        found = []
        for manifest_path in sorted(glob.glob(os.path.join(cache_root, '*', MANIFEST_NAME))):
            try:
                with open(manifest_path, encoding='utf-8') as handle:
                    manifest = json.load(handle)
            except (OSError, ValueError):
                continue
            if (manifest.get('format_version') == FORMAT_VERSION and manifest.get('complete')
                    and manifest.get('teachers') == wanted and manifest.get('dataset_key') == dataset_key
                    and manifest.get('scale') == scale):
                found.append(os.path.dirname(manifest_path))
        if not found:
            names = ', '.join(str(entry.get('name')) for entry in wanted)
            raise TeacherCacheError(f'no complete teacher-output cache under {cache_root} for the teachers [{names}] '
                                    f'and these LR images (x{scale}); build it with `{BUILD_COMMAND}`')
        if len(found) > 1:
            raise TeacherCacheError(f'several teacher-output caches match under {cache_root}: {found} (other '
                                    'backends or tilings); choose one with teacher_cache_dir')
        return cls.from_directory(found[0])

    # ---- description ---------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The cache folder, ``<cache_root>/<key>``."""
        return self._path

    @property
    def teacher_names(self) -> list[str]:
        return [entry['name'] for entry in self.ensemble_fingerprint]

    @property
    def manifest_path(self) -> str:
        return os.path.join(self._path, MANIFEST_NAME)

    def identity(self) -> dict[str, Any]:
        """The manifest fields that decide the cache's content."""
        return {'format_version': FORMAT_VERSION, 'key': self.key, 'teachers': self.ensemble_fingerprint,
                'dataset_key': self.dataset_key, 'scale': self.scale, 'dtype': CACHE_DTYPE,
                'backend': self.backend, 'tile_size': self.tile_size, 'tile_overlap': self.tile_overlap}

    def read_manifest(self) -> dict | None:
        if not os.path.isfile(self.manifest_path):
            return None
        with open(self.manifest_path, encoding='utf-8') as handle:
            return json.load(handle)

    def _check_manifest(self, manifest: Mapping) -> None:
        expected = self.identity()
        differing = [name for name in IDENTITY_FIELDS if manifest.get(name) != expected[name]]
        if differing:
            raise TeacherCacheError(f'{self.manifest_path} describes another cache (fields {differing} differ); '
                                    'the folder was modified by hand: delete it and build again')

    def missing(self, image_stems: Sequence[str]) -> list[tuple[str, str]]:
        """``(teacher, stem)`` pairs that have no stored output."""
        return [(name, stem) for stem in image_stems for name in self.teacher_names
                if not self._storage.has(name, stem)]

    def is_complete(self, image_stems: Sequence[str]) -> bool:
        """True when the manifest matches, says the build finished, and every teacher × image is stored."""
        manifest = self.read_manifest()
        if manifest is None or not manifest.get('complete'):
            return False
        self._check_manifest(manifest)
        return not self.missing(image_stems)

    # ---- building ------------------------------------------------------------------------------------
    def build(self, ensemble: TeacherEnsemble, lq_paths: Sequence[str], progress: bool = True,
              logger: logging.Logger | None = None) -> BuildReport:
        """Run every teacher once on every LR image not yet stored, storing float16 HWC RGB outputs.

        Checks first that ``ensemble`` is the teachers the key was made for (:class:`TeacherMismatchError`)
        and that ``lq_paths`` hash to the key's dataset key (rereads the LR files). Images whose outputs are
        all present are skipped (resume); the manifest is marked complete at the end. A build holds the cache's
        lock file (``.build.lock``) throughout: a second process building the same cache waits, then reuses
        everything the first stored.
        """
        start = time.perf_counter()
        check_fingerprint(self.ensemble_fingerprint, ensemble.fingerprint(), what='teacher-output cache')
        random_teachers = [entry['name'] for entry in self.ensemble_fingerprint if entry.get('weights_sha256') is None]
        if random_teachers:
            raise TeacherCacheError(f'teachers {random_teachers} have random weights: their outputs cannot be '
                                    'cached (another random draw would find them); give them weights files')
        if ensemble.scale != self.scale:
            raise ValueError(f'the ensemble is x{ensemble.scale} but the cache is x{self.scale}')
        if dataset_key(lq_paths) != self.dataset_key:
            raise TeacherCacheError('the LR images given differ from those the cache key was made from '
                                    '(other files or content); make the cache with dataset_key(lq_paths)')
        paths = sorted(lq_paths, key=os.path.basename)
        lock_path = os.path.join(self.path, BUILD_LOCK_NAME)

        def report_waiting() -> None:
            (logger or logging.getLogger(__name__)).info(
                f'teacher cache {self.path}: another process is building it; waiting for it (lock {lock_path})')

        # Two runs started together (ablations sharing teachers) would otherwise both compute every output, and
        # one's clean-up of half-written files could delete a file the other is writing.
        with exclusive_lock(lock_path, on_wait=report_waiting):
            return self._build_locked(ensemble, paths, progress, logger, start)

    def _build_locked(self, ensemble: TeacherEnsemble, paths: Sequence[str], progress: bool,
                      logger: logging.Logger | None, start: float) -> BuildReport:
        """:meth:`build` once it holds the cache's build lock: images stored meanwhile by another process are reused."""
        from tqdm import tqdm

        from mtkd.evaluation import image_to_tensor, read_image

        stems = [image_stem(path) for path in paths]
        manifest = self.read_manifest()
        if manifest is not None:
            self._check_manifest(manifest)
            created = manifest.get('created')
        else:
            created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
        record = dict(self.identity(), teacher_names=self.teacher_names, layout='HWC, RGB, nominally [0, 1], '
                      'not clamped', created=created, complete=False, completed=None, images=stems)
        atomic_write_json(record, self.manifest_path)
        self._storage.prepare_for_writing()

        computed = reused = 0
        bar = tqdm(total=len(paths), unit='img', desc=f'teacher cache {self.key}', disable=not progress,
                   dynamic_ncols=True)
        try:
            for path, stem in zip(paths, stems):
                absent = [name for name in self.teacher_names if not self._storage.has(name, stem)]
                if not absent:
                    reused += 1
                    bar.update(1)
                    continue
                lq = image_to_tensor(read_image(path)).to(ensemble.device)
                outputs = ensemble.forward(lq, tile_size=self.tile_size,
                                           tile_overlap=self.tile_overlap or DEFAULT_TILE_OVERLAP)
                for name, output in zip(self.teacher_names, outputs):
                    if name not in absent:
                        continue
                    array = output[0].permute(1, 2, 0).float().cpu().numpy()
                    if not np.isfinite(array).all():
                        raise TeacherCacheError(f"teacher '{name}' produced non-finite values on {path}: check its "
                                                'weights and input range')
                    self._storage.write(name, stem, array.astype(np.float16))
                computed += 1
                bar.update(1)
        finally:
            bar.close()
            if self.backend == 'lmdb':
                self._storage.close()
        record.update(complete=True,
                      completed=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
        atomic_write_json(record, self.manifest_path)
        seconds = time.perf_counter() - start
        if logger is not None:
            logger.info(f'teacher cache {self.path}: {computed} images computed, {reused} reused, {seconds:.1f} s')
        return BuildReport(computed=computed, reused=reused, seconds=seconds, path=self.path)

    # ---- reading -------------------------------------------------------------------------------------
    def open_array(self, teacher_name: str, stem: str) -> np.ndarray | LmdbArray:
        """The stored output, ``(sH, sW, 3)`` float16: a read-only memory map (npy) or an :class:`LmdbArray`;
        nothing is read until it is sliced."""
        if teacher_name not in self.teacher_names:
            raise KeyError(f"no teacher '{teacher_name}' in the cache {self.path}; it holds {self.teacher_names}")
        try:
            return self._storage.open(teacher_name, stem)
        except FileNotFoundError:
            raise TeacherCacheError(f"the teacher-output cache {self.path} has no output of teacher '{teacher_name}' "
                                    f"for image '{stem}'; build it with `{BUILD_COMMAND}`") from None

    def read_crop(self, teacher_name: str, stem: str, top: int, left: int, size: int) -> np.ndarray:
        """``size`` × ``size`` SR pixels at (``top``, ``left``) in SR coordinates, float32 HWC RGB."""
        array = self.open_array(teacher_name, stem)
        if top < 0 or left < 0 or top + size > array.shape[0] or left + size > array.shape[1]:
            raise ValueError(f'crop ({top}, {left}, size {size}) is outside the {array.shape[:2]} output of '
                             f"'{teacher_name}' for '{stem}'")
        return np.array(array[top:top + size, left:left + size], dtype=np.float32)

    def read_full(self, teacher_name: str, stem: str) -> np.ndarray:
        """The whole stored output, float32 HWC RGB."""
        return np.array(self.open_array(teacher_name, stem), dtype=np.float32)


def _from_root(path: str, root: str) -> str:
    """``path`` with ``~`` expanded, taken from ``root`` when relative."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(root, path)


def training_dataset_options(options: Mapping) -> Mapping:
    """An option file's ``datasets.train`` block, checked to name its GT and LR folders."""
    train = (options.get('datasets') or {}).get('train')
    if not isinstance(train, Mapping):
        raise ValueError("the option file has no datasets: train: block; the cache is made for the training images")
    for key in ('dataroot_gt', 'dataroot_lq'):
        if key not in train:
            raise ValueError(f'datasets.train has no {key}')
    return train


def training_pairs_from_options(options: Mapping, root: str = '.') -> list[dict]:
    """``[{'gt_path', 'lq_path'}, ...]`` of an option file's training images (relative folders from ``root``)."""
    train = training_dataset_options(options)
    return paired_lq_paths(_from_root(train['dataroot_gt'], root), _from_root(train['dataroot_lq'], root),
                           train.get('filename_tmpl', '{}'),
                           _from_root(train['meta_info_file'], root) if train.get('meta_info_file') else None)


def build_cache_from_options(options: Mapping, root: str = '.', device: str = 'cpu', backend: str = 'npy',
                             tile_size: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                             progress: bool = True, logger: logging.Logger | None = None
                             ) -> tuple[TeacherOutputCache, BuildReport]:
    """Build the cache of an option file's ``teachers:`` on its ``datasets.train`` LR images.

    Reads ``scale``, ``teachers`` and ``datasets.train`` (``dataroot_gt``, ``dataroot_lq``, ``filename_tmpl``,
    ``meta_info_file``, ``teacher_cache_root``, default ``datasets/teacher_cache``). Relative paths are taken
    from ``root`` (the repository root).
    """
    from mtkd.teachers import teacher_specs_from_options

    for key in ('scale', 'teachers', 'datasets'):
        if key not in options:
            raise ValueError(f"the option file has no '{key}'; a stage-1/distillation file lists teachers: and "
                             'datasets: train:')
    train = training_dataset_options(options)
    scale = options['scale']
    specs = teacher_specs_from_options(options['teachers'], root)
    lq_paths = [pair['lq_path'] for pair in training_pairs_from_options(options, root)]
    ensemble = TeacherEnsemble(specs, scale, device=device, logger=logger)
    cache = TeacherOutputCache(_from_root(train.get('teacher_cache_root') or DEFAULT_CACHE_ROOT, root),
                               ensemble.fingerprint(),
                               dataset_key(lq_paths), scale, backend, tile_size, tile_overlap)
    return cache, cache.build(ensemble, lq_paths, progress=progress, logger=logger)


__all__ = ['TeacherOutputCache', 'TeacherCacheError', 'TeacherMismatchError', 'BuildReport', 'LmdbArray',
           'close_lmdb_environments', 'dataset_key',
           'cache_key', 'image_stem', 'paired_lq_paths', 'build_cache_from_options', 'training_dataset_options',
           'training_pairs_from_options', 'NpyStorage', 'LmdbStorage',
           'BACKENDS', 'DEFAULT_CACHE_ROOT', 'BUILD_COMMAND']
