"""mtkd/utils/fileio.py: sha256 of files and atomic writes (whole new file or the old one, never a partial one)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mtkd.utils.fileio import atomic_torch_save, atomic_write, atomic_write_json, exclusive_lock, file_sha256


def _hidden_files(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith('.'))


def test_file_sha256_of_a_known_string_in_any_chunk_size(tmp_path):
    path = tmp_path / 'abc.bin'
    path.write_bytes(b'abc')
    # FIPS 180-2 test vector for "abc".
    expected = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    assert file_sha256(str(path)) == expected
    assert file_sha256(str(path), chunk_size=1) == expected


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'state.bin'
    path.write_bytes(b'old')

    def half_then_fail(handle):
        handle.write(b'half of the new')
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        atomic_write(str(path), half_then_fail, suffix='.part')
    assert path.read_bytes() == b'old'
    assert _hidden_files(tmp_path) == []


def test_writers_create_the_folder_and_write_exact_content(tmp_path):
    json_path = tmp_path / 'new' / 'metrics.json'
    assert atomic_write_json({'b': 1, 'a': [0.5]}, str(json_path)) == str(json_path)
    # Insertion order, indent 2, final newline: the bytes the training logs have always had.
    assert json_path.read_text() == '{\n  "b": 1,\n  "a": [\n    0.5\n  ]\n}\n'
    assert json.loads(json_path.read_text()) == {'b': 1, 'a': [0.5]}

    weights_path = tmp_path / 'net.pth'
    atomic_torch_save({'w': torch.arange(3.)}, str(weights_path))
    assert torch.equal(torch.load(weights_path, weights_only=True)['w'], torch.arange(3.))
    assert _hidden_files(tmp_path) == []


@pytest.mark.skipif(os.name != 'posix', reason='exclusive_lock uses fcntl.flock (POSIX)')
def test_exclusive_lock_excludes_other_holders_until_released(tmp_path):
    import fcntl

    path = str(tmp_path / 'sub' / '.build.lock')
    waited = []

    def try_lock() -> bool:
        with open(path, 'a+b') as other:
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other.fileno(), fcntl.LOCK_UN)
            return True

    with exclusive_lock(path, on_wait=lambda: waited.append(1)) as held:
        assert held and not try_lock()
    assert try_lock() and not waited  # released on exit; on_wait only runs when someone else holds it
    with pytest.raises(RuntimeError):
        with exclusive_lock(path):
            raise RuntimeError('the body failed')
    assert try_lock()  # released on an exception too
