"""Atomic file writing: a crash while saving never leaves a truncated checkpoint, state or JSON behind."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch


def _atomic_write(path: str, write) -> str:
    """Write through ``write(file_object)`` into a temporary file beside ``path``, then rename onto it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(descriptor, 'wb') as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save`` that either writes the whole file or leaves the old one untouched."""
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: str) -> str:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + '\n'
    return _atomic_write(path, lambda handle: handle.write(text.encode('utf-8')))
