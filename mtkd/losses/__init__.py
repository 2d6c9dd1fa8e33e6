"""Registered losses: every `*_loss.py` module here is imported, which registers its classes into BasicSR."""
from mtkd._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_loss')
