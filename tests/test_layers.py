"""The package's layers (docs/architecture.md): the folder tree and the import graph tell the same story.

Every ``import`` of mtkd inside mtkd (module level and inside functions, found with ``ast``) must go to the same
layer or to one the importing layer may use, as each subpackage's ``__init__`` docstring states. No module is left
at the top level but the entry points, ``compat.py`` and ``__init__.py``.
"""
from __future__ import annotations

import ast
import os

import pytest

from conftest import REPO_ROOT

PACKAGE_ROOT = os.path.join(REPO_ROOT, 'mtkd')
TOP_LEVEL_FILES = {'__init__.py', 'compat.py', 'train.py', 'test.py'}
ENTRY = 'entry'  # mtkd/__init__.py, compat.py, train.py, test.py

# Layer -> the other layers it may import (mirrors the docstrings of mtkd/<layer>/__init__.py).
BASE = {'utils', 'transforms'}
MAY_IMPORT = {
    'utils': set(),
    'transforms': set(),
    'weights': BASE,
    'training': BASE | {'weights'},
    'archs': BASE,
    'losses': BASE | {'weights'},
    'metrics': BASE | {'weights', 'losses'},
    'config': BASE | {'weights', 'training'},
    'methods': BASE | {'weights', 'training', 'metrics', 'losses'},
    'teachers': BASE | {'weights', 'training', 'config', 'metrics'},
    'data': BASE | {'weights', 'training', 'config', 'metrics', 'teachers'},
    'models': BASE | {'weights', 'training', 'config', 'metrics', 'losses', 'archs', 'methods', 'teachers', 'data'},
    'tools': None,  # any layer but the entry points; filled in below
    'analysis': None,
    ENTRY: None,
}
LIBRARY = {layer for layer in MAY_IMPORT if layer not in ('tools', 'analysis', ENTRY)}
MAY_IMPORT['tools'] = LIBRARY | {'analysis'}
MAY_IMPORT['analysis'] = LIBRARY | {'tools'}
MAY_IMPORT[ENTRY] = LIBRARY
# Single modules with a wider rule than their layer's.
MODULE_MAY_IMPORT = {
    # The command-line driver behind train.py and test.py: checks data and teachers before the pipeline starts.
    'mtkd.config.cli': MAY_IMPORT['config'] | {'archs', 'losses', 'metrics', 'methods', 'teachers', 'data'},
}
# Known upward imports, each with its reason. The test fails when one of them disappears as well, so that the list
# stays true: delete the entry then.
KNOWN_EXCEPTIONS = {
    # resume.install() subclasses mtkd's prefetchers (BasicSR's, with record_stream) to make them resumable.
    ('mtkd.training.resume', 'mtkd.data.prefetch'),
}


def module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO_ROOT)[:-len('.py')].split(os.sep)
    return '.'.join(relative[:-1] if relative[-1] == '__init__' else relative)


def package_modules() -> dict[str, str]:
    modules = {}
    for folder, folders, files in os.walk(PACKAGE_ROOT):
        folders[:] = sorted(name for name in folders if name != '__pycache__')
        for name in sorted(files):
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                modules[module_name(path)] = path
    return modules


def layer_of(module: str) -> str:
    parts = module.split('.')
    if len(parts) == 1 or (len(parts) == 2 and os.path.isfile(os.path.join(PACKAGE_ROOT, parts[1] + '.py'))):
        return ENTRY
    return parts[1]


def imports_of(path: str, module: str, known: set[str]) -> set[str]:
    """Every mtkd module that ``module`` imports, at any depth of its code (functions included)."""
    with open(path, encoding='utf-8') as handle:
        tree = ast.parse(handle.read(), filename=path)
    is_package = path.endswith('__init__.py')
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = module.split('.')
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = '.'.join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f'{base}.{alias.name}'
                targets.add(candidate if candidate in known else base)
    return {target for target in targets if target == 'mtkd' or target.startswith('mtkd.')}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {module: imports_of(path, module, known) for module, path in modules.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        if layer not in MAY_IMPORT:
            problems.append(f'{module}: layer {layer!r} has no rule in tests/test_layers.py (add one, and say it in '
                            f'mtkd/{layer}/__init__.py)')
            continue
        allowed = MODULE_MAY_IMPORT.get(module, MAY_IMPORT[layer]) | {layer}
        for target in sorted(targets):
            target_layer = layer_of(target)
            if target_layer not in allowed and (module, target) not in KNOWN_EXCEPTIONS:
                problems.append(f'{module} ({layer}) imports {target} ({target_layer})')
    return problems


def test_top_level_holds_only_the_entry_points_compat_and_init():
    modules = {name for name in os.listdir(PACKAGE_ROOT) if name.endswith('.py')}
    assert modules == TOP_LEVEL_FILES, f'move {sorted(modules - TOP_LEVEL_FILES)} into a layer'


def test_every_subpackage_is_a_layer_with_a_rule_and_a_docstring():
    for name in sorted(os.listdir(PACKAGE_ROOT)):
        init = os.path.join(PACKAGE_ROOT, name, '__init__.py')
        if not os.path.isfile(init):
            continue
        assert name in MAY_IMPORT, f'mtkd/{name}/ has no import rule in tests/test_layers.py'
        with open(init, encoding='utf-8') as handle:
            docstring = ast.get_docstring(ast.parse(handle.read()))
        assert docstring and 'import' in docstring.lower(), f'mtkd/{name}/__init__.py: say what the layer may import'


def test_no_module_imports_upward():
    assert violations(import_graph()) == []


def test_the_known_exceptions_still_exist():
    graph = import_graph()
    gone = [pair for pair in sorted(KNOWN_EXCEPTIONS) if pair[1] not in graph.get(pair[0], set())]
    assert gone == [], f'no longer imported: remove {gone} from KNOWN_EXCEPTIONS'


def test_nothing_in_the_package_imports_tools_or_analysis_but_themselves():
    graph = import_graph()
    users = sorted((module, target) for module, targets in graph.items() for target in targets
                   if layer_of(target) in ('tools', 'analysis') and layer_of(module) not in ('tools', 'analysis'))
    assert users == []


def test_the_package_never_imports_a_script():
    for module, path in package_modules().items():
        with open(path, encoding='utf-8') as handle:
            tree = ast.parse(handle.read())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or '' for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in names if name == 'scripts' or name.startswith('scripts.')], module


@pytest.mark.parametrize('source, expected', [
    ('from mtkd.models.distill_model import DistillModel', 'mtkd.methods.dukd (methods) imports mtkd.models'),
    ('def f():\n    from mtkd.tools import inference', 'mtkd.methods.dukd (methods) imports mtkd.tools.inference'),
])
def test_an_upward_import_is_caught(tmp_path, monkeypatch, source, expected):
    """The check itself bites: an upward import added to a methods module, even inside a function, is reported."""
    path = tmp_path / 'upward.py'
    path.write_text(source + '\n')
    graph = import_graph()
    graph['mtkd.methods.dukd'] = imports_of(str(path), 'mtkd.methods.dukd', set(package_modules()))
    assert any(problem.startswith(expected) for problem in violations(graph)), violations(graph)
