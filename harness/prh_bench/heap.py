"""Keeping a long extraction's memory flat. glibc's malloc serves blocks below its mmap threshold from heaps it
rarely gives back, and the threshold rises (to 32 MB) once large blocks are freed, so a model's per-batch
activations (DINOv2-S: 12 blocks of 32 x 257 x 384 floats, 12.6 MB each) land in the heap and, fragmented, grow
the resident size with every batch: 1.1 to 3.8 GB over 640 images, with nothing alive. A fixed threshold of
4 MB maps such blocks and unmaps them when freed (the resident size stays flat); smaller ones keep the heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter; setting it also stops the dynamic adjustment
THRESHOLD_BYTES = 4 << 20


@functools.cache
def map_large_blocks() -> bool:
    """Set glibc's mmap threshold once per process (unless MALLOC_MMAP_THRESHOLD_ chose one); False where the C
    library is not glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (macOS, musl): their allocators return memory their own way
        return False
