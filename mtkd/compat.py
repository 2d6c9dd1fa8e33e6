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
4. ``resume_on_cpu``: ``basicsr.train.load_resume_state`` maps the state onto ``torch.cuda.current_device()``,
   which fails on a CPU-only machine and, on a GPU, hands CUDA tensors to the random-generator setters. We replace
   it with :func:`mtkd.training.resume.load_resume_state`: the state is read onto the CPU (``weights_only=True``; the
   optimizers place their moments on their parameters' devices), a broken newest state falls back to the previous
   complete one, and the network checkpoints are taken from beside the state.
5. ``dataset_read_errors``: BasicSR's paired and single-image datasets fail on an unreadable image with an OpenCV
   or ``NoneType`` error that names no file; the patched ``__getitem__`` re-raises it as
   :class:`mtkd.metrics.evaluation.ImageReadError` naming the file.
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


def patch_resume_on_cpu() -> bool:
    """Replace ``basicsr.train.load_resume_state`` with :func:`mtkd.training.resume.load_resume_state` (patch 4)."""
    import basicsr.train as basicsr_train

    if getattr(basicsr_train.load_resume_state, '_mtkd_patched', False):
        return False
    from mtkd.training.resume import load_resume_state

    original = basicsr_train.load_resume_state

    def patched(opt):
        return load_resume_state(opt)

    patched._mtkd_patched = True
    patched.__wrapped__ = original
    patched.__doc__ = load_resume_state.__doc__
    basicsr_train.load_resume_state = patched
    return True


def patch_dataset_read_errors() -> bool:
    """Name the file when BasicSR's ``PairedImageDataset``/``SingleImageDataset`` cannot read an image (patch 5).

    BasicSR decodes with ``cv2.imdecode`` and fails with ``cv2.error: !buf.empty()`` (an empty file) or
    ``'NoneType' object has no attribute 'astype'`` (not an image), naming nothing. The start-up check
    (:mod:`mtkd.data.preflight`) finds such files before training; this covers files that break later."""
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from basicsr.data.single_image_dataset import SingleImageDataset

    patched = False
    for dataset_class, keys in ((PairedImageDataset, ('gt_path', 'lq_path')), (SingleImageDataset, ('lq_path',))):
        if getattr(dataset_class.__getitem__, '_mtkd_patched', False):
            continue
        dataset_class.__getitem__ = _naming_read_errors(dataset_class.__getitem__, keys)
        patched = True
    return patched


def _naming_read_errors(getitem, keys: tuple[str, ...]):
    def __getitem__(self, index):
        try:
            return getitem(self, index)
        except Exception as error:  # noqa: BLE001 - re-raised unchanged unless a file is to blame
            if not self.io_backend_opt.get('type', 'disk') == 'disk' or not hasattr(self, 'paths'):
                raise
            from mtkd.metrics.evaluation import ImageReadError, read_image

            entry = self.paths[index]
            for path in ([entry[key] for key in keys if key in entry] if isinstance(entry, dict) else [entry]):
                try:
                    read_image(path)
                except ImageReadError as read_error:
                    raise ImageReadError(f'{read_error} (dataset {self.opt.get("name")!r}, image {index})') from error
            raise

    __getitem__._mtkd_patched = True
    __getitem__.__wrapped__ = getitem
    return __getitem__


def apply() -> list[str]:
    """Apply every needed patch once; returns the names of those applied in this call."""
    applied = []
    for name, patch in (('torchvision_ops', patch_torchvision_ops),
                        ('functional_tensor', patch_functional_tensor),
                        ('safe_globals', patch_safe_globals),
                        ('resume_on_cpu', patch_resume_on_cpu),
                        ('dataset_read_errors', patch_dataset_read_errors)):
        if patch():
            applied.append(name)
    APPLIED.extend(applied)
    return applied
