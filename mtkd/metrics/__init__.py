"""Registered metrics: every `*_metric.py` module here is imported, which registers its functions into BasicSR's
METRIC_REGISTRY (next to BasicSR's own PSNR, SSIM and NIQE).
Also the evaluation protocol (`evaluation`) and Markdown tables (`tables`).
Imports only utils, transforms, weights and losses (LPIPS reuses the VGG features)."""
from mtkd.utils._autoimport import import_modules_with_suffix

__all__ = import_modules_with_suffix(__name__, __file__, '_metric')
