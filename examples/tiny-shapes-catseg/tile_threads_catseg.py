"""Tile threads for the CPU kernels of CAT-Seg (`catseg_kernels`): a per-call pool of Python threads with one
intra-op thread each ([`TileWorkers`]), how many of them a kernel called now gets ([`tile_workers`]), and how an axis
is cut into tiles for them ([`tile_slices`]).

Why threads and not torch's intra-op parallelism: many short OpenMP parallel regions, every op split statically
across the threads, make every op wait for the slowest thread, which on a shared machine is the one whose core is busy
with other work (and its partner busy-waits meanwhile). Threads that each take the next independent tile when they
finish one only wait for each other at the end of a kernel. `docs/performance-notes.md` has the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from typing import TypeVar

import torch

# With tile threads, tiles are made smaller where needed so that each thread has at least this many to take from
# (a thread slowed by other work on its core then simply takes fewer).
MIN_TILES_PER_WORKER = 4

_Tile = TypeVar("_Tile")
_Result = TypeVar("_Result")


def tile_workers() -> int:
    """How many threads run the tiles of a kernel called now: the caller's torch thread count (1: the tiles run in
    the caller's thread, as plain loops). Also 1 while compiling or exporting, and under a torch function or
    dispatch mode (as `FlopCounterMode`), which is thread-local and would not see the work of other threads."""
    if torch.compiler.is_compiling():
        return 1
    modes = torch._C._len_torch_dispatch_stack() + torch._C._len_torch_function_stack()
    return 1 if modes > 0 else torch.get_num_threads()


def _use_one_intra_op_thread() -> None:
    # Thread-local under OpenMP (the calling thread's OpenMP and MKL thread counts).
    torch.set_num_threads(1)


class TileWorkers:
    """A pool of `workers` threads for the tiles of one kernel call, as a context manager: `map` runs a function over
    tiles, each thread (one intra-op thread) taking the next tile when it is done with one. With `workers <= 1`, or one
    tile, `map` runs in the calling thread. No tile runs any longer once `map` has returned or raised.

    The caller's gradient mode, inference mode and CPU autocast hold in the threads (they are thread-local in torch,
    and a new thread starts with gradients enabled). `torch.set_num_threads` in the threads also sets the count that
    threads not yet using torch will start with; on exit that is set back to the caller's count. (Like any call of
    it, it also turns MKL's dynamic choice of thread counts off, process-wide.)"""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._started = False  # whether a thread has started (and set its thread count)

    def __enter__(self) -> TileWorkers:
        if self.workers > 1:
            self._caller_threads = torch.get_num_threads()
            self._grad_enabled = torch.is_grad_enabled()
            self._inference_mode = torch.is_inference_mode_enabled()
            self._autocast = torch.is_autocast_enabled("cpu")
            self._autocast_dtype = torch.get_autocast_dtype("cpu")
            self._executor = ThreadPoolExecutor(
                self.workers, thread_name_prefix="catseg-tiles", initializer=_use_one_intra_op_thread
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if not self._started:
            executor.shutdown()
            return
        try:
            # Threads started later take their count from the last `torch.set_num_threads`: put the caller's back.
            executor.submit(torch.set_num_threads, self._caller_threads).result()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _in_caller_state(self, function: Callable[[_Tile], _Result], tile: _Tile) -> _Result:
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(self._grad_enabled))
            if self._inference_mode:
                stack.enter_context(torch.inference_mode())
            if self._autocast:
                stack.enter_context(torch.autocast("cpu", dtype=self._autocast_dtype))
            return function(tile)

    def map(self, function: Callable[[_Tile], _Result], tiles: Iterable[_Tile]) -> list[_Result]:
        """`[function(tile) for tile in tiles]`, the tiles on the threads. The first exception of a tile is raised
        once no tile runs any more (tiles not started yet are cancelled)."""
        tiles = list(tiles)
        if self._executor is None or len(tiles) <= 1:
            return [function(tile) for tile in tiles]
        self._started = True
        futures = [self._executor.submit(self._in_caller_state, function, tile) for tile in tiles]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            # After a tile's exception (or an interruption of this thread): start no further tile, let running ones end.
            for future in futures:
                future.cancel()
            wait(futures)
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures]


def tile_slices(
    size: int, length: int, workers: int, other_tiles: int = 1, min_tiles_per_worker: int = MIN_TILES_PER_WORKER
) -> list[slice]:
    """`range(length)` cut into tiles of at most `size` items (at least 1), as slices, whose sizes differ by at most
    one (larger first). With `workers > 1` threads the tiles are more where needed: at least `min_tiles_per_worker`
    per thread, and their number (times `other_tiles` along other axes) a multiple of `workers` where `length`
    allows, so that threads of equal speed finish together instead of one waiting for the other's last tile."""
    count = math.ceil(length / max(1, size))
    if workers > 1:
        other_tiles = max(1, other_tiles)
        count = max(count, math.ceil(min_tiles_per_worker * workers / other_tiles))
        step = workers // math.gcd(workers, other_tiles)  # the least count whose tiles fill every thread
        count = math.ceil(count / step) * step
    count = max(1, min(count, length))
    smaller, larger = divmod(length, count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + smaller + (index < larger))
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:]) if stop > start]
