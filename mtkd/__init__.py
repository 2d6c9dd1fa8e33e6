"""mtkd: knowledge distillation for single-image super-resolution, on BasicSR.

Importing ``mtkd`` first makes basicsr 1.4.2 work with today's torch (:mod:`mtkd.compat`), then registers
mtkd's archs, datasets, losses and models into BasicSR's registries (BasicSR's plug-in convention).
"""
from mtkd import compat as _compat

_compat.apply()

from mtkd import archs, data, losses, models  # noqa: E402,F401  (registration on import)

__version__ = '0.1.0'
