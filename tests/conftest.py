"""Shared fixtures: paths to linked data and weights, skipping with a reason when they are absent."""
from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

import mtkd  # noqa: E402,F401  (compat patches and registration)

torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.path.join(REPO_ROOT, 'datasets')
OFFICIAL_WEIGHTS = os.path.join(REPO_ROOT, 'pretrained', 'official')


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts/ is not a package) to call its ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(f'script_{name}', os.path.join(REPO_ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataset_dir(name: str) -> str:
    """``datasets/<name>``, or skip the test when it is not there."""
    path = os.path.join(DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f'datasets/{name} is absent: run `make link-shared` with ../shared present')
    return path


def official_weight(file_name: str) -> str:
    """``pretrained/official/<file_name>``, or skip the test when it is not there."""
    path = os.path.join(OFFICIAL_WEIGHTS, file_name)
    if not os.path.isfile(path):
        pytest.skip(f'pretrained/official/{file_name} is absent: run `make link-shared` with ../shared present '
                    'or `python scripts/download_pretrained.py`')
    return path
