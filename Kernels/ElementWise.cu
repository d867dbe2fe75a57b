// Elementwise kernels of the training stack: activations (forward and backward from the output), a row-vector add
// (the bias of a fully connected layer) and softmax cross-entropy. fp32 data, C-contiguous operands.
//
// Every function here has a numpy twin in Backend/Cpu/ElementWise.py with the same arguments and formulas.
// Index arithmetic is 64-bit: a tensor may hold more than 2^31 elements.

#ifndef BLOCK_SIZE
#define BLOCK_SIZE 256
#endif

// Softmax cross-entropy: one warp per row, CE_WARPS rows per block.
#ifndef CE_WARPS
#define CE_WARPS 8
#endif

#if BLOCK_SIZE % 32 != 0 || BLOCK_SIZE > 1024
#error "BLOCK_SIZE must be a multiple of 32 and at most 1024"
#endif
#if CE_WARPS * 32 > 1024
#error "CE_WARPS * 32 must be at most 1024"
#endif

typedef long long int64;

#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------------------------
// Activations. The backward passes take the forward's *output* y, so an in-place forward loses nothing. Every entry
// takes `slope`: leaky ReLU's negative slope, ELU's alpha (Clevert et al. 2015, arXiv 1511.07289); the other kinds
// ignore it. The formulas are those of the batch norm's fused activations (BatchNorm.cu, actForward/actDerivative).

enum Act
{
	ACT_SIGMOID = 0,
	ACT_RELU = 1,
	ACT_TANH = 2,
	ACT_LEAKY_RELU = 3,
	ACT_ELU = 4
};

template <int ACT> __device__ __forceinline__ float actForward(float x, float slope);
template <int ACT> __device__ __forceinline__ float actBackward(float g, float y, float slope);

// NOTE: expf(-x) overflows to inf for x < -88 and 1 / inf = 0, the correct limit, so no branch is needed
template <> __device__ __forceinline__ float actForward<ACT_SIGMOID>(float x, float) { return 1.0f / (1.0f + expf(-x)); }
// NOTE: NaN passes through, as numpy's maximum (the CPU twin) lets it
template <> __device__ __forceinline__ float actForward<ACT_RELU>(float x, float) { return x <= 0.0f ? 0.0f : x; }
template <> __device__ __forceinline__ float actForward<ACT_TANH>(float x, float) { return tanhf(x); }
template <> __device__ __forceinline__ float actForward<ACT_LEAKY_RELU>(float x, float slope)
{
	return x > 0.0f ? x : slope * x;
}
template <> __device__ __forceinline__ float actForward<ACT_ELU>(float x, float slope)
{
	return x > 0.0f ? x : slope * expm1f(x);
}

template <> __device__ __forceinline__ float actBackward<ACT_SIGMOID>(float g, float y, float)
{
	return g * y * (1.0f - y);
}
template <> __device__ __forceinline__ float actBackward<ACT_RELU>(float g, float y, float) { return y > 0.0f ? g : 0.0f; }
template <> __device__ __forceinline__ float actBackward<ACT_TANH>(float g, float y, float) { return g * (1.0f - y * y); }
template <> __device__ __forceinline__ float actBackward<ACT_LEAKY_RELU>(float g, float y, float slope)
{
	return y > 0.0f ? g : g * slope;
}
template <> __device__ __forceinline__ float actBackward<ACT_ELU>(float g, float y, float slope)
{
	return y > 0.0f ? g : g * (y + slope);
}

// y = act(x); y may be x (in place), hence no __restrict__. grid = any, block = BLOCK_SIZE.
template <int ACT>
__device__ __forceinline__ void activationForward(const float *x, float *y, int64 n, float slope)
{
	for (int64 i = (int64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64)gridDim.x * blockDim.x)
		y[i] = actForward<ACT>(x[i], slope);
}

// ingrad = grad * act'(x), written through the output y; ingrad may be grad (in place).
template <int ACT>
__device__ __forceinline__ void activationBackward(const float *grad, const float *y, float *ingrad, int64 n,
												   float slope)
{
	for (int64 i = (int64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64)gridDim.x * blockDim.x)
		ingrad[i] = actBackward<ACT>(grad[i], y[i], slope);
}

#define ACTIVATION_ENTRIES(name, ACT) \
	extern "C" __global__ void name##Forward(const float *x, float *y, int64 n, float slope) \
	{ \
		activationForward<ACT>(x, y, n, slope); \
	} \
	extern "C" __global__ void name##Backward(const float *grad, const float *y, float *ingrad, int64 n, float slope) \
	{ \
		activationBackward<ACT>(grad, y, ingrad, n, slope); \
	}

ACTIVATION_ENTRIES(sigmoid, ACT_SIGMOID)
ACTIVATION_ENTRIES(relu, ACT_RELU)
ACTIVATION_ENTRIES(tanh, ACT_TANH)
ACTIVATION_ENTRIES(leakyRelu, ACT_LEAKY_RELU)
ACTIVATION_ENTRIES(elu, ACT_ELU)

// ---------------------------------------------------------------------------------------------------------------
// out[r, c] = data[r, c] + vector[c] for a (rows, cols) matrix; out may be data. grid = any, block = BLOCK_SIZE.

extern "C" __global__ void addVectorToRows(const float *data, const float *vector, float *out, int64 rows, int64 cols)
{
	int64 n = rows * cols;
	for (int64 i = (int64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64)gridDim.x * blockDim.x)
		out[i] = data[i] + vector[i % cols];
}

// ---------------------------------------------------------------------------------------------------------------
// Softmax cross-entropy over the classes of each row of a (rows, classes) score matrix, with integer labels.
//
//   p = softmax(s) computed as exp(s - max - log(sum(exp(s - max)))) (stable for any score range)
//   grad[r, c]     = ((c == label) - p[r, c]) * gradScale     (the NEGATED gradient: PuzzleLib's sign convention)
//   rowStats[r, 0] = -log p[r, label]                         (0 for an invalid label)
//   rowStats[r, 1] = 1 when the first index of the largest score equals the label, else 0
//   rowStats[r, 2] = 1 when the label is outside [0, classes) (the host then raises), else 0
//
// One warp per row: lanes stride over the classes, results merge with shuffles.
// grid = ceil(rows / CE_WARPS), block = 32 * CE_WARPS.

extern "C" __global__ void softmaxCrossEntropy(const float *scores, const int *labels, float *grad, float *rowStats,
											   int64 rows, int classes, float gradScale)
{
	int lane = threadIdx.x % 32;
	int64 row = (int64)blockIdx.x * CE_WARPS + threadIdx.x / 32;
	if (row >= rows)
		return;

	const float *s = scores + row * classes;
	float *g = grad + row * classes;

	// NOTE: ties keep the smallest index, as numpy's argmax does, so both backends count the same hits
	// NOTE: -inf spelled as bits: NVRTC has no math.h, hence no INFINITY macro
	float best = __int_as_float(0xff800000);
	int bestIdx = classes;
	for (int c = lane; c < classes; c += 32)
	{
		float v = s[c];
		if (v > best)
		{
			best = v;
			bestIdx = c;
		}
	}

#pragma unroll
	for (int offset = 16; offset > 0; offset /= 2)
	{
		float v = __shfl_xor_sync(FULL_MASK, best, offset);
		int idx = __shfl_xor_sync(FULL_MASK, bestIdx, offset);
		if (v > best || (v == best && idx < bestIdx))
		{
			best = v;
			bestIdx = idx;
		}
	}

	float sum = 0.0f;
	for (int c = lane; c < classes; c += 32)
		sum += expf(s[c] - best);

#pragma unroll
	for (int offset = 16; offset > 0; offset /= 2)
		sum += __shfl_xor_sync(FULL_MASK, sum, offset);

	float logSum = logf(sum);
	int label = labels[row];
	bool valid = label >= 0 && label < classes;

	// NOTE: the label's score is read before any lane writes, so grad may be scores (in place)
	float labelScore = valid ? s[label] : 0.0f;
	__syncwarp(FULL_MASK);

	for (int c = lane; c < classes; c += 32)
	{
		float p = expf(s[c] - best - logSum);
		g[c] = ((valid && c == label) ? 1.0f - p : -p) * gradScale;
	}

	if (lane == 0)
	{
		float *stats = rowStats + row * 3;
		stats[0] = valid ? logSum - (labelScore - best) : 0.0f;
		stats[1] = (valid && bestIdx == label) ? 1.0f : 0.0f;
		stats[2] = valid ? 0.0f : 1.0f;
	}
}
