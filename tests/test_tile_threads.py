"""The tile threads of the CPU kernels (`catseg_hf.tile_threads_catseg`): the pool's thread state, exceptions, when
kernels get threads, and how an axis is cut into tiles for them. The kernels on these threads are tested against the
blocks in tests/test_modeling.py."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from catseg_hf import tile_threads_catseg


def test_tile_threads_take_the_callers_state_and_leave_it_unchanged():
    """In the tile threads: one intra-op thread, the caller's gradient mode, inference mode and CPU autocast. The
    caller's thread count is unchanged afterwards, and so is the count a thread started afterwards gets."""

    def state(_):
        return (
            torch.get_num_threads(),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled("cpu"),
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
        )

    def fresh_thread_count():
        counts = []
        thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return counts[0]

    threads, fresh = torch.get_num_threads(), fresh_thread_count()
    with tile_threads_catseg.TileWorkers(2) as workers:
        assert workers.map(state, range(4)) == [(1, True, False, False, None)] * 4
    with torch.no_grad(), tile_threads_catseg.TileWorkers(2) as workers:
        assert workers.map(state, range(4)) == [(1, False, False, False, None)] * 4
    with torch.inference_mode(), tile_threads_catseg.TileWorkers(2) as workers:
        assert workers.map(state, range(4)) == [(1, False, True, False, None)] * 4
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad(), tile_threads_catseg.TileWorkers(2) as workers:
        assert workers.map(state, range(4)) == [(1, False, False, True, torch.bfloat16)] * 4
    assert torch.get_num_threads() == threads
    assert fresh_thread_count() == fresh
    with tile_threads_catseg.TileWorkers(1) as workers:  # inline: the caller's own thread
        assert workers.map(state, range(2)) == [state(None)] * 2


def test_an_exception_in_a_tile_propagates_after_all_tiles_stopped():
    """The first failing tile's exception reaches the caller, once no tile runs any more; tiles not started by then
    never start."""
    started, finished = [], []
    lock = threading.Lock()

    def tile(index):
        with lock:
            started.append(index)
        if index == 3:
            raise ValueError("tile 3 failed")
        time.sleep(0.01)
        with lock:
            finished.append(index)
        return index

    for workers in (1, 2):
        started.clear()
        finished.clear()
        with tile_threads_catseg.TileWorkers(workers) as tile_workers:
            with pytest.raises(ValueError, match="tile 3 failed"):
                tile_workers.map(tile, range(40))
            snapshot = (list(started), list(finished))
            time.sleep(0.05)
            assert (started, finished) == snapshot  # nothing ran on after the exception was raised
            assert len(started) < 40
            assert tile_workers.map(lambda index: index * 2, range(5)) == [0, 2, 4, 6, 8]  # the pool still works


def test_tile_threads_only_where_they_see_all_work(monkeypatch):
    """`tile_workers`: the caller's torch thread count, but 1 under a dispatch mode such as `FlopCounterMode` (it
    would not count the other threads' work)."""
    from torch.utils.flop_counter import FlopCounterMode

    assert tile_threads_catseg.tile_workers() == torch.get_num_threads()
    with FlopCounterMode(display=False):
        assert tile_threads_catseg.tile_workers() == 1


def _tile_sizes(*args, **kwargs) -> list[int]:
    slices = tile_threads_catseg.tile_slices(*args, **kwargs)
    assert all(piece.step is None for piece in slices)
    assert [piece.start for piece in slices[1:]] == [piece.stop for piece in slices[:-1]]  # contiguous, in order
    return [piece.stop - piece.start for piece in slices]


def test_tile_slices_cover_the_axis_in_tiles_the_threads_finish_together():
    """`tile_slices`: tiles of at most the asked size whose sizes differ by at most one (larger first); with more
    threads at least `MIN_TILES_PER_WORKER` per thread and a tile count that is a multiple of the threads (counting
    the tiles along other axes), so that no thread waits for another's last, larger tile."""
    minimum = tile_threads_catseg.MIN_TILES_PER_WORKER
    assert _tile_sizes(8, 150, workers=1) == [8] * 17 + [7] * 2  # 19 tiles, as many as of 8 classes
    assert _tile_sizes(8, 150, workers=2) == [8] * 10 + [7] * 10  # 20 tiles, not 19: each thread takes 75 classes
    assert _tile_sizes(8, 16, workers=2) == [2] * 8  # at least MIN_TILES_PER_WORKER per thread
    assert len(_tile_sizes(54, 576, workers=2)) == 12 and set(_tile_sizes(54, 576, workers=2)) == {48}
    sizes = _tile_sizes(54, 144, workers=2)
    assert len(sizes) == 2 * minimum and sum(sizes) == 144 and max(sizes) - min(sizes) <= 1
    assert _tile_sizes(54, 144, workers=2, other_tiles=8) == [48] * 3  # 3 tiles x 8 images: 24, a multiple of 2
    assert _tile_sizes(54, 144, workers=2, other_tiles=3) == [36] * 4  # 4 x 3, not 3 x 3 tiles for two threads
    assert _tile_sizes(8, 12, workers=2, min_tiles_per_worker=1) == [6, 6]  # not 8 + 4
    assert _tile_sizes(0, 3, workers=4) == [1, 1, 1]  # never more tiles than items
    assert _tile_sizes(5, 1, workers=3) == [1]
    for size in (1, 3, 7, 8, 64):
        for length in (1, 2, 5, 13, 150, 847):
            for workers in (1, 2, 3, 4):
                for other_tiles in (1, 2, 5):
                    sizes = _tile_sizes(size, length, workers, other_tiles)
                    assert sum(sizes) == length and max(sizes) <= max(1, size), (size, length, workers, other_tiles)
                    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
                    if workers > 1 and len(sizes) < length:
                        assert len(sizes) * other_tiles % workers == 0
