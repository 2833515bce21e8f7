"""Float transforms on single-threaded workers: the same floats with any number of threads.

oneDNN splits a convolution's sums across threads when its input is small, so one layer gives other
floats (in the last bit) with 1 and with 2 threads, and a rounded pixel or sample can flip.  Each
transform therefore runs on one thread, and the parallelism comes from running several of them at
once (image tiles, audio channels and segments): what is computed never depends on the thread count.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from collections import deque
from typing import Callable, Iterable, Iterator

import torch

__all__ = ["single_threaded_workers", "in_order"]

_lock = threading.Lock()
_active = 0  # callers inside single_threaded_workers, in any thread
_threads = 1  # torch's thread count when the first of them entered


@contextmanager
def single_threaded_workers() -> Iterator[tuple[ThreadPoolExecutor | None, int]]:
    """``(pool, workers)``: a pool of as many workers as torch has threads, each computing on one
    thread (``None`` and 1 when torch has one thread).  The caller's thread also computes on one
    thread meanwhile; its thread count is restored afterwards.

    OpenMP keeps a thread count per thread, and a new thread's starts from the count last set
    anywhere: so every worker sets its own, and callers in several threads at once all see (and
    restore) the count that was in force before the first of them entered.
    """
    global _active, _threads
    with _lock:
        mine = _threads if _active else torch.get_num_threads()
        if not _active:
            _threads = mine
        _active += 1
    torch.set_num_threads(1)
    try:
        if mine > 1:
            with ThreadPoolExecutor(max_workers=mine, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                yield pool, mine
        else:
            yield None, 1
    finally:
        with _lock:
            _active -= 1
            torch.set_num_threads(mine)


def in_order(pool: ThreadPoolExecutor | None, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``map(fn, items)`` on ``pool`` (in the caller's thread without one), results in order, with at
    most ``ahead`` calls submitted and not yet taken: memory stays a few results' worth."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
