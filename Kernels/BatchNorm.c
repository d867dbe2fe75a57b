// Batch normalization on the CPU (Ioffe & Szegedy 2015, arXiv 1502.03167): the C twin of BatchNorm.cu.
//
// Plain C99 with OpenMP where the compiler has it (without it every pragma is ignored and one core runs). The CPU
// backend compiles this file on first use and loads it with ctypes (Backend/Cpu/SourceLibrary.py); its entry points
// are the primitives of Backend/Contract.py, wrapped by Backend/Cpu/CBatchNorm.py.
//
// Every tensor is viewed as (outer, maps, inner) in C order: element (o, c, i) lives at (o * maps + c) * inner + i.
//   - spatial (inner > 1): a map is `outer` contiguous segments of `inner` elements; its m = outer * inner elements
//     are walked by their index e in [0, m) (o = e / inner, i = e % inner), cut into runs that are contiguous;
//   - rows (inner == 1: per-activation (N, C) or channels-last): a map is a column of an (outer, maps) matrix; a group
//     of adjacent columns is walked row after row, the columns in SIMD lanes.
// Data is float, double or _Float16 (computed in float; only where the compiler has the type). Per-map arrays
// (parameters, statistics, gradients) are float or double each, as bit k of `doubleMask` says of the k-th per-map
// pointer of the call; per-map arithmetic (merges, running update, coefficients) is in double.
//
// Work: a tile is (group, [a0, a1)): one map (spatial, a = element index) or a group of columns (rows, a = row).
//   - fused: when the groups alone keep every thread busy, a thread takes a whole group, computes its statistics and
//     normalizes it right away, walking it backwards so that the part it read last is still in cache: the data comes
//     from memory once for a group that fits in the core's L2 (the reverse walk keeps the tail of a larger one);
//   - split: otherwise (few maps or columns) the groups are cut along a into tiles shared among the threads; each
//     thread's partial results are merged per map in tile order (deterministic), then each thread walks its own
//     tiles backwards for the second pass.
//
// Numerics: statistics are taken in blocks of at most BLOCK elements (BLOCK_ROWS rows) that stay in L1: the block's
// sum in compute-type SIMD lanes gives a mean, rounded to the compute type; a second walk over the block sums the
// deviations d from it and their squares, so the block's moments (mean + sum(d) / n, sum(d^2) - sum(d)^2 / n) are
// those of the corrected two-pass algorithm (Chan, Golub & LeVeque 1983) whatever the block mean's rounding. Blocks
// are merged in double with the pairwise formula of Chan, Golub & LeVeque (1979). A map whose mean is 1e4 times its
// standard deviation keeps its variance to about 1e-6 relative. Normalization subtracts the mean as two floats
// (hi + lo), so the output does not lose the digits of the mean that one float cannot hold.
// Gradient sums add each block's compute-type sums in double.
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

// Elements per statistics block (spatial) and rows per block (rows layout): a block of float data stays in L1.
#define BLOCK 4096
#define BLOCK_ROWS 64
// Columns per group in the rows layout: at most this many, at least MIN_WIDTH where the maps allow.
#define MAX_WIDTH 256
#define MIN_WIDTH 16
// Below this many elements a call runs on the calling thread: waking the team would cost more than it saves.
#define PARALLEL_ELEMENTS 32768
// Smallest tile of the split path, in elements.
#define MIN_TILE 16384

// Return codes of every entry point.
#define BN_OK 0
#define BN_OUT_OF_MEMORY 1

typedef int64_t i64;

static i64 minI64(i64 a, i64 b) { return a < b ? a : b; }
static i64 maxI64(i64 a, i64 b) { return a > b ? a : b; }
static i64 ceilDiv(i64 a, i64 b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------------------------
// Per-map arrays of either float type

static double mapGet(const void *ary, unsigned doubleMask, int bit, i64 c)
{
    return (doubleMask >> bit) & 1u ? ((const double *)ary)[c] : (double)((const float *)ary)[c];
}

static void mapSet(void *ary, unsigned doubleMask, int bit, i64 c, double value)
{
    if ((doubleMask >> bit) & 1u)
        ((double *)ary)[c] = value;
    else
        ((float *)ary)[c] = (float)value;
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
        // NOTE: groups of at most MAX_WIDTH columns, more of them (at least MIN_WIDTH wide, for the SIMD lanes) where
        // that gives every thread several; the widths are equal but for the last group's
        i64 groups = ceilDiv(maps, MAX_WIDTH);
        if (groups < 4 * (i64)geo.threads)
            groups = maxI64(groups, minI64(4 * (i64)geo.threads, maps / MIN_WIDTH));
        i64 width = ceilDiv(ceilDiv(maps, groups), MIN_WIDTH) * MIN_WIDTH;
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
        i64 perElement = geo.rows ? geo.width : 1;
        i64 wanted = ceilDiv(4 * (i64)geo.threads, geo.groups);
        i64 most = maxI64(1, geo.extent * perElement / MIN_TILE);
        geo.chunks = maxI64(1, minI64(wanted, most));
    }
    geo.chunk = ceilDiv(geo.extent, geo.chunks);
    geo.chunks = ceilDiv(geo.extent, geo.chunk);
    geo.tiles = geo.groups * geo.chunks;
    return geo;
}

static int fusedPath(const Geometry *geo) { return geo->chunks == 1; }

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

// Per-call workspaces in double: per-map statistics or gradient sums, and the split path's partial results.
typedef struct
{
    double *mean, *m2;          // merged statistics (or the sums of a backward)
    double *sumA, *sumB;        // backward sums: sum(g), sum(g * xhat-numerator)
    double *partials;           // split path: per tile and column, 3 values
} Scratch;

static void freeScratch(Scratch *s)
{
    free(s->mean), free(s->m2), free(s->sumA), free(s->sumB), free(s->partials);
}

static int allocScratch(Scratch *s, const Geometry *geo)
{
    i64 maps = geo->maps;
    memset(s, 0, sizeof(*s));
    s->mean = malloc(sizeof(double) * maps);
    s->m2 = malloc(sizeof(double) * maps);
    s->sumA = malloc(sizeof(double) * maps);
    s->sumB = malloc(sizeof(double) * maps);
    s->partials = fusedPath(geo) ? NULL : malloc(sizeof(double) * 3 * geo->tiles * geo->width);
    if (!s->mean || !s->m2 || !s->sumA || !s->sumB || (!fusedPath(geo) && !s->partials))
    {
        freeScratch(s);
        return BN_OUT_OF_MEMORY;
    }
    return BN_OK;
}

// Which per-map outputs a statistics merge writes, and how (see finalizeStatistics).
typedef struct
{
    void *savedMean, *savedSecond; // the batch mean and invstd (training) or biased variance (moments)
    int secondIsVariance;
    void *runMean, *runVar;        // nullable: the running update
    double epsilon, factor;
    unsigned doubleMask;
    int bitSavedMean, bitSavedSecond, bitRunMean, bitRunVar;
} StatisticsOutputs;

// Writes map c's statistics from its merged (m, mean, m2) and returns invstd.
static double finalizeStatistics(const StatisticsOutputs *out, i64 c, double m, double mean, double m2)
{
    double sigma2 = m2 / m;
    if (sigma2 < 0.0)
        sigma2 = 0.0;
    double invstd = 1.0 / sqrt(sigma2 + out->epsilon);

    mapSet(out->savedMean, out->doubleMask, out->bitSavedMean, c, mean);
    mapSet(out->savedSecond, out->doubleMask, out->bitSavedSecond, c, out->secondIsVariance ? sigma2 : invstd);
    if (out->runMean != NULL)
    {
        unsigned mask = out->doubleMask;
        double f = out->factor;
        double runMean = mapGet(out->runMean, mask, out->bitRunMean, c);
        double runVar = mapGet(out->runVar, mask, out->bitRunVar, c);
        // NOTE: the running variance is unbiased (m / (m - 1)), as in Theano and cuDNN
        mapSet(out->runMean, mask, out->bitRunMean, c, (1.0 - f) * runMean + f * mean);
        mapSet(out->runVar, mask, out->bitRunVar, c, (1.0 - f) * runVar + f * sigma2 * (m / (m - 1.0)));
    }
    return invstd;
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

// Per-map coefficients of a pass in the compute type, indexed by map.
typedef struct
{
    Calc *hi, *lo;              // the centre as two compute-type numbers: mean = hi + lo
    Calc *a, *b, *offset;       // the pass's factors (see each pass)
} BN_NAME(Coefficients);
#define Coefficients BN_NAME(Coefficients)

static void BN_NAME(freeCoefficients)(Coefficients *k)
{
    free(k->hi), free(k->lo), free(k->a), free(k->b), free(k->offset);
}

static int BN_NAME(allocCoefficients)(Coefficients *k, i64 maps)
{
    k->hi = malloc(sizeof(Calc) * maps);
    k->lo = malloc(sizeof(Calc) * maps);
    k->a = malloc(sizeof(Calc) * maps);
    k->b = malloc(sizeof(Calc) * maps);
    k->offset = malloc(sizeof(Calc) * maps);
    if (!k->hi || !k->lo || !k->a || !k->b || !k->offset)
    {
        BN_NAME(freeCoefficients)(k);
        return BN_OUT_OF_MEMORY;
    }
    return BN_OK;
}

static void BN_NAME(setCentre)(Coefficients *k, i64 c, double mean)
{
    Calc hi = (Calc)mean;
    k->hi[c] = hi;
    k->lo[c] = (Calc)(mean - (double)hi);
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

// Columns [c0, c0 + w) over rows [r0, r1); mean and m2 hold w values.
static void BN_NAME(rowsMoments)(const Data *x, const Geometry *geo, i64 c0, i64 w, i64 r0, i64 r1, double *mean,
                                 double *m2)
{
    Calc sum[MAX_WIDTH], centre[MAX_WIDTH], sumD[MAX_WIDTH], sumD2[MAX_WIDTH];
    i64 maps = geo->maps;
    double n = 0.0;
    for (i64 j = 0; j < w; j++)
        mean[j] = 0.0, m2[j] = 0.0;

    for (i64 b0 = r0; b0 < r1; b0 += BLOCK_ROWS)
    {
        i64 b1 = minI64(b0 + BLOCK_ROWS, r1);
        double nb = (double)(b1 - b0);

        for (i64 j = 0; j < w; j++)
            sum[j] = 0;
        for (i64 r = b0; r < b1; r++)
        {
            const Data *row = x + r * maps + c0;
#pragma omp simd
            for (i64 j = 0; j < w; j++)
                sum[j] += (Calc)row[j];
        }
        for (i64 j = 0; j < w; j++)
            centre[j] = (Calc)((double)sum[j] / nb), sumD[j] = 0, sumD2[j] = 0;

        for (i64 r = b0; r < b1; r++)
        {
            const Data *row = x + r * maps + c0;
#pragma omp simd
            for (i64 j = 0; j < w; j++)
            {
                Calc d = (Calc)row[j] - centre[j];
                sumD[j] += d;
                sumD2[j] += d * d;
            }
        }

        double total = n + nb;
        for (i64 j = 0; j < w; j++)
        {
            double meanB = (double)centre[j] + (double)sumD[j] / nb;
            double m2B = (double)sumD2[j] - (double)sumD[j] * (double)sumD[j] / nb;
            double delta = meanB - mean[j];
            mean[j] += delta * (nb / total);
            m2[j] += (m2B > 0.0 ? m2B : 0.0) + delta * delta * (n * nb / total);
        }
        n = total;
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
// Elementwise passes over a tile, walked backwards: y = ((x - hi) - lo) * a + b

static void BN_NAME(tileNormalize)(const Data *x, Data *y, const Geometry *geo, i64 group, i64 a0, i64 a1,
                                   const Coefficients *k)
{
    if (geo->rows)
    {
        i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group), maps = geo->maps;
        const Calc *hi = k->hi + c0, *lo = k->lo + c0, *a = k->a + c0, *b = k->b + c0;
        for (i64 r = a1 - 1; r >= a0; r--)
        {
            const Data *xr = x + r * maps + c0;
            Data *yr = y + r * maps + c0;
#pragma omp simd
            for (i64 j = 0; j < w; j++)
                yr[j] = (Data)((((Calc)xr[j] - hi[j]) - lo[j]) * a[j] + b[j]);
        }
        return;
    }

    i64 c = group;
    Calc hi = k->hi[c], lo = k->lo[c], a = k->a[c], b = k->b[c];
    for (i64 e = a1, len; e > a0; e -= len)
    {
        i64 p = BN_NAME(runBefore)(geo, c, a0, e, &len);
        const Data *xr = x + p;
        Data *yr = y + p;
#pragma omp simd
        for (i64 i = 0; i < len; i++)
            yr[i] = (Data)((((Calc)xr[i] - hi) - lo) * a + b);
    }
}

// dx = g * a + ((x - hi) - lo) * b + c, walked backwards.
static void BN_NAME(tileInputGradient)(const Data *x, const Data *g, Data *dx, const Geometry *geo, i64 group,
                                       i64 a0, i64 a1, const Coefficients *k)
{
    if (geo->rows)
    {
        i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group), maps = geo->maps;
        const Calc *hi = k->hi + c0, *lo = k->lo + c0, *a = k->a + c0, *b = k->b + c0, *cc = k->offset + c0;
        for (i64 r = a1 - 1; r >= a0; r--)
        {
            i64 at = r * maps + c0;
#pragma omp simd
            for (i64 j = 0; j < w; j++)
                dx[at + j] = (Data)((Calc)g[at + j] * a[j] + (((Calc)x[at + j] - hi[j]) - lo[j]) * b[j] + cc[j]);
        }
        return;
    }

    i64 c = group;
    Calc hi = k->hi[c], lo = k->lo[c], a = k->a[c], b = k->b[c], cc = k->offset[c];
    for (i64 e = a1, len; e > a0; e -= len)
    {
        i64 p = BN_NAME(runBefore)(geo, c, a0, e, &len);
#pragma omp simd
        for (i64 i = 0; i < len; i++)
            dx[p + i] = (Data)((Calc)g[p + i] * a + (((Calc)x[p + i] - hi) - lo) * b + cc);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Gradient sums of a tile: sumG = sum(g), sumGD = sum(g * ((x - hi) - lo)), per map, added in double per block.
// With dx given, also writes dx = g * a (the frozen backward's input gradient) in the same walk.

static void BN_NAME(tileGradientSums)(const Data *x, const Data *g, Data *dx, const Geometry *geo, i64 group,
                                      i64 a0, i64 a1, const Coefficients *k, double *sumG, double *sumGD)
{
    if (geo->rows)
    {
        i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group), maps = geo->maps;
        const Calc *hi = k->hi + c0, *lo = k->lo + c0, *a = k->a + c0;
        Calc blockG[MAX_WIDTH], blockGD[MAX_WIDTH];
        for (i64 j = 0; j < w; j++)
            sumG[j] = 0.0, sumGD[j] = 0.0;

        for (i64 b0 = a0; b0 < a1; b0 += BLOCK_ROWS)
        {
            i64 b1 = minI64(b0 + BLOCK_ROWS, a1);
            for (i64 j = 0; j < w; j++)
                blockG[j] = 0, blockGD[j] = 0;
            for (i64 r = b0; r < b1; r++)
            {
                i64 at = r * maps + c0;
                if (dx != NULL)
                {
#pragma omp simd
                    for (i64 j = 0; j < w; j++)
                        dx[at + j] = (Data)((Calc)g[at + j] * a[j]);
                }
#pragma omp simd
                for (i64 j = 0; j < w; j++)
                {
                    Calc gj = (Calc)g[at + j];
                    blockG[j] += gj;
                    blockGD[j] += gj * (((Calc)x[at + j] - hi[j]) - lo[j]);
                }
            }
            for (i64 j = 0; j < w; j++)
                sumG[j] += (double)blockG[j], sumGD[j] += (double)blockGD[j];
        }
        return;
    }

    i64 c = group;
    Calc hi = k->hi[c], lo = k->lo[c], a = k->a[c];
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
                blockGD += gi * (((Calc)x[p + i] - hi) - lo);
            }
        }
        totalG += (double)blockG, totalGD += (double)blockGD;
    }
    *sumG = totalG, *sumGD = totalGD;
}

// ---------------------------------------------------------------------------------------------------------------
// Drivers

// The statistics of every map, then (when y is given) normalization with them: y = (x - mu) * invstd * scale + bias.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 bias, 2 runMean, 3 runVar, 4 savedMean, 5 savedSecond.
static int BN_NAME(statisticsAndNormalize)(const Data *x, Data *y, const Geometry *geo, const void *scale,
                                           const void *bias, const StatisticsOutputs *out)
{
    Scratch s;
    Coefficients k;
    if (allocScratch(&s, geo) != BN_OK)
        return BN_OUT_OF_MEMORY;
    if (BN_NAME(allocCoefficients)(&k, geo->maps) != BN_OK)
    {
        freeScratch(&s);
        return BN_OUT_OF_MEMORY;
    }

    double m = (double)geo->outer * (double)geo->inner;
    unsigned mask = out->doubleMask;

#define BN_FINALIZE_MAP(map_)                                                                                    \
    do                                                                                                        \
    {                                                                                                         \
        double invstd_ = finalizeStatistics(out, (map_), m, s.mean[map_], s.m2[map_]);                                 \
        if (y != NULL)                                                                                        \
        {                                                                                                     \
            BN_NAME(setCentre)(&k, (map_), s.mean[map_]);                                                           \
            k.a[map_] = (Calc)(invstd_ * mapGet(scale, mask, 0, (map_)));                                           \
            k.b[map_] = (Calc)mapGet(bias, mask, 1, (map_));                                                        \
        }                                                                                                     \
    } while (0)

    if (fusedPath(geo))
    {
#pragma omp parallel for schedule(static) num_threads(geo->threads) if (geo->threads > 1)
        for (i64 group = 0; group < geo->groups; group++)
        {
            i64 c0 = groupFirstMap(geo, group), w = groupWidth(geo, group);
            BN_NAME(tileMoments)(x, geo, group, 0, geo->extent, s.mean + c0, s.m2 + c0);
            for (i64 c = c0; c < c0 + w; c++)
                BN_FINALIZE_MAP(c);
            if (y != NULL)
                BN_NAME(tileNormalize)(x, y, geo, group, 0, geo->extent, &k);
        }
    }
    else
    {
#pragma omp parallel num_threads(geo->threads) if (geo->threads > 1)
        {
            i64 first, last;
            threadShare(geo, &first, &last);
            for (i64 t = first; t < last; t++)
            {
                i64 group = t / geo->chunks, a0 = (t % geo->chunks) * geo->chunk;
                i64 a1 = minI64(a0 + geo->chunk, geo->extent);
                double *part = s.partials + 3 * t * geo->width;
                BN_NAME(tileMoments)(x, geo, group, a0, a1, part + geo->width, part + 2 * geo->width);
                // NOTE: a tile holds a1 - a0 elements of each of its maps (elements of one map, or rows of its columns)
                part[0] = (double)(a1 - a0);
            }
#pragma omp barrier
#pragma omp for schedule(static)
            for (i64 c = 0; c < geo->maps; c++)
            {
                i64 group = c / geo->width, j = c - group * geo->width;
                double n = 0.0, mean = 0.0, m2 = 0.0;
                for (i64 chunk = 0; chunk < geo->chunks; chunk++)
                {
                    const double *part = s.partials + 3 * (group * geo->chunks + chunk) * geo->width;
                    chanMerge(&n, &mean, &m2, part[0], part[geo->width + j], part[2 * geo->width + j]);
                }
                s.mean[c] = mean, s.m2[c] = m2;
                BN_FINALIZE_MAP(c);
            }
            if (y != NULL)
            {
                for (i64 t = last - 1; t >= first; t--)
                {
                    i64 group = t / geo->chunks, a0 = (t % geo->chunks) * geo->chunk;
                    BN_NAME(tileNormalize)(x, y, geo, group, a0, minI64(a0 + geo->chunk, geo->extent), &k);
                }
            }
        }
    }
#undef BN_FINALIZE_MAP

    BN_NAME(freeCoefficients)(&k);
    freeScratch(&s);
    return BN_OK;
}

// Training forward (Contract.trainForward): y = (x - mu) * invstd * scale + bias; writes savedMean = mu and
// savedInvstd = invstd; updates runMean and runVar (both nullable) with factor.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 bias, 2 runMean, 3 runVar, 4 savedMean, 5 savedInvstd.
BN_EXPORT int BN_NAME(bnTrainForward)(const Data *x, Data *y, i64 outer, i64 maps, i64 inner, int threads,
                                      const void *scale, const void *bias, void *runMean, void *runVar,
                                      void *savedMean, void *savedInvstd, double epsilon, double factor,
                                      unsigned doubleMask)
{
    Geometry geo = geometryOf(outer, maps, inner, threads);
    StatisticsOutputs out = {savedMean, savedInvstd, 0, runMean, runVar, epsilon, factor, doubleMask, 4, 5, 2, 3};
    return BN_NAME(statisticsAndNormalize)(x, y, &geo, scale, bias, &out);
}

// The batch's moments alone (Contract.batchStatistics): savedMean = mu, savedVar = sigma2 (biased).
// Per-map pointers, by bit of doubleMask: 4 savedMean, 5 savedVar.
BN_EXPORT int BN_NAME(bnMoments)(const Data *x, i64 outer, i64 maps, i64 inner, int threads, void *savedMean,
                                 void *savedVar, unsigned doubleMask)
{
    Geometry geo = geometryOf(outer, maps, inner, threads);
    StatisticsOutputs out = {savedMean, savedVar, 1, NULL, NULL, 0.0, 0.0, doubleMask, 4, 5, 2, 3};
    return BN_NAME(statisticsAndNormalize)(x, NULL, &geo, NULL, NULL, &out);
}

// Normalization with given statistics (Contract.evalForward and Contract.normalize):
// y = (x - centre) * gain * scale + bias, gain = 1 / sqrt(second + epsilon) when secondIsVariance (the running
// variance), else gain = second (a saved invstd). y may be x.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 bias, 2 centre, 3 second.
BN_EXPORT int BN_NAME(bnNormalize)(const Data *x, Data *y, i64 outer, i64 maps, i64 inner, int threads,
                                   const void *scale, const void *bias, const void *centre, const void *second,
                                   int secondIsVariance, double epsilon, unsigned doubleMask)
{
    Geometry geo = geometryOf(outer, maps, inner, threads);
    Coefficients k;
    if (BN_NAME(allocCoefficients)(&k, maps) != BN_OK)
        return BN_OUT_OF_MEMORY;

    for (i64 c = 0; c < maps; c++)
    {
        double value = mapGet(second, doubleMask, 3, c);
        double gain = secondIsVariance ? 1.0 / sqrt(value + epsilon) : value;
        BN_NAME(setCentre)(&k, c, mapGet(centre, doubleMask, 2, c));
        k.a[c] = (Calc)(gain * mapGet(scale, doubleMask, 0, c));
        k.b[c] = (Calc)mapGet(bias, doubleMask, 1, c);
    }

#pragma omp parallel for schedule(static) num_threads(geo.threads) if (geo.threads > 1)
    for (i64 t = 0; t < geo.tiles; t++)
    {
        i64 group = t / geo.chunks, a0 = (t % geo.chunks) * geo.chunk;
        BN_NAME(tileNormalize)(x, y, &geo, group, a0, minI64(a0 + geo.chunk, geo.extent), &k);
    }

    BN_NAME(freeCoefficients)(&k);
    return BN_OK;
}

// Backward after a training forward (Contract.backward, mode 0), the frozen backward after an evaluation forward
// (Contract.frozenBackward, mode 1) and the input gradient from given sums (Contract.inputGradient, mode 2).
//   mode 0: centre = savedMean, invstd = saved invstd; biasgrad = sum(g), scalegrad = sum(g * xhat);
//           dx = scale * invstd * (g - (biasgrad + xhat * scalegrad) / m) (dx nullable);
//   mode 1: centre = running mean, invstd = 1 / sqrt(running var + epsilon); the sums as mode 0;
//           dx = g * scale * invstd, written in the same walk as the sums (dx nullable);
//   mode 2: the sums are read (over `count` elements per map), not written; dx as mode 0 with m = count.
// Per-map pointers, by bit of doubleMask: 0 scale, 1 centre, 2 second (invstd, or the running variance in mode 1),
// 3 scalegrad, 4 biasgrad.
BN_EXPORT int BN_NAME(bnBackward)(const Data *x, const Data *g, Data *dx, i64 outer, i64 maps, i64 inner,
                                  int threads, int mode, const void *scale, const void *centre, const void *second,
                                  void *scalegrad, void *biasgrad, double epsilon, double count,
                                  unsigned doubleMask)
{
    Geometry geo = geometryOf(outer, maps, inner, threads);
    Scratch s;
    Coefficients k;
    if (allocScratch(&s, &geo) != BN_OK)
        return BN_OUT_OF_MEMORY;
    if (BN_NAME(allocCoefficients)(&k, maps) != BN_OK)
    {
        freeScratch(&s);
        return BN_OUT_OF_MEMORY;
    }

    double *invstd = s.m2;
    for (i64 c = 0; c < maps; c++)
    {
        double value = mapGet(second, doubleMask, 2, c);
        invstd[c] = mode == 1 ? 1.0 / sqrt(value + epsilon) : value;
        BN_NAME(setCentre)(&k, c, mapGet(centre, doubleMask, 1, c));
        // NOTE: the frozen input gradient needs no sums: its factor is known before the walk that takes them
        k.a[c] = (Calc)(mapGet(scale, doubleMask, 0, c) * invstd[c]);
    }

    // The input-gradient factors of map c from its sums over m elements.
#define BN_GRADIENT_FACTORS(map_, sumG, sumGD, m)                                                                \
    do                                                                                                        \
    {                                                                                                         \
        double gain_ = mapGet(scale, doubleMask, 0, (map_)) * invstd[map_];                                         \
        double dscale_ = (sumGD) * invstd[map_];                                                                 \
        k.b[map_] = (Calc)(-gain_ * invstd[map_] * dscale_ / (m));                                                  \
        k.offset[map_] = (Calc)(-gain_ * (sumG) / (m));                                                               \
    } while (0)

#define BN_FINISH_MAP(map_)                                                                                      \
    do                                                                                                        \
    {                                                                                                         \
        mapSet(biasgrad, doubleMask, 4, (map_), s.sumA[map_]);                                                      \
        mapSet(scalegrad, doubleMask, 3, (map_), s.sumB[map_] * invstd[map_]);                                         \
        if (mode == 0)                                                                                        \
            BN_GRADIENT_FACTORS((map_), s.sumA[map_], s.sumB[map_], m);                                                \
    } while (0)

    double m = (double)outer * (double)inner;
    if (mode == 2)
    {
        for (i64 c = 0; c < maps; c++)
        {
            double dbias = mapGet(biasgrad, doubleMask, 4, c), dscale = mapGet(scalegrad, doubleMask, 3, c);
            double gain = mapGet(scale, doubleMask, 0, c) * invstd[c];
            k.b[c] = (Calc)(-gain * invstd[c] * dscale / count);
            k.offset[c] = (Calc)(-gain * dbias / count);
        }
#pragma omp parallel for schedule(static) num_threads(geo.threads) if (geo.threads > 1)
        for (i64 t = 0; t < geo.tiles; t++)
        {
            i64 group = t / geo.chunks, a0 = (t % geo.chunks) * geo.chunk;
            BN_NAME(tileInputGradient)(x, g, dx, &geo, group, a0, minI64(a0 + geo.chunk, geo.extent), &k);
        }
    }
    else if (fusedPath(&geo))
    {
        Data *frozenDx = mode == 1 ? dx : NULL;
#pragma omp parallel for schedule(static) num_threads(geo.threads) if (geo.threads > 1)
        for (i64 group = 0; group < geo.groups; group++)
        {
            i64 c0 = groupFirstMap(&geo, group), w = groupWidth(&geo, group);
            BN_NAME(tileGradientSums)(x, g, frozenDx, &geo, group, 0, geo.extent, &k, s.sumA + c0, s.sumB + c0);
            for (i64 c = c0; c < c0 + w; c++)
                BN_FINISH_MAP(c);
            if (mode == 0 && dx != NULL)
                BN_NAME(tileInputGradient)(x, g, dx, &geo, group, 0, geo.extent, &k);
        }
    }
    else
    {
        Data *frozenDx = mode == 1 ? dx : NULL;
#pragma omp parallel num_threads(geo.threads) if (geo.threads > 1)
        {
            i64 first, last;
            threadShare(&geo, &first, &last);
            for (i64 t = first; t < last; t++)
            {
                i64 group = t / geo.chunks, a0 = (t % geo.chunks) * geo.chunk;
                i64 a1 = minI64(a0 + geo.chunk, geo.extent);
                double *part = s.partials + 3 * t * geo.width;
                BN_NAME(tileGradientSums)(x, g, frozenDx, &geo, group, a0, a1, &k, part, part + geo.width);
            }
#pragma omp barrier
#pragma omp for schedule(static)
            for (i64 c = 0; c < maps; c++)
            {
                i64 group = c / geo.width, j = c - group * geo.width;
                double sumG = 0.0, sumGD = 0.0;
                for (i64 chunk = 0; chunk < geo.chunks; chunk++)
                {
                    const double *part = s.partials + 3 * (group * geo.chunks + chunk) * geo.width;
                    sumG += part[j], sumGD += part[geo.width + j];
                }
                s.sumA[c] = sumG, s.sumB[c] = sumGD;
                BN_FINISH_MAP(c);
            }
            if (mode == 0 && dx != NULL)
            {
                for (i64 t = last - 1; t >= first; t--)
                {
                    i64 group = t / geo.chunks, a0 = (t % geo.chunks) * geo.chunk;
                    BN_NAME(tileInputGradient)(x, g, dx, &geo, group, a0, minI64(a0 + geo.chunk, geo.extent), &k);
                }
            }
        }
    }
#undef BN_FINISH_MAP
#undef BN_GRADIENT_FACTORS

    BN_NAME(freeCoefficients)(&k);
    freeScratch(&s);
    return BN_OK;
}

#undef Data
#undef Calc
#undef Coefficients

#endif // BN_DATA
