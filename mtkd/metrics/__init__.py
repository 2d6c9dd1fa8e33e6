"""Registered metrics: every `*_metric.py` module here is imported, which registers its functions into BasicSR's
METRIC_REGISTRY (next to BasicSR's own PSNR, SSIM and NIQE)."""
from mtkd._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_metric')
