"""Float transforms on single-threaded workers: the same floats with any number of threads.

oneDNN splits a convolution's sums across threads when its input is small, so one layer gives other
floats (in the last bit) with 1 and with 2 threads, and a rounded pixel or sample can flip.  Each
transform therefore runs on one thread, and the parallelism comes from running several of them at
once (image tiles, audio channels and segments): what is computed never depends on the thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["single_threaded_workers"]


@contextmanager
def single_threaded_workers() -> Iterator[tuple[ThreadPoolExecutor | None, int]]:
    """``(pool, workers)``: a pool of as many workers as torch has threads, each computing on one
    thread (``None`` and 1 when torch has one thread).  The caller's thread also computes on one
    thread meanwhile; torch's thread count is restored afterwards.

    Each worker sets its own count: OpenMP keeps one per thread, and a new thread's starts from the
    process default (the number of cores), whatever torch reports for it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if before > 1:
            with ThreadPoolExecutor(max_workers=before, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                yield pool, before
        else:
            yield None, 1
    finally:
        torch.set_num_threads(before)
