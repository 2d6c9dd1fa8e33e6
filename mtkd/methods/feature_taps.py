"""Intermediate features of any network, captured by forward hooks addressed by module path.

torchdistill's approach to feature distillation: instead of subclassing an arch so that it returns a list of
features, register forward hooks on the submodules named by their path in ``named_modules()`` (``'body.5'`` of
BasicSR's EDSR, ``'body.3'`` of RCAN). Archs stay untouched and any teacher/student pair works, including through
``DistributedDataParallel`` / ``DataParallel``, whose ``module.`` prefix is not part of the path.

Typical use in a distillation step::

    student_taps = FeatureTaps(net_g, ['body.3'])                   # keeps the graph
    teacher_taps = FeatureTaps(teacher, ['body.15'], detach=True)   # frozen teacher
    with torch.no_grad():
        teacher(lq)
    output = net_g(lq)
    loss = feature_loss(student_taps.feature_list(), teacher_taps.feature_list())

This module imports nothing of mtkd and nothing of BasicSR.
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ['FeatureTaps', 'list_module_paths', 'describe_module_paths', 'probe_forward', 'unwrap_model']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside ``DataParallel`` / ``DistributedDataParallel`` wrappers (nested ones too).

    Module paths given to :class:`FeatureTaps` refer to this bare network, as BasicSR's ``get_bare_model`` does:
    ``'body.1'``, never ``'module.body.1'``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    return model


def list_module_paths(model: nn.Module, max_depth: int | None = None) -> list[str]:
    """Every submodule path of the bare ``model`` that :class:`FeatureTaps` accepts, in registration order.

    ``max_depth`` keeps paths with at most that many dot-separated parts (1: ``'body'``, 2: ``'body.3'``); None
    keeps all. The root module (path ``''``) is left out.
    """
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
        raise ValueError(f'max_depth must be a positive integer or None, got {max_depth!r}')
    bare = unwrap_model(model)
    return [name for name, _ in bare.named_modules()
            if name and (max_depth is None or name.count('.') + 1 <= max_depth)]


def probe_forward(model: nn.Module, sample_input: torch.Tensor):
    """One forward of ``model`` in eval mode under ``torch.no_grad()`` (its training flag restored after), to record
    what hooks see; returns the output."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(sample_input)
    finally:
        model.train(was_training)


def describe_module_paths(model: nn.Module, sample_input: torch.Tensor | None = None,
                          max_depth: int | None = None) -> str:
    """A printable table of candidate tap paths: path, module class and, given ``sample_input``, output shape.

    With ``sample_input`` (e.g. a ``(1, 3, 16, 16)`` LR patch) the model runs once under ``torch.no_grad()`` in
    eval mode (its training flag is restored after) and each module's output shape is recorded; a module run
    more than once shows its last call, a tuple output shows the shape of every element, and a module that did
    not run in that forward shows ``-``. Use it to pick student/teacher pairs of equal spatial size.
    """
    bare = unwrap_model(model)
    paths = list_module_paths(bare, max_depth)
    shapes: dict[str, str] = {}
    if sample_input is not None:
        handles = []

        def recorder(path):
            def hook(module, inputs, output):
                shapes[path] = _describe_output(output)
            return hook

        for path in paths:
            handles.append(bare.get_submodule(path).register_forward_hook(recorder(path)))
        try:
            probe_forward(bare, sample_input)
        finally:
            for handle in handles:
                handle.remove()
    width = max((len(path) for path in paths), default=4)
    rows = []
    for path in paths:
        row = f'{path:<{width}}  {type(bare.get_submodule(path)).__name__}'
        if sample_input is not None:
            row += f'  {shapes.get(path, "-")}'
        rows.append(row)
    return '\n'.join(rows)


def _describe_output(output) -> str:
    if isinstance(output, torch.Tensor):
        return str(tuple(output.shape))
    if isinstance(output, (tuple, list)):
        return '(' + ', '.join(_describe_output(item) for item in output) + ')'
    return type(output).__name__


@dataclass(frozen=True)
class _TapSpec:
    name: str  # the string the user gave, the key in ``features``
    module_path: str
    index: int | None  # element of a tuple/list output; None: the output itself, or element 0 of a tuple/list


def _parse_path(path) -> _TapSpec:
    if not isinstance(path, str):
        raise TypeError(f'paths must hold strings such as "body.1" or "body.1:0", got {path!r}')
    module_path, index = path, None
    if ':' in path:
        module_path, _, index_text = path.rpartition(':')
        try:
            index = int(index_text)
        except ValueError:
            raise ValueError(f'paths: "{path}" ends in ":{index_text}"; after ":" comes the integer index of the '
                             'element of a tuple/list output, e.g. "layers.0:1"') from None
    return _TapSpec(path, module_path, index)


def _missing_path_message(bare: nn.Module, module_path: str) -> str:
    candidates = list_module_paths(bare)
    message = f'paths: "{module_path}" is not a submodule of {type(bare).__name__}.'
    if module_path.startswith('module.'):
        message += (' Paths refer to the bare network, without the "module." prefix of DataParallel / '
                    f'DistributedDataParallel: use "{module_path[len("module."):]}".')
    nearest = difflib.get_close_matches(module_path, candidates, n=5, cutoff=0.5)
    if nearest:
        message += f' Nearest existing paths: {", ".join(nearest)}.'
    else:
        top_level = [name for name in candidates if '.' not in name]
        message += f' Top-level modules: {", ".join(top_level) or "(none)"}.'
    return message + ' List all with mtkd.methods.feature_taps.list_module_paths(model) (or describe_module_paths).'


class FeatureTaps:
    """Forward hooks that capture the output tensor of named submodules, for feature distillation.

    The torchdistill pattern (Matsubara, "torchdistill", ICPR-W 2021): hooks addressed by module path, so no
    arch is changed or subclassed. Used here for the feature-KD baselines AT (Zagoruyko & Komodakis, ICLR 2017)
    and FAKD (He et al., ICIP 2020), see :mod:`mtkd.losses.feature_kd_loss`.

    Args:
        model: the network as it is called in training, possibly wrapped in ``DataParallel`` or
            ``DistributedDataParallel``; the hooks go on the bare network's submodules.
        paths: module paths in the bare network (``model.get_submodule(path)``), e.g. ``['body.1', 'body.3']``.
            A module whose output is a tuple or list contributes its element 0, or element ``i`` if the path
            is written ``'path:i'``. Outputs keep their shape, usually ``(B, C, H, W)``.
        detach: store ``output.detach()``. Set it for teachers: their features are targets and must carry no
            autograd history (a teacher run under ``torch.no_grad()`` has none anyway). Leave it False for the
            student, whose features must keep the graph so that the feature loss reaches its parameters.
        clone: store a copy of the output instead of the output itself. Needed only when the network modifies
            the tapped output in place after the module returns (BasicSR's EDSR and RCAN do
            ``res = self.conv_after_body(...); res += x``, so a tap on ``conv_after_body`` would see
            ``conv_after_body + x``). Without ``clone`` such a modification is detected and reading the feature
            raises instead of returning the altered tensor. Costs one copy of each tapped feature.

    Lifetime: every forward of ``model`` first drops what the previous forward captured (a forward pre-hook on
    ``model``), so the taps hold one forward's features at most and never accumulate across iterations. If a
    module runs more than once in one forward (shared weights), the last call is kept. Call :meth:`clear` after
    the loss's backward to release the features early, :meth:`remove` (or leave the ``with`` block) to detach
    the hooks for good.

    Multi-GPU ``DataParallel`` (``len(device_ids) > 1``) is refused: its replicas run in threads and each would
    capture only its slice of the batch. Use ``DistributedDataParallel`` (BasicSR's ``--launcher pytorch``),
    where every process holds one whole replica.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], detach: bool = False, clone: bool = False):
        if isinstance(paths, str) or not isinstance(paths, Sequence):
            raise TypeError(f'paths must be a list of module paths such as ["body.1"], got {paths!r}; '
                            'wrap a single path in a list')
        if len(paths) == 0:
            raise ValueError('paths is empty: give at least one module path, e.g. ["body.1"]')
        duplicates = sorted({path for path in paths if list(paths).count(path) > 1})
        if duplicates:
            raise ValueError(f'paths lists {", ".join(duplicates)} more than once; give each path once')
        if isinstance(model, DataParallel) and len(model.device_ids) > 1:
            raise ValueError(f'model is DataParallel over {len(model.device_ids)} GPUs: each replica would capture '
                             'only its slice of the batch. Use DistributedDataParallel (one process per GPU) or a '
                             'single device')
        self._bare = unwrap_model(model)
        self._detach = bool(detach)
        self._clone = bool(clone)
        self._specs = [_parse_path(path) for path in paths]
        self._captured: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int | None] = {}

        specs_by_module: dict[str, list[_TapSpec]] = OrderedDict()
        for spec in self._specs:
            specs_by_module.setdefault(spec.module_path, []).append(spec)
        modules = {}
        for module_path in specs_by_module:
            try:
                modules[module_path] = self._bare.get_submodule(module_path)
            except AttributeError:
                raise ValueError(_missing_path_message(self._bare, module_path)) from None
        self._handles = [modules[module_path].register_forward_hook(self._make_hook(specs))
                         for module_path, specs in specs_by_module.items()]
        # Registered on the outermost model so that a wrapper's forward clears once per iteration.
        self._handles.append(model.register_forward_pre_hook(self._on_forward_start))

    @property
    def paths(self) -> list[str]:
        """The paths as given, in order."""
        return [spec.name for spec in self._specs]

    @property
    def features(self) -> 'OrderedDict[str, torch.Tensor]':
        """Path → tensor captured in the last forward, in the order of ``paths``; paths not run are absent.

        Raises RuntimeError if a captured tensor was modified in place after its module returned (see ``clone``).
        """
        captured = dict(self._captured)
        versions = dict(self._versions)
        result = OrderedDict()
        for spec in self._specs:
            if spec.name not in captured:
                continue
            tensor = captured[spec.name]
            if versions[spec.name] is not None and tensor._version != versions[spec.name]:
                raise RuntimeError(
                    f'FeatureTaps: the output of "{spec.name}" was modified in place after the module returned '
                    '(e.g. "res += x" in the parent forward), so it no longer holds that module\'s output. Create '
                    'the taps with clone=True, or tap another module.')
            result[spec.name] = tensor
        return result

    def feature_list(self) -> list[torch.Tensor]:
        """The captured tensors in the order of ``paths``; raises if a path was not run in the last forward."""
        features = self.features
        missing = [spec.name for spec in self._specs if spec.name not in features]
        if missing:
            raise RuntimeError(f'FeatureTaps: nothing captured for {", ".join(missing)} since the last forward or '
                               'clear(): run the model given to FeatureTaps first, and check that these modules '
                               'are used by its forward')
        return list(features.values())

    def clear(self) -> None:
        """Drop the captured features (they hold activations and, for the student, the graph)."""
        self._captured = {}
        self._versions = {}

    def remove(self) -> None:
        """Remove every hook and drop the captured features; later forwards capture nothing. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> 'FeatureTaps':
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = 'active' if self._handles else 'removed'
        return (f'FeatureTaps({type(self._bare).__name__}, paths={self.paths}, detach={self._detach}, '
                f'clone={self._clone}, {state})')

    def _on_forward_start(self, module, inputs) -> None:
        self.clear()

    def _make_hook(self, specs: list[_TapSpec]):
        def hook(module, inputs, output):
            for spec in specs:
                tensor = self._select(spec, output)
                if self._detach:
                    tensor = tensor.detach()
                if self._clone:
                    tensor = tensor.clone()
                if self._clone or torch.compiler.is_compiling():
                    # A private copy cannot be modified by the network; under torch.compile version counters
                    # cannot be read (use clone=True there, as mtkd's models do). No lock either: a lock (or any
                    # host-side guard) in a hook breaks the compiled graph at every tapped layer.
                    version = None
                else:
                    # Inference-mode tensors have no version counter; they cannot be modified in place outside
                    # inference mode either, so there is nothing to check.
                    version = None if tensor.is_inference() else tensor._version
                self._captured[spec.name] = tensor
                self._versions[spec.name] = version
        return hook

    @staticmethod
    def _select(spec: _TapSpec, output) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            if spec.index is not None:
                raise ValueError(f'paths: "{spec.name}" asks for element {spec.index}, but "{spec.module_path}" '
                                 f'returns a single tensor; drop ":{spec.index}"')
            return output
        if isinstance(output, (tuple, list)):
            index = 0 if spec.index is None else spec.index
            if not -len(output) <= index < len(output):
                raise IndexError(f'paths: "{spec.name}" asks for element {index}, but "{spec.module_path}" returns '
                                 f'{len(output)} elements')
            element = output[index]
            if not isinstance(element, torch.Tensor):
                raise TypeError(f'paths: element {index} of the output of "{spec.module_path}" is a '
                                f'{type(element).__name__}, not a tensor; choose another index or module')
            return element
        raise TypeError(f'paths: "{spec.module_path}" returns a {type(output).__name__}; FeatureTaps captures '
                        'tensors and tuples/lists of tensors ("path:index"). Tap a submodule that returns a tensor')
