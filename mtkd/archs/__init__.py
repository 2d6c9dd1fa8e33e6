"""Registered archs: every `*_arch.py` module here is imported, which registers its classes into BasicSR.
Imports only the utils and transforms layers (never models, losses or teachers)."""
from mtkd.utils._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_arch')
