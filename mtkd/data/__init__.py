"""Registered data: every `*_dataset.py` module here is imported, which registers its classes into BasicSR.
Also dataset preparation (`preparation`). Imports utils, transforms, weights, training, config, metrics and
teachers; never models, methods, tools or analysis."""
from mtkd.utils._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_dataset')
