"""Registered models: every `*_model.py` module here is imported, which registers its classes into BasicSR.
Compose every layer below (teachers, methods, losses, data, training, ...); never import tools or analysis."""
from mtkd.utils._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_model')
