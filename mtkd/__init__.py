"""mtkd: knowledge distillation for single-image super-resolution, on BasicSR.

Importing ``mtkd`` first makes basicsr 1.4.2 work with today's torch (:mod:`mtkd.compat`), then registers
mtkd's archs, datasets, losses, metrics and models into BasicSR's registries (BasicSR's plug-in convention).
"""
from mtkd import compat as _compat

_compat.apply()

from mtkd.training.precision import set_float32_precision as _set_float32_precision  # noqa: E402

_set_float32_precision(False)  # IEEE fp32 matmul and convolutions unless an entry point asks for TF32

from mtkd import archs, data, losses, metrics, models  # noqa: E402,F401  (registration on import)

__version__ = '0.1.0'
