"""File hashing and atomic writing: a crash while saving never leaves a truncated checkpoint, array or JSON behind.

Every writer goes through :func:`atomic_write`: the content is written into a hidden temporary file beside the
destination (same folder, hence same file system), flushed and fsynced, then moved onto the destination with
``os.replace``, which is atomic on POSIX and Windows. A reader sees either the old file or the whole new one; an
exception while writing (including a content check the caller raises from its ``write`` callback) deletes the
temporary file and leaves the destination untouched. The file gets the mode a plain ``open()`` would give it
(:func:`new_file_mode`), not the temporary file's private 0600, so collaborators can read results.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable

try:  # POSIX; Windows has no fcntl, and exclusive_lock then takes no lock
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None

#: Bytes read per chunk while hashing (checkpoints and archives reach GBs).
HASH_CHUNK_SIZE = 1 << 20


def file_sha256(path: str, chunk_size: int = HASH_CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask (read from /proc where possible: ``os.umask`` can only be read by setting it)."""
    try:
        with open('/proc/self/status', encoding='ascii') as handle:
            for line in handle:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str) -> int:
    """The permission bits a file written at ``path`` should get: those of the file it replaces, else what
    ``open()`` would give a new file (``0o666`` less the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path: str, write: Callable[[BinaryIO], Any], suffix: str = '.tmp') -> str:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it onto ``path``; returns ``path``.

    The temporary file is ``.<name>.<random><suffix>`` in ``path``'s folder (created if missing). Anything
    ``write`` raises deletes it and propagates, so ``path`` is replaced only by a complete, accepted file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix=suffix, dir=folder)
    try:
        with os.fdopen(descriptor, 'wb') as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, new_file_mode(path))  # mkstemp's file is private (0600); results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save`` that either writes the whole file or leaves the old one untouched."""
    import torch  # here, so that hashing and downloads (mtkd.weights.download) need only the standard library

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: str) -> str:
    """Write ``obj`` as JSON indented by 2 (keys in insertion order) plus a final newline, atomically."""
    text = json.dumps(obj, indent=2) + '\n'
    return atomic_write(path, lambda handle: handle.write(text.encode('utf-8')))


@contextlib.contextmanager
def exclusive_lock(path: str, on_wait: Callable[[], Any] | None = None) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` body.

    While another process (or another open of the same file) holds it, calls ``on_wait()`` once, then blocks
    until it is released. POSIX ``fcntl.flock``: the kernel releases the lock when its holder dies, so a killed
    process never leaves it stuck. Yields True, or False where ``fcntl`` is missing (Windows: no lock is taken).
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield False
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a+b') as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
