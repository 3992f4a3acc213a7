"""Independent pieces of one test on both cores of the 2-core machine the suite runs on: one here, the others in a
spawned process, each process on one torch thread (two processes of two threads on two cores run many times
slower). The pieces share nothing and draw from their own seeded generators, so each result is what the piece
gives alone on one thread."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import torch


def concurrently(here: Callable[[], Any], *elsewhere: Callable[[], Any]) -> list[Any]:
    """[here(), *each of elsewhere()]: `here` runs in this process while the `elsewhere` calls (picklable: module
    functions or functools.partial of them) run in turn in one fresh process."""
    spawn = multiprocessing.get_context("spawn")  # a fork would copy this process's threads and locks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ProcessPoolExecutor(1, mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = [pool.submit(call) for call in elsewhere]
            return [here(), *(future.result() for future in futures)]
    finally:
        torch.set_num_threads(threads)
