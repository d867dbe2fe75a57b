"""A size-class caching allocator shared by both backends.

Every array the library creates is carved from a `MemoryPool`: a request is rounded up to its size class, served from
a held block of that class when one is free (a hit) and from the raw allocator otherwise (a miss). A `Block` goes back
to the pool's held list when its last reference dies; held memory returns to the device only on `freeHeld()` or when
an allocation runs out of memory (the pool then frees what it holds and retries once).

The raw allocator is the only backend-specific part: `cuda.mem_alloc` on CUDA, an aligned numpy byte buffer on the CPU
(`NumpyAllocator`), so the pool's accounting is tested on every machine.

With ``poison = True`` every block the pool serves, new or reused, is first filled with 0xFF bytes, a NaN in float16,
float32 and float64: code that reads memory it never wrote then produces NaN. The test suite runs that way.
"""

import threading
from collections import defaultdict

import numpy as np

ALIGNMENT = 256
SMALL_LIMIT = 1 << 20
SMALL_GRANULE = 512
POISON_BYTE = 0xFF


def sizeClass(nbytes):
    """Rounds a request up to its size class, in bytes.

    Requests under 1 MiB round up to a multiple of 512 bytes; larger ones to a quarter of their power of two
    (so at most 25% of a large block is slack). A zero-byte request still gets the smallest class, so every
    array has a valid, unique address.
    """
    if nbytes <= SMALL_GRANULE:
        return SMALL_GRANULE
    if nbytes < SMALL_LIMIT:
        return -(-nbytes // SMALL_GRANULE) * SMALL_GRANULE
    step = 1 << (nbytes.bit_length() - 3)
    return -(-nbytes // step) * step


class Block:
    """A piece of pool memory in use. It returns to its pool's held list when garbage-collected.

    Attributes:
        ptr (int): device (or host, on the CPU backend) address of the first byte, aligned to 256 bytes.
        nbytes (int): bytes requested.
        size (int): bytes of the size class actually reserved (>= nbytes).
        raw: the raw allocator's object (a `pycuda.driver.DeviceAllocation`, or a numpy uint8 array on the CPU).
    """

    __slots__ = ("pool", "raw", "ptr", "nbytes", "size", "__weakref__")

    def __init__(self, pool, source, nbytes, size):
        # NOTE: one line takes (raw, ptr) off `source` (a list), counts the block active and makes it the owner, so that
        # an interrupt lands before all of it or after (then the block's release undoes it); a block interrupted before
        # it has no pool and releases nothing
        self.nbytes, self.size = nbytes, size
        (self.raw, self.ptr), pool.activeBytes, self.pool = source.pop(), pool.activeBytes + size, pool

    def __del__(self):
        # NOTE: the pool's release, written here (a block dies on nearly every call of the library); a held block keeps
        # its address, so serving it again asks the allocator nothing
        pool, self.pool = getattr(self, "pool", None), None
        if pool is not None:
            with pool.lock:
                pool.activeBytes -= self.size
                pool.held[self.size].append((self.raw, self.ptr))

    def __repr__(self):
        return "Block(ptr=0x%x, nbytes=%d, size=%d)" % (self.ptr, self.nbytes, self.size)


class MemoryPool:
    """Caching allocator with size classes, statistics and an out-of-memory retry.

    Args:
        allocator: raw allocator with ``allocate(nbytes) -> raw`` (raises `MemoryError` when the device is full),
            ``free(raw)``, ``address(raw) -> int``, ``fill(raw, byte, nbytes)`` and a ``name`` attribute.
        poison (bool): fill every served block with 0xFF bytes (NaN for floats), to expose reads of unwritten memory.

    Raises:
        MemoryError: from `allocate`, when the raw allocator fails even after the held blocks were freed; the message
            names the requested bytes, the size class and the pool's statistics.
    """

    def __init__(self, allocator, poison=False):
        self.allocator, self.poison = allocator, poison
        self.lock = threading.RLock()
        self.held = defaultdict(list)
        self.resetStats()

    def resetStats(self):
        """Zeroes the counters (`allocations`, `hits`, `misses`) and sets the peak to the current active bytes."""
        with self.lock:
            if not hasattr(self, "activeBytes"):
                self.activeBytes, self.rawBytes = 0, 0
            self.peakActiveBytes = self.activeBytes
            # NOTE: allocations is hits + misses and heldBytes is rawBytes - activeBytes, so an allocation and a release
            # update only what they must
            self.hits, self.misses = 0, 0

    def allocate(self, nbytes):
        """Returns a `Block` of at least `nbytes` bytes (an int >= 0)."""
        # NOTE: a Python int (the backends' case) skips the slower checks of numpy ints
        if type(nbytes) is not int or nbytes < 0:
            if isinstance(nbytes, (bool, np.bool_)) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
                raise ValueError("MemoryPool.allocate expects a non-negative int of bytes; got %r" % (nbytes,))
            nbytes = int(nbytes)
        size = SMALL_GRANULE if nbytes <= SMALL_GRANULE else sizeClass(nbytes)

        with self.lock:
            stack = self.held.get(size)
            if stack:
                block = Block(self, stack, nbytes, size)
                self.hits += 1
            else:
                raw = self._rawAllocate(nbytes, size)
                block = Block(self, [(raw, self.allocator.address(raw))], nbytes, size)
                self.rawBytes += size
                self.misses += 1

            if self.activeBytes > self.peakActiveBytes:
                self.peakActiveBytes = self.activeBytes

        if self.poison:
            self.allocator.fill(block.raw, POISON_BYTE, size)
        return block

    def _rawAllocate(self, nbytes, size):
        try:
            return self.allocator.allocate(size)
        except MemoryError:
            self.freeHeld()

        try:
            return self.allocator.allocate(size)
        except MemoryError as e:
            raise MemoryError(
                "MemoryPool on %s: out of memory for a request of %d bytes (size class %d), even after freeing "
                "held blocks; pool stats %s; allocator said: %s" % (self.allocator.name, nbytes, size, self.stats(), e)
            ) from None

    def freeHeld(self):
        """Gives every held block back to the raw allocator; returns the number of bytes freed."""
        with self.lock:
            # NOTE: swap first, so a block released by the garbage collector meanwhile lands in the new dict
            held, self.held = self.held, defaultdict(list)
            freed = 0
            for size, stack in held.items():
                for raw, _ in stack:
                    self.allocator.free(raw)
                    freed += size
            self.rawBytes -= freed
            return freed

    def stats(self):
        """Returns a dict: ``activeBytes`` (in blocks now in use), ``heldBytes`` (cached for reuse),
        ``peakActiveBytes``, ``rawBytes`` (taken from the device: active + held), ``allocations`` (requests served),
        ``hits`` (served from held blocks) and ``misses`` (raw allocations). Byte counts are in size-class bytes."""
        with self.lock:
            return {
                "activeBytes": self.activeBytes,
                "heldBytes": self.rawBytes - self.activeBytes,
                "peakActiveBytes": self.peakActiveBytes,
                "rawBytes": self.rawBytes,
                "allocations": self.hits + self.misses,
                "hits": self.hits,
                "misses": self.misses,
            }

    def __repr__(self):
        return "MemoryPool(%s, %s)" % (self.allocator.name, self.stats())


class NumpyAllocator:
    """Raw allocator of the CPU backend: 256-byte aligned numpy byte buffers.

    Args:
        limitBytes (int or None): total raw bytes it may hand out before raising `MemoryError`, like a device of
            that size; None for no limit beyond the host's.

    Raises:
        MemoryError: from `allocate`, naming the bytes, past `limitBytes`, past the largest buffer numpy can create
            (about 2**63 bytes on 64-bit hosts), or when the host is out of memory.
    """

    name = "numpy"

    def __init__(self, limitBytes=None):
        self.limitBytes = limitBytes
        self.usedBytes = 0

    def allocate(self, nbytes):
        if self.limitBytes is not None and self.usedBytes + nbytes > self.limitBytes:
            raise MemoryError(
                "numpy allocator limit: %d bytes requested, %d of %d in use" % (nbytes, self.usedBytes, self.limitBytes)
            )

        largest = int(np.iinfo(np.intp).max) - ALIGNMENT
        if nbytes > largest:
            raise MemoryError(
                "numpy allocator: %d bytes requested, more than the %d a numpy buffer can hold" % (nbytes, largest)
            )
        try:
            buffer = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
        except MemoryError as e:
            raise MemoryError("numpy allocator: %d bytes requested; numpy said: %s" % (nbytes, e)) from None
        offset = -buffer.ctypes.data % ALIGNMENT
        self.usedBytes += nbytes
        return buffer[offset : offset + nbytes]

    def free(self, raw):
        self.usedBytes -= raw.nbytes

    @staticmethod
    def address(raw):
        return raw.ctypes.data

    @staticmethod
    def fill(raw, byte, nbytes):
        raw[:nbytes].fill(byte)
