"""The memory pool's size classes, reuse, statistics and out-of-memory path (the class itself, on a limited numpy
allocator, once), and each backend's pool behind its arrays (on every backend)."""

import gc

import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.MemoryPool import MemoryPool, NumpyAllocator, sizeClass
from PuzzleLib.TestLib.Interrupts import InjectedInterrupt, runInterruptedAt

poolClass = pytest.mark.backendIndependent


@poolClass
@pytest.mark.parametrize(
    "nbytes", [0, 1, 511, 512, 513, 4000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3_000_001, 1 << 30]
)
def test_size_class_bounds(nbytes):
    size = sizeClass(nbytes)
    assert size >= max(nbytes, 1)
    if nbytes < 1 << 20:
        assert size % 512 == 0 and size - nbytes < 512 + (512 if nbytes == 0 else 0)
    else:
        assert (size - nbytes) / nbytes <= 0.25


@poolClass
def test_size_classes_are_monotonic():
    sizes = [sizeClass(n) for n in range(0, 5 << 20, 4099)]
    assert sizes == sorted(sizes)


@poolClass
def test_freed_block_is_reused_for_its_class():
    pool = MemoryPool(NumpyAllocator())
    block = pool.allocate(1000)
    ptr = block.ptr
    assert pool.stats()["misses"] == 1 and pool.stats()["activeBytes"] == 1024

    del block
    gc.collect()
    assert pool.stats()["heldBytes"] == 1024 and pool.stats()["activeBytes"] == 0

    again = pool.allocate(900)
    assert again.ptr == ptr
    stats = pool.stats()
    assert (stats["allocations"], stats["hits"], stats["misses"]) == (2, 1, 1)
    assert stats["heldBytes"] == 0 and stats["peakActiveBytes"] == 1024


@poolClass
def test_other_class_is_a_miss_and_peak_tracks_the_maximum():
    pool = MemoryPool(NumpyAllocator())
    a, b = pool.allocate(100), pool.allocate(5000)
    assert a.ptr % 256 == 0 and b.ptr % 256 == 0
    assert pool.stats()["activeBytes"] == 512 + sizeClass(5000)
    del a, b
    gc.collect()
    c = pool.allocate(100_000)
    stats = pool.stats()
    assert stats["misses"] == 3 and stats["hits"] == 0
    assert stats["peakActiveBytes"] == max(512 + sizeClass(5000), sizeClass(100_000))
    assert stats["rawBytes"] == stats["activeBytes"] + stats["heldBytes"] == sizeClass(100_000) + 512 + sizeClass(5000)
    del c


@poolClass
def test_free_held_returns_memory_to_the_allocator():
    allocator = NumpyAllocator()
    pool = MemoryPool(allocator)
    blocks = [pool.allocate(2048) for _ in range(3)]
    keep = pool.allocate(4096)
    del blocks
    gc.collect()

    assert pool.freeHeld() == 3 * 2048
    assert allocator.usedBytes == 4096
    stats = pool.stats()
    assert stats["heldBytes"] == 0 and stats["rawBytes"] == 4096 and stats["activeBytes"] == 4096
    del keep


@poolClass
def test_out_of_memory_frees_held_blocks_and_retries_once():
    allocator = NumpyAllocator(limitBytes=8192)
    pool = MemoryPool(allocator)
    held = pool.allocate(4096)
    del held
    gc.collect()
    assert pool.stats()["heldBytes"] == 4096

    big = pool.allocate(6144)
    stats = pool.stats()
    assert big.size == 6144 and stats["heldBytes"] == 0 and allocator.usedBytes == 6144
    assert stats["misses"] == 2


@poolClass
def test_out_of_memory_error_names_the_request_and_changes_nothing():
    pool = MemoryPool(NumpyAllocator(limitBytes=8192))
    keep = pool.allocate(6144)
    before = pool.stats()

    with pytest.raises(MemoryError) as info:
        pool.allocate(4000)
    message = str(info.value)
    assert "4000 bytes" in message and "size class 4096" in message and "activeBytes" in message
    assert pool.stats() == before
    del keep


@poolClass
@pytest.mark.parametrize("bad", [-1, 1.5, "8", None, True])
def test_bad_request_is_a_value_error(bad):
    pool = MemoryPool(NumpyAllocator())
    with pytest.raises(ValueError, match="non-negative int"):
        pool.allocate(bad)
    assert pool.stats()["allocations"] == 0


def test_views_keep_the_block_alive():
    pool = gpuarray.memoryPool
    gc.collect()
    base = pool.stats()["activeBytes"]
    ary = gpuarray.to_gpu(np.arange(1000, dtype=np.float32))
    view = ary.reshape(10, 100)[2:5]
    del ary
    gc.collect()
    assert pool.stats()["activeBytes"] == base + 4096
    assert np.array_equal(view.get(), np.arange(200, 500, dtype=np.float32).reshape(3, 100))
    del view
    gc.collect()
    assert pool.stats()["activeBytes"] == base


def test_arrays_come_from_the_pool():
    pool = gpuarray.memoryPool
    gc.collect()
    before = pool.stats()
    arrays = [gpuarray.empty((64, 64), np.float32), gpuarray.zeros(10, np.float16), gpuarray.to_gpu(np.ones(3))]
    after = pool.stats()
    assert after["allocations"] - before["allocations"] == 3
    assert after["activeBytes"] - before["activeBytes"] == sizeClass(64 * 64 * 4) + 512 + 512
    del arrays


@poolClass
def test_poisoned_pool_serves_nan_filled_blocks_new_and_reused():
    pool = MemoryPool(NumpyAllocator(), poison=True)
    block = pool.allocate(4096)
    assert np.all(block.raw[:4096] == 0xFF)
    assert np.isnan(block.raw[:4096].view(np.float32)).all() and np.isnan(block.raw[:4096].view(np.float16)).all()

    block.raw[:4096].fill(0)
    ptr = block.ptr
    del block
    gc.collect()
    again = pool.allocate(4000)
    assert again.ptr == ptr and np.isnan(again.raw[:4000].view(np.float64)).all()


def test_suite_runs_on_a_poisoned_pool():
    assert gpuarray.memoryPool.poison
    assert np.isnan(gpuarray.empty((3, 5), np.float32).get()).all()


@poolClass
def test_a_request_past_what_numpy_can_hold_is_a_memory_error_naming_the_bytes():
    with pytest.raises(MemoryError, match="numpy allocator: %d bytes requested" % 2**64):
        NumpyAllocator().allocate(2**64)

    pool = MemoryPool(NumpyAllocator())
    with pytest.raises(MemoryError, match=str(2**64)):
        pool.allocate(2**64)
    assert pool.stats()["activeBytes"] == 0 and pool.stats()["rawBytes"] == 0


@poolClass
@pytest.mark.parametrize("reuse", [True, False], ids=["held_block", "new_block"])
def test_an_interrupt_at_any_line_of_allocate_leaves_no_block_counted_and_none_lost(reuse):
    """A KeyboardInterrupt where any line of `allocate` (and of the block it makes) starts: afterwards the pool counts
    no block active and still holds the block it held (a served block released, or none taken). The release
    (`Block.__del__`, run by the garbage collector, where Python reports and drops any exception) is not interrupted."""
    from PuzzleLib.Backend.MemoryPool import Block

    traced = {MemoryPool.allocate.__code__, MemoryPool._rawAllocate.__code__, Block.__init__.__code__}

    pool = MemoryPool(NumpyAllocator(), poison=True)
    if reuse:
        # NOTE: a block served and released: the next allocate of its class is a hit
        pool.allocate(1000)
    gc.collect()
    held = sum(len(stack) for stack in pool.held.values())

    line = 1
    while True:
        try:
            runInterruptedAt(lambda: pool.allocate(1000), line, traced.__contains__)
            finished = True
        except InjectedInterrupt:
            finished = False
        gc.collect()
        assert pool.stats()["activeBytes"] == 0, "an interrupt at line %d left a block counted" % line
        if reuse:
            assert sum(map(len, pool.held.values())) == held, "an interrupt at line %d lost a block" % line
        if finished:
            break
        line += 1
    assert line > 5
