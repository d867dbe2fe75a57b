// Batch normalization kernels (Ioffe & Szegedy 2015, arXiv 1502.03167).
//
// Every tensor is viewed as (outer, maps, inner) in C order: element (o, c, i) lives at (o * maps + c) * inner + i.
//   - "spatial" kernels serve inner > 1 (NCHW...): a channel is `outer` contiguous segments of `inner` elements;
//   - "rows" kernels serve inner == 1 (per-activation (N, C) or channels-last): a channel is a column of an
//     (outer, maps) matrix, so threads run across channels and rows are split over blocks.
// Data is float (fp32) or __half (fp16); statistics, reductions and parameters are always fp32.
//
// Training forward = stats pass (partial moments per block; the last block of each column of blocks merges them and
// writes the statistics and the running update) + normalize pass: two kernels, the input read twice, the output
// written once; or, where a map's slice fits in the registers of one block or of the blocks it is split over (which
// exchange their sums), the resident pass: one kernel, the input read once (and likewise for the training backward:
// trainResident, gradResident); over rows, where a column of channels fits in the registers of blocks that can all
// run at once (whose last merges their partials for all: trainRowsResident, gradRowsResident).
// Names: `mean` is the per-channel mean the data is centred on (the batch's in training, the running one in
// evaluation and frozen backward), `invstd` = 1 / sqrt(sigma2 + epsilon) of the batch, `var` the running variance.
// The Python side declares every entry point's parameters once, in Kernels/BatchNorm.py.
// Evaluation forward = one pass (read once, write once), in place when out == data, no workspace.
// Backward = reduction pass (partial sums of dy and dy * (x - mean), merged by each column's last block into the
// parameter gradients) + dx pass.
// Frozen backward (statistics are constants) = the same reduction pass + dx pass that reads dy only.
//
// Numerics: each thread keeps (count, mean, M2) of x - K, where K is the first element of its channel, merging into
// it the exact moments of small groups of loaded values by the pairwise formula of Chan, Golub & LeVeque (1979);
// threads are merged by the same formula, blocks by its sums in double precision. The shift K keeps fp32 exact
// enough when |mean| >> std.
//
// Index arithmetic is 64-bit: a tensor may hold more than 2^31 elements.
//
// Vector width VEC: loads and stores move VEC elements at once (up to 16 bytes: 4 floats or 8 halves). The host
// picks the widest VEC that divides the vectorized axis length and to which every pointer of the call is aligned.

#include <cuda_fp16.h>

#ifndef BLOCK_SIZE
#define BLOCK_SIZE 256
#endif

// Loads in flight per thread: the main loops of the reductions and of the elementwise passes issue LOADS vector loads
// (per input) before they use the first, so that a thread waits on memory once per LOADS vectors.
#ifndef LOADS
#define LOADS 4
#endif

// The reductions' counters of columns of blocks (finishColumns).
#ifndef COLUMN_COUNTERS
#define COLUMN_COUNTERS 4096
#endif

// Threads of the resident passes' blocks at most (trainResident).
#ifndef RESIDENT_THREADS
#define RESIDENT_THREADS 512
#endif

// Blocks of a resident pass whose maps are split over several blocks at most (their sums: mapTotals), and the most
// values a thread of such a block holds (the exchange's registers on top of 64 values spill: those passes serve maps
// of one block).
#ifndef RESIDENT_PARTIALS
#define RESIDENT_PARTIALS 8192
#endif
#ifndef SPLIT_VALUES
#define SPLIT_VALUES 32
#endif

#if BLOCK_SIZE % 32 != 0 || BLOCK_SIZE > 1024
#error "BLOCK_SIZE must be a multiple of 32 and at most 1024"
#endif

typedef long long int64;

// ---------------------------------------------------------------------------------------------------------------
// Loads and stores

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack
{
	T val[VEC];
};

__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T fromFloat(float v);
template <> __device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }

// VEC values from ptr into v[at], ..., v[at + VEC - 1].
template <typename T, int VEC, int N>
__device__ __forceinline__ void loadPackAt(const T *ptr, float (&v)[N], int at)
{
	Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC> *>(ptr);

#pragma unroll
	for (int k = 0; k < VEC; k++)
		v[at + k] = toFloat(p.val[k]);
}

template <typename T, int VEC>
__device__ __forceinline__ void loadPack(const T *ptr, float (&v)[VEC])
{
	loadPackAt<T, VEC, VEC>(ptr, v, 0);
}

// v[at], ..., v[at + VEC - 1] to ptr.
template <typename T, int VEC, int N>
__device__ __forceinline__ void storePackAt(T *ptr, const float (&v)[N], int at)
{
	Pack<T, VEC> p;

#pragma unroll
	for (int k = 0; k < VEC; k++)
		p.val[k] = fromFloat<T>(v[at + k]);

	*reinterpret_cast<Pack<T, VEC> *>(ptr) = p;
}

template <typename T, int VEC>
__device__ __forceinline__ void storePack(T *ptr, const float (&v)[VEC])
{
	storePackAt<T, VEC, VEC>(ptr, v, 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Welford / Chan

struct Moments
{
	float n, mean, m2;
};

__device__ __forceinline__ Moments emptyMoments()
{
	Moments r;
	r.n = 0.0f; r.mean = 0.0f; r.m2 = 0.0f;
	return r;
}

// acc merged with a group of `count` values of the given mean and M2 (Chan's formula; the weight by __fdividef, below):
// the main loops' step and the merge of threads. An empty group (count 0, mean 0) leaves acc as it is.
__device__ __forceinline__ Moments mergeGroup(Moments acc, float count, float mean, float m2)
{
	float n = acc.n + count;
	float wb = __fdividef(count, fmaxf(n, 1.0f));
	float delta = mean - acc.mean;

	Moments r;
	r.n = n;
	r.mean = acc.mean + delta * wb;
	r.m2 = acc.m2 + m2 + delta * delta * acc.n * wb;
	return r;
}

// The moments of COUNT values (x - shift) computed exactly in registers (a sum, then squares about its mean), merged
// into acc: the main loops' step, one merge per COUNT loaded values. The weight uses __fdividef (a reciprocal and a
// product, 2 ulp): an IEEE division's slow-path call would keep the compiler from issuing the next loads before it.
// Counts inside a thread are exact integers (below 2^24).
template <int COUNT>
__device__ __forceinline__ Moments addValues(Moments acc, const float (&v)[COUNT], float shift)
{
	float s = 0.0f;

#pragma unroll
	for (int k = 0; k < COUNT; k++)
		s += v[k] - shift;

	float mean = s * (1.0f / (float)COUNT), m2 = 0.0f;

#pragma unroll
	for (int k = 0; k < COUNT; k++)
	{
		float d = v[k] - shift - mean;
		m2 += d * d;
	}

	return mergeGroup(acc, (float)COUNT, mean, m2);
}

// addValues of the values v[k] with in[k] (an unaligned segment's walk: the others belong to other maps and hold
// `shift`); a group with none leaves acc as it is.
template <int COUNT>
__device__ __forceinline__ Moments addSegmentValues(Moments acc, const float (&v)[COUNT], const bool (&in)[COUNT],
													float shift)
{
	float s = 0.0f, count = 0.0f;

#pragma unroll
	for (int k = 0; k < COUNT; k++)
	{
		s += v[k] - shift;
		count += in[k] ? 1.0f : 0.0f;
	}

	float mean = __fdividef(s, fmaxf(count, 1.0f)), m2 = 0.0f;

#pragma unroll
	for (int k = 0; k < COUNT; k++)
	{
		float d = v[k] - shift - mean;
		m2 += in[k] ? d * d : 0.0f;
	}

	return mergeGroup(acc, count, mean, m2);
}

__device__ __forceinline__ Moments shflDownMoments(Moments a, int offset)
{
	Moments b;
	b.n = __shfl_down_sync(0xffffffffu, a.n, offset);
	b.mean = __shfl_down_sync(0xffffffffu, a.mean, offset);
	b.m2 = __shfl_down_sync(0xffffffffu, a.m2, offset);
	return b;
}

__device__ __forceinline__ Moments warpMergeMoments(Moments a)
{
#pragma unroll
	for (int offset = 16; offset > 0; offset >>= 1)
	{
		Moments b = shflDownMoments(a, offset);
		a = mergeGroup(a, b.n, b.mean, b.m2);
	}

	return a;
}

// The mean and M2 of a map's merged partials (mergePartials): double precision, so that the merge of many partials
// adds no float32 rounding.
struct WideMoments
{
	double mean, m2;
};

// Result is valid in thread 0 only.
__device__ __forceinline__ Moments blockMergeMoments(Moments a)
{
	__shared__ float sn[BLOCK_SIZE / 32], smean[BLOCK_SIZE / 32], sm2[BLOCK_SIZE / 32];

	int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
	a = warpMergeMoments(a);

	if (lane == 0)
	{
		sn[warp] = a.n; smean[warp] = a.mean; sm2[warp] = a.m2;
	}
	__syncthreads();

	// NOTE: every warp merges the warps' partials, though only thread 0's result is used: no shuffle is reached by a
	// part of the block only (which emulations of the warp shuffle on a CPU cannot serve)
	a = emptyMoments();
	if (lane < BLOCK_SIZE / 32)
	{
		a.n = sn[lane]; a.mean = smean[lane]; a.m2 = sm2[lane];
	}
	return warpMergeMoments(a);
}

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
	for (int offset = 16; offset > 0; offset >>= 1)
		v += __shfl_down_sync(0xffffffffu, v, offset);

	return v;
}

// Both sums are valid in thread 0 only.
__device__ __forceinline__ void blockSum2(float &a, float &b)
{
	__shared__ float sa[BLOCK_SIZE / 32], sb[BLOCK_SIZE / 32];

	int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
	a = warpSum(a); b = warpSum(b);

	if (lane == 0)
	{
		sa[warp] = a; sb[warp] = b;
	}
	__syncthreads();

	// NOTE: every warp, as in blockMergeMoments
	a = (lane < BLOCK_SIZE / 32) ? sa[lane] : 0.0f;
	b = (lane < BLOCK_SIZE / 32) ? sb[lane] : 0.0f;
	a = warpSum(a); b = warpSum(b);
}

// ---------------------------------------------------------------------------------------------------------------
// Spatial walk: a channel's data is `outer` segments of `inner` elements, (o * maps + c) * inner apart. Its walk
// covers innerV vectors per segment: inner / VEC when VEC divides inner (ALIGNED), else the ceil((inner + VEC - 1) /
// VEC) aligned vectors that may overlap a segment (UNALIGNED: 7x7 maps in 16-byte vectors), whose elements outside
// the segment belong to other maps and are masked out. The outer * innerV vectors form one logical range; a block
// takes a contiguous slice of it and its threads stride through the slice. The cursor keeps its position j in the
// range, i = j % innerV and the element offset of its segment (`base`), advanced incrementally: the loop body has no
// division and no multiplication, so the addresses of a loop's LOADS vectors are ready before their loads.

// a / b for 0 <= a < 2^53 and 0 < b (element and vector indices), not by a 64-bit division, whose call makes ptxas
// keep the registers live across it in memory (spills in the reductions' main loops): a double reciprocal (a float
// one refined by a Newton step, relative error below 2^-41) gives a quotient within 2^12 of a / b, one refinement by
// the exact remainder one within 1 + 2^-28, and the remainder's sign or size the last step.
__device__ __forceinline__ int64 indexDivide(int64 a, int64 b)
{
	double rcp = (double)__fdividef(1.0f, (float)b);
	rcp = rcp * (2.0 - (double)b * rcp);

	int64 q = (int64)((double)a * rcp);
	q += (int64)((double)(a - q * b) * rcp);

	int64 r = a - q * b;
	q -= r < 0 ? 1 : 0;
	r += r < 0 ? b : 0;
	return q + (r >= b ? 1 : 0);
}

struct SpatialCursor
{
	int64 j, i, base, stepI, stepBase, segmentStride;
};

__device__ __forceinline__ SpatialCursor spatialCursor(int64 j, int64 inner, int64 innerV, int64 step, int c, int maps)
{
	SpatialCursor cur;
	int64 o = indexDivide(j, innerV), stepO = indexDivide(step, innerV);
	cur.j = j;
	cur.i = j - o * innerV;
	cur.segmentStride = (int64)maps * inner;
	cur.base = o * cur.segmentStride + (int64)c * inner;
	cur.stepI = step - stepO * innerV;
	cur.stepBase = stepO * cur.segmentStride;
	return cur;
}

// Where the cursor's vector is: its element offset, and the position in the segment of its first element (negative
// for an unaligned segment's elements before the segment; the vector's element k is in the segment when first + k is
// in [0, inner)).
struct VectorAt
{
	int64 offset, first;
};

template <int VEC, bool ALIGNED>
__device__ __forceinline__ VectorAt vectorAt(const SpatialCursor &cur)
{
	VectorAt r;
	int64 start = ALIGNED ? cur.base : cur.base & ~(int64)(VEC - 1);
	r.offset = start + cur.i * VEC;
	r.first = r.offset - cur.base;
	return r;
}

// Whether element k of a vector is in its segment (always, for aligned segments).
template <bool ALIGNED>
__device__ __forceinline__ bool inSegment(const VectorAt &at, int k, int64 inner)
{
	return ALIGNED || (unsigned long long)(at.first + k) < (unsigned long long)inner;
}

// Whether a vector holds any element of its segment: an unaligned segment's last covering vectors may not, and are not
// loaded (past the tensor's end for the last map's last segment).
template <bool ALIGNED>
__device__ __forceinline__ bool touchesSegment(const VectorAt &at, int64 inner)
{
	return ALIGNED || at.first < inner;
}

__device__ __forceinline__ void advance(SpatialCursor &cur, int64 innerV, int64 step)
{
	cur.j += step;
	cur.i += cur.stepI;
	cur.base += cur.stepBase;

	if (cur.i >= innerV)
	{
		cur.i -= innerV;
		cur.base += cur.segmentStride;
	}
}

// The cursor's next LOADS vectors (`step` apart), the cursor advanced past them.
template <int VEC, bool ALIGNED>
__device__ __forceinline__ void nextVectors(SpatialCursor &cur, int64 innerV, int step, VectorAt (&at)[LOADS])
{
#pragma unroll
	for (int u = 0; u < LOADS; u++)
	{
		at[u] = vectorAt<VEC, ALIGNED>(cur);
		advance(cur, innerV, step);
	}
}

// Who walks a map in the spatial reductions: its block (BLOCK_SIZE threads striding through the map's slice; grid.x =
// maps), or with PER_THREAD (maps of at most BLOCK_SIZE vectors, which would leave a block's threads idle and pay its
// merge for a few values) one thread, through its map's slice vector after vector (grid.x = ceil(maps /
// BLOCK_SIZE): neighbouring threads read neighbouring maps). The thread's map, its first vector in the slice and its
// step; threads past the last map (PER_THREAD) have none.
struct MapWalk
{
	int c, first, step;
	bool active;
};

template <bool PER_THREAD>
__device__ __forceinline__ MapWalk mapWalk(int maps)
{
	MapWalk r;
	int64 c = PER_THREAD ? (int64)blockIdx.x * BLOCK_SIZE + threadIdx.x : blockIdx.x;
	r.active = c < maps;
	r.c = r.active ? (int)c : 0;
	r.first = PER_THREAD ? 0 : threadIdx.x;
	r.step = PER_THREAD ? 1 : BLOCK_SIZE;
	return r;
}

// VEC values of the vector at `at` into v[pos], ... (those of elements outside the segment: `fill`).
template <typename T, int VEC, bool ALIGNED, int N>
__device__ __forceinline__ void loadSegmentAt(const T *ptr, const VectorAt &at, int64 inner, float fill,
											  float (&v)[N], int pos)
{
	if (touchesSegment<ALIGNED>(at, inner))
		loadPackAt<T, VEC>(ptr + at.offset, v, pos);

#pragma unroll
	for (int k = 0; k < VEC; k++)
		v[pos + k] = inSegment<ALIGNED>(at, k, inner) ? v[pos + k] : fill;
}

__device__ __forceinline__ void blockSlice(int64 total, int64 &begin, int64 &end)
{
	int64 per = indexDivide(total + gridDim.y - 1, gridDim.y);
	begin = per * blockIdx.y;
	end = min(total, begin + per);
}

// ---------------------------------------------------------------------------------------------------------------
// The reductions' last step. A reduction's grid is columns (blockIdx.x) of gridDim.y blocks ("splits"): each block
// writes its partials of the column's maps, laid out [split][map]. Where the host folds the step into the reduction
// (`fold`: where a column's partials are few enough for one block to merge at once), the last block of a column to
// have written them merges the column's partials and writes the per-map results (finishColumns); else a second kernel
// does, a block per map (bnStatsMerge, bnSumsMerge). A column is one map (a block per map), BLOCK_SIZE maps (a thread
// per map) or the maps of a rows block's lanes (rowsColumn).
//
// The counters: columnArrivals, zero when the module loads, and left zero by every launch for the next (the kernels
// of a context run one after another on its stream). Column x counts on slot x % COLUMN_COUNTERS: where a grid has
// more columns than slots, the columns that share a slot are finished together by the last block of all of them.

struct Column
{
	int first, count;
};

// The calling thread's index in its block (blocks of any shape).
__device__ __forceinline__ int blockThread()
{
	return threadIdx.y * blockDim.x + threadIdx.x;
}

__device__ int columnArrivals[COLUMN_COUNTERS];

// Whether this build has the folded last step and the resident passes: not for Volta (sm_70), whose ptxas keeps
// registers of the reductions' main loops in memory once the step is compiled in, and of the resident passes (the host
// takes neither there: bnStatsMerge and bnSumsMerge merge, the reductions and elementwise passes normalize).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#define TURING_BUILD 0
#else
#define TURING_BUILD 1
#endif

// Whether this build has the resident passes whose threads hold 64 values: from Hopper (sm_90) on, whose ptxas holds
// them without a spill (Turing's and Ampere's keep the addresses of 16 loads in flight in too many registers; the host
// takes those maps through the reductions there: Kernels/BatchNorm.py, RESIDENT_VALUES_BEFORE_HOPPER).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define HOPPER_BUILD 0
#else
#define HOPPER_BUILD 1
#endif

// With fold, finish(column) for each column of the calling block's counter slot, when the block is the last of those
// columns' blocks to have written its partials: every thread's writes are made visible to the device first, then one
// thread takes a ticket on the slot; the last block resets it (every other block of those columns has taken its
// ticket by then). Every thread of the block calls it, after its writes; finish is called by every thread.
template <typename Finish>
__device__ __forceinline__ void finishColumns(int fold, Finish finish)
{
	__shared__ int last;
	int slot = blockIdx.x % COLUMN_COUNTERS;

	if (!TURING_BUILD || !fold)
		return;

	__threadfence();
	__syncthreads();

	if (blockThread() == 0)
	{
		int columns = (int)((gridDim.x - 1 - slot) / COLUMN_COUNTERS) + 1;
		int ticket = atomicAdd(columnArrivals + slot, 1);
		last = ticket == columns * (int)gridDim.y - 1;
		if (last)
			columnArrivals[slot] = 0;
	}
	__syncthreads();

	if (!last)
		return;

	__threadfence();
	for (int column = slot; column < gridDim.x; column += COLUMN_COUNTERS)
		finish(column);
}

// The last block's threads over its column's maps: `lanes` consecutive threads per map (the largest power of two
// with lanes * count <= the block's threads: 256 for one map, 1 for BLOCK_SIZE maps), lane l taking splits l,
// l + lanes, ...; threads past the last map's lanes have none (inactive).
struct MergeLane
{
	int c, lane, lanes;
	bool active;
};

__device__ __forceinline__ MergeLane mergeLane(Column column)
{
	int threads = blockDim.x * blockDim.y, t = blockThread();

	MergeLane r;
	int shift = 0;
	while ((2 << shift) * column.count <= threads)
		shift++;

	r.lanes = 1 << shift;
	r.active = t < r.lanes * column.count;
	r.c = column.first + (r.active ? t >> shift : 0);
	// NOTE: an inactive thread's lane is never below a tree step's distance (laneSums)
	r.lane = r.active ? t & (r.lanes - 1) : r.lanes;
	return r;
}

// a and b summed over the lanes of each map, through shared memory (a tree of log2(lanes) steps); every thread of the
// block calls it and gets its map's sums (inactive threads: their own values).
__device__ __forceinline__ void laneSums(double &a, double &b, MergeLane ml)
{
	__shared__ double sa[BLOCK_SIZE], sb[BLOCK_SIZE];

	int t = blockThread();
	sa[t] = a; sb[t] = b;

	for (int d = ml.lanes / 2; d > 0; d /= 2)
	{
		__syncthreads();

		if (ml.lane < d)
		{
			sa[t] += sa[t + d];
			sb[t] += sb[t + d];
		}
	}
	__syncthreads();

	if (ml.active)
	{
		a = sa[t - ml.lane]; b = sb[t - ml.lane];
	}
	// NOTE: the next call's stores wait until every thread has read
	__syncthreads();
}

// The moments (mean and M2 of x - shift) of map ml.c merged from its partials over the `splits` splits, in double
// precision. Two passes over the partials: the mean (the counts' weighted sum of the partial means over the map's m
// values, times invM = 1 / m), then M2 about it (Chan et al. 1979's merge, without a division per partial). The
// partials are read from L2 (written by other blocks of this launch).
__device__ __forceinline__ WideMoments mergePartials(const float *pn, const float *pmean, const float *pm2, int splits,
													 int maps, double invM, MergeLane ml)
{
	double sum = 0.0, unused = 0.0;

	for (int s = ml.lane; ml.active && s < splits; s += ml.lanes)
	{
		int64 k = (int64)s * maps + ml.c;
		sum += (double)__ldcg(pn + k) * (double)__ldcg(pmean + k);
	}
	laneSums(sum, unused, ml);

	WideMoments r;
	// NOTE: a product, not a division: no division's slow-path call in the kernel (ptxas then spills in the main loop)
	r.mean = sum * invM;

	double m2 = 0.0;

	for (int s = ml.lane; ml.active && s < splits; s += ml.lanes)
	{
		int64 k = (int64)s * maps + ml.c;
		double delta = (double)__ldcg(pmean + k) - r.mean;
		m2 += (double)__ldcg(pm2 + k) + (double)__ldcg(pn + k) * delta * delta;
	}
	unused = 0.0;
	laneSums(m2, unused, ml);

	r.m2 = m2;
	return r;
}

// What the statistics kernels' last blocks write per map (passed by value; Kernels/BatchNorm.py mirrors it field by
// field):
//   savedMean = mu, savedInvstd = 1 / sqrt(sigma2 + eps),
//   runningMean = (1 - factor) * runningMean + factor * mu,
//   runningVar = (1 - factor) * runningVar + factor * sigma2 * m / (m - 1)
// (the running variance is unbiased, as in Theano and cuDNN). runningMean/runningVar may be null (no running update).
// savedVar may be null; when given it receives sigma2 (biased), the moments processes exchange to merge their batches.
// wideMean and wideVar may be null (both or neither); when given they receive mu and sigma2 in double precision, as
// the merge computed them (the moments SyncBatchNorm exchanges: no float32 rounding before the merge of processes).
// skipped may be null; when given, a map whose mu or sigma2 is not finite (a NaN or inf in its data, or a float32
// overflow of its variance) keeps its running statistics and counts 1 in skipped[c] (no other thread touches it).
// mirror may be null; when given (with skipped), a map's new count is written there too (a host mirror of the counts,
// mapped into the device: the count reaches the host without a copy).
// backup may be null (and is, without a running update); when given (3 * maps + 1 floats) it receives the running
// statistics and skip counts as they were before the update (rows of maps; 0 for counts without skipped) and stamp
// last: what the module puts back if its call raises after the launch (BatchNormPlan.trainForward).
// invM = 1 / m and unbias = m / (m - 1) for the m values of each map (computed by the host: no division here).
// fold: whether the statistics kernel's last blocks finish (else bnStatsMerge does).
struct MomentsOutputs
{
	float *savedMean, *savedInvstd, *runningMean, *runningVar, *savedVar, *skipped, *mirror, *backup;
	double *wideMean, *wideVar;
	double invM;
	float unbias, epsilon, factor, stamp;
	int fold;
};

// The running update of map c from its batch statistics (below); with skipped, guarded: a map whose mu or sigma2 is
// not finite keeps its running statistics, counts 1 in skipped[c], and false is returned.
__device__ __forceinline__ bool runningUpdate(int64 c, float mu, float sigma2, float unbias, float factor,
											  float *runningMean, float *runningVar, float *skipped)
{
	if (skipped != 0 && !(isfinite(mu) && isfinite(sigma2)))
	{
		skipped[c] += 1.0f;
		return false;
	}
	if (runningMean != 0)
	{
		runningMean[c] = (1.0f - factor) * runningMean[c] + factor * mu;
		runningVar[c] = (1.0f - factor) * runningVar[c] + factor * sigma2 * unbias;
	}
	return true;
}

// A map's batch statistics from its mean and M2 about it (double precision; invM = 1 / m for its m values): the biased
// variance, clamped at 0 by a comparison, not fmax (a NaN variance, from a NaN in the map's data, stays a NaN, as in
// PyTorch), and what the passes take in float32: mu, sigma2 and invstd = 1 / sqrt(sigma2 + eps) rounded once
// (__frsqrt_rn, and no division's slow-path call).
struct BatchStats
{
	double wideMu, wideSigma2;
	float mu, sigma2, invstd;
};

__device__ __forceinline__ BatchStats batchStats(double mean, double m2, const MomentsOutputs &o)
{
	BatchStats r;
	r.wideMu = mean;
	r.wideSigma2 = m2 * o.invM;
	r.wideSigma2 = r.wideSigma2 < 0.0 ? 0.0 : r.wideSigma2;
	r.mu = (float)r.wideMu;
	r.sigma2 = (float)r.wideSigma2;
	r.invstd = __frsqrt_rn(r.sigma2 + o.epsilon);
	return r;
}

// MomentsOutputs of map c (by one thread per map).
__device__ __forceinline__ void writeMoments(int64 c, const BatchStats &s, int maps, const MomentsOutputs &o)
{
	o.savedMean[c] = s.mu;
	o.savedInvstd[c] = s.invstd;
	if (o.savedVar != 0)
		o.savedVar[c] = s.sigma2;
	if (o.wideMean != 0)
	{
		o.wideMean[c] = s.wideMu;
		o.wideVar[c] = s.wideSigma2;
	}

	if (o.runningMean != 0 && o.backup != 0)
	{
		o.backup[c] = o.runningMean[c];
		o.backup[maps + c] = o.runningVar[c];
		o.backup[2 * maps + c] = o.skipped != 0 ? o.skipped[c] : 0.0f;
		if (c == 0)
			o.backup[3 * maps] = o.stamp;
	}
	if (o.runningMean != 0 && !runningUpdate(c, s.mu, s.sigma2, o.unbias, o.factor, o.runningMean, o.runningVar,
											 o.skipped) && o.mirror != 0)
		o.mirror[c] = o.skipped[c];
}

// The last block of a statistics column: every map's partials merged (mergePartials), then MomentsOutputs written by
// the map's first lane. shiftStride: the distance between the first elements of consecutive maps (inner for the
// spatial kernels, 1 for the rows kernels): the shift K of the partials is the map's first element.
template <typename T>
__device__ __forceinline__ void finishMoments(const T *x, int64 shiftStride, Column column, int splits, int maps,
											  const float *pn, const float *pmean, const float *pm2,
											  const MomentsOutputs &o)
{
	MergeLane ml = mergeLane(column);
	WideMoments acc = mergePartials(pn, pmean, pm2, splits, maps, o.invM, ml);

	if (!ml.active || ml.lane != 0)
		return;

	int64 c = ml.c;
	writeMoments(c, batchStats((double)toFloat(x[c * shiftStride]) + acc.mean, acc.m2, o), maps, o);
}

// What the gradient sums' last blocks write per map: biasgrad = sum(dz), scalegrad = invstd * sum(dz * (x - mean))
// (both overwritten), with invstd[c] of the batch after a training forward, or where invstd is null (the frozen
// backward, after an evaluation forward) 1 / sqrt(var[c] + epsilon) of the running variance. fold: as in
// MomentsOutputs (bnSumsMerge).
struct SumsOutputs
{
	const float *invstd, *var;
	float *scalegrad, *biasgrad;
	float epsilon;
	int fold;
};

// The parameter gradients (biasgrad, scalegrad) of map c from its sums, in float32 (SumsOutputs).
__device__ __forceinline__ float2 parameterGradients(int c, double sum, double dot, const SumsOutputs &o)
{
	float invstd = o.invstd != 0 ? o.invstd[c] : __frsqrt_rn(o.var[c] + o.epsilon);
	return make_float2((float)sum, (float)(dot * (double)invstd));
}

__device__ __forceinline__ void writeSums(int c, float2 gradients, const SumsOutputs &o)
{
	o.biasgrad[c] = gradients.x;
	o.scalegrad[c] = gradients.y;
}

// The last block of a gradient-sums column: every map's partials added (in double precision), then SumsOutputs
// written by the map's first lane.
__device__ __forceinline__ void finishSums(Column column, int splits, int maps, const float *psum,
										   const float *pdot, const SumsOutputs &o)
{
	MergeLane ml = mergeLane(column);
	double sum = 0.0, dot = 0.0;

	for (int s = ml.lane; ml.active && s < splits; s += ml.lanes)
	{
		int64 k = (int64)s * maps + ml.c;
		sum += __ldcg(psum + k);
		dot += __ldcg(pdot + k);
	}
	laneSums(sum, dot, ml);

	if (ml.active && ml.lane == 0)
		writeSums(ml.c, parameterGradients(ml.c, sum, dot, o), o);
}

// Column x of a spatial reduction: map x, or with PER_THREAD BLOCK_SIZE maps (mapWalk).
template <bool PER_THREAD>
__device__ __forceinline__ Column spatialColumn(int x, int maps)
{
	Column r;
	r.first = PER_THREAD ? x * BLOCK_SIZE : x;
	r.count = PER_THREAD ? min(BLOCK_SIZE, maps - r.first) : 1;
	return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Training statistics: partial moments per block, laid out [split][channel] with split = blockIdx.y, merged by each
// column's last block (finishMoments).

// grid = (maps, splits), or (ceil(maps / BLOCK_SIZE), splits) with PER_THREAD (mapWalk); block = BLOCK_SIZE.
template <typename T, int VEC, bool ALIGNED, bool PER_THREAD>
__device__ void statsSpatial(const T *x, int64 outer, int maps, int64 inner, int64 innerV, float *pn, float *pmean,
							 float *pm2, MomentsOutputs o)
{
	MapWalk walk = mapWalk<PER_THREAD>(maps);
	int c = walk.c, step = walk.step;
	float shift = toFloat(x[(int64)c * inner]);

	int64 begin, end;
	blockSlice(outer * innerV, begin, end);
	// NOTE: the per-thread walk's threads past the last map walk nothing (but reach the column's barriers)
	end = walk.active ? end : begin;

	Moments acc = emptyMoments();
	SpatialCursor cur = spatialCursor(begin + walk.first, inner, innerV, step, c, maps);

	// NOTE: LOADS vectors loaded, then merged as one group of LOADS * VEC values
	while (cur.j + (LOADS - 1) * step < end)
	{
		float v[LOADS * VEC];
		VectorAt at[LOADS];
		nextVectors<VEC, ALIGNED>(cur, innerV, step, at);

#pragma unroll
		for (int u = 0; u < LOADS; u++)
			loadSegmentAt<T, VEC, ALIGNED>(x, at[u], inner, shift, v, u * VEC);

		if (ALIGNED)
			acc = addValues<LOADS * VEC>(acc, v, shift);
		else
		{
			bool in[LOADS * VEC];

#pragma unroll
			for (int u = 0; u < LOADS; u++)
			{
#pragma unroll
				for (int k = 0; k < VEC; k++)
					in[u * VEC + k] = inSegment<ALIGNED>(at[u], k, inner);
			}
			acc = addSegmentValues<LOADS * VEC>(acc, v, in, shift);
		}
	}

	for (; cur.j < end; advance(cur, innerV, step))
	{
		float v[VEC];
		VectorAt at = vectorAt<VEC, ALIGNED>(cur);
		loadSegmentAt<T, VEC, ALIGNED>(x, at, inner, shift, v, 0);

		if (ALIGNED)
			acc = addValues<VEC>(acc, v, shift);
		else
		{
			bool in[VEC];

#pragma unroll
			for (int k = 0; k < VEC; k++)
				in[k] = inSegment<ALIGNED>(at, k, inner);
			acc = addSegmentValues<VEC>(acc, v, in, shift);
		}
	}

	if (!PER_THREAD)
		acc = blockMergeMoments(acc);

	if (PER_THREAD ? walk.active : threadIdx.x == 0)
	{
		int64 k = (int64)blockIdx.y * maps + c;
		pn[k] = acc.n; pmean[k] = acc.mean; pm2[k] = acc.m2;
	}

	finishColumns(o.fold, [&](int column)
	{
		finishMoments<T>(x, inner, spatialColumn<PER_THREAD>(column, maps), gridDim.y, maps, pn, pmean, pm2, o);
	});
}

// The rows kernels' block: blockDim.x lanes across channel vectors (as many as the maps need, at most 32: few maps
// leave no lane idle) and blockDim.y lanes across rows, blockDim.x * blockDim.y <= BLOCK_SIZE; the host picks them
// (BatchNormKernels.rowsBlock). The lane's vector starts at element rowsChannel<VEC>(width) of a row (width for the
// lanes past the row's last element, which are idle; a 32-bit index, so that no 64-bit one stays live across the
// loops: unsigned, as the grid's lanes times VEC exceed the row by less than a block's lanes' vectors, below 2^32);
// its thread index in the block is blockThread().
template <int VEC>
__device__ __forceinline__ int rowsChannel(int width)
{
	return (int)min((blockIdx.x * blockDim.x + threadIdx.x) * VEC, (unsigned)width);
}

// The rows kernels walk rows of `width` elements: a row of the layout (width = maps), or where VEC does not divide
// the maps ((125000, 50), (10^6, 3)), the fewest consecutive rows whose elements it divides (width = lcm(maps, VEC)),
// so that the accesses stay VEC wide. Element e of such a row is of channel e % maps: a lane's vector keeps the
// channels of its VEC elements, the first found once by a division, the others after it, wrapping.
template <int VEC>
__device__ __forceinline__ void laneChannels(int c0, int maps, int (&c)[VEC])
{
	c[0] = c0 % maps;

#pragma unroll
	for (int k = 1; k < VEC; k++)
		c[k] = c[k - 1] + 1 == maps ? 0 : c[k - 1] + 1;
}

// Column x of a rows reduction: the maps of its blocks' lanes' vectors (every map where the rows are folded: the
// grid has one column then).
template <int VEC>
__device__ __forceinline__ Column rowsColumn(int x, int maps)
{
	Column r;
	r.first = x * blockDim.x * VEC;
	r.count = min((int)blockDim.x * VEC, maps - r.first);
	return r;
}

// The first power of two >= n.
__device__ __forceinline__ int ceilPow2(int n)
{
	int p = 1;
	while (p < n)
		p <<= 1;
	return p;
}

// The tree over the block's rows of lanes: for each channel of the lane's vector, merge(own slot, the slot of row
// y + s) for s = ..., 2, 1 while rows y + s remain, over shared values that every thread has stored at
// blockThread() * VEC + k; afterwards thread row 0's slots hold the block's results. log2(blockDim.y) steps; every
// thread reaches every barrier.
template <int VEC, typename Merge>
__device__ __forceinline__ void rowsTree(Merge merge)
{
	for (int s = ceilPow2(blockDim.y) / 2; s > 0; s /= 2)
	{
		__syncthreads();

		if (threadIdx.y < s && threadIdx.y + s < blockDim.y)
		{
			int self = blockThread() * VEC, other = (blockThread() + s * blockDim.x) * VEC;

#pragma unroll
			for (int k = 0; k < VEC; k++)
				merge(self + k, other + k);
		}
	}
}

// Where the rows of a rows reduction hold several of the layout's rows (width > maps: laneChannels; one block's lanes
// span a row, the host's rule), the block's results of one channel: thread row 0's slots e, e + maps, ... (slot e is
// element e of the row, after rowsTree), merged into slot e < maps by merge(e, e + maps * i). Every thread reaches the
// barriers.
template <typename Merge>
__device__ __forceinline__ void mergeCopies(int width, int maps, Merge merge)
{
	if (width == maps)
		return;

	__syncthreads();

	int t = blockThread();
	if (t < maps)
	{
		for (int e = t + maps; e < width; e += maps)
			merge(t, e);
	}
	__syncthreads();
}

// The rows kernels' partial moments of a block: the rows of lanes of a channel vector merge their moments acc through
// shared memory (rowsTree; a channel's slots by mergeCopies), and thread row 0 writes the block's partials of each
// channel at `split` (laid out [split][channel]). Every thread of the block calls it (blockDim.x * blockDim.y at most
// BLOCK_SIZE).
template <int VEC>
__device__ __forceinline__ void rowsMomentPartials(const Moments (&acc)[VEC], bool active, int c0, int width, int maps,
												   int split, float *pn, float *pmean, float *pm2)
{
	__shared__ float sn[BLOCK_SIZE * VEC], smean[BLOCK_SIZE * VEC], sm2[BLOCK_SIZE * VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		int at = blockThread() * VEC + k;
		sn[at] = acc[k].n; smean[at] = acc[k].mean; sm2[at] = acc[k].m2;
	}

	auto merge = [&](int self, int other)
	{
		Moments a, b;
		a.n = sn[self]; a.mean = smean[self]; a.m2 = sm2[self];
		b.n = sn[other]; b.mean = smean[other]; b.m2 = sm2[other];
		a = mergeGroup(a, b.n, b.mean, b.m2);
		sn[self] = a.n; smean[self] = a.mean; sm2[self] = a.m2;
	};
	rowsTree<VEC>(merge);
	mergeCopies(width, maps, merge);

	if (threadIdx.y == 0 && active)
	{
#pragma unroll
		for (int k = 0; k < VEC; k++)
		{
			int at = threadIdx.x * VEC + k;
			int64 idx = (int64)split * maps + c0 + k;
			// NOTE: past the maps only where the rows are folded (those slots were merged into the first maps')
			if (c0 + k < maps)
			{
				pn[idx] = sn[at]; pmean[idx] = smean[at]; pm2[idx] = sm2[at];
			}
		}
	}
}

// grid = (ceil(width / (blockDim.x * VEC)), splits), block = rows (above); rows of `width` elements, as the
// elementwise passes' (laneChannels; a channel's slots merged by mergeCopies where they hold several of the layout's).
// The partials' shift of a channel is its first element.
template <typename T, int VEC>
__device__ void statsRows(const T *x, int64 rows, int width, int maps, float *pn, float *pmean, float *pm2,
						  MomentsOutputs o)
{
	int c0 = rowsChannel<VEC>(width);
	bool active = c0 < width;

	float shift[VEC];
	Moments acc[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
		acc[k] = emptyMoments();

	if (active)
	{
		int c[VEC];
		laneChannels(c0, maps, c);

#pragma unroll
		for (int k = 0; k < VEC; k++)
			shift[k] = toFloat(x[c[k]]);

		int64 begin, end, step = blockDim.y;
		blockSlice(rows, begin, end);
		int64 r = begin + threadIdx.y;

		// NOTE: LOADS rows loaded, then each channel's LOADS values merged as one group
		for (; r + (LOADS - 1) * step < end; r += LOADS * step)
		{
			float v[LOADS * VEC];

#pragma unroll
			for (int u = 0; u < LOADS; u++)
				loadPackAt<T, VEC>(x + (r + u * step) * width + c0, v, u * VEC);

#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				float w[LOADS];

#pragma unroll
				for (int u = 0; u < LOADS; u++)
					w[u] = v[u * VEC + k];
				acc[k] = addValues<LOADS>(acc[k], w, shift[k]);
			}
		}

		for (; r < end; r += step)
		{
			float v[VEC];
			loadPack<T, VEC>(x + r * width + c0, v);

#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				float w[1] = {v[k]};
				acc[k] = addValues<1>(acc[k], w, shift[k]);
			}
		}
	}

	rowsMomentPartials<VEC>(acc, active, c0, width, maps, blockIdx.y, pn, pmean, pm2);

	finishColumns(o.fold, [&](int column)
	{
		finishMoments<T>(x, 1, rowsColumn<VEC>(column, maps), gridDim.y, maps, pn, pmean, pm2, o);
	});
}

// ---------------------------------------------------------------------------------------------------------------
// Backward reduction: partial sums of dy and dy * (x - mean) per channel and block; mean is the batch mean (training)
// or the running mean (frozen); each column's last block adds them up and multiplies by invstd once per channel
// (finishSums).

// grid and block as statsSpatial's.
template <typename T, int VEC, bool ALIGNED, bool PER_THREAD>
__device__ void gradSpatial(const T *x, const T *dy, int64 outer, int maps, int64 inner, int64 innerV,
							const float *mean, float *psum, float *pdot, SumsOutputs o)
{
	MapWalk walk = mapWalk<PER_THREAD>(maps);
	int c = walk.c, step = walk.step;
	float mu = mean[c];

	int64 begin, end;
	blockSlice(outer * innerV, begin, end);
	// NOTE: as in statsSpatial
	end = walk.active ? end : begin;

	float sum = 0.0f, dot = 0.0f;
	SpatialCursor cur = spatialCursor(begin + walk.first, inner, innerV, step, c, maps);

	// NOTE: LOADS vectors of each input loaded before the first is used; elements outside the segment count as
	// x = mean, dy = 0
	while (cur.j + (LOADS - 1) * step < end)
	{
		float xv[LOADS * VEC], gv[LOADS * VEC];
		VectorAt at[LOADS];
		nextVectors<VEC, ALIGNED>(cur, innerV, step, at);

#pragma unroll
		for (int u = 0; u < LOADS; u++)
		{
			loadSegmentAt<T, VEC, ALIGNED>(x, at[u], inner, mu, xv, u * VEC);
			loadSegmentAt<T, VEC, ALIGNED>(dy, at[u], inner, 0.0f, gv, u * VEC);
		}

		// NOTE: the group's sums first, then added: the compiler then issues more of the group's loads before the first
		// addition than with one running sum
		float groupSum = 0.0f, groupDot = 0.0f;

#pragma unroll
		for (int k = 0; k < LOADS * VEC; k++)
		{
			groupSum += gv[k];
			groupDot += gv[k] * (xv[k] - mu);
		}
		sum += groupSum;
		dot += groupDot;
	}

	for (; cur.j < end; advance(cur, innerV, step))
	{
		VectorAt at = vectorAt<VEC, ALIGNED>(cur);

		float xv[VEC], gv[VEC];
		loadSegmentAt<T, VEC, ALIGNED>(x, at, inner, mu, xv, 0);
		loadSegmentAt<T, VEC, ALIGNED>(dy, at, inner, 0.0f, gv, 0);

#pragma unroll
		for (int k = 0; k < VEC; k++)
		{
			sum += gv[k];
			dot += gv[k] * (xv[k] - mu);
		}
	}

	if (!PER_THREAD)
		blockSum2(sum, dot);

	if (PER_THREAD ? walk.active : threadIdx.x == 0)
	{
		int64 k = (int64)blockIdx.y * maps + c;
		psum[k] = sum; pdot[k] = dot;
	}

	finishColumns(o.fold, [&](int column)
	{
		finishSums(spatialColumn<PER_THREAD>(column, maps), gridDim.y, maps, psum, pdot, o);
	});
}

// The rows kernels' partial sums of a block: the rows of lanes of a channel vector add theirs through shared memory
// (rowsTree; a channel's slots by mergeCopies), and thread row 0 writes the block's partials of each channel at
// `split` (laid out [split][channel]). Every thread of the block calls it.
template <int VEC>
__device__ __forceinline__ void rowsSumPartials(const float (&sum)[VEC], const float (&dot)[VEC], bool active, int c0,
												int width, int maps, int split, float *psum, float *pdot)
{
	__shared__ float ssum[BLOCK_SIZE * VEC], sdot[BLOCK_SIZE * VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		ssum[blockThread() * VEC + k] = sum[k];
		sdot[blockThread() * VEC + k] = dot[k];
	}

	auto add = [&](int self, int other)
	{
		ssum[self] += ssum[other];
		sdot[self] += sdot[other];
	};
	rowsTree<VEC>(add);
	mergeCopies(width, maps, add);

	if (threadIdx.y == 0 && active)
	{
#pragma unroll
		for (int k = 0; k < VEC; k++)
		{
			int64 idx = (int64)split * maps + c0 + k;
			// NOTE: as in rowsMomentPartials
			if (c0 + k < maps)
			{
				psum[idx] = ssum[threadIdx.x * VEC + k]; pdot[idx] = sdot[threadIdx.x * VEC + k];
			}
		}
	}
}

// The rows reductions' partial sums of a block at split blockIdx.y (rowsSumPartials), added up by the column's last
// block (finishSums).
template <int VEC>
__device__ __forceinline__ void rowsSums(const float (&sum)[VEC], const float (&dot)[VEC], bool active, int c0,
										 int width, int maps, float *psum, float *pdot, const SumsOutputs &o)
{
	rowsSumPartials<VEC>(sum, dot, active, c0, width, maps, blockIdx.y, psum, pdot);
	finishColumns(o.fold, [&](int column) { finishSums(rowsColumn<VEC>(column, maps), gridDim.y, maps, psum, pdot, o); });
}

template <typename T, int VEC>
__device__ void gradRows(const T *x, const T *dy, int64 rows, int width, int maps, const float *mean, float *psum,
						 float *pdot, SumsOutputs o)
{
	int c0 = rowsChannel<VEC>(width), c[VEC];
	bool active = c0 < width;
	laneChannels(active ? c0 : 0, maps, c);

	float sum[VEC], dot[VEC], mu[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		sum[k] = 0.0f; dot[k] = 0.0f;
		mu[k] = active ? mean[c[k]] : 0.0f;
	}

	if (active)
	{
		int64 begin, end, step = blockDim.y;
		blockSlice(rows, begin, end);
		int64 r = begin + threadIdx.y;

		// NOTE: LOADS rows of each input loaded before the first is used
		for (; r + (LOADS - 1) * step < end; r += LOADS * step)
		{
			float xv[LOADS * VEC], gv[LOADS * VEC];

#pragma unroll
			for (int u = 0; u < LOADS; u++)
			{
				int64 off = (r + u * step) * width + c0;
				loadPackAt<T, VEC>(x + off, xv, u * VEC);
				loadPackAt<T, VEC>(dy + off, gv, u * VEC);
			}

#pragma unroll
			for (int u = 0; u < LOADS; u++)
			{
#pragma unroll
				for (int k = 0; k < VEC; k++)
				{
					sum[k] += gv[u * VEC + k];
					dot[k] += gv[u * VEC + k] * (xv[u * VEC + k] - mu[k]);
				}
			}
		}

		for (; r < end; r += step)
		{
			float xv[VEC], gv[VEC];
			loadPack<T, VEC>(x + r * width + c0, xv);
			loadPack<T, VEC>(dy + r * width + c0, gv);

#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				sum[k] += gv[k];
				dot[k] += gv[k] * (xv[k] - mu[k]);
			}
		}
	}

	rowsSums<VEC>(sum, dot, active, c0, width, maps, psum, pdot, o);
}

// ---------------------------------------------------------------------------------------------------------------
// Elementwise passes. Per-channel coefficients depend on the mode:
//   MODE_TRAIN_FORWARD    out = (x - mean) * scale * invstd + bias                                   (batch mean)
//   MODE_EVAL_FORWARD     out = (x - mean) * scale / sqrt(var + eps) + bias                          (running mean)
//   MODE_BACKWARD         dx = scale * invstd * (dy - biasgrad / m - (x - mean) * invstd * scalegrad / m)
//   MODE_FROZEN_BACKWARD  dx = dy * scale / sqrt(var + eps)
// The training backward form equals scale * invstd / m * (m * dy - biasgrad - xhat * scalegrad) (Ioffe & Szegedy).
// x and out may alias (in-place evaluation), so neither is declared __restrict__.

#define MODE_TRAIN_FORWARD 0
#define MODE_EVAL_FORWARD 1
#define MODE_BACKWARD 2
#define MODE_FROZEN_BACKWARD 3

// Passed by value to the elementwise entry points; Kernels/BatchNorm.py mirrors it field by field. A mode reads only
// the fields its formula names; the others may be null.
struct ChannelParams
{
	const float *mean, *invstd, *var, *scale, *bias, *scalegrad, *biasgrad;
	float epsilon, invM;
};

struct Coef
{
	float mu, a, b, k;
};

template <int MODE>
__device__ __forceinline__ Coef channelCoef(const ChannelParams &p, int64 c)
{
	Coef r;
	r.mu = 0.0f; r.a = 0.0f; r.b = 0.0f; r.k = 0.0f;

	if (MODE == MODE_TRAIN_FORWARD)
	{
		r.mu = p.mean[c];
		r.a = p.scale[c] * p.invstd[c];
		r.b = p.bias[c];
	}
	else if (MODE == MODE_EVAL_FORWARD)
	{
		r.mu = p.mean[c];
		r.a = p.scale[c] * rsqrtf(p.var[c] + p.epsilon);
		r.b = p.bias[c];
	}
	else if (MODE == MODE_BACKWARD)
	{
		float invstd = p.invstd[c];
		r.mu = p.mean[c];
		r.a = p.scale[c] * invstd;
		r.b = p.biasgrad[c] * p.invM;
		r.k = invstd * p.scalegrad[c] * p.invM;
	}
	else
	{
		r.a = p.scale[c] * rsqrtf(p.var[c] + p.epsilon);
	}

	return r;
}

template <int MODE>
__device__ __forceinline__ float applyCoef(const Coef &q, float x, float dy)
{
	if (MODE == MODE_TRAIN_FORWARD || MODE == MODE_EVAL_FORWARD)
		return (x - q.mu) * q.a + q.b;
	else if (MODE == MODE_BACKWARD)
		return q.a * (dy - q.b - (x - q.mu) * q.k);
	else
		return dy * q.a;
}


// ---------------------------------------------------------------------------------------------------------------
// Fused activation and residual (Contract.FusedActivation; the twins of NumpyBatchNorm.activate,
// activationDerivative and activationInverse): y = act(z) with z = bn(x) + residual in the forward's pass; backward
// takes dz = dy * act'(y) from the output in both of its passes, and with reconstruct (InPlace-ABN, Rota Bulo et al.
// 2018, arXiv 1712.02616: the output overwrote x) rebuilds x - mean = (act^-1(y) - bias) / scale / invstd from it.

#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_ELU 3
#define ACT_SIGMOID 4
#define ACT_TANH 5

// Passed by value to the fused entry points; Kernels/BatchNorm.py mirrors it. residual: the forward's addend (T *,
// nullable); y: the forward's output (backward); resgrad: receives dz (T *, nullable); reconstruct: x is not read.
struct FusedParams
{
	const void *residual, *y;
	void *resgrad;
	int act, reconstruct;
	float slope, floor;
};

__device__ __forceinline__ float actForward(float z, int act, float slope)
{
	switch (act)
	{
	// NOTE: a comparison, not fmaxf (which maps NaN to 0): a NaN stays a NaN, as in PyTorch and numpy
	case ACT_RELU: return z < 0.0f ? 0.0f : z;
	case ACT_LEAKY_RELU: return z > 0.0f ? z : slope * z;
	case ACT_ELU: return z > 0.0f ? z : slope * expm1f(z);
	case ACT_SIGMOID: return 1.0f / (1.0f + expf(-z));
	case ACT_TANH: return tanhf(z);
	default: return z;
	}
}

__device__ __forceinline__ float actDerivative(float y, int act, float slope)
{
	switch (act)
	{
	case ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
	case ACT_LEAKY_RELU: return y > 0.0f ? 1.0f : slope;
	case ACT_ELU: return y > 0.0f ? 1.0f : y + slope;
	case ACT_SIGMOID: return y * (1.0f - y);
	case ACT_TANH: return 1.0f - y * y;
	default: return 1.0f;
	}
}

__device__ __forceinline__ float actInverse(float y, int act, float slope)
{
	if (y >= 0.0f)
		return y;
	if (act == ACT_LEAKY_RELU)
		return y / slope;
	if (act == ACT_ELU)
		return log1pf(y / slope);
	return y;
}

// The per-channel constants of the reconstruction: x - mean = (act^-1(y) - bias) * recon, recon = 1 / (scale * invstd)
// with scale kept at least `floor` in magnitude (its sign kept, + for 0).
__device__ __forceinline__ float reconFactor(const ChannelParams &p, const FusedParams &f, int64 c)
{
	float s = p.scale[c];
	if (fabsf(s) < f.floor)
		s = s < 0.0f ? -f.floor : f.floor;
	return 1.0f / (s * p.invstd[c]);
}

// The constants of one channel in a fused pass: the mean the data is centred on, and for the reconstruction the bias
// and recon (reconFactor); the elementwise passes' coefficients besides.
struct FusedCoef
{
	Coef q;
	float mu, bias, recon;
};

__device__ __forceinline__ FusedCoef fusedCoef(float mu, const ChannelParams &p, const FusedParams &f, int64 c,
											   bool rebuild)
{
	FusedCoef r;
	r.q.mu = 0.0f; r.q.a = 0.0f; r.q.b = 0.0f; r.q.k = 0.0f;
	r.mu = rebuild ? 0.0f : mu;
	r.bias = rebuild ? p.bias[c] : 0.0f;
	r.recon = rebuild ? reconFactor(p, f, c) : 0.0f;
	return r;
}

// x - mean rebuilt from the output y (InPlace-ABN): (act^-1(y) - bias) * recon.
__device__ __forceinline__ float rebuiltDeviation(float y, const FusedCoef &c, const FusedParams &f)
{
	return (actInverse(y, f.act, f.slope) - c.bias) * c.recon;
}

// The constants of element k of a vector whose LANES (1: one channel; VEC: one channel per element, the rows layout)
// channels' constants are c.
template <int LANES>
__device__ __forceinline__ const FusedCoef &laneCoef(const FusedCoef (&c)[LANES], int k)
{
	return c[LANES == 1 ? 0 : k];
}

// Loads N vectors of VEC values of dy and y (and x unless reconstruct) at off[u], every load issued before the first
// use, and turns them into dz and x - mean (gv and xc from u * VEC on).
template <typename T, int VEC, int LANES, int N>
__device__ __forceinline__ void fusedLoad(const T *x, const T *dy, const FusedParams &f, const int64 (&off)[N],
										  const FusedCoef (&c)[LANES], float (&gv)[N * VEC], float (&xc)[N * VEC])
{
	float yv[N * VEC];

#pragma unroll
	for (int u = 0; u < N; u++)
	{
		loadPackAt<T, VEC>(dy + off[u], gv, u * VEC);
		loadPackAt<T, VEC>(reinterpret_cast<const T *>(f.y) + off[u], yv, u * VEC);
	}

	if (f.reconstruct)
	{
#pragma unroll
		for (int e = 0; e < N * VEC; e++)
			xc[e] = rebuiltDeviation(yv[e], laneCoef(c, e % VEC), f);
	}
	else
	{
#pragma unroll
		for (int u = 0; u < N; u++)
			loadPackAt<T, VEC>(x + off[u], xc, u * VEC);

#pragma unroll
		for (int e = 0; e < N * VEC; e++)
			xc[e] -= laneCoef(c, e % VEC).mu;
	}

#pragma unroll
	for (int e = 0; e < N * VEC; e++)
		gv[e] *= actDerivative(yv[e], f.act, f.slope);
}

// Inputs the mode reads: x for the forward modes and the training backward, dy for both backward modes.
#define MODE_READS_X(MODE) ((MODE) != MODE_FROZEN_BACKWARD)
#define MODE_READS_DY(MODE) ((MODE) == MODE_BACKWARD || (MODE) == MODE_FROZEN_BACKWARD)

// The inputs of one vector at `off` into xv[at] and gv[at] (x for the modes that read it, dy likewise; 0 otherwise).
template <typename T, int VEC, int MODE, int N>
__device__ __forceinline__ void loadModeInputs(const T *x, const T *dy, int64 off, float (&xv)[N], float (&gv)[N],
											   int at)
{
	if (MODE_READS_X(MODE))
		loadPackAt<T, VEC>(x + off, xv, at);
	else
	{
#pragma unroll
		for (int k = 0; k < VEC; k++) xv[at + k] = 0.0f;
	}

	if (MODE_READS_DY(MODE))
		loadPackAt<T, VEC>(dy + off, gv, at);
	else
	{
#pragma unroll
		for (int k = 0; k < VEC; k++) gv[at + k] = 0.0f;
	}
}

// Position of a flat element index e in the (outer, maps, inner) view: i = e % inner and its channel c. A step is a
// position too (that of the step's length), so a cursor advances by one with no division (`flatAdvance`).
struct FlatPosition
{
	int64 i;
	int c;
};

__device__ __forceinline__ FlatPosition flatPosition(int64 e, int64 inner, int maps)
{
	FlatPosition r;
	int64 row = e / inner;
	r.i = e - row * inner;
	r.c = (int)(row % maps);
	return r;
}

__device__ __forceinline__ void flatAdvance(FlatPosition &cur, const FlatPosition &step, int64 inner, int maps)
{
	cur.i += step.i;
	int carry = (cur.i >= inner) ? 1 : 0;
	cur.i -= carry ? inner : 0;

	// NOTE: c + step.c + carry may exceed INT_MAX when maps > 2^30, so the wrap is decided before adding
	int room = maps - step.c - carry;
	cur.c = (cur.c >= room) ? cur.c - room : cur.c + step.c + carry;
}

// The coefficients of a flat vector's elements, kept by a slot of the walk and reloaded only when its channel
// changes: those of its first element's channel (`here`) and, with unaligned segments (VEC does not divide inner;
// inner >= VEC - gcd(VEC, inner), so that i + k < 2 * inner: no vector holds elements of more than two maps), those of
// the next channel, which the elements k with i + k >= inner belong to (`straddle`). The frozen backward's coefficient
// is one float, so a slot keeps the next channel's too; the other modes' are four, and a second set per slot would
// take more registers than two blocks per multiprocessor leave, so they load the next channel's for the vectors that
// straddle only (L1 hits).
template <int MODE, int VEC, bool ALIGNED>
struct CachedCoef
{
	static const bool KEEPS_NEXT = !ALIGNED && MODE == MODE_FROZEN_BACKWARD;

	int cached;
	Coef here, next;

	__device__ __forceinline__ void init()
	{
		cached = -1;
	}

	__device__ __forceinline__ void update(const ChannelParams &p, int c, int maps)
	{
		if (c != cached)
		{
			here = channelCoef<MODE>(p, c);
			if (KEEPS_NEXT)
				next = channelCoef<MODE>(p, c + 1 == maps ? 0 : c + 1);
			cached = c;
		}
	}

	__device__ __forceinline__ Coef straddle(const ChannelParams &p, const FlatPosition &at, int64 inner,
											 int maps) const
	{
		if (ALIGNED)
			return here;
		if (KEEPS_NEXT)
			return next;
		if (at.i + VEC <= inner)
			return here;
		return channelCoef<MODE>(p, at.c + 1 == maps ? 0 : at.c + 1);
	}
};

// The elementwise pass of one vector at `at` over maps shorter than two maps' share of it (SHORT: its elements may be
// of more than two maps, as float16 maps of 2, 3 or 5 are in vectors of 8, but of VEC / 2 at most on maps of 2
// elements or more): the coefficients of the VEC / 2 channels from the first element's on (`first`, then L1 hits),
// and each element's picked by how many segments have ended before it (selects, no branch).
template <int MODE, int VEC, int N>
__device__ __forceinline__ void applyShort(const ChannelParams &p, const Coef &first, const FlatPosition &at,
										   int inner, int maps, const float (&xv)[N], const float (&gv)[N],
										   float (&ov)[N], int pos)
{
	// NOTE: 1 in the instances no host call takes (narrower vectors, aligned segments)
	const int SPAN = VEC > 1 ? VEC / 2 : 1;
	Coef span[SPAN];
	span[0] = first;

	int c = at.c;

#pragma unroll
	for (int s = 1; s < SPAN; s++)
	{
		c = c + 1 == maps ? 0 : c + 1;
		span[s] = channelCoef<MODE>(p, c);
	}

	int i = (int)at.i, ended = 0;

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		ended += i == inner ? 1 : 0;
		i = i == inner ? 1 : i + 1;

		Coef q = span[0];

#pragma unroll
		for (int s = 1; s < SPAN; s++)
		{
			q.mu = ended == s ? span[s].mu : q.mu;
			q.a = ended == s ? span[s].a : q.a;
			q.b = ended == s ? span[s].b : q.b;
			q.k = ended == s ? span[s].k : q.k;
		}
		ov[pos + k] = applyCoef<MODE>(q, xv[pos + k], gv[pos + k]);
	}
}

// Flat grid-stride walk over all outer * maps * inner elements, VEC at a time, in tiles of SLOTS * BLOCK_SIZE vectors
// (SLOTS = LOADS but below): a thread loads its SLOTS vectors of a tile (BLOCK_SIZE apart, coalesced), then computes,
// then stores them. Each slot keeps its channel's coefficients (`CachedCoef`; with SHORT, those of its first element:
// applyShort). The last, partial tile goes vector by vector. Unaligned segments (and SHORT, which are unaligned too) need
// outer * maps * inner to be a multiple of VEC. grid = any (the host sizes it to the work), block = BLOCK_SIZE.
template <typename T, int VEC, int MODE, bool ALIGNED, bool SHORT>
__device__ void applySpatial(const T *x, const T *dy, T *out, int64 outer, int maps, int64 inner, ChannelParams p)
{
	// NOTE: the training backward over short maps' segments in tiles of LOADS / 2 vectors of each input (still LOADS
	// loads in flight): with LOADS, sm_90's ptxas gave it 157 registers, one block a multiprocessor
	const int SLOTS = SHORT && MODE == MODE_BACKWARD ? LOADS / 2 : LOADS;
	int64 total = outer * maps * inner / VEC;
	int64 tileStep = (int64)gridDim.x * BLOCK_SIZE * SLOTS;
	int64 j = (int64)blockIdx.x * BLOCK_SIZE * SLOTS + threadIdx.x;

	if (j >= total)
		return;

	FlatPosition cur = flatPosition(j * VEC, inner, maps);
	FlatPosition lane = flatPosition(BLOCK_SIZE * VEC, inner, maps), tile = flatPosition(tileStep * VEC, inner, maps);

	// NOTE: with SHORT a slot keeps its first element's coefficients only (applyShort takes the others')
	CachedCoef<MODE, VEC, ALIGNED || SHORT> q[SLOTS];

#pragma unroll
	for (int u = 0; u < SLOTS; u++)
		q[u].init();

	for (; j + (SLOTS - 1) * BLOCK_SIZE < total; j += tileStep, flatAdvance(cur, tile, inner, maps))
	{
		float xv[SLOTS * VEC], gv[SLOTS * VEC], ov[SLOTS * VEC];
		FlatPosition at[SLOTS];
		at[0] = cur;

#pragma unroll
		for (int u = 0; u < SLOTS; u++)
		{
			loadModeInputs<T, VEC, MODE>(x, dy, (j + u * BLOCK_SIZE) * VEC, xv, gv, u * VEC);
			if (u + 1 < SLOTS)
			{
				at[u + 1] = at[u];
				flatAdvance(at[u + 1], lane, inner, maps);
			}
		}

#pragma unroll
		for (int u = 0; u < SLOTS; u++)
		{
			q[u].update(p, at[u].c, maps);
			if (SHORT)
			{
				applyShort<MODE, VEC>(p, q[u].here, at[u], (int)inner, maps, xv, gv, ov, u * VEC);
				continue;
			}
			Coef next = q[u].straddle(p, at[u], inner, maps);

#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				const Coef &r = (ALIGNED || at[u].i + k < inner) ? q[u].here : next;
				ov[u * VEC + k] = applyCoef<MODE>(r, xv[u * VEC + k], gv[u * VEC + k]);
			}
		}

#pragma unroll
		for (int u = 0; u < SLOTS; u++)
			storePackAt<T, VEC>(out + (j + u * BLOCK_SIZE) * VEC, ov, u * VEC);
	}

	for (; j < total; j += BLOCK_SIZE, flatAdvance(cur, lane, inner, maps))
	{
		float xv[VEC], gv[VEC], ov[VEC];
		loadModeInputs<T, VEC, MODE>(x, dy, j * VEC, xv, gv, 0);
		q[0].update(p, cur.c, maps);

		if (SHORT)
			applyShort<MODE, VEC>(p, q[0].here, cur, (int)inner, maps, xv, gv, ov, 0);
		else
		{
			Coef next = q[0].straddle(p, cur, inner, maps);

#pragma unroll
			for (int k = 0; k < VEC; k++)
				ov[k] = applyCoef<MODE>((ALIGNED || cur.i + k < inner) ? q[0].here : next, xv[k], gv[k]);
		}

		storePack<T, VEC>(out + j * VEC, ov);
	}
}

// The elementwise rows passes (rows of `width` elements: laneChannels): rows r, r + step, ..., LOADS at a time
// (loaded, computed, then stored), then the rest one by one. grid = (ceil(width / (blockDim.x * VEC)), any),
// block = rows (rowsChannel).
template <typename T, int VEC, int MODE>
__device__ void applyRows(const T *x, const T *dy, T *out, int64 rows, int width, int maps, ChannelParams p)
{
	int c0 = rowsChannel<VEC>(width), c[VEC];
	if (c0 >= width)
		return;

	Coef q[VEC];
	laneChannels(c0, maps, c);

#pragma unroll
	for (int k = 0; k < VEC; k++)
		q[k] = channelCoef<MODE>(p, c[k]);

	int64 step = (int64)gridDim.y * blockDim.y;
	int64 r = (int64)blockIdx.y * blockDim.y + threadIdx.y;

	for (; r + (LOADS - 1) * step < rows; r += LOADS * step)
	{
		float xv[LOADS * VEC], gv[LOADS * VEC], ov[LOADS * VEC];

#pragma unroll
		for (int u = 0; u < LOADS; u++)
			loadModeInputs<T, VEC, MODE>(x, dy, (r + u * step) * width + c0, xv, gv, u * VEC);

#pragma unroll
		for (int u = 0; u < LOADS; u++)
		{
#pragma unroll
			for (int k = 0; k < VEC; k++)
				ov[u * VEC + k] = applyCoef<MODE>(q[k], xv[u * VEC + k], gv[u * VEC + k]);
		}

#pragma unroll
		for (int u = 0; u < LOADS; u++)
			storePackAt<T, VEC>(out + (r + u * step) * width + c0, ov, u * VEC);
	}

	for (; r < rows; r += step)
	{
		float xv[VEC], gv[VEC], ov[VEC];
		loadModeInputs<T, VEC, MODE>(x, dy, r * width + c0, xv, gv, 0);

#pragma unroll
		for (int k = 0; k < VEC; k++)
			ov[k] = applyCoef<MODE>(q[k], xv[k], gv[k]);

		storePack<T, VEC>(out + r * width + c0, ov);
	}
}

// The vectors of each input (dy, y and x) the fused gradient sums load at a time: LOADS, at most 16 values of each
// (float16 vectors of 8: 2 at a time, still 6 loads in flight; with 4, sm_90's ptxas gave the rows kernel 185
// registers, one block a multiprocessor).
template <int VEC>
__device__ constexpr int fusedLoads()
{
	return LOADS < 16 / VEC ? LOADS : 16 / VEC;
}

// The sums of N values of dz (gv) and of dz * (x - mean) (xc), added to sum and dot: the group's own sums first, so
// that the compiler issues more of the group's loads before the first addition (as in gradSpatial).
template <int N>
__device__ __forceinline__ void addGroupSums(const float (&gv)[N], const float (&xc)[N], float &sum, float &dot)
{
	float groupSum = 0.0f, groupDot = 0.0f;

#pragma unroll
	for (int e = 0; e < N; e++)
	{
		groupSum += gv[e];
		groupDot += gv[e] * xc[e];
	}
	sum += groupSum;
	dot += groupDot;
}

// Backward reduction after a fused forward: the partial sums of dz and dz * (x - mean) of gradSpatial and
// gradRows, with dz and x - mean from fusedLoad, fusedLoads<VEC>() vectors of each input at a time. p gives scale,
// bias and invstd (for the reconstruction).
template <typename T, int VEC>
__device__ void gradSpatialFused(const T *x, const T *dy, int64 outer, int maps, int64 inner, int64 innerV,
								 const float *mean, float *psum, float *pdot, SumsOutputs o, ChannelParams p,
								 FusedParams f)
{
	int c = blockIdx.x;
	FusedCoef fc[1] = {fusedCoef(f.reconstruct ? 0.0f : mean[c], p, f, c, f.reconstruct)};

	int64 begin, end;
	blockSlice(outer * innerV, begin, end);

	float sum = 0.0f, dot = 0.0f;
	SpatialCursor cur = spatialCursor(begin + threadIdx.x, inner, innerV, BLOCK_SIZE, c, maps);

	// NOTE: LOADED vectors of each input loaded before the first is used, then their sums added (gradSpatial)
	constexpr int LOADED = fusedLoads<VEC>();
	while (cur.j + (LOADED - 1) * BLOCK_SIZE < end)
	{
		int64 off[LOADED];

#pragma unroll
		for (int u = 0; u < LOADED; u++)
		{
			off[u] = vectorAt<VEC, true>(cur).offset;
			advance(cur, innerV, BLOCK_SIZE);
		}

		float gv[LOADED * VEC], xc[LOADED * VEC];
		fusedLoad<T, VEC, 1, LOADED>(x, dy, f, off, fc, gv, xc);
		addGroupSums<LOADED * VEC>(gv, xc, sum, dot);
	}

	for (; cur.j < end; advance(cur, innerV, BLOCK_SIZE))
	{
		float gv[VEC], xc[VEC];
		fusedLoad<T, VEC, 1, 1>(x, dy, f, {vectorAt<VEC, true>(cur).offset}, fc, gv, xc);
		addGroupSums<VEC>(gv, xc, sum, dot);
	}

	blockSum2(sum, dot);

	if (threadIdx.x == 0)
	{
		int64 k = (int64)blockIdx.y * maps + c;
		psum[k] = sum; pdot[k] = dot;
	}

	finishColumns(o.fold, [&](int column)
	{
		finishSums(spatialColumn<false>(column, maps), gridDim.y, maps, psum, pdot, o);
	});
}

template <typename T, int VEC>
__device__ void gradRowsFused(const T *x, const T *dy, int64 rows, int width, int maps, const float *mean,
							  float *psum, float *pdot, SumsOutputs o, ChannelParams p, FusedParams f)
{
	int c0 = rowsChannel<VEC>(width);
	bool active = c0 < width;

	float sum[VEC], dot[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		sum[k] = 0.0f; dot[k] = 0.0f;
	}

	if (active)
	{
		// NOTE: one channel per element of the vector, so the constants are taken element by element
		FusedCoef fc[VEC];
		int c[VEC];
		laneChannels(c0, maps, c);

#pragma unroll
		for (int k = 0; k < VEC; k++)
			fc[k] = fusedCoef(f.reconstruct ? 0.0f : mean[c[k]], p, f, c[k], f.reconstruct);

		int64 begin, end, step = blockDim.y;
		blockSlice(rows, begin, end);
		int64 r = begin + threadIdx.y;

		// NOTE: LOADED rows of each input loaded before the first is used (gradRows)
		constexpr int LOADED = fusedLoads<VEC>();
		for (; r + (LOADED - 1) * step < end; r += LOADED * step)
		{
			int64 off[LOADED];

#pragma unroll
			for (int u = 0; u < LOADED; u++)
				off[u] = (r + u * step) * width + c0;

			float gv[LOADED * VEC], xc[LOADED * VEC];
			fusedLoad<T, VEC, VEC, LOADED>(x, dy, f, off, fc, gv, xc);

#pragma unroll
			for (int e = 0; e < LOADED * VEC; e++)
			{
				sum[e % VEC] += gv[e];
				dot[e % VEC] += gv[e] * xc[e];
			}
		}

		for (; r < end; r += step)
		{
			float gv[VEC], xc[VEC];
			fusedLoad<T, VEC, VEC, 1>(x, dy, f, {r * width + c0}, fc, gv, xc);

#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				sum[k] += gv[k];
				dot[k] += gv[k] * xc[k];
			}
		}
	}

	rowsSums<VEC>(sum, dot, active, c0, width, maps, psum, pdot, o);
}

// The constants of channel c in the fused elementwise pass of MODE.
template <int MODE>
__device__ __forceinline__ FusedCoef fusedPassCoef(const ChannelParams &p, const FusedParams &f, int64 c)
{
	bool rebuild = MODE == MODE_BACKWARD && f.reconstruct;
	FusedCoef r = fusedCoef(0.0f, p, f, c, rebuild);
	r.q = channelCoef<MODE>(p, c);
	r.mu = r.q.mu;
	return r;
}

// The fused elementwise pass of one VEC group at `off` with the constants c of its LANES channels (laneCoef), for
// every mode: forward out = act(bn(x) + residual); backward dx from dz and x - mean (frozen: dz only), and resgrad =
// dz where given.
template <typename T, int VEC, int LANES, int MODE>
__device__ __forceinline__ void fusedApply(const T *x, const T *dy, T *out, int64 off, const FusedCoef (&c)[LANES],
										   const FusedParams &f)
{
	float ov[VEC];

	if (MODE == MODE_TRAIN_FORWARD || MODE == MODE_EVAL_FORWARD)
	{
		float xv[VEC];
		loadPack<T, VEC>(x + off, xv);

#pragma unroll
		for (int k = 0; k < VEC; k++)
			ov[k] = applyCoef<MODE>(laneCoef(c, k).q, xv[k], 0.0f);

		if (f.residual != 0)
		{
			float rv[VEC];
			loadPack<T, VEC>(reinterpret_cast<const T *>(f.residual) + off, rv);

#pragma unroll
			for (int k = 0; k < VEC; k++)
				ov[k] += rv[k];
		}

#pragma unroll
		for (int k = 0; k < VEC; k++)
			ov[k] = actForward(ov[k], f.act, f.slope);
	}
	else
	{
		float gv[VEC], xc[VEC];
		if (MODE == MODE_BACKWARD)
			fusedLoad<T, VEC, LANES, 1>(x, dy, f, {off}, c, gv, xc);
		else
		{
			float yv[VEC];
			loadPack<T, VEC>(dy + off, gv);
			loadPack<T, VEC>(reinterpret_cast<const T *>(f.y) + off, yv);

#pragma unroll
			for (int k = 0; k < VEC; k++)
				gv[k] *= actDerivative(yv[k], f.act, f.slope);
		}

		if (f.resgrad != 0)
			storePack<T, VEC>(reinterpret_cast<T *>(f.resgrad) + off, gv);

#pragma unroll
		for (int k = 0; k < VEC; k++)
		{
			const Coef &q = laneCoef(c, k).q;
			ov[k] = MODE == MODE_BACKWARD ? q.a * (gv[k] - q.b - xc[k] * q.k) : gv[k] * q.a;
		}
	}

	storePack<T, VEC>(out + off, ov);
}

// The fused passes over the spatial and rows layouts: one vector at a time, grid-stride (with the channel cursor of
// applySpatial on the spatial layout).
template <typename T, int VEC, int MODE>
__device__ void applySpatialFused(const T *x, const T *dy, T *out, int64 outer, int maps, int64 inner,
								  ChannelParams p, FusedParams f)
{
	int64 total = outer * maps * inner / VEC;
	int64 step = (int64)gridDim.x * BLOCK_SIZE;
	int64 j = (int64)blockIdx.x * BLOCK_SIZE + threadIdx.x;

	if (j >= total)
		return;

	// NOTE: the channel advances with the index (no division in the loop), as in applySpatial
	FlatPosition cur = flatPosition(j * VEC, inner, maps);
	FlatPosition stride = flatPosition(step * VEC, inner, maps);
	int cached = -1;
	FusedCoef fc[1];

	for (; j < total; j += step, flatAdvance(cur, stride, inner, maps))
	{
		if (cur.c != cached)
		{
			fc[0] = fusedPassCoef<MODE>(p, f, cur.c);
			cached = cur.c;
		}

		fusedApply<T, VEC, 1, MODE>(x, dy, out, j * VEC, fc, f);
	}
}

// Rows of `width` elements, as applyRows.
template <typename T, int VEC, int MODE>
__device__ void applyRowsFused(const T *x, const T *dy, T *out, int64 rows, int width, int maps, ChannelParams p,
							   FusedParams f)
{
	int c0 = rowsChannel<VEC>(width), c[VEC];
	if (c0 >= width)
		return;

	// NOTE: one channel per element of the vector
	FusedCoef fc[VEC];
	laneChannels(c0, maps, c);

#pragma unroll
	for (int k = 0; k < VEC; k++)
		fc[k] = fusedPassCoef<MODE>(p, f, c[k]);

	for (int64 r = (int64)blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += (int64)gridDim.y * blockDim.y)
		fusedApply<T, VEC, VEC, MODE>(x, dy, out, r * width + c0, fc, f);
}

// ---------------------------------------------------------------------------------------------------------------
// Resident passes (spatial layout, training): the blocks of a map hold its whole slice in registers, HELD vectors per
// thread, so that a training task reads its inputs once and is one launch. A map is one block, or is split over
// `splits` blocks where one block's registers do not hold its slice (56x56 maps) or the maps are fewer than the
// multiprocessors: block `split` of a map holds the vectors j = (split * HELD + h) * blockDim.x + threadIdx.x, h <
// HELD, of the map's walk (coalesced), and the map's blocks exchange their block sums (mapTotals) before they go on.
// The forward takes each block's count, sum of x - K and squares about its own mean in two passes over its registers,
// the map's mean and M2 from them by an exact identity (MapMoments), writes them as the reductions' last blocks do
// (writeMoments), then normalizes (with the fused residual and activation) and stores. The backward takes dz and
// x - mean (from the output after a fused forward, rebuilt from it with reconstruct), their sums, writes the parameter
// gradients (writeSums), then dx (and dz to resgrad). Elements outside the map's segments (unaligned segments) are
// masked out of the sums and not stored. grid = maps * splits; block = a multiple of 32 up to RESIDENT_THREADS, with
// HELD * splits * blockDim.x >= the map's outer * innerV vectors and HELD * (splits - 1) * blockDim.x < them (every
// block holds part of the map: BatchNormKernels.residentShape).
//
// The blocks of a split map wait for one another, so they must all be able to run at once: the host keeps splits at
// most the multiprocessors (any one holds a block of RESIDENT_THREADS threads). And a block takes its (map, split) from
// a ticket drawn when it starts, not from blockIdx (the order of CUB's single-pass scan): the tickets number the blocks
// in the order they started, so every map but the last started has all its blocks running or finished, and only that
// one waits for blocks not yet started, which start as the finished maps free their places.

// The view a resident pass walks, 32-bit (the host takes the resident passes for tensors below 2^31 elements), and
// the blocks per map. VALUES: the values a thread holds (splits 1 above SPLIT_VALUES: the host takes those passes for
// maps of one block only).
struct ResidentView
{
	int outer, maps, inner, innerV, splits;
};

template <int VALUES>
__device__ __forceinline__ ResidentView residentView(int64 outer, int maps, int64 inner, int64 innerV, int splits)
{
	ResidentView v;
	v.outer = (int)outer;
	v.maps = maps;
	v.inner = (int)inner;
	v.innerV = (int)innerV;
	v.splits = VALUES <= SPLIT_VALUES ? splits : 1;
	return v;
}

// The calling block's map (in the resident passes over rows, its column of channels) and its split of it.
struct ResidentBlock
{
	int map, split;
};

// The (map, split) of a block of a split map (startResident), the next ticket, and the blocks' sums (mapTotals): the
// tickets' counter is zero when the module loads and left zero by every launch (its last block resets it).
__shared__ ResidentBlock splitBlock;
__device__ unsigned residentTickets;
__device__ double residentPartials[3 * RESIDENT_PARTIALS];

// Every thread of the block calls it first: with splits > 1, thread 0 draws the block's ticket.
__device__ __forceinline__ void startResident(int splits)
{
	if (splits == 1)
		return;

	if (blockThread() == 0)
	{
		unsigned ticket = atomicAdd(&residentTickets, 1u);
		// NOTE: the last ticket: every other block of the grid has drawn its own
		if (ticket == gridDim.x - 1)
			atomicExch(&residentTickets, 0u);
		splitBlock.map = (int)ticket / splits;
		splitBlock.split = (int)ticket - splitBlock.map * splits;
	}
	__syncthreads();
}

// The calling block's (map, split): (blockIdx.x, 0) for a block per map, else read from shared memory at each call
// (the walks do not keep it in registers across the block's sums).
__device__ __forceinline__ ResidentBlock residentBlock(int splits)
{
	ResidentBlock b;
	b.map = splits == 1 ? (int)blockIdx.x : splitBlock.map;
	b.split = splits == 1 ? 0 : splitBlock.split;
	return b;
}

// v[n] summed over the block in double precision (blockDim.x a multiple of 32, at most RESIDENT_THREADS), the same
// values in every thread: every warp adds the warps' sums in the same order.
template <int N>
__device__ __forceinline__ void blockTotals(double (&v)[N])
{
	__shared__ double warps[N][RESIDENT_THREADS / 32];
	int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

#pragma unroll
	for (int n = 0; n < N; n++)
	{
#pragma unroll
		for (int offset = 16; offset > 0; offset >>= 1)
			v[n] += __shfl_down_sync(0xffffffffu, v[n], offset);

		if (lane == 0)
			warps[n][warp] = v[n];
	}
	__syncthreads();

#pragma unroll
	for (int n = 0; n < N; n++)
	{
		v[n] = lane < (int)(blockDim.x / 32) ? warps[n][lane] : 0.0;

#pragma unroll
		for (int offset = 16; offset > 0; offset >>= 1)
			v[n] += __shfl_down_sync(0xffffffffu, v[n], offset);
		v[n] = __shfl_sync(0xffffffffu, v[n], 0);
	}

	// NOTE: the next call's stores wait until every warp has read
	__syncthreads();
}

__device__ __forceinline__ double blockTotal(double v)
{
	double t[1] = {v};
	blockTotals(t);
	return t[0];
}

// A moment's rest in a spin loop (Volta on), which leaves the memory system to the blocks that are working.
__device__ __forceinline__ void pauseBriefly()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
	__nanosleep(64);
#endif
}

// out from the N values `mine` of every block of the calling block's map, in every thread: combine(entry, count, out)
// with entry(q, n) value n of the map's block q < count, in the order of their splits (every block of a map computes
// the same from the same values). A block per map combines its own. The blocks of a split map: thread 0 writes the
// block's values to residentPartials, arrives on the map's counter (columnArrivals[map]: the host keeps maps at most
// COLUMN_COUNTERS, and the kernels of a context run one after another), waits for splits arrivals, combines the map's
// values (L2 loads: L1 is not coherent) and leaves; the last to leave resets the counter (the first splits counts are
// the arrivals, so none is taken for a departure, and none that has left reads it again).
template <int N, int R, typename Combine>
__device__ __forceinline__ void mapTotals(const ResidentView &v, const double (&mine)[N], double (&out)[R],
										  Combine combine)
{
	static_assert(N <= 3, "residentPartials holds 3 values a block");
	__shared__ double merged[R];

	if (v.splits == 1)
	{
		combine([&](int, int n) { return mine[n]; }, 1, out);
		return;
	}

	if (threadIdx.x == 0)
	{
		ResidentBlock b = residentBlock(v.splits);
		double *sums = residentPartials + (int64)b.map * v.splits * N;
		int *arrivals = columnArrivals + b.map;

#pragma unroll
		for (int n = 0; n < N; n++)
			sums[b.split * N + n] = mine[n];

		__threadfence();
		atomicAdd(arrivals, 1);
		while (*(volatile int *)arrivals < v.splits)
			pauseBriefly();
		__threadfence();

		combine([&](int q, int n) { return __ldcg(sums + q * N + n); }, v.splits, merged);
		if (atomicAdd(arrivals, 1) == 2 * v.splits - 1)
			atomicExch(arrivals, 0);
	}
	__syncthreads();

#pragma unroll
	for (int r = 0; r < R; r++)
		out[r] = merged[r];
}

// A block's centre for its squares: its mean of x - K in float32 (any value near it keeps the squares exact): sum *
// invM where the block holds the whole map, else by the fast division (no slow-path call).
__device__ __forceinline__ float blockCentre(double sum, double count, int splits, double invM)
{
	return splits == 1 ? (float)(sum * invM) : __fdividef((float)sum, (float)count);
}

// The map's mean of x - K and M2 about it (mapTotals' combine), from each block q's count n_q, sum s_q of x - K and
// squares Q_q about its centre c_q (blockCentre), with the mean mu = (sum of s_q) * invM:
// M2 = sum over q of Q_q + 2 (c_q - mu) (s_q - n_q c_q) + n_q (c_q - mu)^2 (the squares about mu, expanded about c_q).
struct MapMoments
{
	double invM;

	template <typename Entry>
	__device__ __forceinline__ void operator()(Entry entry, int count, double (&out)[2]) const
	{
		double sum = 0.0, m2 = 0.0;
		for (int q = 0; q < count; q++)
			sum += entry(q, 1);

		double mu = sum * invM;
		for (int q = 0; q < count; q++)
		{
			double n = entry(q, 0), s = entry(q, 1), c = blockCentre(s, n, count, invM), d = c - mu;
			m2 += entry(q, 2) + d * (2.0 * (s - n * c) + n * d);
		}
		out[0] = mu;
		out[1] = m2;
	}
};

// The gradient sums of the map (mapTotals' combine): the blocks' sums of dz and of dz * (x - mean), added.
struct MapSums
{
	template <typename Entry>
	__device__ __forceinline__ void operator()(Entry entry, int count, double (&out)[2]) const
	{
		out[0] = 0.0;
		out[1] = 0.0;
		for (int q = 0; q < count; q++)
		{
			out[0] += entry(q, 0);
			out[1] += entry(q, 1);
		}
	}
};

// threadIdx.x, read afresh at each call: what is computed from it is not kept from one walk of the resident passes to
// the next (the walks' addresses, recomputed, would otherwise stay live in registers across the block's sums).
__device__ __forceinline__ int freshThreadIndex()
{
#if defined(__CUDA_ARCH__)
	unsigned t;
	asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
	return (int)t;
#else
	return threadIdx.x;
#endif
}

// visit(h, where, walked) for the calling thread's HELD vectors of its block's map: where it is, and whether it is in
// the walk (j < outer * innerV). Advanced without a division after the first (as SpatialCursor).
template <int VEC, bool ALIGNED, int HELD, typename Visit>
__device__ __forceinline__ void residentWalk(const ResidentView &v, Visit visit)
{
	ResidentBlock b = residentBlock(v.splits);
	int step = blockDim.x, j = b.split * HELD * step + freshThreadIndex();
	int total = v.outer * v.innerV, segmentStride = v.maps * v.inner;
	int o = j / v.innerV, stepO = step / v.innerV;
	int i = j - o * v.innerV, stepI = step - stepO * v.innerV;
	int base = o * segmentStride + b.map * v.inner;

#pragma unroll
	for (int h = 0; h < HELD; h++)
	{
		VectorAt at;
		at.offset = (ALIGNED ? base : base & ~(VEC - 1)) + i * VEC;
		at.first = at.offset - base;
		visit(h, at, j < total);

		j += step;
		i += stepI;
		base += stepO * segmentStride;
		if (i >= v.innerV)
		{
			i -= v.innerV;
			base += segmentStride;
		}
	}
}

// Where a resident pass loads a held vector from: its own place where it holds an element of the map, else the
// vector at the map's first element (in the tensor, its values masked out): every load is issued, without a branch,
// so that the compiler issues a thread's HELD loads before the first use.
template <bool ALIGNED>
__device__ __forceinline__ int64 loadOffset(const VectorAt &at, bool walked, int64 inner, int64 mapStart)
{
	return walked && touchesSegment<ALIGNED>(at, inner) ? at.offset : mapStart;
}

// The mask of the map's elements among a thread's held vectors: over unaligned segments bit h * VEC + k for element
// k of held vector h; over aligned ones bit h for the whole vector (in the slice or not at all). 32 bits: at most 32
// vectors a thread, 32 values over unaligned segments.
typedef unsigned HeldMask;

// The bit of element e = h * VEC + k.
template <int VEC, bool ALIGNED>
__device__ __forceinline__ int maskBit(int e)
{
	return ALIGNED ? e / VEC : e;
}

template <int VEC, bool ALIGNED>
__device__ __forceinline__ HeldMask vectorMask(const VectorAt &at, bool walked, int64 inner, int h)
{
	if (ALIGNED)
		return (walked ? 1u : 0u) << h;

	HeldMask mask = 0;

#pragma unroll
	for (int k = 0; k < VEC; k++)
		mask |= (walked && inSegment<ALIGNED>(at, k, inner) ? 1u : 0u) << (h * VEC + k);
	return mask;
}

// Whether element e is in the map's slice.
template <int VEC, bool ALIGNED>
__device__ __forceinline__ bool masked(HeldMask mask, int e)
{
	return (mask >> maskBit<VEC, ALIGNED>(e)) & 1u;
}

// v[e] where element e is in the map's slice, else fill.
template <int VEC, bool ALIGNED, int N>
__device__ __forceinline__ void keepMasked(float (&v)[N], HeldMask mask, float fill)
{
#pragma unroll
	for (int e = 0; e < N; e++)
		v[e] = masked<VEC, ALIGNED>(mask, e) ? v[e] : fill;
}

// VEC values from v[pos], ... stored at `at`, those of elements outside the segment left alone (an unaligned
// segment's boundary vectors store element by element).
template <typename T, int VEC, bool ALIGNED, int N>
__device__ __forceinline__ void storeSegmentAt(T *ptr, const VectorAt &at, int64 inner, const float (&v)[N], int pos)
{
	if (ALIGNED || (at.first >= 0 && at.first + VEC <= inner))
		storePackAt<T, VEC>(ptr + at.offset, v, pos);
	else
	{
#pragma unroll
		for (int k = 0; k < VEC; k++)
		{
			if (inSegment<ALIGNED>(at, k, inner))
				ptr[at.offset + k] = fromFloat<T>(v[pos + k]);
		}
	}
}

// v stored at the calling thread's held vectors (resident passes).
template <typename T, int VEC, bool ALIGNED, int HELD>
__device__ __forceinline__ void storeHeld(T *ptr, const ResidentView &view, const float (&v)[HELD * VEC])
{
	residentWalk<VEC, ALIGNED, HELD>(view, [&](int h, const VectorAt &at, bool walked)
	{
		if (walked && touchesSegment<ALIGNED>(at, view.inner))
			storeSegmentAt<T, VEC, ALIGNED>(ptr, at, view.inner, v, h * VEC);
	});
}

// take(h, values) for each of the calling thread's held vectors loaded (resident passes), and the mask of the map's
// elements among them (the others' values are those of other maps, or of the map's first vector). A vector at a time
// into take: a pass that combines an input with what it holds needs no second array of registers.
template <typename T, int VEC, bool ALIGNED, int HELD, typename Take>
__device__ __forceinline__ HeldMask loadHeld(const T *ptr, const ResidentView &view, Take take)
{
	static_assert(ALIGNED ? HELD <= 32 : HELD * VEC <= 32, "a held mask has 32 bits");
	HeldMask mask = 0;
	int64 mapStart = ((int64)residentBlock(view.splits).map * view.inner) & ~(int64)(VEC - 1);

	residentWalk<VEC, ALIGNED, HELD>(view, [&](int h, const VectorAt &at, bool walked)
	{
		float values[VEC];
		loadPack<T, VEC>(ptr + loadOffset<ALIGNED>(at, walked, view.inner, mapStart), values);
		take(h, values);
		mask |= vectorMask<VEC, ALIGNED>(at, walked, view.inner, h);
	});
	return mask;
}

// The calling thread's held vectors into v (loadHeld).
template <typename T, int VEC, bool ALIGNED, int HELD>
__device__ __forceinline__ HeldMask loadHeldInto(const T *ptr, const ResidentView &view, float (&v)[HELD * VEC])
{
	return loadHeld<T, VEC, ALIGNED, HELD>(ptr, view, [&](int h, const float (&values)[VEC])
	{
#pragma unroll
		for (int k = 0; k < VEC; k++)
			v[h * VEC + k] = values[k];
	});
}

// The calling thread's elements of the map's slice among its held vectors.
template <int VEC, bool ALIGNED>
__device__ __forceinline__ float heldCount(HeldMask mask)
{
	return (float)(__popc(mask) * (ALIGNED ? VEC : 1));
}

// The training forward of the calling block's map: MomentsOutputs (o.fold unused; written by the map's first block)
// and out = act((x - mu) * invstd * scale + bias + residual) (f: the residual with RESIDUAL, else null; act may be
// ACT_IDENTITY; f.y, f.resgrad unused). out may be x (a split map's blocks store after every one has loaded).
template <typename T, int VEC, bool ALIGNED, int HELD, bool RESIDUAL>
__device__ void trainResident(const T *x, T *out, const ResidentView &view, const float *scale, const float *bias,
							  FusedParams f, MomentsOutputs o)
{
	startResident(view.splits);
	float shift = toFloat(x[(int64)residentBlock(view.splits).map * view.inner]);
	float v[HELD * VEC];

	// NOTE: elements outside the slice hold the shift (0 in the first pass's sum)
	HeldMask in = loadHeldInto<T, VEC, ALIGNED, HELD>(x, view, v);
	keepMasked<VEC, ALIGNED>(v, in, shift);

	float sum = 0.0f;

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
		sum += v[e] - shift;

	// NOTE: the count a block of a split map holds, or all of the map
	double counted[2] = {heldCount<VEC, ALIGNED>(in), sum};
	if (HELD * VEC <= SPLIT_VALUES)
		blockTotals(counted);
	else
	{
		counted[0] = (double)view.outer * view.inner;
		counted[1] = blockTotal(sum);
	}
	float centre = blockCentre(counted[1], counted[0], view.splits, o.invM);
	float squares = 0.0f;

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
	{
		float d = (v[e] - shift) - centre;
		squares += masked<VEC, ALIGNED>(in, e) ? d * d : 0.0f;
	}
	double block[3] = {counted[0], counted[1], blockTotal(squares)}, moments[2];
	mapTotals(view, block, moments, MapMoments{o.invM});
	BatchStats st = batchStats((double)shift + moments[0], moments[1], o);

	ResidentBlock place = residentBlock(view.splits);
	if (threadIdx.x == 0 && place.split == 0)
		writeMoments(place.map, st, view.maps, o);

	float a = scale[place.map] * st.invstd, b = bias[place.map];

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
		v[e] = (v[e] - st.mu) * a + b;

	if (RESIDUAL)
	{
		loadHeld<T, VEC, ALIGNED, HELD>(reinterpret_cast<const T *>(f.residual), view, [&](int h, const float (&r)[VEC])
		{
#pragma unroll
			for (int k = 0; k < VEC; k++)
				v[h * VEC + k] += r[k];
		});
	}

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
		v[e] = actForward(v[e], f.act, f.slope);

	storeHeld<T, VEC, ALIGNED, HELD>(out, view, v);
}

// The training backward of the calling block's map: SumsOutputs (o.fold unused; o.invstd the batch's; written by the
// map's first block) and out = dx = scale * invstd * (dz - biasgrad / m - (x - mean) * invstd * scalegrad / m) (p:
// mean, invstd, scale, invM, and bias with reconstruct). With f.y (after a fused forward) dz = dy * act'(y), written
// to f.resgrad where given, and with f.reconstruct x - mean is rebuilt from y (x not read); else dz = dy (f unused).
// out may be dy. Each input is read by a walk of its own (no branch between a thread's loads).
template <typename T, int VEC, bool ALIGNED, int HELD>
__device__ void gradResident(const T *x, const T *dy, T *out, const ResidentView &view, ChannelParams p,
							 FusedParams f, SumsOutputs o)
{
	startResident(view.splits);
	int c = residentBlock(view.splits).map;
	FusedCoef fc = fusedCoef(p.mean[c], p, f, c, f.reconstruct != 0);
	float g[HELD * VEC], xc[HELD * VEC];

	HeldMask in = loadHeldInto<T, VEC, ALIGNED, HELD>(dy, view, g);
	if (f.y == 0 || !f.reconstruct)
		loadHeldInto<T, VEC, ALIGNED, HELD>(x, view, xc);

	if (f.y != 0)
	{
		loadHeld<T, VEC, ALIGNED, HELD>(reinterpret_cast<const T *>(f.y), view, [&](int h, const float (&y)[VEC])
		{
#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				int e = h * VEC + k;
				g[e] *= actDerivative(y[k], f.act, f.slope);
				xc[e] = f.reconstruct ? rebuiltDeviation(y[k], fc, f) : xc[e] - fc.mu;
			}
		});
	}
	else
	{
#pragma unroll
		for (int e = 0; e < HELD * VEC; e++)
			xc[e] -= fc.mu;
	}

	keepMasked<VEC, ALIGNED>(g, in, 0.0f);
	keepMasked<VEC, ALIGNED>(xc, in, 0.0f);

	float sum = 0.0f, dot = 0.0f;

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
	{
		sum += g[e];
		dot += g[e] * xc[e];
	}

	double block[2] = {blockTotal(sum), blockTotal(dot)}, sums[2];
	mapTotals(view, block, sums, MapSums());

	ResidentBlock place = residentBlock(view.splits);
	float2 gradients = parameterGradients(place.map, sums[0], sums[1], o);
	if (threadIdx.x == 0 && place.split == 0)
		writeSums(place.map, gradients, o);

	if (f.resgrad != 0)
		storeHeld<T, VEC, ALIGNED, HELD>(reinterpret_cast<T *>(f.resgrad), view, g);

	float invstd = p.invstd[place.map];
	float a = p.scale[place.map] * invstd, b = gradients.x * p.invM, k = invstd * gradients.y * p.invM;

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
		g[e] = a * (g[e] - b - xc[e] * k);

	storeHeld<T, VEC, ALIGNED, HELD>(out, view, g);
}

// ---------------------------------------------------------------------------------------------------------------
// Resident passes over rows (inner == 1: channels-last and per-activation data, rows of width == maps elements that
// VEC divides): a block's threads hold HELD vectors each of a tile of rows, so that a training task reads its inputs
// once and is one launch. The channels are split into columns of blockDim.x lanes' vectors (as the rows reductions'
// blocks) and each column's rows over `splits` blocks: block `split` of column q holds, in thread (x, y), the vectors
// at channel c0 = (q * blockDim.x + x) * VEC of rows (split * HELD + h) * blockDim.y + y, h < HELD. A block writes its
// partials of the column's channels (rowsMomentPartials, rowsSumPartials: the reductions' layout, in a pool
// workspace), the last of the column's blocks to arrive merges them as a reduction's last block does (finishMoments,
// finishSums: the saved statistics and the running update, or the parameter gradients) and releases the others
// (exchangeColumn), which read the per-channel results back and go on: the forward normalizes (with the fused residual
// and activation), the backward writes dx (and dz to resgrad). grid = columns * splits (a block's (column, split) from
// its ticket: startResident), block = (lanes, rows of lanes) of at most BLOCK_SIZE threads and at least VEC rows of
// lanes (the last block's threads merge the column's maps, a thread a map at least: mergeLane); the host keeps splits
// at most the multiprocessors and the columns at most COLUMN_COUNTERS (BatchNormKernels.rowsResidentShape).

// The calling block's column waits for its last block: the block's partials written (by every thread), thread 0
// arrives on the column's counter (columnArrivals[column]); the last to arrive has every thread call finish() and
// releases the others, which wait for that; the last to leave resets the counter (splits arrivals, one release,
// splits - 1 departures: none of the first splits + 1 counts is taken for a departure). Every thread calls it, and
// returns once the column's results are written.
template <typename Finish>
__device__ __forceinline__ void exchangeColumn(int column, int splits, Finish finish)
{
	__shared__ int last;
	int *arrivals = columnArrivals + column;

	__threadfence();
	__syncthreads();

	if (blockThread() == 0)
		last = atomicAdd(arrivals, 1) == splits - 1;
	__syncthreads();

	if (last)
	{
		__threadfence();
		finish();
		__threadfence();
		__syncthreads();

		if (blockThread() == 0 && atomicAdd(arrivals, 1) == 2 * splits - 1)
			atomicExch(arrivals, 0);
		return;
	}

	if (blockThread() == 0)
	{
		while (*(volatile int *)arrivals < splits + 1)
			pauseBriefly();
		__threadfence();

		if (atomicAdd(arrivals, 1) == 2 * splits - 1)
			atomicExch(arrivals, 0);
	}
	__syncthreads();
}

// visit(h, offset, held) for the calling thread's HELD vectors: the offset of its vector of row
// (split * HELD + h) * blockDim.y + threadIdx.y at channel c0, and whether the thread holds it (the row exists and the
// lane has channels: `active`); the vectors it does not hold are at row 0's (a load from there stays in the tensor).
// 32-bit offsets (tensors below 2^31 elements).
template <int HELD, typename Visit>
__device__ __forceinline__ void rowsHeldWalk(int rows, int width, int c0, bool active, int split, Visit visit)
{
	int r = split * HELD * blockDim.y + threadIdx.y;

#pragma unroll
	for (int h = 0; h < HELD; h++)
	{
		bool held = active && r < rows;
		visit(h, held ? r * width + c0 : (active ? c0 : 0), held);
		r += blockDim.y;
	}
}

// The calling thread's held vectors of ptr into v (every load issued before the first use), and the mask of those it
// holds (bit h).
template <typename T, int VEC, int HELD>
__device__ __forceinline__ unsigned loadRowsHeld(const T *ptr, int rows, int width, int c0, bool active, int split,
												 float (&v)[HELD * VEC])
{
	unsigned mask = 0;
	rowsHeldWalk<HELD>(rows, width, c0, active, split, [&](int h, int offset, bool held)
	{
		loadPackAt<T, VEC>(ptr + offset, v, h * VEC);
		mask |= (held ? 1u : 0u) << h;
	});
	return mask;
}

// v stored at the calling thread's held vectors.
template <typename T, int VEC, int HELD>
__device__ __forceinline__ void storeRowsHeld(T *ptr, int rows, int width, int c0, bool active, int split,
											  const float (&v)[HELD * VEC])
{
	rowsHeldWalk<HELD>(rows, width, c0, active, split, [&](int h, int offset, bool held)
	{
		if (held)
			storePackAt<T, VEC>(ptr + offset, v, h * VEC);
	});
}

// The calling block's column and split, its thread's first channel and whether the lane has channels (every thread of
// the block calls it first: startResident).
struct RowsPlace
{
	int column, split, c0;
	bool active;
};

template <int VEC>
__device__ __forceinline__ RowsPlace rowsPlace(int width, int splits)
{
	startResident(splits);
	ResidentBlock b = residentBlock(splits);

	RowsPlace r;
	r.column = b.map;
	r.split = b.split;
	r.c0 = (b.map * (int)blockDim.x + (int)threadIdx.x) * VEC;
	r.active = r.c0 < width;
	return r;
}

// The training forward over rows: MomentsOutputs (o.fold unused; written by the column's last block, the shift of the
// partials each channel's first element) and out = act((x - mu) * invstd * scale + bias + residual) (f: the residual
// with RESIDUAL, else null; act may be ACT_IDENTITY; f.y, f.resgrad unused), with mu and invstd read back from
// o.savedMean and o.savedInvstd. out may be x (every block of a column has loaded before any stores).
template <typename T, int VEC, int HELD, bool RESIDUAL>
__device__ void trainRowsResident(const T *x, T *out, int64 rows64, int width, int maps, int splits, float *pn,
								  float *pmean, float *pm2, const float *scale, const float *bias, FusedParams f,
								  MomentsOutputs o)
{
	RowsPlace place = rowsPlace<VEC>(width, splits);
	int rows = (int)rows64, c0 = place.active ? place.c0 : 0;
	float v[HELD * VEC];
	unsigned in = loadRowsHeld<T, VEC, HELD>(x, rows, width, place.c0, place.active, place.split, v);

	Moments acc[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		float shift = toFloat(x[c0 + k]), w[HELD];
		bool held[HELD];

#pragma unroll
		for (int h = 0; h < HELD; h++)
		{
			held[h] = (in >> h) & 1u;
			// NOTE: the vectors not held count as the shift (0 in the group's sum), as over unaligned segments
			w[h] = held[h] ? v[h * VEC + k] : shift;
		}
		acc[k] = addSegmentValues<HELD>(emptyMoments(), w, held, shift);
	}

	rowsMomentPartials<VEC>(acc, place.active, place.c0, width, maps, place.split, pn, pmean, pm2);
	exchangeColumn(place.column, splits, [&]()
	{
		finishMoments<T>(x, 1, rowsColumn<VEC>(place.column, maps), splits, maps, pn, pmean, pm2, o);
	});

	float a[VEC], b[VEC], mu[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		mu[k] = __ldcg(o.savedMean + c0 + k);
		a[k] = scale[c0 + k] * __ldcg(o.savedInvstd + c0 + k);
		b[k] = bias[c0 + k];
	}

#pragma unroll
	for (int h = 0; h < HELD; h++)
	{
#pragma unroll
		for (int k = 0; k < VEC; k++)
			v[h * VEC + k] = (v[h * VEC + k] - mu[k]) * a[k] + b[k];
	}

	if (RESIDUAL)
	{
		rowsHeldWalk<HELD>(rows, width, place.c0, place.active, place.split, [&](int h, int offset, bool)
		{
			float r[VEC];
			loadPack<T, VEC>(reinterpret_cast<const T *>(f.residual) + offset, r);

#pragma unroll
			for (int k = 0; k < VEC; k++)
				v[h * VEC + k] += r[k];
		});
	}

#pragma unroll
	for (int e = 0; e < HELD * VEC; e++)
		v[e] = actForward(v[e], f.act, f.slope);

	storeRowsHeld<T, VEC, HELD>(out, rows, width, place.c0, place.active, place.split, v);
}

// The training backward over rows: SumsOutputs (o.fold unused; o.invstd the batch's; written by the column's last
// block) and out = dx = scale * invstd * (dz - biasgrad / m - (x - mean) * invstd * scalegrad / m) (p: mean, invstd,
// scale, invM, and bias with reconstruct), with biasgrad and scalegrad read back from o. dz and x - mean as in
// gradResident (f.y, f.resgrad, f.reconstruct). out may be dy.
template <typename T, int VEC, int HELD>
__device__ void gradRowsResident(const T *x, const T *dy, T *out, int64 rows64, int width, int maps, int splits,
								 float *psum, float *pdot, ChannelParams p, FusedParams f, SumsOutputs o)
{
	RowsPlace place = rowsPlace<VEC>(width, splits);
	int rows = (int)rows64, c0 = place.active ? place.c0 : 0;
	float g[HELD * VEC], xc[HELD * VEC];

	unsigned in = loadRowsHeld<T, VEC, HELD>(dy, rows, width, place.c0, place.active, place.split, g);
	if (f.y == 0 || !f.reconstruct)
		loadRowsHeld<T, VEC, HELD>(x, rows, width, place.c0, place.active, place.split, xc);

	FusedCoef fc[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
		fc[k] = fusedCoef(p.mean[c0 + k], p, f, c0 + k, f.reconstruct != 0);

	if (f.y != 0)
	{
		rowsHeldWalk<HELD>(rows, width, place.c0, place.active, place.split, [&](int h, int offset, bool)
		{
			float y[VEC];
			loadPack<T, VEC>(reinterpret_cast<const T *>(f.y) + offset, y);

#pragma unroll
			for (int k = 0; k < VEC; k++)
			{
				int e = h * VEC + k;
				g[e] *= actDerivative(y[k], f.act, f.slope);
				xc[e] = f.reconstruct ? rebuiltDeviation(y[k], fc[k], f) : xc[e] - fc[k].mu;
			}
		});
	}
	else
	{
#pragma unroll
		for (int h = 0; h < HELD; h++)
		{
#pragma unroll
			for (int k = 0; k < VEC; k++)
				xc[h * VEC + k] -= fc[k].mu;
		}
	}

	float sum[VEC], dot[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		sum[k] = 0.0f; dot[k] = 0.0f;

#pragma unroll
		for (int h = 0; h < HELD; h++)
		{
			bool held = (in >> h) & 1u;
			sum[k] += held ? g[h * VEC + k] : 0.0f;
			dot[k] += held ? g[h * VEC + k] * xc[h * VEC + k] : 0.0f;
		}
	}

	rowsSumPartials<VEC>(sum, dot, place.active, place.c0, width, maps, place.split, psum, pdot);
	exchangeColumn(place.column, splits, [&]()
	{
		finishSums(rowsColumn<VEC>(place.column, maps), splits, maps, psum, pdot, o);
	});

	if (f.resgrad != 0)
		storeRowsHeld<T, VEC, HELD>(reinterpret_cast<T *>(f.resgrad), rows, width, place.c0, place.active, place.split,
									g);

	float a[VEC], b[VEC], kx[VEC];

#pragma unroll
	for (int k = 0; k < VEC; k++)
	{
		float invstd = p.invstd[c0 + k];
		a[k] = p.scale[c0 + k] * invstd;
		b[k] = __ldcg(o.biasgrad + c0 + k) * p.invM;
		kx[k] = invstd * __ldcg(o.scalegrad + c0 + k) * p.invM;
	}

#pragma unroll
	for (int h = 0; h < HELD; h++)
	{
#pragma unroll
		for (int k = 0; k < VEC; k++)
		{
			int e = h * VEC + k;
			g[e] = a[k] * (g[e] - b[k] - xc[e] * kx[k]);
		}
	}

	storeRowsHeld<T, VEC, HELD>(out, rows, width, place.c0, place.active, place.split, g);
}

// ---------------------------------------------------------------------------------------------------------------
// C entry points, one per (data type, vector width[, mode]): pycuda looks kernels up by these unmangled names, and
// Kernels/BatchNorm.py declares each one's parameters. Suffixes: f32 / f16 data; v1 scalar, v2 / v4 / v8 vectors of
// up to 16 bytes; the elementwise modes trainForward, evalForward, backward, frozenBackward. The spatial kernels of
// unaligned segments (`Unaligned`: 16-byte vectors where VEC does not divide inner) come at the widest width only, and
// so do the float16 elementwise passes over maps whose vectors may hold elements of more than two maps (`Short`); the
// spatial reductions come with a block per map and with a thread per map (`PerThread`, mapWalk).

#define BN_SPATIAL_REDUCTIONS(T, SUF, VEC, WALK, KIND, ALIGNED, PER_THREAD) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnStatsSpatial##WALK##KIND##_##SUF##_v##VEC( \
		const T *x, int64 outer, int maps, int64 inner, int64 innerV, float *pn, float *pmean, float *pm2, \
		MomentsOutputs o) \
	{ \
		statsSpatial<T, VEC, ALIGNED, PER_THREAD>(x, outer, maps, inner, innerV, pn, pmean, pm2, o); \
	} \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnGradSpatial##WALK##KIND##_##SUF##_v##VEC( \
		const T *x, const T *dy, int64 outer, int maps, int64 inner, int64 innerV, const float *mean, float *psum, \
		float *pdot, SumsOutputs o) \
	{ \
		gradSpatial<T, VEC, ALIGNED, PER_THREAD>(x, dy, outer, maps, inner, innerV, mean, psum, pdot, o); \
	}

#define BN_SPATIAL_ENTRIES(T, SUF, VEC, KIND, ALIGNED) \
	BN_SPATIAL_REDUCTIONS(T, SUF, VEC, , KIND, ALIGNED, false) \
	BN_SPATIAL_REDUCTIONS(T, SUF, VEC, PerThread, KIND, ALIGNED, true) \
	BN_APPLY_SPATIAL_ENTRIES(T, SUF, VEC, KIND, ALIGNED, false)

#define BN_APPLY_SPATIAL_ENTRIES(T, SUF, VEC, KIND, ALIGNED, SHORT) \
	BN_APPLY_SPATIAL_ENTRY(T, SUF, VEC, KIND, ALIGNED, SHORT, trainForward, MODE_TRAIN_FORWARD) \
	BN_APPLY_SPATIAL_ENTRY(T, SUF, VEC, KIND, ALIGNED, SHORT, evalForward, MODE_EVAL_FORWARD) \
	BN_APPLY_SPATIAL_ENTRY(T, SUF, VEC, KIND, ALIGNED, SHORT, backward, MODE_BACKWARD) \
	BN_APPLY_SPATIAL_ENTRY(T, SUF, VEC, KIND, ALIGNED, SHORT, frozenBackward, MODE_FROZEN_BACKWARD)

#define BN_APPLY_SPATIAL_ENTRY(T, SUF, VEC, KIND, ALIGNED, SHORT, MSUF, MODE) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnApplySpatial##KIND##_##MSUF##_##SUF##_v##VEC( \
		const T *x, const T *dy, T *out, int64 outer, int maps, int64 inner, ChannelParams p) \
	{ \
		applySpatial<T, VEC, MODE, ALIGNED, SHORT>(x, dy, out, outer, maps, inner, p); \
	}

#define BN_APPLY_ENTRIES(T, SUF, VEC, MSUF, MODE) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnApplyRows_##MSUF##_##SUF##_v##VEC( \
		const T *x, const T *dy, T *out, int64 rows, int width, int maps, ChannelParams p) \
	{ \
		applyRows<T, VEC, MODE>(x, dy, out, rows, width, maps, p); \
	}

#define BN_FUSED_ENTRIES(T, SUF, VEC, MSUF, MODE) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnApplySpatialFused_##MSUF##_##SUF##_v##VEC( \
		const T *x, const T *dy, T *out, int64 outer, int maps, int64 inner, ChannelParams p, FusedParams f) \
	{ \
		applySpatialFused<T, VEC, MODE>(x, dy, out, outer, maps, inner, p, f); \
	} \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnApplyRowsFused_##MSUF##_##SUF##_v##VEC( \
		const T *x, const T *dy, T *out, int64 rows, int width, int maps, ChannelParams p, FusedParams f) \
	{ \
		applyRowsFused<T, VEC, MODE>(x, dy, out, rows, width, maps, p, f); \
	}

#define BN_ENTRIES(T, SUF, VEC) \
	BN_SPATIAL_ENTRIES(T, SUF, VEC, , true) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnStatsRows_##SUF##_v##VEC( \
		const T *x, int64 rows, int width, int maps, float *pn, float *pmean, float *pm2, MomentsOutputs o) \
	{ \
		statsRows<T, VEC>(x, rows, width, maps, pn, pmean, pm2, o); \
	} \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnGradRows_##SUF##_v##VEC( \
		const T *x, const T *dy, int64 rows, int width, int maps, const float *mean, float *psum, float *pdot, \
		SumsOutputs o) \
	{ \
		gradRows<T, VEC>(x, dy, rows, width, maps, mean, psum, pdot, o); \
	} \
	BN_APPLY_ENTRIES(T, SUF, VEC, trainForward, MODE_TRAIN_FORWARD) \
	BN_APPLY_ENTRIES(T, SUF, VEC, evalForward, MODE_EVAL_FORWARD) \
	BN_APPLY_ENTRIES(T, SUF, VEC, backward, MODE_BACKWARD) \
	BN_APPLY_ENTRIES(T, SUF, VEC, frozenBackward, MODE_FROZEN_BACKWARD) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnGradSpatialFused_##SUF##_v##VEC( \
		const T *x, const T *dy, int64 outer, int maps, int64 inner, int64 innerV, const float *mean, float *psum, \
		float *pdot, SumsOutputs o, ChannelParams p, FusedParams f) \
	{ \
		gradSpatialFused<T, VEC>(x, dy, outer, maps, inner, innerV, mean, psum, pdot, o, p, f); \
	} \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnGradRowsFused_##SUF##_v##VEC( \
		const T *x, const T *dy, int64 rows, int width, int maps, const float *mean, float *psum, float *pdot, \
		SumsOutputs o, ChannelParams p, FusedParams f) \
	{ \
		gradRowsFused<T, VEC>(x, dy, rows, width, maps, mean, psum, pdot, o, p, f); \
	} \
	BN_FUSED_ENTRIES(T, SUF, VEC, trainForward, MODE_TRAIN_FORWARD) \
	BN_FUSED_ENTRIES(T, SUF, VEC, evalForward, MODE_EVAL_FORWARD) \
	BN_FUSED_ENTRIES(T, SUF, VEC, backward, MODE_BACKWARD) \
	BN_FUSED_ENTRIES(T, SUF, VEC, frozenBackward, MODE_FROZEN_BACKWARD)

BN_ENTRIES(float, f32, 1)
BN_ENTRIES(float, f32, 2)
BN_ENTRIES(float, f32, 4)
BN_ENTRIES(__half, f16, 1)
BN_ENTRIES(__half, f16, 2)
BN_ENTRIES(__half, f16, 4)
BN_ENTRIES(__half, f16, 8)
BN_SPATIAL_ENTRIES(float, f32, 4, Unaligned, false)
BN_SPATIAL_ENTRIES(__half, f16, 8, Unaligned, false)
// NOTE: the elementwise passes over maps whose vectors may hold elements of more than two maps (`Short`), for float16
// only: float32 vectors of 4 hold elements of two maps at most on maps of 2 or more elements
BN_APPLY_SPATIAL_ENTRIES(__half, f16, 8, Short, false, true)

// The resident passes (trainResident, gradResident) at the widest width, HELD vectors per thread: up to 64 values of
// a thread's data (32 over unaligned segments), 32 per input where a second input is combined with them (the
// residual; dz and x - mean in the backward), which blocks of RESIDENT_THREADS hold in registers without a spill.
// Kernels/BatchNorm.py lists them (residentHeld).
#define BN_RESIDENT_TRAIN(T, SUF, VEC, KIND, ALIGNED, HELD, RSUF, RESIDUAL) \
	extern "C" __global__ void __launch_bounds__(RESIDENT_THREADS) \
	bnTrain##RSUF##Resident##KIND##_##SUF##_v##VEC##_h##HELD( \
		const T *x, T *out, int64 outer, int maps, int64 inner, int64 innerV, int splits, const float *scale, \
		const float *bias, FusedParams f, MomentsOutputs o) \
	{ \
		if (TURING_BUILD && (HELD * VEC <= 32 || HOPPER_BUILD)) \
			trainResident<T, VEC, ALIGNED, HELD, RESIDUAL>( \
				x, out, residentView<HELD * VEC>(outer, maps, inner, innerV, splits), scale, bias, f, o); \
	}

#define BN_RESIDENT_GRAD(T, SUF, VEC, KIND, ALIGNED, HELD) \
	extern "C" __global__ void __launch_bounds__(RESIDENT_THREADS) bnGradResident##KIND##_##SUF##_v##VEC##_h##HELD( \
		const T *x, const T *dy, T *out, int64 outer, int maps, int64 inner, int64 innerV, int splits, \
		ChannelParams p, FusedParams f, SumsOutputs o) \
	{ \
		if (TURING_BUILD) \
			gradResident<T, VEC, ALIGNED, HELD>( \
				x, dy, out, residentView<HELD * VEC>(outer, maps, inner, innerV, splits), p, f, o); \
	}

#define BN_RESIDENT_ENTRIES(KIND, ALIGNED) \
	BN_RESIDENT_TRAIN(float, f32, 4, KIND, ALIGNED, 4, , false) \
	BN_RESIDENT_TRAIN(float, f32, 4, KIND, ALIGNED, 8, , false) \
	BN_RESIDENT_TRAIN(__half, f16, 8, KIND, ALIGNED, 4, , false) \
	BN_RESIDENT_TRAIN(float, f32, 4, KIND, ALIGNED, 4, Residual, true) \
	BN_RESIDENT_TRAIN(float, f32, 4, KIND, ALIGNED, 8, Residual, true) \
	BN_RESIDENT_TRAIN(__half, f16, 8, KIND, ALIGNED, 4, Residual, true) \
	BN_RESIDENT_GRAD(float, f32, 4, KIND, ALIGNED, 4) \
	BN_RESIDENT_GRAD(float, f32, 4, KIND, ALIGNED, 8) \
	BN_RESIDENT_GRAD(__half, f16, 8, KIND, ALIGNED, 4)

BN_RESIDENT_ENTRIES(, true)
BN_RESIDENT_ENTRIES(Unaligned, false)
// NOTE: 64 values a thread over aligned segments only (the elements' mask over unaligned ones would take 64 bits), and
// from Hopper on (HOPPER_BUILD)
BN_RESIDENT_TRAIN(float, f32, 4, , true, 16, , false)
BN_RESIDENT_TRAIN(__half, f16, 8, , true, 8, , false)

// The resident passes over rows (trainRowsResident, gradRowsResident) at the widest width, HELD vectors per thread: up
// to 32 values of an input (16 in the backward of float32, which at 32 takes 151 registers at sm_90: one block per
// multiprocessor). Kernels/BatchNorm.py lists them (rowsResidentHeld).
#define BN_ROWS_RESIDENT_TRAIN(T, SUF, VEC, HELD, RSUF, RESIDUAL) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnTrain##RSUF##ResidentRows_##SUF##_v##VEC##_h##HELD( \
		const T *x, T *out, int64 rows, int width, int maps, int splits, float *pn, float *pmean, float *pm2, \
		const float *scale, const float *bias, FusedParams f, MomentsOutputs o) \
	{ \
		if (TURING_BUILD) \
			trainRowsResident<T, VEC, HELD, RESIDUAL>(x, out, rows, width, maps, splits, pn, pmean, pm2, scale, bias, \
													  f, o); \
	}

#define BN_ROWS_RESIDENT_GRAD(T, SUF, VEC, HELD) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnGradResidentRows_##SUF##_v##VEC##_h##HELD( \
		const T *x, const T *dy, T *out, int64 rows, int width, int maps, int splits, float *psum, float *pdot, \
		ChannelParams p, FusedParams f, SumsOutputs o) \
	{ \
		if (TURING_BUILD) \
			gradRowsResident<T, VEC, HELD>(x, dy, out, rows, width, maps, splits, psum, pdot, p, f, o); \
	}

BN_ROWS_RESIDENT_TRAIN(float, f32, 4, 4, , false)
BN_ROWS_RESIDENT_TRAIN(float, f32, 4, 8, , false)
BN_ROWS_RESIDENT_TRAIN(__half, f16, 8, 4, , false)
BN_ROWS_RESIDENT_TRAIN(float, f32, 4, 4, Residual, true)
BN_ROWS_RESIDENT_TRAIN(float, f32, 4, 8, Residual, true)
BN_ROWS_RESIDENT_TRAIN(__half, f16, 8, 4, Residual, true)
BN_ROWS_RESIDENT_GRAD(float, f32, 4, 4)
BN_ROWS_RESIDENT_GRAD(__half, f16, 8, 4)

// The reductions' last step where it is not folded (fold = 0): a block per map merges its `splits` partials (the
// statistics kernel's o and x, whose first element of each map is the partials' shift; shiftStride as in
// finishMoments). grid = maps, block = BLOCK_SIZE.
#define BN_MERGE_ENTRY(T, SUF) \
	extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnStatsMerge_##SUF( \
		const T *x, int64 shiftStride, const float *pn, const float *pmean, const float *pm2, int splits, int maps, \
		MomentsOutputs o) \
	{ \
		Column column = {(int)blockIdx.x, 1}; \
		finishMoments<T>(x, shiftStride, column, splits, maps, pn, pmean, pm2, o); \
	}

BN_MERGE_ENTRY(float, f32)
BN_MERGE_ENTRY(__half, f16)

extern "C" __global__ void __launch_bounds__(BLOCK_SIZE) bnSumsMerge(const float *psum, const float *pdot, int splits,
																	  int maps, SumsOutputs o)
{
	Column column = {(int)blockIdx.x, 1};
	finishSums(column, splits, maps, psum, pdot, o);
}

// ---------------------------------------------------------------------------------------------------------------
// Batch Renormalization (Ioffe 2017, arXiv 1702.03275): the per-channel step between the batch moments and the
// normalization pass (the twin of NumpyBatchNorm.renormStatistics). With sigma = sqrt(sigma2 + eps) and
// moving = max(renormStd, sqrt(eps)) (the moving values before this batch; TensorFlow's floor):
//   savedMean = mu, savedInvstd = 1 / sigma,
//   r = clip(sigma / moving, rmin, rmax), d = clip((mu - renormMean) / moving, -dmax, dmax) (a NaN stays a NaN),
//   correctedScale = r * scale, correctedBias = d * scale + bias (what bnApply*_trainForward then takes),
//   the running update of the statistics kernels (runningUpdate; runningMean may be null) and
//   renormMean = momentum * renormMean + (1 - momentum) * mu, renormStd = momentum * renormStd + (1 - momentum) * sigma,
// both skipped, counting 1 in skipped[c], for a channel whose mu or sigma2 is not finite (when skipped is given).
// One thread per channel, grid-stride.

__device__ __forceinline__ float clipKeepingNaN(float v, float low, float high)
{
	return v < low ? low : (v > high ? high : v);
}

extern "C" __global__ void bnRenormStatistics(const float *batchMean, const float *batchVar, int maps, int64 m,
											  float epsilon, float factor, float momentum, float rmin, float rmax,
											  float dmax, const float *scale, const float *bias, float *savedMean,
											  float *savedInvstd, float *r, float *d, float *correctedScale,
											  float *correctedBias, float *runningMean, float *runningVar,
											  float *renormMean, float *renormStd, float *skipped)
{
	for (int64 c = (int64)blockIdx.x * blockDim.x + threadIdx.x; c < maps; c += (int64)gridDim.x * blockDim.x)
	{
		float mu = batchMean[c], sigma2 = batchVar[c];
		float sigma = sqrtf(sigma2 + epsilon);
		// NOTE: a comparison, not fmaxf, so that a NaN renormStd stays a NaN, as numpy's maximum keeps it
		float minStd = sqrtf(epsilon), moving = renormStd[c] < minStd ? minStd : renormStd[c];

		float rc = clipKeepingNaN(sigma / moving, rmin, rmax);
		float dc = clipKeepingNaN((mu - renormMean[c]) / moving, -dmax, dmax);

		savedMean[c] = mu;
		savedInvstd[c] = 1.0f / sigma;
		r[c] = rc;
		d[c] = dc;
		correctedScale[c] = rc * scale[c];
		correctedBias[c] = dc * scale[c] + bias[c];

		if (runningUpdate(c, mu, sigma2, (float)((double)m / (double)(m - 1)), factor, runningMean, runningVar, skipped))
		{
			renormMean[c] = momentum * renormMean[c] + (1.0f - momentum) * mu;
			renormStd[c] = momentum * renormStd[c] + (1.0f - momentum) * sigma;
		}
	}
}

// out = r * x + d * y per channel (out = r * x when y is null): Batch Renormalization's backward, for the scale the
// backward pass sees and for the scale gradient. out may be x or y. One thread per channel, grid-stride.
extern "C" __global__ void bnRenormCombine(const float *r, const float *x, const float *d, const float *y, int maps,
										   float *out)
{
	for (int64 c = (int64)blockIdx.x * blockDim.x + threadIdx.x; c < maps; c += (int64)gridDim.x * blockDim.x)
		out[c] = r[c] * x[c] + (y != 0 ? d[c] * y[c] : 0.0f);
}
