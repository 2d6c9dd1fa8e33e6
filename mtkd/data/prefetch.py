"""BasicSR's CUDA prefetcher (``prefetch_mode: cuda``) made safe for the caching allocator.

BasicSR copies the next batch on a side stream while the current one trains, and the main stream waits for that
stream before using the batch. The batch's device memory was allocated on the side stream, though: once the
training code drops the batch, the caching allocator may hand that memory to a new side-stream copy while kernels
on the main stream still read it. ``Tensor.record_stream`` tells the allocator the main stream uses it (PyTorch's
documented remedy); :class:`CUDAPrefetcher` calls it for every tensor of the batch it hands out.
:func:`mtkd.training.resume.install` builds the training loop's prefetcher on this class.
"""
from __future__ import annotations

import torch
from basicsr.data.prefetch_dataloader import CPUPrefetcher
from basicsr.data.prefetch_dataloader import CUDAPrefetcher as BasicSRCUDAPrefetcher


class CUDAPrefetcher(BasicSRCUDAPrefetcher):
    """BasicSR's ``CUDAPrefetcher`` whose batches are marked as used by the consuming (current) stream."""

    def next(self):
        consumer = torch.cuda.current_stream()
        consumer.wait_stream(self.stream)
        batch = self.batch
        if batch is not None:
            for value in batch.values():
                if torch.is_tensor(value) and value.device.type != 'cpu':
                    value.record_stream(consumer)
        self.preload()
        return batch


__all__ = ['CPUPrefetcher', 'CUDAPrefetcher']
