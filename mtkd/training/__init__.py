"""Training mechanics of every model: optimizer step, AMP and precision, exact resume and Ctrl-C, runtime, DDP, Adan.
Imports only utils, transforms and weights (and data.prefetch, whose prefetchers resume wraps)."""
