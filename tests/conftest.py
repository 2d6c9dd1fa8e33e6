"""Shared fixtures: paths to linked data and weights, skipping with a reason when they are absent.

Tests that need ../shared (real benchmark images, official weights) get their paths from :func:`dataset_dir` and
:func:`official_weight`. On a clone without ../shared they skip, with the reason in pytest's summary (``-rs``).
``make test`` sets ``MTKD_REQUIRE_SHARED=1`` (and ``MTKD_SHARED``) when it found and linked a shared folder: then a
missing dataset or weight that ../shared is supposed to hold is a FAILURE naming the missing path, so a broken
or half-linked ../shared cannot turn the suite green by skipping (tests/test_shared_data.py lists everything
missing at once). Weights that only ``scripts/download_pretrained.py`` fetches are never required.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

import mtkd  # noqa: E402,F401  (compat patches and registration)

torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.path.join(REPO_ROOT, 'datasets')
OFFICIAL_WEIGHTS = os.path.join(REPO_ROOT, 'pretrained', 'official')

#: ``MTKD_REQUIRE_SHARED=1`` (set by ``make test`` when ../shared exists): tests needing shared files fail, not skip.
REQUIRE_SHARED = os.environ.get('MTKD_REQUIRE_SHARED', '') == '1'
#: The shared folder ``make test`` linked (``MTKD_SHARED``), for messages and tests/test_shared_data.py.
SHARED_ROOT = os.environ.get('MTKD_SHARED') or os.path.join(os.path.dirname(REPO_ROOT), 'shared')

#: What ../shared holds (its README.md): ``data/<group>/<set>/<subfolders>`` linked as ``datasets/<set>``.
SHARED_DATASETS = {
    'Set5': ('benchmark', ('HR', 'LR_bicubic/X2', 'LR_bicubic/X3', 'LR_bicubic/X4')),
    'Set14': ('benchmark', ('HR', 'LR_bicubic/X2', 'LR_bicubic/X3', 'LR_bicubic/X4')),
    'BSD100': ('benchmark', ('HR', 'LR_bicubic/X2', 'LR_bicubic/X3', 'LR_bicubic/X4')),
    'T91': ('train', ('HR',)),
    'BSD200': ('train', ('HR',)),
}
#: ``weights/<file>`` of ../shared, linked as ``pretrained/official/<file>``.
SHARED_WEIGHT_FILES = (
    'IMDN_x2.pth', 'IMDN_x3.pth', 'IMDN_x4.pth', 'RFDN_AIM.pth', 'rlfn_x4.pth', 'rlfn_x2.pth', 'rlfn_s_x4.pth',
    'rlfn_s_x2.pth', 'rlfn_ntire_x4.pth', 'PANx2_DF2K.pth', 'PANx3_DF2K.pth', 'PANx4_DF2K.pth', 'LBNet-X2.pt',
    'LBNet-X3.pt', 'LBNet-T_X2.pt', 'LBNet-T_X3.pt', 'LBNet-T_X4.pt', 'carn_m.pth', 'DTKD-RFDN.pth',
    'DTKD-RFDN-perceptual.pth', 'DTKD-LBNet.pth', 'DTKD-LBNet-perceptual.pth', 'MTKDSR_RFDN_x4.pth')

_SKIP_PREFIX = 'needs ../shared: '


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts/ is not a package) to call its ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(f'script_{name}', os.path.join(REPO_ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_photo_pairs(root, names=('astronaut', 'chelsea', 'coffee', 'rocket'), hr_size=64, scale=2, top=100):
    """``root/HR/<name>.png`` (the ``hr_size`` crop at ``(top, top)`` of a scikit-image photo) and ``root/LR/<name>.png`` (OpenCV's area
    downscale by ``scale``): a tiny paired training set. Returns ``root``."""
    import cv2
    import numpy as np
    from skimage import data as skimage_data

    for folder in ('HR', 'LR'):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for name in names:
        hr = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[top:top + hr_size, top:top + hr_size]),
                          cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(root, 'HR', f'{name}.png'), hr)
        cv2.imwrite(os.path.join(root, 'LR', f'{name}.png'),
                    cv2.resize(hr, (hr_size // scale, hr_size // scale), interpolation=cv2.INTER_AREA))
    return root


def _shared_file_absent(path: str, shared_path: str | None) -> None:
    """Skip, or with ``MTKD_REQUIRE_SHARED=1`` fail, for a file ../shared should provide."""
    relative = os.path.relpath(path, REPO_ROOT)
    if REQUIRE_SHARED and shared_path is not None:
        pytest.fail(f'{relative} is absent although make test linked the shared folder {SHARED_ROOT} '
                    f'(MTKD_REQUIRE_SHARED=1): it should come from {shared_path}. Restore that file or folder, '
                    'then `make link-shared`; or run without ../shared (make test SHARED=/nonexistent) to skip.',
                    pytrace=False)
    pytest.skip(f'{_SKIP_PREFIX}{relative} is absent: run `make link-shared` with ../shared present')


def dataset_dir(name: str) -> str:
    """``datasets/<name>``, or skip the test when it is not there (fail under ``MTKD_REQUIRE_SHARED=1``)."""
    path = os.path.join(DATASETS, name)
    if not os.path.isdir(path):
        group = SHARED_DATASETS.get(name, (None,))[0]
        _shared_file_absent(path, os.path.join(SHARED_ROOT, 'data', group, name) if group else None)
    return path


def official_weight(file_name: str) -> str:
    """``pretrained/official/<file_name>``, or skip the test when it is not there.

    Under ``MTKD_REQUIRE_SHARED=1`` a file of ../shared (:data:`SHARED_WEIGHT_FILES`) must be there (the test
    fails otherwise); a file only ``scripts/download_pretrained.py`` fetches still skips.
    """
    path = os.path.join(OFFICIAL_WEIGHTS, file_name)
    if not os.path.isfile(path):
        if file_name not in SHARED_WEIGHT_FILES:
            from mtkd.config.hints import weights_hint

            pytest.skip(f'pretrained/official/{file_name} is absent (not in ../shared): '
                        f'{weights_hint(path, REPO_ROOT)}')
        _shared_file_absent(path, os.path.join(SHARED_ROOT, 'weights', file_name))
    return path


def pytest_sessionstart(session):
    """Empty mtkd's lru_caches (DWT kernels, gray weights, edge kernels, DCT matrices) when a session starts.

    ``make mutation`` (mutmut, scripts/mutation.py) runs each mutant in a fork of the process that ran the tests
    unmutated: caches filled there would hide the mutants of the functions that fill them. A no-op otherwise."""
    if not os.environ.get('MUTANT_UNDER_TEST'):
        return
    for name, module in list(sys.modules.items()):
        if name == 'mtkd' or name.startswith('mtkd.'):
            for value in list(vars(module).values()):
                if callable(getattr(value, 'cache_clear', None)) and hasattr(value, 'cache_info'):
                    value.cache_clear()


def pytest_report_header(config):
    if REQUIRE_SHARED:
        return f'shared data: {SHARED_ROOT} required (MTKD_REQUIRE_SHARED=1: a missing shared file fails its test)'
    return ('shared data: not required (tests that need ../shared skip; make test requires it when ../shared '
            'exists)')


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line saying how many tests skipped for want of ../shared, and for what else."""
    skipped = terminalreporter.stats.get('skipped', [])
    if not skipped:
        return
    reasons = [str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
               for report in skipped]
    shared = sum(_SKIP_PREFIX in reason for reason in reasons)
    terminalreporter.write_line(f'mtkd: {len(skipped)} skipped: {shared} need ../shared data or weights (make '
                                f'link-shared), {len(skipped) - shared} for other reasons (the SKIPPED lines below say why)')
