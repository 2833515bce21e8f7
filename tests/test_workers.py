"""Single-threaded workers: one thread per transform, the caller's thread count restored, even with
callers in several threads at once."""

import threading

import torch

from ltcodec.workers import single_threaded_workers


def _in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_workers_compute_on_one_thread_and_the_count_is_restored():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with single_threaded_workers() as (pool, workers):
            assert workers == 2 and torch.get_num_threads() == 1
            assert {pool.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
        assert torch.get_num_threads() == 2 and _in_new_thread(torch.get_num_threads) == 2
        torch.set_num_threads(1)
        with single_threaded_workers() as (pool, workers):
            assert pool is None and workers == 1
    finally:
        torch.set_num_threads(old)


def test_callers_in_two_threads_see_and_restore_the_count_in_force_before_the_first():
    old = torch.get_num_threads()
    inside, leave = threading.Event(), threading.Event()

    def first():
        with single_threaded_workers():
            inside.set()
            leave.wait(10)

    def second():  # a fresh thread entering while the first is inside, leaving after it
        with single_threaded_workers() as (_, workers):
            leave.set()
            t.join(10)
        return workers, torch.get_num_threads()

    try:
        torch.set_num_threads(2)
        t = threading.Thread(target=first)
        t.start()
        inside.wait(10)
        assert _in_new_thread(second) == (2, 2)
        assert torch.get_num_threads() == 2 and _in_new_thread(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(old)
