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
(:meth:`mtkd.teachers.ensemble.TeacherEnsemble.fingerprint`, which includes each weights file's sha256), the dataset
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
uint8 grey level. They are not clamped (see :mod:`mtkd.teachers.ensemble`); a non-finite output is refused.
Building writes each file atomically (temporary file, fsync, ``os.replace``), so an interrupted build
resumes: files already present are kept when the folder's manifest matches. Reading memory-maps the array
(``np.load(mmap_mode='r')``) and copies only the crop; the LMDB backend copies the crop out of LMDB's own
memory map inside a short read transaction (:class:`LmdbArray`), and is safe in forked data-loader workers.
"""
from __future__ import annotations

import contextlib
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

from mtkd.teachers.ensemble import TeacherEnsemble, TeacherMismatchError, check_fingerprint
from mtkd.utils.errors import MtkdError
from mtkd.utils.fileio import atomic_write, atomic_write_json, exclusive_lock, file_sha256

FORMAT_VERSION = 1
CACHE_DTYPE = 'float16'
BACKENDS = ('npy', 'lmdb')
MANIFEST_NAME = 'manifest.json'
#: Lock file a build holds (:func:`mtkd.utils.fileio.exclusive_lock`), so that runs started together build a cache once.
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


class TeacherCacheError(MtkdError, RuntimeError):
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


# ---- behavioural fingerprint: what the networks' code does, not only which weights they load ----------------
#: Version of the probe below; a manifest recorded with another probe counts as having no fingerprint.
PROBE_VERSION = 1
#: LR side of the probe image (pixels); large enough for window attention and LBNet's token chunks.
PROBE_SIZE = 16
#: Probe outputs are rounded to multiples of this before hashing and storing (float16-like, 2^-11 ≈ 4.9e-4).
PROBE_QUANTUM = 2.0 ** -11
#: Largest |difference| between recorded and current probe outputs taken as float noise (a quarter grey level).
PROBE_TOLERANCE = 1e-3
STALE_OPTION = 'accept_stale_teacher_cache'


class StaleTeacherCacheError(TeacherCacheError):
    """A cache whose networks now compute something else than when it was built (the code changed)."""


def probe_image(size: int = PROBE_SIZE) -> 'torch.Tensor':
    """The fixed probe ``(1, 3, size, size)`` in [0, 1]: colour ramps plus an integer-hash texture.

    Made from integer arithmetic only, so it is the same bit for bit on every machine and library version.
    """
    import torch

    rows = torch.arange(size).view(size, 1)
    cols = torch.arange(size).view(1, size)
    planes = []
    for channel in range(3):
        ramp = (rows * (channel + 1) + cols * (3 - channel)) % (4 * size)
        texture = (rows * 7 + cols * 13 + rows * cols + channel * 5) % 17
        planes.append(ramp.float() / (4 * size) * 0.6 + texture.float() / 16 * 0.4)
    return torch.stack(planes).unsqueeze(0)


def _encode_probe(quantised: np.ndarray) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.compress(quantised.astype('<i4').tobytes(), 9)).decode('ascii')


def _decode_probe(text: str, shape: Sequence[int]) -> np.ndarray:
    import base64
    import zlib

    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype='<i4').reshape(shape)


@contextlib.contextmanager
def _ieee_float32():
    """IEEE fp32 matmuls and cuDNN convolutions inside (no TF32), the previous settings restored after. Uses the
    per-backend ``fp32_precision`` API where torch has it (mixing it with ``allow_tf32`` is an error there)."""
    import torch

    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    if hasattr(cudnn, 'conv') and hasattr(cudnn.conv, 'fp32_precision'):
        flags = [(cuda.matmul, 'fp32_precision'), (cudnn.conv, 'fp32_precision'), (cudnn.rnn, 'fp32_precision')]
        off = 'ieee'
    else:  # torch < 2.9
        flags = [(cuda.matmul, 'allow_tf32'), (cudnn, 'allow_tf32')]
        off = False
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        for owner, name in flags:
            setattr(owner, name, off)
        yield
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)


def behaviour_fingerprint(ensemble) -> dict[str, Any]:
    """Each network's output on :func:`probe_image`, rounded to :data:`PROBE_QUANTUM`: its sha256 and the values.

    ``ensemble``: a :class:`mtkd.teachers.ensemble.TeacherEnsemble` or
    :class:`mtkd.teachers.aggregated.AggregatedTeachers` (anything with ``names``, ``device`` and ``forward(lq)``), run
    as it is when the cache is built (padding, self-ensemble), in float32 with TF32 off, so the same code gives the same
    numbers on a CPU and a GPU up to float noise. Weights and arguments are in the cache key already; this records what
    the code does with them, so a changed ``forward`` (a teacher's or DCTSwin's) is noticed when the cache is opened.

    Returns ``{'probe': {version, size, quantum}, 'outputs': {name: {'sha256', 'shape', 'values'}}}`` (values:
    base64 of zlib-compressed little-endian int32 multiples of the quantum).
    """
    import torch

    with _ieee_float32(), torch.autocast(device_type=torch.device(ensemble.device).type, enabled=False):
        outputs = ensemble.forward(probe_image().to(ensemble.device))
    recorded = {}
    for name, output in zip(ensemble.names, outputs):
        values = output[0].detach().double().cpu().numpy()
        if not np.isfinite(values).all():
            raise TeacherCacheError(f"network '{name}' gives non-finite values on the probe image: check its weights")
        quantised = np.round(values / PROBE_QUANTUM).astype(np.int64)
        if np.abs(quantised).max(initial=0) >= 2 ** 31:
            raise TeacherCacheError(f"network '{name}' gives values beyond ±1e6 on the probe image: check its range")
        digest = hashlib.sha256(quantised.astype('<i4').tobytes() + repr(quantised.shape).encode()).hexdigest()
        recorded[name] = {'sha256': digest, 'shape': list(quantised.shape), 'values': _encode_probe(quantised)}
    return {'probe': {'version': PROBE_VERSION, 'size': PROBE_SIZE, 'quantum': PROBE_QUANTUM}, 'outputs': recorded}


def behaviour_differences(recorded: Mapping | None, current: Mapping) -> dict[str, str] | None:
    """``{name: why}`` for each network whose probe output changed by more than :data:`PROBE_TOLERANCE`; ``{}``
    when all agree; None when ``recorded`` is absent or made with another probe (nothing to compare with).

    Equal hashes agree at once; otherwise the stored values are compared, because float noise can move a value
    across a rounding boundary and change the hash without changing anything that matters.
    """
    if not recorded or recorded.get('probe') != current['probe']:
        return None
    differences = {}
    for name, entry in current['outputs'].items():
        old = recorded.get('outputs', {}).get(name)
        if old is None:
            differences[name] = 'no recorded probe output'
        elif old['sha256'] == entry['sha256']:
            continue
        elif list(old['shape']) != list(entry['shape']):
            differences[name] = f"probe output shape {tuple(old['shape'])} then, {tuple(entry['shape'])} now"
        else:
            change = np.abs(_decode_probe(old['values'], old['shape']).astype(np.int64)
                            - _decode_probe(entry['values'], entry['shape']).astype(np.int64)).max() * PROBE_QUANTUM
            if change > PROBE_TOLERANCE:
                differences[name] = f'probe output changed by up to {change:.4g}'
    return differences


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
def npy_damage(path: str) -> str | None:
    """What is wrong with a ``.npy`` file, or None when its header parses and its size matches the header.

    Reads only the header (a few hundred bytes): an interrupted copy or a full disk leaves a file that
    ``np.load(mmap_mode='r')`` refuses with "mmap length is greater than file size".
    """
    try:
        with open(path, 'rb') as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return f'.npy format version {version}, not written by this cache'
            header_bytes = handle.tell()
    except (OSError, ValueError, EOFError) as error:
        return f'unreadable header: {error}'
    expected = header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        return f'{actual} bytes where its header {tuple(shape)} {dtype} needs {expected}: truncated or overwritten'
    return None


class NpyStorage:
    """One ``.npy`` file per teacher and image, read through a memory map."""

    def __init__(self, folder: str):
        self.folder = folder

    def file(self, teacher: str, stem: str) -> str:
        return os.path.join(self.folder, teacher, f'{stem}.npy')

    def has(self, teacher: str, stem: str) -> bool:
        """True when the file is there and whole (:func:`npy_damage` finds nothing): a truncated file counts as
        absent, so a build recomputes it."""
        path = self.file(teacher, stem)
        return os.path.isfile(path) and npy_damage(path) is None

    def write(self, teacher: str, stem: str, array: np.ndarray) -> None:
        atomic_write(self.file(teacher, stem), lambda handle: np.save(handle, array, allow_pickle=False))

    def open(self, teacher: str, stem: str) -> np.ndarray:
        """A read-only memory map ``(sH, sW, 3)`` float16: nothing is read until it is sliced and copied.

        A truncated or unreadable file raises :class:`TeacherCacheError` naming it and the command that recomputes
        just that entry."""
        path = self.file(teacher, stem)
        damage = npy_damage(path) if os.path.isfile(path) else None
        if damage is None:
            try:
                return np.load(path, mmap_mode='r', allow_pickle=False)
            except FileNotFoundError:
                raise
            except (OSError, ValueError, EOFError) as error:
                damage = f'{type(error).__name__}: {error}'
        raise TeacherCacheError(f"the cached output of teacher '{teacher}' for image '{stem}', {path}, is corrupt "
                                f'({damage}). Delete that file and run `{BUILD_COMMAND}`: it recomputes only the '
                                'missing entries (training with teachers: in the option file does the same at start)')

    def prepare_for_writing(self, stems: Sequence[str] | None = None) -> None:
        """Remove temporary files left by a build that was killed mid-write (of ``stems`` only, when given: a
        sharded build must not delete the file another rank is writing)."""
        patterns = ['.*.tmp'] if stems is None else [f'.{glob.escape(stem)}.npy.*.tmp' for stem in stems]
        for pattern in patterns:
            for path in glob.glob(os.path.join(self.folder, '*', pattern)):
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

    def prepare_for_writing(self, stems: Sequence[str] | None = None) -> None:
        """Open the environment writable (LMDB commits are atomic: nothing to clean up; LMDB serialises the
        writers of several processes)."""
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
    :func:`mtkd.teachers.ensemble.run_tiled` for when that is exact. Arrays are ``(sH, sW, 3)``, HWC, RGB, float16.
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

    # ---- behaviour: is the code that made these outputs still the code that runs? --------------------------
    def check_behaviour(self, ensemble, accept_stale: bool = False,
                        logger: logging.Logger | None = None) -> dict[str, Any]:
        """Compare ``ensemble``'s probe outputs now with those recorded when the cache was built.

        Raises :class:`StaleTeacherCacheError` naming each network that changed (and what to do) when they differ
        beyond float noise, or when the manifest records none; with ``accept_stale`` it only logs a warning.
        Returns the current :func:`behaviour_fingerprint`.
        """
        current = behaviour_fingerprint(ensemble)
        self._judge_behaviour(behaviour_differences((self.read_manifest() or {}).get('behaviour'), current),
                              accept_stale, logger)
        return current

    def _judge_behaviour(self, differences: dict[str, str] | None, accept_stale: bool,
                         logger: logging.Logger | None) -> None:
        if differences == {}:
            return
        if differences is None:
            problem = (f'the teacher-output cache {self.path} records no behavioural fingerprint (built by an '
                       'older mtkd): nothing says its outputs come from the code that runs now')
        else:
            details = '; '.join(f"'{name}': {why}" for name, why in differences.items())
            problem = (f'the teacher-output cache {self.path} was made by networks that now compute something '
                       f'else ({details}). Their weights and arguments are unchanged (both are in the cache key), '
                       "so their code changed (a teacher arch's forward, or DCTSwin for an I_MT cache) and the "
                       'cached outputs are stale')
        if accept_stale:
            (logger or logging.getLogger(__name__)).warning(f'{problem}; used anyway (accept-stale).')
            return
        raise StaleTeacherCacheError(
            f'{problem}. Rebuild it: delete {self.path} and run `{BUILD_COMMAND}` (or start training again: a '
            'missing cache is built at start). If the change is harmless, keep it: `--accept-stale` on '
            f'scripts/build_teacher_cache.py records the current behaviour, `{STALE_OPTION}: true` in the '
            'dataset block uses the cache for a run as it is.')

    # ---- building ------------------------------------------------------------------------------------
    def build(self, ensemble: TeacherEnsemble, lq_paths: Sequence[str], progress: bool = True,
              logger: logging.Logger | None = None, accept_stale: bool = False,
              shard: tuple[int, int] = (0, 1)) -> BuildReport:
        """Run every teacher once on every LR image not yet stored, storing float16 HWC RGB outputs.

        Checks first that ``ensemble`` is the teachers the key was made for (:class:`TeacherMismatchError`)
        and that ``lq_paths`` hash to the key's dataset key (rereads the LR files). Images whose outputs are
        all present are skipped (resume); the manifest is marked complete at the end. A build holds the cache's
        lock file (``.build.lock``) throughout: a second process building the same cache waits, then reuses
        everything the first stored. The networks' :func:`behaviour_fingerprint` is recorded in the manifest; a
        resumed build whose stored outputs came from networks that now behave otherwise is refused
        (:class:`StaleTeacherCacheError`) unless ``accept_stale``, which keeps them and records the current
        behaviour. Truncated files count as absent and are recomputed.

        ``shard=(index, count)``: compute only every ``count``-th image from ``index`` (of the images sorted by
        name), as one of ``count`` processes building the cache together (one per GPU under torchrun); each
        shard holds its own lock, and the cache is marked complete by :meth:`finish_sharded_build` once every
        shard is done (:func:`build_sharded` does the whole sequence).
        """
        start = time.perf_counter()
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f'shard must be (index, count) with 0 <= index < count, got {shard}')
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
        lock_path = os.path.join(self.path, BUILD_LOCK_NAME if count == 1 else f'.build.{index}-of-{count}.lock')

        def report_waiting() -> None:
            (logger or logging.getLogger(__name__)).info(
                f'teacher cache {self.path}: another process is building it; waiting for it (lock {lock_path})')

        # Two runs started together (ablations sharing teachers) would otherwise both compute every output, and
        # one's clean-up of half-written files could delete a file the other is writing.
        with exclusive_lock(lock_path, on_wait=report_waiting):
            return self._build_locked(ensemble, paths, progress, logger, start, accept_stale=accept_stale,
                                      shard=shard)

    def _build_locked(self, ensemble: TeacherEnsemble, paths: Sequence[str], progress: bool,
                      logger: logging.Logger | None, start: float, accept_stale: bool = False,
                      shard: tuple[int, int] = (0, 1)) -> BuildReport:
        """:meth:`build` once it holds the cache's build lock: images stored meanwhile by another process are reused."""
        from tqdm import tqdm

        from mtkd.metrics.evaluation import image_to_tensor, read_image

        stems = [image_stem(path) for path in paths]
        manifest = self.read_manifest()
        behaviour = behaviour_fingerprint(ensemble)
        if manifest is not None:
            self._check_manifest(manifest)
            created = manifest.get('created')
            if len(self.missing(stems)) < len(stems) * len(self.teacher_names):  # outputs stored by an earlier run
                self._judge_behaviour(behaviour_differences(manifest.get('behaviour'), behaviour), accept_stale,
                                      logger)
        else:
            created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
        record = dict(self.identity(), teacher_names=self.teacher_names, layout='HWC, RGB, nominally [0, 1], '
                      'not clamped', created=created, complete=False, completed=None, images=stems,
                      behaviour=behaviour)
        atomic_write_json(record, self.manifest_path)
        index, count = shard
        mine = list(zip(paths, stems))[index::count]
        self._storage.prepare_for_writing(None if count == 1 else [stem for _, stem in mine])

        computed = reused = 0
        bar = tqdm(total=len(mine), unit='img', desc=f'teacher cache {self.key}' + (f' [{index + 1}/{count}]'
                   if count > 1 else ''), disable=not progress, dynamic_ncols=True)
        try:
            for path, stem in mine:
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
        if count == 1:
            record.update(complete=True,
                          completed=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
            atomic_write_json(record, self.manifest_path)
        seconds = time.perf_counter() - start
        if logger is not None:
            part = f' (shard {index + 1} of {count})' if count > 1 else ''
            logger.info(f'teacher cache {self.path}{part}: {computed} images computed, {reused} reused, '
                        f'{seconds:.1f} s')
        return BuildReport(computed=computed, reused=reused, seconds=seconds, path=self.path)

    def finish_sharded_build(self, lq_paths: Sequence[str]) -> None:
        """After every shard of a sharded :meth:`build` finished: check that every output is stored and mark the
        manifest complete. Every process may call it (the manifest is replaced atomically with the same content)."""
        stems = sorted(image_stem(path) for path in lq_paths)
        missing = self.missing(stems)
        if missing:
            shown = ', '.join(f'{stem} ({teacher})' for teacher, stem in missing[:5])
            raise TeacherCacheError(f'the sharded build of {self.path} left {len(missing)} outputs missing ({shown}): '
                                    f'a process failed; run the build again (finished outputs are kept)')
        record = self.read_manifest()
        if record is None:
            raise TeacherCacheError(f'{self.manifest_path} vanished during the sharded build; build again')
        if not record.get('complete'):
            record.update(complete=True,
                          completed=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
            atomic_write_json(record, self.manifest_path)

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


def build_sharded(cache: TeacherOutputCache, networks, lq_paths: Sequence[str], progress: bool = True,
                  logger: logging.Logger | None = None, accept_stale: bool = False) -> BuildReport:
    """Build ``cache`` with every process of the process group computing its share of the images, then one
    barrier (bounded by ``dist_params.timeout``), then the manifest is marked complete. Without a process group,
    an ordinary :meth:`TeacherOutputCache.build`. Returns this process's report (its share only)."""
    from mtkd.training import distributed

    rank, world = distributed.rank_and_world()
    report = cache.build(networks, lq_paths, progress=progress and rank == 0, logger=logger,
                         accept_stale=accept_stale, shard=(rank, world))
    if world > 1:
        distributed.barrier()
        cache.finish_sharded_build(lq_paths)
    return report


def build_cache_from_options(options: Mapping, root: str = '.', device: str = 'cpu', backend: str = 'npy',
                             tile_size: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                             progress: bool = True, logger: logging.Logger | None = None,
                             accept_stale: bool = False, content: str = 'teachers'
                             ) -> tuple[TeacherOutputCache, BuildReport]:
    """Build the cache of an option file's ``teachers:`` on its ``datasets.train`` LR images.

    Reads ``scale``, ``teachers`` and ``datasets.train`` (``dataroot_gt``, ``dataroot_lq``, ``filename_tmpl``,
    ``meta_info_file``, ``teacher_cache_root``, default ``datasets/teacher_cache``). Relative paths are taken
    from ``root`` (the repository root). ``accept_stale``: see :meth:`TeacherOutputCache.build`. ``content``:
    ``'teachers'`` (each teacher's output) or ``'aggregate'`` (MTKD stage 2's ``I_MT``: the teachers followed by
    the file's ``aggregator:``). Under torchrun every process builds its share (:func:`build_sharded`) and
    the report counts that share.
    """
    from mtkd.teachers.ensemble import teacher_specs_from_options

    for key in ('scale', 'teachers', 'datasets'):
        if key not in options:
            raise ValueError(f"the option file has no '{key}'; a stage-1/distillation file lists teachers: and "
                             'datasets: train:')
    train = training_dataset_options(options)
    if content not in ('teachers', 'aggregate'):
        raise ValueError(f"content must be 'teachers' or 'aggregate', got {content!r}")
    if content == 'aggregate' and not options.get('aggregator'):
        raise ValueError("content 'aggregate' (I_MT) needs the option file's aggregator: block (a stage-2 file)")
    scale = options['scale']
    specs = teacher_specs_from_options(options['teachers'], root)
    lq_paths = [pair['lq_path'] for pair in training_pairs_from_options(options, root)]
    ensemble = TeacherEnsemble(specs, scale, device=device, logger=logger)
    networks = ensemble
    if content == 'aggregate':
        from mtkd.teachers.aggregated import AggregatedTeachers

        aggregator = dict(options['aggregator'])
        if aggregator.get('weights'):
            aggregator['weights'] = _from_root(aggregator['weights'], root)
        networks = AggregatedTeachers(ensemble, aggregator, root, logger=logger)
    cache = TeacherOutputCache(_from_root(train.get('teacher_cache_root') or DEFAULT_CACHE_ROOT, root),
                               networks.fingerprint(), dataset_key(lq_paths), scale, backend, tile_size, tile_overlap)
    return cache, build_sharded(cache, networks, lq_paths, progress=progress, logger=logger,
                                accept_stale=accept_stale)


def check_dataset_cache_behaviour(cache: TeacherOutputCache, opt: Mapping,
                                  logger: logging.Logger | None = None) -> None:
    """:meth:`TeacherOutputCache.check_behaviour` for a ``TeacherPairedImageDataset`` block, when it opens its cache.

    Builds the networks whose outputs the cache holds from the ``teachers`` (and ``aggregator``) that mtkd fills
    into the block (:func:`mtkd.teachers.aggregated.cache_networks_from_options`); a block without them (a cache
    named by hand with ``teacher_cache_dir`` only) cannot be checked. ``accept_stale_teacher_cache: true`` in the
    block turns a refusal into a warning.
    """
    if not opt.get('teachers'):
        return
    import torch

    from mtkd.teachers.aggregated import cache_networks_from_options

    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    networks = cache_networks_from_options(opt, device, logger)
    cache.check_behaviour(networks, accept_stale=bool(opt.get(STALE_OPTION)), logger=logger)


__all__ = ['TeacherOutputCache', 'TeacherCacheError', 'TeacherMismatchError', 'BuildReport', 'LmdbArray',
           'close_lmdb_environments', 'dataset_key', 'StaleTeacherCacheError', 'behaviour_fingerprint',
           'behaviour_differences', 'check_dataset_cache_behaviour', 'npy_damage', 'probe_image',
           'cache_key', 'image_stem', 'paired_lq_paths', 'build_cache_from_options', 'build_sharded',
           'training_dataset_options',
           'training_pairs_from_options', 'NpyStorage', 'LmdbStorage',
           'BACKENDS', 'DEFAULT_CACHE_ROOT', 'BUILD_COMMAND']
