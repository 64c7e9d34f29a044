"""Run a function in a fresh (spawned) process and return its result, so that its peak memory (max RSS) counts
that function alone and not what the benchmark's own process touched before."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def _call(fn: Callable[..., Any], args: tuple, queue: Any) -> None:
    queue.put(fn(*args))


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result
