// Batch normalization on the CPU (Ioffe & Szegedy 2015, arXiv 1502.03167): the C twin of BatchNorm.cu.
//
// Plain C99 with OpenMP where the compiler has it (without it every pragma is ignored and one core runs). The CPU
// backend compiles this file on first use and loads it with ctypes (Backend/Cpu/SourceLibrary.py); its entry points
// are the primitives of Backend/BatchNormPlan.py, called by Backend/Cpu/CBatchNorm.py with one packed struct each.
//
// Every tensor is viewed as (outer, maps, inner) in C order: element (o, c, i) lives at (o * maps + c) * inner + i.
//   - spatial (inner > 1): a map is `outer` contiguous segments of `inner` elements; its m = outer * inner elements
//     are walked by their index e in [0, m) (o = e / inner, i = e % inner), cut into runs that are contiguous;
//   - rows (inner == 1: per-activation (N, C) or channels-last): a map is a column of an (outer, maps) matrix; a group
//     of adjacent columns (wide: a row of a group is a long run the prefetchers follow) is walked in blocks of
//     BLOCK_ROWS rows, a block in slices of SLICE_BYTES of columns whose sums and factors stay in SIMD registers.
// Data is float, double or _Float16 (computed in float; only where the compiler has the type). Per-map arrays
// (parameters, statistics, gradients) are float or double each, as bit k of `doubleMask` says of the k-th per-map
// pointer of the call; per-map arithmetic (merges, running update, coefficients) is in double, in chunks of maps the
// compiler vectorizes, shared among the threads.
//
// Work: a tile is (group, [a0, a1)): one map (spatial, a = element index) or a group of columns (rows, a = row).
//   - fused: when the groups alone keep every thread busy, a thread takes a whole group, computes its statistics and
//     normalizes it right away, walking it backwards so that the part it read last is still in cache: the data comes
//     from memory once for a group that fits in the core's L2 (the reverse walk keeps the tail of a larger one);
//   - split: otherwise (few maps, or fewer than MIN_RUN columns per thread) the groups are cut along a into tiles
//     shared among the threads; each thread's partial results are merged per map in tile order (deterministic), then
//     each thread walks its own tiles backwards for the second pass.
// Per-map workspaces live in one block per call, kept for the next call (see takeBlock).
//
// Numerics: statistics are taken in blocks that stay in L1 (BLOCK elements of a map, or BLOCK_ROWS rows of a slice),
// each about a centre in the compute type, from the sums of the deviations d from it and of d^2: the block's mean is
// centre + sum(d) / n and its m2 is sum(d^2) - sum(d)^2 / n. The centre of a spatial block, and of the first block of
// rows of a tile, is the block's own mean (a walk of its own), which makes these the corrected two-pass moments
// (Chan, Golub & LeVeque 1983) whatever the centre's rounding; a later block of rows is centred on the mean of the
// rows before it, so what it adds to m2 beyond its own spread is the merge term below, computed exactly. Blocks are
// merged in double with the pairwise formula of Chan, Golub & LeVeque (1979). A map whose mean is 1e4 times its
// standard deviation keeps its variance to about 1e-6 relative. Normalization subtracts the mean as two floats
// (hi + lo; lo is folded into the pass's offset in double), so the output does not lose the digits of the mean that
// one float cannot hold. Gradient sums add each block's compute-type sums in double.
//
// Index arithmetic is 64-bit: a tensor may hold more than 2^31 elements.

#ifndef BN_DATA

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#if defined(_MSC_VER)
#define BN_EXPORT __declspec(dllexport)
#else
#define BN_EXPORT __attribute__((visibility("default")))
#endif

// Elements per statistics block (spatial) and rows per block (rows layout; a block's slice stays in L1).
#define BLOCK 4096
#define BLOCK_ROWS 16
// Columns per group in the rows layout: at most MAX_WIDTH; groups are shared out whole only when every thread gets
// at least MIN_RUN columns (a run of a row the prefetchers follow); widths are multiples of WIDTH_STEP.
#define MAX_WIDTH 4096
#define MIN_RUN 1024
#define WIDTH_STEP 16
// Below this many elements a call runs on the calling thread: waking the team would cost more than it saves.
#define PARALLEL_ELEMENTS 32768
// Smallest tile of the split path, in elements.
#define MIN_TILE 16384
// The rows layout works on slices of this many bytes of compute-type columns (64 floats, 32 doubles): a slice's
// accumulators and factors stay in registers while the rows of a block stream past.
#define SLICE_BYTES 256

#if defined(__GNUC__)
#define BN_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define BN_INLINE static __forceinline
#else
#define BN_INLINE static inline
#endif

// Return codes of every entry point.
#define BN_OK 0
#define BN_OUT_OF_MEMORY 1

typedef int64_t i64;

static i64 minI64(i64 a, i64 b) { return a < b ? a : b; }
static i64 maxI64(i64 a, i64 b) { return a > b ? a : b; }
static i64 ceilDiv(i64 a, i64 b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------------------------
// Per-map arrays of either float type

// Per-map work runs in chunks of at most this many maps, on double arrays on the stack, in loops the compiler
// vectorizes.
#define MAP_CHUNK 256

// Maps [c, c + n) of a per-map array as doubles.
static void mapLoad(double *dst, const void *ary, unsigned doubleMask, int bit, i64 c, i64 n)
{
    if ((doubleMask >> bit) & 1u)
        memcpy(dst, (const double *)ary + c, sizeof(double) * n);
    else
    {
        const float *src = (const float *)ary + c;
        for (i64 j = 0; j < n; j++)
            dst[j] = (double)src[j];
    }
}

// Writes maps [c, c + n) of a per-map array from doubles.
static void mapStore(void *ary, unsigned doubleMask, int bit, i64 c, i64 n, const double *src)
{
    if ((doubleMask >> bit) & 1u)
        memcpy((double *)ary + c, src, sizeof(double) * n);
    else
    {
        float *dst = (float *)ary + c;
        for (i64 j = 0; j < n; j++)
            dst[j] = (float)src[j];
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Geometry: groups, tiles, and which path a call takes

typedef struct
{
    i64 outer, maps, inner;
    int rows;       // inner == 1
    i64 width;      // maps per group: 1 (spatial) or up to MAX_WIDTH columns (rows)
    i64 groups;     // ceil(maps / width)
    i64 extent;     // length of a group along a: m elements (spatial) or outer rows (rows)
    i64 chunk;      // length of a tile along a
    i64 chunks;     // tiles per group; 1 on the fused path
    i64 tiles;      // groups * chunks, group-major
    int threads;    // threads the call may use
} Geometry;

static Geometry geometryOf(i64 outer, i64 maps, i64 inner, int threads)
{
    Geometry geo;
    geo.outer = outer, geo.maps = maps, geo.inner = inner;
    geo.rows = inner == 1;

    i64 total = outer * maps * inner;
    geo.threads = total < PARALLEL_ELEMENTS ? 1 : (threads < 1 ? 1 : threads);

    if (geo.rows)
    {
        // NOTE: a group's rows are long runs (narrow groups would have each thread pick pieces out of every row, and
        // the prefetchers lose them): the groups are made a multiple of the threads where each still holds MIN_RUN
        // columns (the fused path), else kept as they are and cut along the rows (the split path); the widths are
        // equal but for the last group's
        i64 groups = ceilDiv(maps, MAX_WIDTH);
        if (maps >= (i64)geo.threads * MIN_RUN)
            groups = ceilDiv(groups, geo.threads) * geo.threads;
        i64 width = ceilDiv(ceilDiv(maps, groups), WIDTH_STEP) * WIDTH_STEP;
        geo.width = minI64(maps, width);
        geo.extent = outer;
    }
    else
    {
        geo.width = 1;
        geo.extent = outer * inner;
    }
    geo.groups = ceilDiv(maps, geo.width);

    // NOTE: fused when whole groups, handed out in equal numbers, balance the threads: the busiest thread has at
    // most 15% more maps than an even share
    i64 busiest = ceilDiv(geo.groups, geo.threads) * geo.width;
    int fused = geo.threads == 1 || (double)busiest <= 1.15 * (double)maps / geo.threads;
    if (fused)
        geo.chunks = 1;
    else
    {
        // NOTE: a rows tile spans at least two blocks of rows, so that its partial results (3 doubles per column)
        // stay small next to its data
        i64 wanted = ceilDiv(4 * (i64)geo.threads, geo.groups);
        i64 most = geo.rows ? minI64(geo.extent / (2 * BLOCK_ROWS), geo.extent * geo.width / MIN_TILE)
                            : geo.extent / MIN_TILE;
        geo.chunks = maxI64(1, minI64(wanted, most));
    }
    geo.chunk = ceilDiv(geo.extent, geo.chunks);
    geo.chunks = ceilDiv(geo.extent, geo.chunk);
    geo.tiles = geo.groups * geo.chunks;
    return geo;
}

static int fusedPath(const Geometry *geo) { return geo->chunks == 1; }

// The first row of the last block of rows [a0, a1): blocks start at a0 + multiples of BLOCK_ROWS, as in the moments.
static i64 lastBlockStart(i64 a0, i64 a1) { return a0 + (a1 - 1 - a0) / BLOCK_ROWS * BLOCK_ROWS; }

static i64 groupFirstMap(const Geometry *geo, i64 group) { return group * geo->width; }

static i64 groupWidth(const Geometry *geo, i64 group)
{
    return minI64(geo->width, geo->maps - group * geo->width);
}

// The tiles [first, last) a thread owns on the split path: a contiguous share, so it walks its own tiles back.
static void threadShare(const Geometry *geo, i64 *first, i64 *last)
{
    i64 team = omp_get_num_threads(), me = omp_get_thread_num();
    *first = geo->tiles * me / team;
    *last = geo->tiles * (me + 1) / team;
}

// Tile t of the split path (group-major): its group and its span [a0, a1) along a.
static i64 tileSpan(const Geometry *geo, i64 t, i64 *a0, i64 *a1)
{
    *a0 = (t % geo->chunks) * geo->chunk;
    *a1 = minI64(*a0 + geo->chunk, geo->extent);
    return t / geo->chunks;
}

// Runs body(job) on a team of `threads` threads, or straight on the calling thread for one: libgomp builds and tears
// down a team for every parallel region, even one whose if clause is false (about a microsecond, more than a small
// call's whole work). The bodies' worksharing loops and barriers are orphaned constructs, which bind to a team of one
// when no region encloses them.
static void runTeam(void (*body)(const void *job), const void *job, int threads)
{
#ifdef _OPENMP
    if (threads > 1)
    {
#pragma omp parallel num_threads(threads)
        body(job);
        return;
    }
#else
    (void)threads;
#endif
    body(job);
}

// ---------------------------------------------------------------------------------------------------------------
// Chan's pairwise merge: (n, mean, m2) += a block of nb elements with mean meanB and m2B; n may be 0.

static void chanMerge(double *n, double *mean, double *m2, double nb, double meanB, double m2B)
{
    double total = *n + nb;
    double delta = meanB - *mean;
    *mean += delta * (nb / total);
    *m2 += m2B + delta * delta * (*n * nb / total);
    *n = total;
}

// Per-call workspace, one block: per-map arrays in double (statistics, or a backward's invstd and sums), the split
// path's partial results, and the per-map coefficients of the passes in the compute type (see Coefficients).
typedef struct
{
    double *mean, *m2;          // merged statistics; a backward keeps invstd in m2
    double *sumA, *sumB;        // backward sums: sum(g), sum(g * (x - mean))
    double *partials;           // split path: per tile and column, 3 values
    char *coefficients;         // 5 arrays of `coefficientStride` compute-type numbers
    i64 coefficientStride;
    void *block;
} Scratch;

// The last block a call gave back, kept so that the next call does not map fresh pages for its per-map arrays (a
// block the size of a few hundred kilobytes comes from mmap, and freeing it unmaps it). A call takes it (or allocates
// a larger one) and gives its block back, freeing the one found there: concurrent calls each work on their own block.
// Without atomic exchange every call allocates and frees.
typedef struct
{
    size_t bytes;
} BlockHead;
#define BLOCK_HEAD 64

#if defined(__GNUC__)
#define BN_SWAP_BLOCK(slot, value) __atomic_exchange_n((slot), (value), __ATOMIC_ACQ_REL)
#elif defined(_MSC_VER)
#include <intrin.h>
#define BN_SWAP_BLOCK(slot, value) _InterlockedExchangePointer((void *volatile *)(slot), (value))
#endif

#ifdef BN_SWAP_BLOCK
static void *keptBlock = NULL;
#endif

static void *takeBlock(size_t bytes)
{
    BlockHead *head = NULL;
#ifdef BN_SWAP_BLOCK
    head = (BlockHead *)BN_SWAP_BLOCK(&keptBlock, (void *)NULL);
    if (head != NULL && head->bytes >= bytes)
        return head;
#endif
    free(head);
    head = malloc(BLOCK_HEAD + bytes);
    if (head != NULL)
        head->bytes = bytes;
    return head;
}

static void giveBlock(void *block)
{
#ifdef BN_SWAP_BLOCK
    free(BN_SWAP_BLOCK(&keptBlock, block));
#else
    free(block);
#endif
}

// Bytes rounded up to a multiple of 64, so that every array of a block starts on a cache line of the block.
static size_t lineBytes(i64 bytes) { return (size_t)ceilDiv(bytes, 64) * 64; }

static int allocScratch(Scratch *s, const Geometry *geo, size_t calcBytes)
{
    i64 maps = geo->maps;
    size_t perMap = lineBytes(sizeof(double) * maps);
    size_t partials = fusedPath(geo) ? 0 : lineBytes(sizeof(double) * 3 * geo->tiles * geo->width);
    s->coefficientStride = (i64)(lineBytes((i64)calcBytes * maps) / calcBytes);
    size_t coefficients = 5 * (size_t)s->coefficientStride * calcBytes;

    s->block = takeBlock(4 * perMap + partials + coefficients);
    if (s->block == NULL)
        return BN_OUT_OF_MEMORY;
    char *at = (char *)s->block + BLOCK_HEAD;
    s->mean = (double *)at, at += perMap;
    s->m2 = (double *)at, at += perMap;
    s->sumA = (double *)at, at += perMap;
    s->sumB = (double *)at, at += perMap;
    s->partials = (double *)at, at += partials;
    s->coefficients = at;
    return BN_OK;
}

static void freeScratch(Scratch *s) { giveBlock(s->block); }

// Which per-map outputs a statistics merge writes, and how (see finalizeStatistics).
typedef struct
{
    void *savedMean, *savedSecond; // the batch mean and invstd (training) or biased variance (moments)
    int secondIsVariance;
    void *runMean, *runVar;        // nullable: the running update
    double epsilon, factor;
    unsigned doubleMask;
    int bitSavedMean, bitSavedSecond, bitRunMean, bitRunVar;
    float *skipped;                // nullable: the per-map counts of running updates skipped (see finalizeStatistics)
    float *mirror;                 // nullable: where a count the update changes is written too (a host mirror's)
    float *backup;                 // nullable: where the running statistics and counts are saved first, and the stamp
    double stamp;
    i64 maps;
} StatisticsOutputs;

// Saves maps [c, c + n) of the running statistics (their values before the update) and of the skip counts in the
// backup's rows 0, 1 and 2 (float32, `maps` each), and the call's stamp after them (BatchNormPlan.trainForward): what
// a caller that raises after the call puts back.
static void saveRunning(const StatisticsOutputs *out, i64 c, i64 n, const double *runMean, const double *runVar)
{
    i64 maps = out->maps;
    for (i64 j = 0; j < n; j++)
    {
        out->backup[c + j] = (float)runMean[j];
        out->backup[maps + c + j] = (float)runVar[j];
        out->backup[2 * maps + c + j] = out->skipped != NULL ? out->skipped[c + j] : 0.0f;
    }
    if (c == 0)
        out->backup[3 * maps] = (float)out->stamp;
}

// Writes the statistics of maps [c, c + n), n <= MAP_CHUNK, from their merged (mean, m2) over m elements each, and
// their invstd into `invstd`.
static void finalizeStatistics(const StatisticsOutputs *out, i64 c, i64 n, double m, const double *mean,
                               const double *m2, double *invstd)
{
    double sigma2[MAP_CHUNK], runMean[MAP_CHUNK], runVar[MAP_CHUNK];
    unsigned mask = out->doubleMask;
    for (i64 j = 0; j < n; j++)
    {
        double v = m2[j] / m;
        sigma2[j] = v < 0.0 ? 0.0 : v;
        invstd[j] = 1.0 / sqrt(sigma2[j] + out->epsilon);
    }
    mapStore(out->savedMean, mask, out->bitSavedMean, c, n, mean);
    mapStore(out->savedSecond, mask, out->bitSavedSecond, c, n, out->secondIsVariance ? sigma2 : invstd);
    if (out->runMean != NULL)
    {
        double f = out->factor, unbias = m / (m - 1.0);
        mapLoad(runMean, out->runMean, mask, out->bitRunMean, c, n);
        mapLoad(runVar, out->runVar, mask, out->bitRunVar, c, n);
        if (out->backup != NULL)
            saveRunning(out, c, n, runMean, runVar);
        // NOTE: the running variance is unbiased (m / (m - 1)), as in Theano and cuDNN
        for (i64 j = 0; j < n; j++)
        {
            // NOTE: with a skip counter, a map whose batch statistics are not finite (a NaN or inf in its data, or a
            // variance past the double range) keeps its running statistics, and its counter counts the batch
            if (out->skipped != NULL && !(isfinite(mean[j]) && isfinite(sigma2[j])))
            {
                out->skipped[c + j] += 1.0f;
                if (out->mirror != NULL)
                    out->mirror[c + j] = out->skipped[c + j];
                continue;
            }
            runMean[j] = (1.0 - f) * runMean[j] + f * mean[j];
            runVar[j] = (1.0 - f) * runVar[j] + f * sigma2[j] * unbias;
        }
        mapStore(out->runMean, mask, out->bitRunMean, c, n, runMean);
        mapStore(out->runVar, mask, out->bitRunVar, c, n, runVar);
    }
}

// The arguments of the entry points: one struct each, packed by the caller in this order (Backend/Cpu/CBatchNorm.py
// declares the same layouts as struct formats and checks their sizes against bnArgumentBytes), so that a call passes
// one pointer instead of a dozen values.
typedef struct
{
    i64 outer, maps, inner; // the (outer, maps, inner) view
    int threads;
    unsigned doubleMask;    // bit k set: the k-th per-map pointer of the entry (numbered at each entry) is double
} BnView;

typedef struct
{
    BnView view;
    const void *x;
    void *y;
    const void *scale, *bias;
    void *runMean, *runVar, *savedMean, *savedInvstd;
    float *skipped;
    double epsilon, factor;
    float *backup;          // nullable: 3 * maps + 1 floats (see saveRunning)
    double stamp;
    float *mirror;          // nullable, with skipped: receives the counts the update changes
} BnTrainForwardArgs;

typedef struct
{
    BnView view;
    const void *x;
    void *savedMean, *savedVar;
} BnMomentsArgs;

typedef struct
{
    BnView view;
    const void *x;
    void *y;
    const void *scale, *bias, *centre, *second;
    int secondIsVariance;
    double epsilon;
} BnNormalizeArgs;

typedef struct
{
    BnView view;
    const void *x, *g;
    void *dx;
    int mode;
    const void *scale, *centre, *second;
    void *scalegrad, *biasgrad;
    double epsilon, count;
} BnBackwardArgs;

// The bytes of each entry's argument struct, in the order bnTrainForward, bnMoments, bnNormalize, bnBackward.
BN_EXPORT size_t bnArgumentBytes(int entry)
{
    static const size_t bytes[] = {
        sizeof(BnTrainForwardArgs), sizeof(BnMomentsArgs), sizeof(BnNormalizeArgs), sizeof(BnBackwardArgs),
    };
    return entry >= 0 && entry < 4 ? bytes[entry] : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The type-generic part, compiled once per data type

#define BN_CONCAT2(a, b) a##_##b
#define BN_CONCAT(a, b) BN_CONCAT2(a, b)
#define BN_NAME(name) BN_CONCAT(name, BN_SUFFIX)

#define BN_DATA float
#define BN_CALC float
#define BN_SUFFIX f32
#include "BatchNorm.c"
#undef BN_DATA
#undef BN_CALC
#undef BN_SUFFIX

#define BN_DATA double
#define BN_CALC double
#define BN_SUFFIX f64
#include "BatchNorm.c"
#undef BN_DATA
#undef BN_CALC
#undef BN_SUFFIX

#ifdef __FLT16_MAX__
#define BN_DATA _Float16
#define BN_CALC float
#define BN_SUFFIX f16
#include "BatchNorm.c"
#undef BN_DATA
#undef BN_CALC
#undef BN_SUFFIX
#define BN_HAS_F16 1
#else
#define BN_HAS_F16 0
#endif

// Build facts for the loader: whether float16 entry points exist and whether OpenMP threads are there.
BN_EXPORT int bnHasFloat16(void) { return BN_HAS_F16; }

BN_EXPORT int bnHasOpenMP(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#else // BN_DATA: the type-generic part

typedef BN_DATA BN_NAME(Data);
typedef BN_CALC BN_NAME(Calc);
#define Data BN_NAME(Data)
#define Calc BN_NAME(Calc)
#define SLICE ((i64)(SLICE_BYTES / sizeof(Calc)))

// Runs `call` for each slice of the columns [0, w) of a group, with j its first column and len its width: a whole
// slice gets len as the constant SLICE, so that the inlined slice function keeps its arrays in registers.
#define BN_FOR_SLICES(w, j, len, call)                                                                            \
    for (i64 j = 0; j < (w); j += SLICE)                                                                       \
    {                                                                                                          \
        if ((w) - j >= SLICE)                                                                                  \
        {                                                                                                      \
            const i64 len = SLICE;                                                                             \
            call;                                                                                              \
        }                                                                                                      \
        else                                                                                                   \
        {                                                                                                      \
            const i64 len = (w) - j;                                                                           \
            call;                                                                                              \
        }                                                                                                      \
    }

// Per-map coefficients of a pass in the compute type, indexed by map. The passes subtract hi alone: what lo adds is
// folded into b or offset in double (see setNormalizations and setGradientFactors) or taken off the sums.
typedef struct
{
    Calc *hi, *lo;              // the centre as two compute-type numbers: mean = hi + lo
    Calc *a, *b, *offset;       // the pass's factors (see each pass)
} BN_NAME(Coefficients);
#define Coefficients BN_NAME(Coefficients)

// Takes the call's scratch block (allocScratch) and points k at its coefficient arrays; BN_OUT_OF_MEMORY when the
// block cannot be had.
static int BN_NAME(takeScratch)(Scratch *s, Coefficients *k, const Geometry *geo)
{
    if (allocScratch(s, geo, sizeof(Calc)) != BN_OK)
        return BN_OUT_OF_MEMORY;
    Calc *at = (Calc *)s->coefficients;
    i64 stride = s->coefficientStride;
    k->hi = at, k->lo = at + stride, k->a = at + 2 * stride, k->b = at + 3 * stride, k->offset = at + 4 * stride;
    return BN_OK;
}

// Maps [c, c + n): the centre as hi + lo.
static void BN_NAME(setCentres)(Coefficients *k, i64 c, i64 n, const double *mean)
{
    for (i64 j = 0; j < n; j++)
    {
        Calc hi = (Calc)mean[j];
        k->hi[c + j] = hi;
        k->lo[c + j] = (Calc)(mean[j] - (double)hi);
    }
}

// Maps [c, c + n): the factors of y = ((x - hi) - lo) * a + b, kept as y = (x - hi) * a + (b - lo * a).
static void BN_NAME(setNormalizations)(Coefficients *k, i64 c, i64 n, const double *mean, const double *a,
                                       const double *b)
{
    BN_NAME(setCentres)(k, c, n, mean);
    for (i64 j = 0; j < n; j++)
    {
        Calc ac = (Calc)a[j];
        k->a[c + j] = ac;
        k->b[c + j] = (Calc)(b[j] - (mean[j] - (double)k->hi[c + j]) * (double)ac);
    }
}

// Maps [c, c + n): the factors of dx = g * a + ((x - hi) - lo) * b + offset, kept as
// dx = g * a + (x - hi) * b + (offset - lo * b); a and the centre are set already.
static void BN_NAME(setGradientFactors)(Coefficients *k, i64 c, i64 n, const double *b, const double *offset)
{
    for (i64 j = 0; j < n; j++)
    {
        Calc bc = (Calc)b[j];
        k->b[c + j] = bc;
        k->offset[c + j] = (Calc)(offset[j] - (double)k->lo[c + j] * (double)bc);
    }
}

// Maps [c0, c0 + n) of a training forward or moments: their statistics from the merged (mean, m2) over m elements
// (indexed by map), and, with k given, their normalization factors.
static void BN_NAME(finishStatistics)(const StatisticsOutputs *out, Coefficients *k, const void *scale,
                                      const void *bias, const double *mean, const double *m2, i64 c0, i64 n,
                                      double m)
{
    double invstd[MAP_CHUNK], a[MAP_CHUNK], b[MAP_CHUNK];
    for (i64 c = c0; c < c0 + n; c += MAP_CHUNK)
    {
        i64 len = minI64(MAP_CHUNK, c0 + n - c);
        finalizeStatistics(out, c, len, m, mean + c, m2 + c, invstd);
        if (k == NULL)
            continue;
        mapLoad(a, scale, out->doubleMask, 0, c, len);
        mapLoad(b, bias, out->doubleMask, 1, c, len);
        for (i64 j = 0; j < len; j++)
            a[j] *= invstd[j];
        BN_NAME(setNormalizations)(k, c, len, mean + c, a, b);
    }
}

// The contiguous run of map c's elements (spatial layout) that starts at element e and ends at `end` or at the end
// of e's segment: returns the run's offset in the data and sets its length.
static i64 BN_NAME(runAt)(const Geometry *geo, i64 c, i64 e, i64 end, i64 *len)
{
    i64 o = e / geo->inner, i = e - o * geo->inner;
    *len = minI64(geo->inner - i, end - e);
    return (o * geo->maps + c) * geo->inner + i;
}

// The run that ends at element `end` (exclusive) and starts at `start` or at the start of its segment, for walks
// from the last element to the first.
static i64 BN_NAME(runBefore)(const Geometry *geo, i64 c, i64 start, i64 end, i64 *len)
{
    i64 o = (end - 1) / geo->inner;
    i64 first = maxI64(o * geo->inner, start);
    *len = end - first;
    return (o * geo->maps + c) * geo->inner + (first - o * geo->inner);
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics of a tile: exact (n, mean, m2) per map of the tile, merged from L1-sized blocks (see the file's head)

static void BN_NAME(spatialMoments)(const Data *x, const Geometry *geo, i64 c, i64 e0, i64 e1, double *mean,
                                    double *m2)
{
    double n = 0.0;
    *mean = 0.0, *m2 = 0.0;
    for (i64 b0 = e0; b0 < e1; b0 += BLOCK)
    {
        i64 b1 = minI64(b0 + BLOCK, e1);
        double nb = (double)(b1 - b0);

        Calc sum = 0;
        for (i64 e = b0, len; e < b1; e += len)
        {
            const Data *q = x + BN_NAME(runAt)(geo, c, e, b1, &len);
#pragma omp simd reduction(+ : sum)
            for (i64 i = 0; i < len; i++)
                sum += (Calc)q[i];
        }
        Calc centre = (Calc)((double)sum / nb);

        Calc sumD = 0, sumD2 = 0;
        for (i64 e = b0, len; e < b1; e += len)
        {
            const Data *q = x + BN_NAME(runAt)(geo, c, e, b1, &len);
#pragma omp simd reduction(+ : sumD, sumD2)
            for (i64 i = 0; i < len; i++)
            {
                Calc d = (Calc)q[i] - centre;
                sumD += d;
                sumD2 += d * d;
            }
        }
        double meanB = (double)centre + (double)sumD / nb;
        double m2B = (double)sumD2 - (double)sumD * (double)sumD / nb;
        chanMerge(&n, mean, m2, nb, meanB, m2B > 0.0 ? m2B : 0.0);
    }
}

// One block of rows [b0, b1) over columns [c, c + len), len <= SLICE, merged into the columns' (mean, m2) over the n
// rows before it. The block's moments are taken about a centre in the compute type: the block's own mean for the first
// block (a pass of its own), else the mean so far; from the sums of the deviations d and of d^2, the block's mean is
// centre + sum(d) / nb and its m2 is sum(d^2) - sum(d)^2 / nb, then merged with Chan's formula.
BN_INLINE void BN_NAME(sliceMoments)(const Data *x, i64 maps, i64 c, i64 len, i64 b0, i64 b1, double n,
                                     double *mean, double *m2)
{
    Calc centre[SLICE], sumD[SLICE], sumD2[SLICE];
    double nb = (double)(b1 - b0), invNb = 1.0 / nb, total = n + nb, weightB = nb / total, weightAB = n * nb / total;
    if (n == 0.0)
    {
        Calc sum[SLICE];
        for (i64 j = 0; j < len; j++)
            sum[j] = 0;
        for (i64 r = b0; r < b1; r++)
        {
            const Data *row = x + r * maps + c;
#pragma omp simd
            for (i64 j = 0; j < len; j++)
                sum[j] += (Calc)row[j];
        }
        for (i64 j = 0; j < len; j++)
            centre[j] = (Calc)((double)sum[j] * invNb);
    }
    else
    {
        for (i64 j = 0; j < len; j++)
            centre[j] = (Calc)mean[j];
    }
    for (i64 j = 0; j < len; j++)
        sumD[j] = 0, sumD2[j] = 0;
    for (i64 r = b0; r < b1; r++)
    {
        const Data *row = x + r * maps + c;
#pragma omp simd
        for (i64 j = 0; j < len; j++)
        {
            Calc d = (Calc)row[j] - centre[j];
            sumD[j] += d;
            sumD2[j] += d * d;
        }
    }
    for (i64 j = 0; j < len; j++)
    {
        double meanB = (double)centre[j] + (double)sumD[j] * invNb;
        double m2B = (double)sumD2[j] - (double)sumD[j] * (double)sumD[j] * invNb;
        double delta = meanB - mean[j];
        mean[j] += delta * weightB;
        m2[j] += (m2B > 0.0 ? m2B : 0.0) + delta * delta * weightAB;
    }
}

// Columns [c0, c0 + w) over rows [r0, r1); mean and m2 hold w values.
static void BN_NAME(rowsMoments)(const Data *x, const Geometry *geo, i64 c0, i64 w, i64 r0, i64 r1, double *mean,
                                 double *m2)
{
    i64 maps = geo->maps;
    for (i64 j = 0; j < w; j++)
        mean[j] = 0.0, m2[j] = 0.0;

    for (i64 b0 = r0; b0 < r1; b0 += BLOCK_ROWS)
    {
        i64 b1 = minI64(b0 + BLOCK_ROWS, r1);
        double n = (double)(b0 - r0);
        BN_FOR_SLICES(w, j, len, BN_NAME(sliceMoments)(x, maps, c0 + j, len, b0, b1, n, mean + j, m2 + j));
    }
}

static void BN_NAME(tileMoments)(const Data *x, const Geometry *geo, i64 group, i64 a0, i64 a1, double *mean,
                                 double *m2)
{
    if (geo->rows)
        BN_NAME(rowsMoments)(x, geo, groupFirstMap(geo, group), groupWidth(geo, group), a0, a1, mean, m2);
    else
        BN_NAME(spatialMoments)(x, geo, group, a0, a1, mean, m2);
}

// ---------------------------------------------------------------------------------------------------------------
// Elementwise passes over a tile, walked backwards: y = (x - hi) * a + b (b holds what lo adds, see
// setNormalizations). The rows layout walks blocks of rows from the last, each block slice by slice.

// y over columns [c, c + len) of rows [b0, b1), len <= SLICE, the rows from the last.
BN_INLINE void BN_NAME(sliceNormalize)(const Data *x, Data *y, i64 maps, i64 c, i64 len, i64 b0, i64 b1,
                                       const Coefficients *k)
{
    Calc hi[SLICE], a[SLICE], b[SLICE];
    for (i64 j = 0; j < len; j++)
        hi[j] = k->hi[c + j], a[j] = k->a[c + j], b[j] = k->b[c + j];
    for (i64 r = b1 - 1; r >= b0; r--)
    {
        i64 at = r * maps + c;
#pragma omp simd
        for (i64 j = 0; j < len; j++)
            y[at + j] = (Data)(((Calc)x[at + j] - hi[j]) * a[j] + b[j]);
    }
}

static void BN_NAME(tileNormalize)(const Data *x, Data *y, const Geometry *geo, i64 group, i64 a0, i64 a1,
                                   const Coefficients *k)
{
    if (geo->rows)
    {
        i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group), maps = geo->maps;
        for (i64 b0 = lastBlockStart(a0, a1); b0 >= a0; b0 -= BLOCK_ROWS)
        {
            i64 b1 = minI64(b0 + BLOCK_ROWS, a1);
            BN_FOR_SLICES(w, j, len, BN_NAME(sliceNormalize)(x, y, maps, c0 + j, len, b0, b1, k));
        }
        return;
    }

    i64 c = group;
    Calc hi = k->hi[c], a = k->a[c], b = k->b[c];
    for (i64 e = a1, len; e > a0; e -= len)
    {
        i64 p = BN_NAME(runBefore)(geo, c, a0, e, &len);
        const Data *xr = x + p;
        Data *yr = y + p;
#pragma omp simd
        for (i64 i = 0; i < len; i++)
            yr[i] = (Data)(((Calc)xr[i] - hi) * a + b);
    }
}

// dx = g * a + (x - hi) * b + offset (offset holds what lo adds, see setGradientFactors), walked backwards.

// dx over columns [c, c + len) of rows [b0, b1), len <= SLICE, the rows from the last.
BN_INLINE void BN_NAME(sliceInputGradient)(const Data *x, const Data *g, Data *dx, i64 maps, i64 c, i64 len, i64 b0,
                                           i64 b1, const Coefficients *k)
{
    Calc hi[SLICE], a[SLICE], b[SLICE], offset[SLICE];
    for (i64 j = 0; j < len; j++)
        hi[j] = k->hi[c + j], a[j] = k->a[c + j], b[j] = k->b[c + j], offset[j] = k->offset[c + j];
    for (i64 r = b1 - 1; r >= b0; r--)
    {
        i64 at = r * maps + c;
#pragma omp simd
        for (i64 j = 0; j < len; j++)
            dx[at + j] = (Data)((Calc)g[at + j] * a[j] + ((Calc)x[at + j] - hi[j]) * b[j] + offset[j]);
    }
}

static void BN_NAME(tileInputGradient)(const Data *x, const Data *g, Data *dx, const Geometry *geo, i64 group,
                                       i64 a0, i64 a1, const Coefficients *k)
{
    if (geo->rows)
    {
        i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group), maps = geo->maps;
        for (i64 b0 = lastBlockStart(a0, a1); b0 >= a0; b0 -= BLOCK_ROWS)
        {
            i64 b1 = minI64(b0 + BLOCK_ROWS, a1);
            BN_FOR_SLICES(w, j, len, BN_NAME(sliceInputGradient)(x, g, dx, maps, c0 + j, len, b0, b1, k));
        }
        return;
    }

    i64 c = group;
    Calc hi = k->hi[c], a = k->a[c], b = k->b[c], offset = k->offset[c];
    for (i64 e = a1, len; e > a0; e -= len)
    {
        i64 p = BN_NAME(runBefore)(geo, c, a0, e, &len);
#pragma omp simd
        for (i64 i = 0; i < len; i++)
            dx[p + i] = (Data)((Calc)g[p + i] * a + ((Calc)x[p + i] - hi) * b + offset);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Gradient sums of a tile: sumG = sum(g), sumGD = sum(g * ((x - hi) - lo)), per map: the walk sums g * (x - hi) in
// the compute type per block, added in double, and takes lo * sumG off at the end.
// With dx given, also writes dx = g * a (the frozen backward's input gradient) in the same walk.

// One block's sums over columns [c, c + len) of rows [b0, b1), len <= SLICE, added to sumG and sumGD.
BN_INLINE void BN_NAME(sliceGradientSums)(const Data *x, const Data *g, Data *dx, i64 maps, i64 c, i64 len, i64 b0,
                                          i64 b1, const Coefficients *k, double *sumG, double *sumGD)
{
    Calc hi[SLICE], a[SLICE], blockG[SLICE], blockGD[SLICE];
    for (i64 j = 0; j < len; j++)
        hi[j] = k->hi[c + j], a[j] = k->a[c + j], blockG[j] = 0, blockGD[j] = 0;
    for (i64 r = b0; r < b1; r++)
    {
        i64 at = r * maps + c;
        if (dx != NULL)
        {
#pragma omp simd
            for (i64 j = 0; j < len; j++)
                dx[at + j] = (Data)((Calc)g[at + j] * a[j]);
        }
#pragma omp simd
        for (i64 j = 0; j < len; j++)
        {
            Calc gj = (Calc)g[at + j];
            blockG[j] += gj;
            blockGD[j] += gj * ((Calc)x[at + j] - hi[j]);
        }
    }
    for (i64 j = 0; j < len; j++)
        sumG[j] += (double)blockG[j], sumGD[j] += (double)blockGD[j];
}

static void BN_NAME(tileGradientSums)(const Data *x, const Data *g, Data *dx, const Geometry *geo, i64 group,
                                      i64 a0, i64 a1, const Coefficients *k, double *sumG, double *sumGD)
{
    if (geo->rows)
    {
        i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group), maps = geo->maps;
        for (i64 j = 0; j < w; j++)
            sumG[j] = 0.0, sumGD[j] = 0.0;

        for (i64 b0 = a0; b0 < a1; b0 += BLOCK_ROWS)
        {
            i64 b1 = minI64(b0 + BLOCK_ROWS, a1);
            BN_FOR_SLICES(w, j, len,
                          BN_NAME(sliceGradientSums)(x, g, dx, maps, c0 + j, len, b0, b1, k, sumG + j, sumGD + j));
        }
        for (i64 j = 0; j < w; j++)
            sumGD[j] -= (double)k->lo[c0 + j] * sumG[j];
        return;
    }

    i64 c = group;
    Calc hi = k->hi[c], a = k->a[c];
    double totalG = 0.0, totalGD = 0.0;
    for (i64 b0 = a0; b0 < a1; b0 += BLOCK)
    {
        i64 b1 = minI64(b0 + BLOCK, a1);
        Calc blockG = 0, blockGD = 0;
        for (i64 e = b0, len; e < b1; e += len)
        {
            i64 p = BN_NAME(runAt)(geo, c, e, b1, &len);
            if (dx != NULL)
            {
#pragma omp simd
                for (i64 i = 0; i < len; i++)
                    dx[p + i] = (Data)((Calc)g[p + i] * a);
            }
#pragma omp simd reduction(+ : blockG, blockGD)
            for (i64 i = 0; i < len; i++)
            {
                Calc gi = (Calc)g[p + i];
                blockG += gi;
                blockGD += gi * ((Calc)x[p + i] - hi);
            }
        }
        totalG += (double)blockG, totalGD += (double)blockGD;
    }
    *sumG = totalG, *sumGD = totalGD - (double)k->lo[c] * totalG;
}

// ---------------------------------------------------------------------------------------------------------------
// Drivers

// What the team of a statistics call shares (statisticsAndNormalize): factors is NULL without a normalization.
typedef struct
{
    const Data *x;
    Data *y;
    const Geometry *geo;
    const void *scale, *bias;
    const StatisticsOutputs *out;
    const Scratch *s;
    Coefficients *factors;
    double m;
} BN_NAME(StatisticsJob);

static void BN_NAME(statisticsTeam)(const void *context)
{
    const BN_NAME(StatisticsJob) *job = context;
    const Data *x = job->x;
    Data *y = job->y;
    const Geometry *geo = job->geo;
    const Scratch *s = job->s;
    Coefficients *factors = job->factors;

    if (fusedPath(geo))
    {
#pragma omp for schedule(static)
        for (i64 group = 0; group < geo->groups; group++)
        {
            i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group);
            BN_NAME(tileMoments)(x, geo, group, 0, geo->extent, s->mean + c0, s->m2 + c0);
            BN_NAME(finishStatistics)(job->out, factors, job->scale, job->bias, s->mean, s->m2, c0, w, job->m);
            if (y != NULL)
                BN_NAME(tileNormalize)(x, y, geo, group, 0, geo->extent, factors);
        }
        return;
    }

    i64 first, last;
    threadShare(geo, &first, &last);
    for (i64 t = first; t < last; t++)
    {
        i64 a0, a1, group = tileSpan(geo, t, &a0, &a1);
        double *part = s->partials + 3 * t * geo->width;
        BN_NAME(tileMoments)(x, geo, group, a0, a1, part + geo->width, part + 2 * geo->width);
        // NOTE: a tile holds a1 - a0 elements of each of its maps (elements of one map, or rows of its columns)
        part[0] = (double)(a1 - a0);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (i64 c0 = 0; c0 < geo->maps; c0 += MAP_CHUNK)
    {
        i64 n = minI64(MAP_CHUNK, geo->maps - c0);
        for (i64 c = c0; c < c0 + n; c++)
        {
            i64 group = c / geo->width, j = c - group * geo->width;
            double count = 0.0, mean = 0.0, m2 = 0.0;
            for (i64 chunk = 0; chunk < geo->chunks; chunk++)
            {
                const double *part = s->partials + 3 * (group * geo->chunks + chunk) * geo->width;
                chanMerge(&count, &mean, &m2, part[0], part[geo->width + j], part[2 * geo->width + j]);
            }
            s->mean[c] = mean, s->m2[c] = m2;
        }
        BN_NAME(finishStatistics)(job->out, factors, job->scale, job->bias, s->mean, s->m2, c0, n, job->m);
    }
    if (y != NULL)
    {
        for (i64 t = last - 1; t >= first; t--)
        {
            i64 a0, a1, group = tileSpan(geo, t, &a0, &a1);
            BN_NAME(tileNormalize)(x, y, geo, group, a0, a1, factors);
        }
    }
}

// The statistics of every map, then (when y is given) normalization with them: y = (x - mu) * invstd * scale + bias.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 bias, 2 runMean, 3 runVar, 4 savedMean, 5 savedSecond.
static int BN_NAME(statisticsAndNormalize)(const Data *x, Data *y, const Geometry *geo, const void *scale,
                                           const void *bias, const StatisticsOutputs *out)
{
    Scratch s;
    Coefficients k;
    if (BN_NAME(takeScratch)(&s, &k, geo) != BN_OK)
        return BN_OUT_OF_MEMORY;
    BN_NAME(StatisticsJob) job = {
        x, y, geo, scale, bias, out, &s, y != NULL ? &k : NULL, (double)geo->outer * (double)geo->inner,
    };
    runTeam(BN_NAME(statisticsTeam), &job, geo->threads);
    freeScratch(&s);
    return BN_OK;
}

// Training forward (BatchNormPlan.trainForward): y = (x - mu) * invstd * scale + bias; writes savedMean = mu and
// savedInvstd = invstd; updates runMean and runVar (both nullable) with factor, but for the maps whose batch mean or
// variance is not finite where skipped (float32, nullable) is given: those keep theirs and count 1 in skipped. With
// backup given, the running statistics and counts are saved there before they change (saveRunning); with mirror
// given, a count the update changes is written there too.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 bias, 2 runMean, 3 runVar, 4 savedMean, 5 savedInvstd.
BN_EXPORT int BN_NAME(bnTrainForward)(const BnTrainForwardArgs *a)
{
    const BnView *v = &a->view;
    Geometry geo = geometryOf(v->outer, v->maps, v->inner, v->threads);
    StatisticsOutputs out = {
        a->savedMean, a->savedInvstd, 0, a->runMean, a->runVar, a->epsilon, a->factor, v->doubleMask, 4, 5, 2, 3,
        a->skipped, a->mirror, a->backup, a->stamp, v->maps,
    };
    return BN_NAME(statisticsAndNormalize)((const Data *)a->x, (Data *)a->y, &geo, a->scale, a->bias, &out);
}

// The batch's moments alone (BatchNormPlan.batchStatistics): savedMean = mu, savedVar = sigma2 (biased).
// Per-map pointers, by bit of doubleMask: 4 savedMean, 5 savedVar.
BN_EXPORT int BN_NAME(bnMoments)(const BnMomentsArgs *a)
{
    const BnView *v = &a->view;
    Geometry geo = geometryOf(v->outer, v->maps, v->inner, v->threads);
    StatisticsOutputs out = {
        a->savedMean, a->savedVar, 1, NULL, NULL, 0.0, 0.0, v->doubleMask, 4, 5, 2, 3, NULL, NULL, NULL, 0.0, v->maps,
    };
    return BN_NAME(statisticsAndNormalize)((const Data *)a->x, NULL, &geo, NULL, NULL, &out);
}

// What the team of a normalization or a backward shares: the entry's arguments, the geometry, the scratch block and
// the coefficients it holds.
typedef struct
{
    const void *args;
    const Geometry *geo;
    const Scratch *s;
    Coefficients *k;
} BN_NAME(PassJob);

// Runs `team` on the job of the entry's arguments `args` (whose view is `v`): the call's geometry, scratch block and
// coefficients; BN_OUT_OF_MEMORY when the block cannot be had.
static int BN_NAME(runPass)(void (*team)(const void *job), const void *args, const BnView *v)
{
    Geometry geo = geometryOf(v->outer, v->maps, v->inner, v->threads);
    Scratch s;
    Coefficients k;
    if (BN_NAME(takeScratch)(&s, &k, &geo) != BN_OK)
        return BN_OUT_OF_MEMORY;
    BN_NAME(PassJob) job = {args, &geo, &s, &k};
    runTeam(team, &job, geo.threads);
    freeScratch(&s);
    return BN_OK;
}

static void BN_NAME(normalizeTeam)(const void *context)
{
    const BN_NAME(PassJob) *job = context;
    const BnNormalizeArgs *a = job->args;
    const Geometry *geo = job->geo;
    unsigned doubleMask = a->view.doubleMask;
    i64 maps = geo->maps;

    // NOTE: the per-map factors are shared out too: with many maps their loop is not short
#pragma omp for schedule(static)
    for (i64 c = 0; c < maps; c += MAP_CHUNK)
    {
        double mean[MAP_CHUNK], gain[MAP_CHUNK], scale[MAP_CHUNK], bias[MAP_CHUNK];
        i64 n = minI64(MAP_CHUNK, maps - c);
        mapLoad(mean, a->centre, doubleMask, 2, c, n);
        mapLoad(gain, a->second, doubleMask, 3, c, n);
        mapLoad(scale, a->scale, doubleMask, 0, c, n);
        mapLoad(bias, a->bias, doubleMask, 1, c, n);
        for (i64 j = 0; j < n; j++)
            scale[j] *= a->secondIsVariance ? 1.0 / sqrt(gain[j] + a->epsilon) : gain[j];
        BN_NAME(setNormalizations)(job->k, c, n, mean, scale, bias);
    }

#pragma omp for schedule(static)
    for (i64 t = 0; t < geo->tiles; t++)
    {
        i64 a0, a1, group = tileSpan(geo, t, &a0, &a1);
        BN_NAME(tileNormalize)((const Data *)a->x, (Data *)a->y, geo, group, a0, a1, job->k);
    }
}

// Normalization with given statistics (BatchNormPlan.evalForward and BatchNormPlan.normalize):
// y = (x - centre) * gain * scale + bias, gain = 1 / sqrt(second + epsilon) when secondIsVariance (the running
// variance), else gain = second (a saved invstd). y may be x.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 bias, 2 centre, 3 second.
BN_EXPORT int BN_NAME(bnNormalize)(const BnNormalizeArgs *a)
{
    return BN_NAME(runPass)(BN_NAME(normalizeTeam), a, &a->view);
}

// Maps [c0, c0 + n) of a backward, from their sums s.sumA = sum(g) and s.sumB = sum(g * (x - mean)) and invstd in
// s.m2: writes biasgrad and scalegrad, and in mode 0 the input-gradient factors
// b = -scale * invstd^3 * sumB / m, offset = -scale * invstd * sumA / m (see bnBackward).
// Per-map pointers, by bit of doubleMask: 0 scale, 3 scalegrad, 4 biasgrad.
static void BN_NAME(finishGradients)(const Scratch *s, Coefficients *k, int mode, const void *scale, void *scalegrad,
                                     void *biasgrad, i64 c0, i64 n, double m, unsigned doubleMask)
{
    double dscale[MAP_CHUNK], gain[MAP_CHUNK], b[MAP_CHUNK], offset[MAP_CHUNK];
    const double *invstd = s->m2;
    for (i64 c = c0; c < c0 + n; c += MAP_CHUNK)
    {
        i64 len = minI64(MAP_CHUNK, c0 + n - c);
        mapStore(biasgrad, doubleMask, 4, c, len, s->sumA + c);
        for (i64 j = 0; j < len; j++)
            dscale[j] = s->sumB[c + j] * invstd[c + j];
        mapStore(scalegrad, doubleMask, 3, c, len, dscale);
        if (mode != 0)
            continue;
        mapLoad(gain, scale, doubleMask, 0, c, len);
        for (i64 j = 0; j < len; j++)
        {
            gain[j] *= invstd[c + j];
            b[j] = -gain[j] * invstd[c + j] * dscale[j] / m;
            offset[j] = -gain[j] * s->sumA[c + j] / m;
        }
        BN_NAME(setGradientFactors)(k, c, len, b, offset);
    }
}

static void BN_NAME(backwardTeam)(const void *context)
{
    const BN_NAME(PassJob) *job = context;
    const BnBackwardArgs *a = job->args;
    const Geometry *geo = job->geo;
    const Scratch *s = job->s;
    Coefficients *k = job->k;
    const Data *x = (const Data *)a->x, *g = (const Data *)a->g;
    Data *dx = (Data *)a->dx;
    int mode = a->mode;
    const void *scale = a->scale, *centre = a->centre, *second = a->second;
    void *scalegrad = a->scalegrad, *biasgrad = a->biasgrad;
    double epsilon = a->epsilon, count = a->count, m = (double)geo->outer * (double)geo->inner;
    unsigned doubleMask = a->view.doubleMask;
    i64 maps = geo->maps;
    double *invstd = s->m2;
    Data *frozenDx = mode == 1 ? dx : NULL;

    // NOTE: the per-map factors are shared out too: with many maps their loop is not short
#pragma omp for schedule(static)
    for (i64 c = 0; c < maps; c += MAP_CHUNK)
    {
        double mean[MAP_CHUNK], gain[MAP_CHUNK], b[MAP_CHUNK], offset[MAP_CHUNK];
        i64 n = minI64(MAP_CHUNK, maps - c);
        mapLoad(invstd + c, second, doubleMask, 2, c, n);
        if (mode == 1)
        {
            for (i64 j = 0; j < n; j++)
                invstd[c + j] = 1.0 / sqrt(invstd[c + j] + epsilon);
        }
        mapLoad(mean, centre, doubleMask, 1, c, n);
        BN_NAME(setCentres)(k, c, n, mean);
        // NOTE: the frozen input gradient needs no sums: its factor is known before the walk that takes them
        mapLoad(gain, scale, doubleMask, 0, c, n);
        for (i64 j = 0; j < n; j++)
        {
            gain[j] *= invstd[c + j];
            k->a[c + j] = (Calc)gain[j];
        }
        if (mode == 2)
        {
            mapLoad(b, scalegrad, doubleMask, 3, c, n);
            mapLoad(offset, biasgrad, doubleMask, 4, c, n);
            for (i64 j = 0; j < n; j++)
            {
                b[j] = -gain[j] * invstd[c + j] * b[j] / count;
                offset[j] = -gain[j] * offset[j] / count;
            }
            BN_NAME(setGradientFactors)(k, c, n, b, offset);
        }
    }

    if (mode == 2)
    {
#pragma omp for schedule(static)
        for (i64 t = 0; t < geo->tiles; t++)
        {
            i64 a0, a1, group = tileSpan(geo, t, &a0, &a1);
            BN_NAME(tileInputGradient)(x, g, dx, geo, group, a0, a1, k);
        }
    }
    else if (fusedPath(geo))
    {
#pragma omp for schedule(static)
        for (i64 group = 0; group < geo->groups; group++)
        {
            i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group);
            BN_NAME(tileGradientSums)(x, g, frozenDx, geo, group, 0, geo->extent, k, s->sumA + c0, s->sumB + c0);
            BN_NAME(finishGradients)(s, k, mode, scale, scalegrad, biasgrad, c0, w, m, doubleMask);
            if (mode == 0 && dx != NULL)
                BN_NAME(tileInputGradient)(x, g, dx, geo, group, 0, geo->extent, k);
        }
    }
    else
    {
        i64 first, last;
        threadShare(geo, &first, &last);
        for (i64 t = first; t < last; t++)
        {
            i64 a0, a1, group = tileSpan(geo, t, &a0, &a1);
            double *part = s->partials + 3 * t * geo->width;
            BN_NAME(tileGradientSums)(x, g, frozenDx, geo, group, a0, a1, k, part, part + geo->width);
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (i64 c0 = 0; c0 < maps; c0 += MAP_CHUNK)
        {
            i64 n = minI64(MAP_CHUNK, maps - c0);
            for (i64 c = c0; c < c0 + n; c++)
            {
                i64 group = c / geo->width, j = c - group * geo->width;
                double sumG = 0.0, sumGD = 0.0;
                for (i64 chunk = 0; chunk < geo->chunks; chunk++)
                {
                    const double *part = s->partials + 3 * (group * geo->chunks + chunk) * geo->width;
                    sumG += part[j], sumGD += part[geo->width + j];
                }
                s->sumA[c] = sumG, s->sumB[c] = sumGD;
            }
            BN_NAME(finishGradients)(s, k, mode, scale, scalegrad, biasgrad, c0, n, m, doubleMask);
        }
        if (mode == 0 && dx != NULL)
        {
            for (i64 t = last - 1; t >= first; t--)
            {
                i64 a0, a1, group = tileSpan(geo, t, &a0, &a1);
                BN_NAME(tileInputGradient)(x, g, dx, geo, group, a0, a1, k);
            }
        }
    }
}

// Backward after a training forward (BatchNormPlan.backward, mode 0), the frozen backward after an evaluation forward
// (BatchNormPlan.frozenBackward, mode 1) and the input gradient from given sums (BatchNormPlan.inputGradient, mode 2).
//   mode 0: centre = savedMean, invstd = saved invstd; biasgrad = sum(g), scalegrad = sum(g * xhat);
//           dx = scale * invstd * (g - (biasgrad + xhat * scalegrad) / m) (dx nullable);
//   mode 1: centre = running mean, invstd = 1 / sqrt(running var + epsilon); the sums as mode 0;
//           dx = g * scale * invstd, written in the same walk as the sums (dx nullable);
//   mode 2: the sums are read (over `count` elements per map), not written; dx as mode 0 with m = count.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 centre, 2 second (invstd, or the running variance in mode 1),
// 3 scalegrad, 4 biasgrad.
BN_EXPORT int BN_NAME(bnBackward)(const BnBackwardArgs *a)
{
    return BN_NAME(runPass)(BN_NAME(backwardTeam), a, &a->view);
}

#undef Data
#undef Calc
#undef Coefficients
#undef SLICE
#undef BN_FOR_SLICES

#endif // BN_DATA
