"""Import every registered-component module of a sub-package, BasicSR style."""
from __future__ import annotations

import importlib
import os


def import_modules_with_suffix(package: str, package_file: str, suffix: str) -> list[str]:
    """Import ``<package>.<name>`` for every ``<name><suffix>.py`` beside ``package_file``, sorted by name.

    Registration into BasicSR's registries happens as a side effect of these imports.
    """
    folder = os.path.dirname(os.path.abspath(package_file))
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(f'{suffix}.py'))
    for name in names:
        importlib.import_module(f'{package}.{name}')
    return names
