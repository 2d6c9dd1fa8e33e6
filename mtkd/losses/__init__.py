"""Registered losses: every `*_loss.py` module here is imported, which registers its classes into BasicSR.
Imports only utils, transforms and weights (never models, teachers or metrics)."""
from mtkd.utils._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_loss')
