"""../shared, when ``make test`` linked it: every file the suite expects is there and linked from it.

A shared folder that lacks files, or datasets/ and pretrained/official/ links left from another shared folder,
would otherwise let tests pass on stale data or skip. Runs only under ``MTKD_REQUIRE_SHARED=1`` (``make test``
with a shared folder present); skips with the reason otherwise.
"""
from __future__ import annotations

import os

import pytest

from conftest import (DATASETS, OFFICIAL_WEIGHTS, REQUIRE_SHARED, SHARED_DATASETS, SHARED_ROOT, SHARED_WEIGHT_FILES,
                      _SKIP_PREFIX)


def shared_problems(shared_root: str, datasets: str = DATASETS, weights: str = OFFICIAL_WEIGHTS) -> list[str]:
    """Everything missing from ``shared_root`` (a non-empty folder per dataset part, each weights file), and every
    link under ``datasets``/``weights`` that is absent or resolves outside ``shared_root``."""
    problems = []
    root = os.path.realpath(shared_root)
    for name, (group, parts) in SHARED_DATASETS.items():
        for part in parts:
            folder = os.path.join(shared_root, 'data', group, name, part)
            if not os.path.isdir(folder) or not os.listdir(folder):
                problems.append(f'missing or empty: {folder}')
        linked = os.path.join(datasets, name)
        if not os.path.isdir(linked):
            problems.append(f'not linked: {linked} (run `make link-shared`)')
        elif not os.path.realpath(linked).startswith(root + os.sep):
            problems.append(f'{linked} points to {os.path.realpath(linked)}, not into {shared_root}')
    for file_name in SHARED_WEIGHT_FILES:
        path = os.path.join(shared_root, 'weights', file_name)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            problems.append(f'missing or empty: {path}')
        linked = os.path.join(weights, file_name)
        if not os.path.isfile(linked):
            problems.append(f'not linked: {linked} (run `make link-shared`)')
        elif not os.path.realpath(linked).startswith(root + os.sep):
            problems.append(f'{linked} points to {os.path.realpath(linked)}, not into {shared_root}')
    return problems


def test_the_linked_shared_folder_is_complete():
    if not REQUIRE_SHARED:
        pytest.skip(f'{_SKIP_PREFIX}MTKD_REQUIRE_SHARED is not set (make test sets it when ../shared exists)')
    problems = shared_problems(SHARED_ROOT)
    assert not problems, (f'the shared folder {SHARED_ROOT} that make test linked is incomplete '
                          f'({len(problems)} problems):\n' + '\n'.join(problems))


def test_shared_problems_names_missing_files_and_foreign_links(tmp_path):
    """The check itself, on a constructed shared folder: complete, then with a file removed and a stale link."""
    shared, datasets, weights = tmp_path / 'shared', tmp_path / 'datasets', tmp_path / 'weights'
    datasets.mkdir()
    weights.mkdir()
    for name, (group, parts) in SHARED_DATASETS.items():
        for part in parts:
            (shared / 'data' / group / name / part).mkdir(parents=True)
            (shared / 'data' / group / name / part / 'a.png').write_bytes(b'x')
        os.symlink(shared / 'data' / group / name, datasets / name)
    (shared / 'weights').mkdir()
    for file_name in SHARED_WEIGHT_FILES:
        (shared / 'weights' / file_name).write_bytes(b'x')
        os.symlink(shared / 'weights' / file_name, weights / file_name)
    assert shared_problems(str(shared), str(datasets), str(weights)) == []

    os.remove(shared / 'data' / 'benchmark' / 'Set14' / 'LR_bicubic' / 'X3' / 'a.png')
    os.remove(shared / 'weights' / 'IMDN_x4.pth')
    elsewhere = tmp_path / 'old_shared' / 'T91'
    elsewhere.mkdir(parents=True)
    os.remove(datasets / 'T91')
    os.symlink(elsewhere, datasets / 'T91')
    problems = shared_problems(str(shared), str(datasets), str(weights))
    assert problems == [f"missing or empty: {shared / 'data' / 'benchmark' / 'Set14' / 'LR_bicubic' / 'X3'}",
                        f'{datasets / "T91"} points to {os.path.realpath(elsewhere)}, not into {shared}',
                        f"missing or empty: {shared / 'weights' / 'IMDN_x4.pth'}",
                        f"not linked: {weights / 'IMDN_x4.pth'} (run `make link-shared`)"]
