"""Make basicsr 1.4.2 import and run with today's torch and torchvision.

This is the only module that knows about BasicSR/torchvision quirks. It must be imported before anything
imports ``basicsr`` (``import mtkd`` does that first). Every patch checks whether it is needed and is a
no-op otherwise, so on a GPU machine with a matching torchvision nothing changes.

Patches (each documented in ``docs/compat.md`` and tested in ``tests/test_compat.py``):

1. ``torchvision_ops``: a CUDA build of torchvision next to a CPU build of torch cannot load its compiled
   ``_C`` library; torchvision then fails at import with ``operator torchvision::nms does not exist``
   because ``_meta_registrations`` registers fake kernels for ``nms``/``qnms`` unconditionally. We define
   the two operator *schemas* (no kernels) so that import succeeds; calling them still raises.
2. ``functional_tensor``: basicsr imports ``torchvision.transforms.functional_tensor.rgb_to_grayscale``,
   a module removed in torchvision 0.17. We register a stand-in module that forwards to
   ``torchvision.transforms.functional.rgb_to_grayscale`` (same semantics, public API).
3. ``safe_globals``: torch >= 2.6 loads with ``weights_only=True``. BasicSR training states hold the
   scheduler's milestones as a ``collections.Counter``: we register it as a safe global instead of
   turning the check off.
4. ``resume_on_cpu``: ``basicsr.train.load_resume_state`` maps the state onto ``torch.cuda.current_device()``
   and so fails on a CPU-only machine. We replace it with a version that maps onto the current CUDA device
   when there is one and onto the CPU otherwise, always with ``weights_only=True``.
"""
from __future__ import annotations

import collections
import glob
import importlib.util
import os
import sys
import types

import torch

#: Names of the patches that were applied in this process (for tests and logs).
APPLIED: list[str] = []
_TORCHVISION_LIBRARY = None  # keeps the operator definitions alive


def _torchvision_extension_loads() -> bool:
    """Whether torchvision's compiled ``_C`` library can be loaded next to this torch."""
    spec = importlib.util.find_spec('torchvision')
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to patch
    candidates = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], '_C*.so'))
    candidates += glob.glob(os.path.join(list(spec.submodule_search_locations)[0], '_C*.pyd'))
    if not candidates:
        return False
    try:
        torch.ops.load_library(candidates[0])
    except (OSError, RuntimeError):
        return False
    return True


def patch_torchvision_ops() -> bool:
    """Define ``torchvision::nms``/``qnms`` schemas when torchvision's ``_C`` cannot load (patch 1)."""
    global _TORCHVISION_LIBRARY
    if 'torchvision' in sys.modules or _torchvision_extension_loads():
        return False
    library = torch.library.Library('torchvision', 'DEF')  # noqa: TOR901 - schemas only, no kernels
    library.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    library.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _TORCHVISION_LIBRARY = library
    return True


def patch_functional_tensor() -> bool:
    """Provide ``torchvision.transforms.functional_tensor`` when torchvision no longer has it (patch 2)."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return False
    try:
        importlib.import_module(name)
        return False
    except ImportError:
        pass
    from torchvision.transforms import functional

    stand_in = types.ModuleType(name)
    stand_in.__doc__ = 'mtkd stand-in for the module removed in torchvision 0.17 (see mtkd.compat).'
    stand_in.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = stand_in
    return True


def patch_safe_globals() -> bool:
    """Allow ``collections.Counter`` in ``torch.load(weights_only=True)`` (patch 3)."""
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:
        return False
    if collections.Counter in torch.serialization.get_safe_globals():
        return False
    add_safe_globals([collections.Counter])
    return True


def load_training_state(path: str) -> dict:
    """Load a BasicSR training state onto the current CUDA device, or the CPU without one."""
    if torch.cuda.is_available():
        device = torch.device('cuda', torch.cuda.current_device())
    else:
        device = torch.device('cpu')
    return torch.load(path, map_location=device, weights_only=True)


def patch_resume_on_cpu() -> bool:
    """Replace ``basicsr.train.load_resume_state`` with a device-agnostic version (patch 4)."""
    import basicsr.train as basicsr_train

    if getattr(basicsr_train.load_resume_state, '_mtkd_patched', False):
        return False
    original = basicsr_train.load_resume_state

    def load_resume_state(opt):
        from basicsr.utils import check_resume, scandir

        resume_state_path = None
        if opt['auto_resume']:
            state_dir = os.path.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
            if os.path.isdir(state_dir):
                states = [float(name.split('.state')[0])
                          for name in scandir(state_dir, suffix='state', recursive=False, full_path=False)]
                if states:
                    resume_state_path = os.path.join(state_dir, f'{max(states):.0f}.state')
                    opt['path']['resume_state'] = resume_state_path
        elif opt['path'].get('resume_state'):
            resume_state_path = opt['path']['resume_state']
        if resume_state_path is None:
            return None
        resume_state = load_training_state(resume_state_path)
        check_resume(opt, resume_state['iter'])
        return resume_state

    load_resume_state._mtkd_patched = True
    load_resume_state.__wrapped__ = original
    basicsr_train.load_resume_state = load_resume_state
    return True


def apply() -> list[str]:
    """Apply every needed patch once; returns the names of those applied in this call."""
    applied = []
    for name, patch in (('torchvision_ops', patch_torchvision_ops),
                        ('functional_tensor', patch_functional_tensor),
                        ('safe_globals', patch_safe_globals),
                        ('resume_on_cpu', patch_resume_on_cpu)):
        if patch():
            applied.append(name)
    APPLIED.extend(applied)
    return applied
