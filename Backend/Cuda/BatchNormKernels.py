"""Batch normalization of the CUDA backend (`BatchNormBackend` of `Backend.Contract`): `CudaPlan`, whose methods are
the primitives of `Backend.BatchNormPlan` (which states what each computes), with the kernels of
``Kernels/BatchNorm.cu``. Twin of `Backend.Cpu.CBatchNorm` and `Backend.Cpu.NumpyBatchNorm`.

Data, outputs and gradients are float32 or float16 (one dtype per call); per-map parameters and statistics are float32
arrays of ``maps`` elements. How the work is laid out on the device:

- ``inner > 1`` uses the *spatial* kernels: a block walks contiguous segments of one map; ``inner == 1`` uses the
  *rows* kernels: threads run across maps, rows are split over blocks. No transpose is ever made.
- Reductions (batch statistics, parameter gradients) split each map over enough blocks to fill every multiprocessor
  and write per-block partials to a small pool workspace; in the same kernel, the last block of each column of blocks
  (counted on the source's own counters, which each launch leaves zero) merges them (Chan et al. 1979 for the
  moments, in double precision) and writes the per-map results and the running statistics: one launch per
  reduction, where a column's partials are few (`FOLD_PARTIALS`; else a merge kernel, a block per map, does that
  step). The rows kernels' blocks put as many lanes across maps as the maps need (at most 32: 3 maps take 3) and the
  rest of their threads across rows; on spatial maps of at most `BLOCK_SIZE` vectors a thread walks a map
  (neighbouring threads read neighbouring maps) instead of a block. A single map is read as one contiguous segment by
  the spatial kernels.
- Loads and stores are as wide as the contiguous axis and the pointers of the call allow: 16 bytes (4 floats / 8
  halves) when the axis is a multiple of that and every pointer is 16-byte aligned (pool blocks are 256-byte
  aligned); on spatial maps whose extent 16 bytes do not divide (7x7; float32 maps of 2 or 3 elements too: no vector
  holds elements of more than two maps), 16-byte vectors over unaligned segments where the tensor's length allows
  them (elements of other maps masked out of the reductions, a vector's two maps' coefficients in the elementwise
  passes; not in the fused kernels); in the rows kernels where 16 bytes do not divide the maps ((125000, 50),
  (10^6, 3)), 16-byte vectors over rows of several of the layout's rows (lcm(maps, vector) elements, each vector's
  elements keeping their channels: `foldedRows`; in the reductions where one block's lanes span such a row, whose block
  merges a channel's values before it writes its partials); else 8 or 4 bytes, else one element at a time.
- Passes over the data (outside the resident passes, below): training forward reads x twice (statistics, then
  normalization: two kernels) and writes y once; evaluation forward reads x once and writes y once (in place when
  ``out is data``: one kernel, no workspace, no pool block); backward reads x and dy twice (reduction, then dx: two
  kernels) and writes dx once; the frozen backward's dx pass reads dy only.
- Where a spatial map's slice fits in the registers of one block (16384 values per map, float32 or float16; from
  Hopper on 32768 in a training forward without a residual over aligned segments) or of a few blocks (up to one per
  multiprocessor, 16384 values each), the *resident* passes do a training task in one kernel: the forward reads x
  once (the statistics by two passes over the registers, the running update, the normalization with the fused
  activation and residual), the backward reads x and dy once (the sums, the parameter gradients, dx). A block per map
  where the maps are at least as many as the multiprocessors and a block holds one; else each map split over blocks
  that exchange their sums through global memory (as many as hold the map, and as fill the device). On ResNet-50's
  NCHW shapes at batch 32 every training forward and backward is one kernel (`residentShape`; not on Volta). Over rows
  of maps that 16 bytes divide, the resident passes hold columns of channels: a column's rows split over blocks (of 16
  or 32 values a thread) that can all run at once, whose last to arrive merges their partials (a pool workspace) and
  writes the per-map results for all, which read them back (`rowsResidentShape`: channels-last ResNet-50 at batch 32
  but 56x56 and 112x112 maps, (256, 4096), (8192, 1024)).
- A fused activation and residual (`Contract.FusedActivation`) run in the same passes through the ``*Fused`` kernels:
  the forward's pass adds the residual and applies the activation before its one write; backward reads the output y
  besides (dz = dy * act'(y) in both passes, written to the residual's gradient in the dx pass), and x not at all in
  InPlace-ABN, where x - mean is rebuilt from y.

A plan works out every launch of its shape once, on first use: grid, block, vector width and the argument list with
its geometry packed (`Launch.PreparedLaunch`); a call fills in its addresses and scalars and queues the kernels.
"""

import math

import numpy as np

from PuzzleLib.Backend.BatchNormPlan import BatchNormPlan
from PuzzleLib.Backend.Contract import reconstructionFloor
from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.Cuda.GPUArray import empty, memoryPool
from PuzzleLib.Backend.Cuda.Launch import MAX_GRID_Y, KernelSource, ceilDiv, grid1d
from PuzzleLib.Kernels import BatchNorm as declared
from PuzzleLib.Kernels.BatchNorm import BLOCK_SIZE, COLUMN_COUNTERS, LOADS, RESIDENT_PARTIALS, RESIDENT_THREADS

dataTypes = (np.dtype(np.float32), np.dtype(np.float16))
suffixes = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}

MAX_SPLITS = 1024
# NOTE: the reductions' and the elementwise passes' grids: two waves of the blocks the device holds at once (at the
# kernel's own occupancy), so that a block that finishes late leaves no multiprocessor idle for long
WAVES = 2
# NOTE: the least work a reduction's block, thread (a thread per map) or rows thread keeps: one group of LOADS loads
# per thread (two for a thread per map), so that small tensors ((256, 4096), 7x7 maps) still fill every
# multiprocessor, while the partials stay a small fraction of the data (rows threads keep fewer rows where that gives
# every multiprocessor a block: `CudaPlan.fillingRowBlocks`)
MIN_VECTORS_PER_BLOCK = LOADS * BLOCK_SIZE
MIN_VECTORS_PER_THREAD = 2 * LOADS
MIN_ROWS_PER_THREAD = LOADS
# NOTE: the rows kernels' lanes across channel vectors: a warp's width at most, fewer where the maps are fewer
MAX_CHANNEL_LANES = 32
# NOTE: the per-map kernels of Batch Renormalization: one thread per map
PER_MAP_BLOCK = 256
# NOTE: the most partials a reduction's last block merges (16 per thread of a 256-thread block); a reduction with more
# per column ((125000, 50): 50 maps x 1024 splits) leaves the merge to a second kernel, a block per map, rather than
# keep one multiprocessor reading them while the others idle
FOLD_PARTIALS = 16 * BLOCK_SIZE
# NOTE: the first compute capability the kernels fold the step for and have the resident passes for (Turing; not
# Volta: ``TURING_BUILD`` in the source), and the first the resident passes of 64 values a thread are built for
# (``HOPPER_BUILD``)
TURING_CAPABILITY = (7, 5)
HOPPER_CAPABILITY = (9, 0)
# NOTE: the resident passes' blocks are whole warps, and their indices 32-bit (tensors below 2^31 elements)
WARP_SIZE = 32
RESIDENT_ELEMENTS = 2**31
# NOTE: the most lanes across channel vectors of the resident passes over rows, widest first: a narrower column of
# channels holds fewer values, so that its blocks fit on the multiprocessors at once; 4 vectors a row at the fewest
# (64 bytes: two whole 32-byte sectors)
ROWS_RESIDENT_LANES = (32, 16, 8, 4)

kernels = KernelSource(declared)

# NOTE: the dynamic values of each family, in the order its launches take them
CHANNEL = ("p.mean", "p.invstd", "p.var", "p.scale", "p.bias", "p.scalegrad", "p.biasgrad", "p.invM")
FUSED = ("f.residual", "f.y", "f.resgrad")
MOMENTS = ("x", "pn", "pmean", "pm2", "o.factor", "o.savedMean", "o.savedInvstd", "o.runningMean", "o.runningVar",
           "o.savedVar", "o.skipped", "o.mirror", "o.backup", "o.stamp", "o.wideMean", "o.wideVar")
SUMS = ("psum", "pdot", "o.invstd", "o.var", "o.scalegrad", "o.biasgrad")
STATS = MOMENTS + ("o.fold",)
RESIDENT_TRAIN = ("x", "out", "scale", "bias", "f.residual") + MOMENTS[4:]
RESIDENT_GRAD = ("x", "dy", "out", "p.mean", "p.invstd", "p.scale", "p.bias", "f.y", "f.resgrad", "o.invstd",
                 "o.scalegrad", "o.biasgrad")
# NOTE: the resident passes over rows take the pool workspace of their partials after their output
ROWS_RESIDENT_TRAIN = RESIDENT_TRAIN[:2] + ("pn", "pmean", "pm2") + RESIDENT_TRAIN[2:]
ROWS_RESIDENT_GRAD = RESIDENT_GRAD[:3] + ("psum", "pdot") + RESIDENT_GRAD[3:]
GRAD = ("x", "dy", "mean") + SUMS + ("o.fold",)
RENORM_STATISTICS = (
    "batchMean", "batchVar", "m", "factor", "momentum", "rmin", "rmax", "dmax", "scale", "bias", "savedMean",
    "savedInvstd", "r", "d", "correctedScale", "correctedBias", "runningMean", "runningVar", "renormMean", "renormStd",
    "skipped",
)


def plan(backend, layout, dtype, options):
    return CudaPlan(backend, layout, dtype, options)


# NOTE: one element at a time (what a call whose pointers allow no vector falls back to)
SCALAR = (1, declared.ALIGNED_SEGMENTS)
# NOTE: the segments of a rows kernel whose rows hold several of the layout's (`CudaPlan.foldedRows`): rows that one
# block's lanes span (the reductions merge a channel's values in the block: mergeCopies in the source), and wider ones
# (the elementwise passes only); and the segments each family of kernels takes: the reductions and the resident passes
# aligned, unaligned and folded ones, the elementwise passes wide folded ones and short maps' segments too, the fused
# elementwise passes no unaligned segments, the fused gradient sums aligned and folded ones
FOLDED_ROWS, WIDE_FOLDED_ROWS = "folded", "wideFolded"
REDUCTION_SEGMENTS = (declared.ALIGNED_SEGMENTS, declared.UNALIGNED_SEGMENTS, FOLDED_ROWS)
APPLY_SEGMENTS = REDUCTION_SEGMENTS + (WIDE_FOLDED_ROWS, declared.SHORT_SEGMENTS)
FUSED_APPLY_SEGMENTS = (declared.ALIGNED_SEGMENTS, FOLDED_ROWS, WIDE_FOLDED_ROWS)
FUSED_SEGMENTS = (declared.ALIGNED_SEGMENTS, FOLDED_ROWS)


def rowsBlock(maps, vec, mostLanes=MAX_CHANNEL_LANES):
    """(block, channel blocks) of the rows kernels at vector width `vec`: the ceil(maps / vec) channel vectors split
    evenly over the fewest blocks of at most `mostLanes` lanes (3 maps take 3 lanes, 50 maps of 2-float vectors 25,
    1000 maps of 4-float vectors 8 blocks of 32), and as many rows of such lanes as `BLOCK_SIZE` threads hold."""
    vectors = ceilDiv(maps, vec)
    channelBlocks = ceilDiv(vectors, mostLanes)
    lanes = ceilDiv(vectors, channelBlocks)
    return (lanes, BLOCK_SIZE // lanes, 1), channelBlocks


def wholeWarps(threads):
    """`threads` rounded up to whole warps (the resident passes' blocks)."""
    return ceilDiv(threads, WARP_SIZE) * WARP_SIZE


def ptr(ary):
    return 0 if ary is None else ary.ptr


def addresses(*arrays):
    """The OR of the addresses of the given arrays (None values are skipped): its low bits give their common
    alignment."""
    result = 0
    for ary in arrays:
        if ary is not None:
            result |= ary.ptr
    return result


class CudaPlan(BatchNormPlan):
    """The CUDA kernels' plan: the launches of its shape, each prepared on first use (`launch`)."""

    name = "cuda"

    def __init__(self, backend, layout, dtype, options):
        super().__init__(backend, layout, dtype, options)
        outer, maps, inner = self.shape3
        assert 0 < maps < 2**31 and inner > 0 and dtype in suffixes, (self.shape3, dtype)
        # NOTE: the (outer, maps, inner) view the kernels walk: the layout's, except that one map is one contiguous
        # segment ((10^8, 1) is read by the spatial kernels in 16-byte vectors, not by one lane of the rows kernels)
        self.view3 = (1, 1, outer * inner) if maps == 1 else self.shape3
        self.suffix = suffixes[dtype]
        self.spatial = self.view3[2] > 1
        self.choices = self.vectorChoices()
        self.itemsize = dtype.itemsize
        self.prepared = {}
        # NOTE: the part of residentShape's rule that the shape decides, once: the calls of the shapes no resident
        # pass serves look no further
        widest = max(declared.vectorWidths[self.suffix])
        self.residentCandidate = (
            Driver.computeCapability() >= TURING_CAPABILITY and outer * maps * inner < RESIDENT_ELEMENTS
            and (self.view3[2] >= widest if self.spatial else (widest, declared.ALIGNED_SEGMENTS) in self.choices)
            and any(width == widest for width, _ in self.choices)
        )

    def launch(self, prepare, *key):
        """What ``prepare(*key)`` (one of the ``prepare*`` methods) makes (a `PreparedLaunch`; for the reductions the
        pair of their launch and their merge's launch or None; for a resident pass None where it does not serve),
        made on the first call that needs it and kept."""
        key = (prepare.__name__,) + key
        try:
            return self.prepared[key]
        except KeyError:
            found = self.prepared[key] = prepare(*key[1:])
            return found

    def vectorChoices(self):
        """The (vector width, segments) the kernels may take for this shape, in order of preference: the widths that
        divide the contiguous length (16 bytes where the length allows them, else 8 or 4 bytes: 14x14 float16 maps
        take 4 halves, 50 float32 maps 2 floats), and before the narrower ones, for spatial maps whose length the
        widest width does not divide (7x7), that width over unaligned segments (masked vectors; the tensor's length a
        multiple of it), for every kernel where no vector holds elements of more than two maps (maps of at least
        width - gcd(width, inner) elements, as float32 maps of 2 or 3 are), else (float16 maps of 2, 3 or 5) for the
        reductions, after the same width over `declared.SHORT_SEGMENTS` for the elementwise passes; for rows whose
        length a width does not divide ((125000, 50), (10^6, 3)), the wider widths over folded rows (`foldedRows`; the
        tensor's length a multiple of the width): `FOLDED_ROWS` where one block's lanes span such a row (every rows
        kernel takes them), else `WIDE_FOLDED_ROWS` (the elementwise passes only)."""
        outer, maps, inner = self.view3
        widest = max(declared.vectorWidths[self.suffix])
        extent = inner if self.spatial else maps
        widths = sorted(declared.vectorWidths[self.suffix], reverse=True)
        choices = [(w, declared.ALIGNED_SEGMENTS) for w in widths if extent % w == 0]
        if self.spatial and inner % widest != 0 and (outer * maps * inner) % widest == 0:
            if inner >= widest - math.gcd(widest, inner):
                choices[:0] = [(widest, declared.UNALIGNED_SEGMENTS)]
            elif self.suffix in declared.shortSegmentTypes:
                choices[:0] = [(widest, declared.SHORT_SEGMENTS), (widest, declared.UNALIGNED_SEGMENTS)]
        if not self.spatial:
            folded = [(w, FOLDED_ROWS if math.lcm(maps, w) <= MAX_CHANNEL_LANES * w else WIDE_FOLDED_ROWS)
                      for w in widths if w > choices[0][0] and (outer * maps) % w == 0 and maps * w < 2**31]
            choices[:0] = folded
        return tuple(choices)

    def vectorWidth(self, *arrays, kinds=REDUCTION_SEGMENTS):
        """The first of the plan's (vector width, segments) of the given kinds of segments (`REDUCTION_SEGMENTS`,
        `APPLY_SEGMENTS`, `FUSED_APPLY_SEGMENTS`, `FUSED_SEGMENTS`: what the kernels that take them have) to whose
        width every given array's address is aligned, else `SCALAR`."""
        bits = addresses(*arrays)
        for width, segments in self.choices:
            if bits % (width * self.itemsize) == 0 and segments in kinds:
                return width, segments
        return SCALAR

    def foldedRows(self, vectors):
        """(rows, width) a rows kernel walks at `vectors`: the layout's rows of `maps` elements, or over folded rows
        each the fewest of the layout's rows whose elements the vector divides (50 float16 maps in vectors of 8: rows
        of 4 of the layout's, 200 elements, a quarter as many rows)."""
        outer, maps, _ = self.view3
        vec, segments = vectors
        fold = vec // math.gcd(maps, vec) if segments in (FOLDED_ROWS, WIDE_FOLDED_ROWS) else 1
        return outer // fold, maps * fold

    # --- launch geometry

    def segmentVectors(self, vectors):
        """The vectors a spatial reduction's walk covers per segment: inner / width, or for unaligned segments the
        aligned vectors any segment may overlap."""
        width, segments = vectors
        inner = self.view3[2]
        return inner // width if segments == declared.ALIGNED_SEGMENTS else ceilDiv(inner + width - 1, width)

    def reductionWalk(self, vectors, fused=False):
        """Who walks a map in a spatial reduction at `vectors` (`declared.BLOCK_PER_MAP` or `THREAD_PER_MAP`): a thread
        on maps of at most `BLOCK_SIZE` vectors ((1, 10^5, 2) has 1, (64, 4096, 3) 192), on which a block per map would
        leave threads idle and pay its merge for a few values; a block otherwise, in the fused gradient sums and on
        rows (whose kernels have no such choice)."""
        small = self.spatial and self.view3[0] * self.segmentVectors(vectors) <= BLOCK_SIZE
        return declared.THREAD_PER_MAP if small and not fused else declared.BLOCK_PER_MAP

    def reductionGrid(self, vectors, walk, resident):
        """The grid of a reduction kernel (statistics, gradient sums) whose device holds `resident` of its blocks at
        once: `WAVES` waves of blocks, while each block (each thread, where a thread walks a map) keeps enough work to
        amortize its final merge. Its second dimension is the number of partials per map."""
        outer, maps, inner = self.view3
        target = WAVES * resident
        if self.spatial:
            perMap = outer * self.segmentVectors(vectors)
            if walk == declared.THREAD_PER_MAP:
                mapBlocks = ceilDiv(maps, BLOCK_SIZE)
                splits = min(ceilDiv(target, mapBlocks), max(1, perMap // MIN_VECTORS_PER_THREAD), MAX_SPLITS)
                return mapBlocks, splits, 1
            splits = min(ceilDiv(target, maps), max(1, perMap // MIN_VECTORS_PER_BLOCK), MAX_SPLITS)
            return maps, splits, 1
        rows, width = self.foldedRows(vectors)
        (_, rowLanes, _), channelBlocks = rowsBlock(width, vectors[0])
        work = max(1, rows // (MIN_ROWS_PER_THREAD * rowLanes))
        # NOTE: fewer rows a thread to fill the multiprocessors only where the last block still merges the partials
        filling = self.fillingRowBlocks(rows, rowLanes, channelBlocks)
        if filling * self.columnMaps(vectors, walk) <= FOLD_PARTIALS:
            work = max(work, filling)
        return channelBlocks, min(ceilDiv(target, channelBlocks), work, MAX_SPLITS), 1

    @staticmethod
    def fillingRowBlocks(rows, rowLanes, channelBlocks):
        """The blocks along the rows that give every multiprocessor a block with `channelBlocks` across the maps, as
        long as each row of lanes keeps a row ((256, 4096) float16: 9, where 4 rows a thread gave 8 and 128 blocks)."""
        return min(ceilDiv(Driver.multiprocessorCount(), channelBlocks), ceilDiv(rows, rowLanes))

    def applyGrid(self, vectors, resident):
        """The grid of an elementwise pass: each thread gets at least `LOADS` vectors (a tile; on rows fewer where
        that leaves a multiprocessor without a block: `fillingRowBlocks`), at most `WAVES` waves of blocks (a
        grid-stride loop does the rest)."""
        outer, maps, inner = self.view3
        if self.spatial:
            total = outer * maps * inner // vectors[0]
            return max(1, min(ceilDiv(total, BLOCK_SIZE * LOADS), WAVES * resident)), 1, 1
        rows, width = self.foldedRows(vectors)
        (_, rowLanes, _), channelBlocks = rowsBlock(width, vectors[0])
        rowBlocks = max(ceilDiv(rows, rowLanes * LOADS), self.fillingRowBlocks(rows, rowLanes, channelBlocks))
        return channelBlocks, max(1, min(rowBlocks, ceilDiv(WAVES * resident, channelBlocks), MAX_GRID_Y)), 1

    def block(self, vectors):
        return (BLOCK_SIZE, 1, 1) if self.spatial else rowsBlock(self.foldedRows(vectors)[1], vectors[0])[0]

    def view(self, vectors, flat=False):
        """The static view arguments of the reductions or (`flat`) the elementwise passes (the same for the rows
        kernels)."""
        outer, maps, inner = self.view3
        if not self.spatial:
            rows, width = self.foldedRows(vectors)
            return dict(rows=rows, width=width, maps=maps)
        return dict(outer=outer, maps=maps, inner=inner, **({} if flat else {"innerV": self.segmentVectors(vectors)}))

    def instance(self, vectors, **fields):
        """The fields of an entry's name (`Signature.name`) at `vectors`, and `fields`."""
        width, segments = vectors
        return dict(fields, dtype=self.suffix, vec=width, segments=segments)

    def fusedStatics(self, reconstruct):
        kind, slope = ("identity", 0.0) if self.activation is None else self.activation
        return dict(f_act=declared.activationNumbers[kind], f_reconstruct=int(reconstruct), f_slope=slope,
                    f_floor=reconstructionFloor)

    def columnMaps(self, vectors, walk):
        """The maps of a reduction column (the maps whose partials its last block merges): one for a block per map,
        `BLOCK_SIZE` for a thread per map, a rows block's lanes' vectors (every map over folded rows)."""
        if not self.spatial:
            (lanes, _, _), _ = rowsBlock(self.foldedRows(vectors)[1], vectors[0])
            return min(lanes * vectors[0], self.maps)
        return min(BLOCK_SIZE, self.view3[1]) if walk == declared.THREAD_PER_MAP else 1

    def folds(self, vectors, walk, splits):
        """Whether a reduction's last blocks merge its partials (few enough per column: `FOLD_PARTIALS`; never on Volta,
        for which the kernels are built without that step: `TURING_CAPABILITY`), or the merge kernel does."""
        few = self.columnMaps(vectors, walk) * splits <= FOLD_PARTIALS
        return few and Driver.computeCapability() >= TURING_CAPABILITY

    def residentShape(self, kind, vectors):
        """(held, block, groups, splits) of the resident pass `kind` (``"train"``, ``"trainResidual"``, ``"grad"``: the
        blocks of a map, or over rows of a column of channels, hold its slice in registers, so that the task is one
        launch and reads its inputs once) at `vectors`, on `groups` * `splits` blocks; over rows `rowsResidentShape`.
        Spatial maps: `splits` blocks per map (groups: the maps) of (threads, 1, 1) (whole warps) holding `held`
        vectors each (`declared.residentHeld`; at most `declared.RESIDENT_VALUES_BEFORE_HOPPER` values below
        `HOPPER_CAPABILITY`).
        A block per map where the maps are at least as many as the multiprocessors: the fewest vectors per thread for
        which `RESIDENT_THREADS` threads hold the map. Else, or where no block holds it, each map split over blocks of
        at most `declared.SPLIT_VALUES` values a thread: as many as hold the map and as fill the device, the fewest
        vectors per thread for which they hold it, and the fewest warps; every block holds part of the map.
        None where the pass does not serve: Volta (`TURING_CAPABILITY`), maps shorter than the widest vector, a tensor
        of `RESIDENT_ELEMENTS` or more (these three: not `residentCandidate`), not the widest width,
        maps of fewer vectors than a warp holds at the fewest per thread (a block would idle; a thread walks those in
        the reductions), or maps that would need more blocks than multiprocessors (the blocks of a map wait for one
        another, so they must all run at once), more blocks than the source keeps sums for (`RESIDENT_PARTIALS`) or
        more maps than counters (`COLUMN_COUNTERS`)."""
        width, segments = vectors
        if not self.residentCandidate or width != max(declared.vectorWidths[self.suffix]):
            return None
        if not self.spatial:
            return self.rowsResidentShape(kind, vectors)
        allHeld = declared.residentHeld[(kind, self.suffix, segments)]
        if Driver.computeCapability() < HOPPER_CAPABILITY:
            allHeld = [held for held in allHeld if held * width <= declared.RESIDENT_VALUES_BEFORE_HOPPER]
        perMap = self.view3[0] * self.segmentVectors(vectors)
        if perMap < WARP_SIZE * min(allHeld):
            return None
        maps, multiprocessors = self.view3[1], Driver.multiprocessorCount()
        if maps >= multiprocessors:
            for held in allHeld:
                if perMap <= held * RESIDENT_THREADS:
                    return held, (wholeWarps(ceilDiv(perMap, held)), 1, 1), maps, 1
        splitHeld = [held for held in allHeld if held * width <= declared.SPLIT_VALUES]
        splits = max(ceilDiv(multiprocessors, maps), ceilDiv(perMap, max(splitHeld) * RESIDENT_THREADS))
        held = next(held for held in splitHeld if held * RESIDENT_THREADS * splits >= perMap)
        threads = wholeWarps(ceilDiv(perMap, held * splits))
        # NOTE: whole warps may hold the map in fewer blocks
        splits = ceilDiv(perMap, held * threads)
        if splits > multiprocessors or (splits > 1 and (maps * splits > RESIDENT_PARTIALS or maps > COLUMN_COUNTERS)):
            return None
        return held, (threads, 1, 1), maps, splits

    def rowsResidentShape(self, kind, vectors):
        """`residentShape` over rows of the layout that the widest vector divides (`residentCandidate`; channels-last
        and per-activation data): the channel vectors in `groups` columns of at most `ROWS_RESIDENT_LANES` lanes (split
        evenly, as `rowsBlock` does), the rows of a column over `splits` blocks of (lanes, rows of lanes, 1) threads
        holding `held` rows each (`declared.rowsResidentHeld`): for each width of column, widest first, the fewest rows
        a thread whose blocks are at most the multiprocessors (the blocks of a column wait for one another: they must
        all run at once), with columns at most `COLUMN_COUNTERS`, and
        `BLOCK_SIZE` // lanes rows of lanes, fewer where that leaves a multiprocessor without a block
        (`fillingRowLanes`); the first such shape that gives every multiprocessor a block ((256, 4096) float16: 16
        lanes, 192 blocks; 32 lanes would take 128), else the first. None where none is ((32, 256, 56, 56)
        channels-last: 64 rows a thread on 4 lanes would still take 196 blocks a column)."""
        rows, maps, _ = self.view3
        vec = vectors[0]
        multiprocessors = Driver.multiprocessorCount()
        shapes = []
        for mostLanes in ROWS_RESIDENT_LANES:
            (lanes, _, _), groups = rowsBlock(maps, vec, mostLanes)
            for held in declared.rowsResidentHeld[(kind, self.suffix)]:
                if ceilDiv(rows, held * (BLOCK_SIZE // lanes)) <= multiprocessors and groups <= COLUMN_COUNTERS:
                    rowLanes = self.fillingRowLanes(rows, held, lanes, groups, vec)
                    shapes.append((held, (lanes, rowLanes, 1), groups, ceilDiv(rows, held * rowLanes)))
                    break
            if lanes < mostLanes:
                break
        filling = [shape for shape in shapes if shape[2] * shape[3] >= multiprocessors]
        return (filling or shapes or [None])[0]

    def momentsStatics(self):
        outer, maps, inner = self.view3
        m = outer * inner
        return dict(o_invM=1.0 / m, o_unbias=m / (m - 1) if m > 1 else math.inf, o_epsilon=self.epsilon)

    def prepareStats(self, vectors):
        """(the statistics' launch, the merge's launch or None where the statistics kernel merges)."""
        outer, maps, inner = self.view3
        signature = declared.statsSpatial if self.spatial else declared.statsRows
        walk = self.reductionWalk(vectors)
        stats = kernels.prepared(
            signature, lambda resident: self.reductionGrid(vectors, walk, resident), self.block(vectors),
            self.instance(vectors, walk=walk), STATS, **self.momentsStatics(), **self.view(vectors),
        )
        splits = stats.grid[1]
        if self.folds(vectors, walk, splits):
            return stats, None
        return stats, kernels.prepared(
            declared.statsMerge, (maps, 1, 1), (BLOCK_SIZE, 1, 1), {"dtype": self.suffix}, MOMENTS,
            shiftStride=inner if self.spatial else 1, splits=splits, maps=maps, o_fold=0, **self.momentsStatics(),
        )

    @staticmethod
    def fillingRowLanes(rows, held, lanes, groups, vec):
        """The rows of lanes of a resident pass over rows of `groups` columns of `lanes` lanes of `vec`-wide vectors,
        `held` rows a thread: `BLOCK_SIZE` // lanes, or where that gives fewer blocks than multiprocessors, as many as
        give each one a block with a column's blocks at most the multiprocessors ((4096, 64) float16: 8, 128 blocks,
        not 32), at the fewest a warp and `vec` (the last block's threads merge the column's lanes * vec maps, one
        thread a map at least: mergeLane in the source)."""
        multiprocessors = Driver.multiprocessorCount()
        rowLanes = BLOCK_SIZE // lanes
        if groups * ceilDiv(rows, held * rowLanes) >= multiprocessors:
            return rowLanes
        filling = ceilDiv(multiprocessors, groups)
        fewest = max(ceilDiv(WARP_SIZE, lanes), vec)
        for candidate in (rows // (held * filling), ceilDiv(rows, held * filling)):
            candidate = min(rowLanes, max(fewest, candidate))
            if ceilDiv(rows, held * candidate) <= multiprocessors:
                return candidate
        return rowLanes

    def prepareResident(self, kind, vectors, reconstruct):
        """(the resident pass `kind` at `vectors` on `splits` blocks per map or column (grid groups * splits), the
        partials per array of its workspace: maps * splits over rows, else 0), or None where it does not serve
        (`residentShape`)."""
        shape = self.residentShape(kind, vectors)
        if shape is None:
            return None
        held, block, groups, splits = shape
        statics = dict(self.view(vectors), splits=splits, **self.fusedStatics(reconstruct))
        if kind != "grad":
            dynamic = RESIDENT_TRAIN if self.spatial else ROWS_RESIDENT_TRAIN
            statics.update(f_y=0, f_resgrad=0, o_fold=0, **self.momentsStatics())
        else:
            dynamic = RESIDENT_GRAD if self.spatial else ROWS_RESIDENT_GRAD
            statics.update(p_var=0, p_scalegrad=0, p_biasgrad=0, p_epsilon=self.epsilon, p_invM=1.0 / self.m,
                           f_residual=0, o_var=0, o_epsilon=self.epsilon, o_fold=0)
        signature, fields = (declared.residentPasses if self.spatial else declared.rowsResidentPasses)[kind]
        launch = kernels.prepared(signature, (groups * splits, 1, 1), block,
                                  self.instance(vectors, held=held, **fields), dynamic, **statics)
        return launch, 0 if self.spatial else self.view3[1] * splits

    @staticmethod
    def partialsWorkspace(partials, count):
        """(a pool block, its `count` arrays of `partials` floats each): the partials of a reduction or of a resident
        pass over rows (a float per map and block of a column), or (None, ()) where there are none (the spatial
        resident passes: their sums stay in the source). A pool block of its own per call (a plan serves every module
        of its shape, in any thread), no GPUArray; the caller keeps it until the kernels are queued (the pool reuses a
        block only for work queued after them)."""
        if not partials:
            return None, ()
        workspace = memoryPool.allocate(count * 4 * partials)
        return workspace, tuple(workspace.ptr + 4 * partials * n for n in range(count))

    def prepareApply(self, mode, vectors, fused, reconstruct):
        statics = dict(self.view(vectors, flat=True), p_epsilon=self.epsilon,
                       **(self.fusedStatics(reconstruct) if fused else {}))
        dynamic = ("x", "dy", "out") + CHANNEL + (FUSED if fused else ())
        if self.spatial:
            signature = declared.applySpatialFused if fused else declared.applySpatial
        else:
            signature = declared.applyRowsFused if fused else declared.applyRows
        return kernels.prepared(signature, lambda resident: self.applyGrid(vectors, resident), self.block(vectors),
                                self.instance(vectors, mode=mode), dynamic, **statics)

    def prepareGrad(self, vectors, fused, reconstruct):
        """(the gradient sums' launch, the merge's launch or None where the sums kernel merges)."""
        if self.spatial:
            signature = declared.gradSpatialFused if fused else declared.gradSpatial
        else:
            signature = declared.gradRowsFused if fused else declared.gradRows
        statics = dict(self.view(vectors), o_epsilon=self.epsilon)
        if fused:
            statics.update(self.fusedStatics(reconstruct), p_epsilon=self.epsilon)
        dynamic = GRAD + (CHANNEL + FUSED if fused else ())
        walk = self.reductionWalk(vectors, fused)
        grad = kernels.prepared(signature, lambda resident: self.reductionGrid(vectors, walk, resident),
                                self.block(vectors), self.instance(vectors, walk=walk), dynamic, **statics)
        splits = grad.grid[1]
        if self.folds(vectors, walk, splits):
            return grad, None
        return grad, kernels.prepared(declared.sumsMerge, (self.view3[1], 1, 1), (BLOCK_SIZE, 1, 1), None, SUMS,
                                      splits=splits, maps=self.view3[1], o_epsilon=self.epsilon, o_fold=0)

    def prepareRenormStatistics(self):
        grid, block = grid1d(self.maps, PER_MAP_BLOCK)
        return kernels.prepared(declared.renormStatistics, grid, block, None, RENORM_STATISTICS, maps=self.maps,
                                epsilon=self.epsilon)

    def prepareRenormCombine(self):
        grid, block = grid1d(self.maps, PER_MAP_BLOCK)
        return kernels.prepared(declared.renormCombine, grid, block, None, ("r", "x", "d", "y", "out"), maps=self.maps)

    # --- the passes

    def reduceMoments(self, x, savedMean, savedInvstd, train=None, savedVar=None, wide=None):
        """Partial moments per block (exact group moments within a thread, Chan across threads), merged per map in
        double precision by each column's last block (or the merge kernel), which writes the saved statistics,
        `savedVar` (the biased variance) where given, `wide` (float64 (mean, biased variance)) where given, and with
        `train` (a `Contract.TrainForward`) its running update: by its factor, not for maps whose statistics are not
        finite where it has a skip counter (those count 1 there, written to its mirror too), what the update overwrites
        saved first where it has a backup. One launch where the partials per column are few (`FOLD_PARTIALS`)."""
        stats, merge = self.launch(self.prepareStats, self.vectorWidth(x))
        # NOTE: the workspace stays alive until the kernels are queued
        workspace, (pn, pmean, pm2) = self.partialsWorkspace(stats.grid[1] * self.maps, 3)
        if train is None:
            wideMean, wideVar = (0, 0) if wide is None else (wide[0].ptr, wide[1].ptr)
            values = (x.ptr, pn, pmean, pm2, 0.0, savedMean.ptr, savedInvstd.ptr, 0, 0, ptr(savedVar), 0, 0, 0, 0.0,
                      wideMean, wideVar)
        else:
            values = (x.ptr, pn, pmean, pm2, train.factor, savedMean.ptr, savedInvstd.ptr, ptr(train.mean),
                      ptr(train.var), ptr(savedVar), ptr(train.skipped), ptr(train.mirror), ptr(train.backup),
                      train.stamp or 0.0, 0, 0)
        stats(*values, int(merge is None))
        if merge is not None:
            merge(*values)

    def apply(self, mode, x, dy, out, channel, fused=None):
        """One elementwise pass of `mode` (``declared.modes``) writing `out`, with the per-channel values `channel`
        (the addresses and 1 / m of `CHANNEL`); with `fused` (the residual, the output y, the residual's gradient),
        the fused kernels."""
        if fused is None:
            vectors = self.vectorWidth(x, dy, out, kinds=APPLY_SEGMENTS)
            self.launch(self.prepareApply, mode, vectors, False, False)(ptr(x), ptr(dy), out.ptr, *channel)
            return
        vectors = self.vectorWidth(x, dy, out, *fused, kinds=FUSED_APPLY_SEGMENTS)
        self.launch(self.prepareApply, mode, vectors, True, x is None)(
            ptr(x), ptr(dy), out.ptr, *channel, *map(ptr, fused)
        )

    def reduceGradient(self, x, dy, mean, sums, fused, channel):
        """Partial sums of dz and dz * (x - mean) per block, added up per map by each column's last block (or the merge
        kernel), which writes the parameter gradients: `sums` gives (invstd, var, scalegrad, biasgrad), the scale
        gradient's factor from invstd of the batch, or where it is 0 from the running variance `var`. One launch where
        the partials per column are few (`FOLD_PARTIALS`)."""
        if fused is None:
            vectors = self.vectorWidth(x, dy)
        else:
            vectors = self.vectorWidth(x, dy, fused[1], kinds=FUSED_SEGMENTS)
        grad, merge = self.launch(self.prepareGrad, vectors, fused is not None, x is None)
        # NOTE: as in reduceMoments
        workspace, (psum, pdot) = self.partialsWorkspace(grad.grid[1] * self.maps, 2)
        grad(ptr(x), dy.ptr, ptr(mean), psum, pdot, *sums, int(merge is None),
             *((*channel, *map(ptr, fused)) if fused else ()))
        if merge is not None:
            merge(psum, pdot, *sums)

    # --- the primitives

    def trainForward(self, call):
        """Kernels: where a map's slice (over rows, a column of channels) fits in its blocks' registers
        (`residentShape`), the resident forward alone (x read once: the statistics, the running update, the
        normalization fused with the activation and residual; over rows with its partials in a pool block); else
        partial moments merged per map with the running update -> normalization (fused likewise). In place when `out`
        is `data`: the statistics are taken first."""
        resident = None
        if self.residentCandidate:
            kind = "train" if call.residual is None else "trainResidual"
            vectors = self.vectorWidth(call.data, call.out, call.residual)
            resident = self.launch(self.prepareResident, kind, vectors, False)
        if resident is None:
            self.reduceMoments(call.data, call.savemean, call.saveinvvar, call)
            self.normalizeWith(call, call.savemean, call.saveinvvar)
            return
        launch, partials = resident
        # NOTE: the workspace stays alive until the kernel is queued
        workspace, partials = self.partialsWorkspace(partials, 3)
        launch(call.data.ptr, call.out.ptr, *partials, call.scale.ptr, call.bias.ptr, ptr(call.residual), call.factor,
               call.savemean.ptr, call.saveinvvar.ptr, ptr(call.mean), ptr(call.var), 0, ptr(call.skipped),
               ptr(call.mirror), ptr(call.backup), call.stamp or 0.0, 0, 0)

    def normalizeWith(self, call, savemean, saveinvvar):
        channel = (savemean.ptr, saveinvvar.ptr, 0, call.scale.ptr, call.bias.ptr, 0, 0, 0.0)
        fused = None if self.activation is None and call.residual is None else (call.residual, None, None)
        self.apply("trainForward", call.data, None, call.out, channel, fused)

    def normalize(self, call):
        """The normalization kernel of `trainForward` alone."""
        self.normalizeWith(call, call.savemean, call.saveinvvar)

    def batchStatistics(self, call):
        """The kernels of `reduceMoments` alone; float32 outputs receive the float32 statistics, float64 ones the
        double-precision results of the merge (what processes exchange: no float32 rounding first). The float32 values
        the kernel must also write go to a scratch array."""
        if call.mean.dtype == np.float64:
            scratch = empty((2, self.maps), np.float32)
            self.reduceMoments(call.data, scratch[0], scratch[1], wide=(call.mean, call.var))
            return
        scratch = empty((self.maps,), np.float32)
        self.reduceMoments(call.data, call.mean, scratch, savedVar=call.var)

    def evalForward(self, call):
        """One kernel, one read and one write per element; in place when `out` is `data` (no workspace, no pool
        block)."""
        channel = (call.mean.ptr, 0, call.var.ptr, call.scale.ptr, call.bias.ptr, 0, 0, 0.0)
        fused = None if self.activation is None and call.residual is None else (call.residual, None, None)
        self.apply("evalForward", call.data, None, call.out, channel, fused)

    def backward(self, call):
        """Kernels: where a map's slice (over rows, a column of channels) fits in its blocks' registers
        (`residentShape`) and dx is asked for, the resident backward alone (x and dy read once: the sums, the parameter
        gradients, dx); else partial sums added up per map (times the batch invstd) -> dx pass. After a fused forward
        the fused kernels (dz from `outdata`; `data` None: x - mean rebuilt from it)."""
        y, resgrad = (None, None) if self.activation is None else (call.outdata, call.resgrad)
        resident = None
        if self.residentCandidate and call.ingrad is not None:
            vectors = self.vectorWidth(call.data, call.grad, call.ingrad, y, resgrad)
            resident = self.launch(self.prepareResident, "grad", vectors, call.data is None)
        if resident is not None:
            launch, partials = resident
            # NOTE: as in trainForward
            workspace, partials = self.partialsWorkspace(partials, 2)
            launch(ptr(call.data), call.grad.ptr, call.ingrad.ptr, *partials, call.savemean.ptr, call.saveinvvar.ptr,
                   call.scale.ptr, ptr(call.bias), ptr(y), ptr(resgrad), call.saveinvvar.ptr, call.scalegrad.ptr,
                   call.biasgrad.ptr)
            return
        fused = None if self.activation is None else (None, y, resgrad)
        channel = [call.savemean.ptr, call.saveinvvar.ptr, 0, call.scale.ptr, ptr(call.bias), 0, 0, 0.0]
        sums = (call.saveinvvar.ptr, 0, call.scalegrad.ptr, call.biasgrad.ptr)
        self.reduceGradient(call.data, call.grad, call.savemean, sums, fused, channel)
        if call.ingrad is not None:
            channel[5:] = call.scalegrad.ptr, call.biasgrad.ptr, 1.0 / self.m
            self.apply("backward", call.data, call.grad, call.ingrad, channel, fused)

    def inputGradient(self, call):
        """The dx pass of `backward` alone, with the given sums over `count` elements per map."""
        channel = (call.savemean.ptr, call.saveinvvar.ptr, 0, call.scale.ptr, 0, call.scalegrad.ptr,
                   call.biasgrad.ptr, 1.0 / call.count)
        self.apply("backward", call.data, call.grad, call.ingrad, channel)

    def frozenBackward(self, call):
        """Kernels: partial sums added up per map (times the running invstd) -> dx pass that reads grad only (and the
        output, after a fused forward)."""
        fused = None if self.activation is None else (None, call.outdata, call.resgrad)
        channel = (0,) * 7 + (0.0,)
        sums = (0, call.var.ptr, call.scalegrad.ptr, call.biasgrad.ptr)
        self.reduceGradient(call.data, call.grad, call.mean, sums, fused, channel)
        if call.ingrad is not None:
            channel = (0, 0, call.var.ptr, call.scale.ptr, 0, 0, 0, 0.0)
            self.apply("frozenBackward", None, call.grad, call.ingrad, channel, fused)

    def renormStatistics(self, call):
        """One kernel, one thread per map (``bnRenormStatistics``, the twin of `NumpyPlan.renormStatistics`)."""
        clipping = call.clipping
        self.launch(self.prepareRenormStatistics)(
            call.batchMean.ptr, call.batchVar.ptr, call.count, call.factor, call.renormMomentum, clipping.rmin,
            clipping.rmax, clipping.dmax, call.scale.ptr, call.bias.ptr, call.savemean.ptr, call.saveinvvar.ptr,
            call.r.ptr, call.d.ptr, call.correctedScale.ptr, call.correctedBias.ptr, ptr(call.mean), ptr(call.var),
            call.renormMean.ptr, call.renormStd.ptr, ptr(call.skipped),
        )

    def renormCombine(self, call):
        """One kernel, one thread per map (``bnRenormCombine``)."""
        self.launch(self.prepareRenormCombine)(call.r.ptr, call.x.ptr, call.d.ptr, ptr(call.y), call.out.ptr)
