// Fallback BLAS kernels, used only when cuBLAS cannot be loaded. fp32, row-major, contiguous operands.
// They favour simplicity over peak speed: cuBLAS is the fast path.

#ifndef GEMM_TILE
#define GEMM_TILE 16
#endif

#ifndef BLOCK_SIZE
#define BLOCK_SIZE 256
#endif

typedef long long int64;

// out = alpha * x + beta * y; out may alias x or y; beta == 0 never reads y. grid = any, block = BLOCK_SIZE.
extern "C" __global__ void blasAxpby(const float *x, const float *y, float *out, int64 n, float alpha, float beta)
{
	for (int64 i = (int64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64)gridDim.x * blockDim.x)
		out[i] = (beta == 0.0f) ? alpha * x[i] : alpha * x[i] + beta * y[i];
}

// C (M x N) = alpha * op(A) @ op(B) + beta * C, op(A) is M x K, op(B) is K x N. op(A)[i, k] = A[i * sai + k * sak],
// so the transposes are only strides. beta == 0 never reads C (it may be uninitialized).
// grid = (ceil(N / GEMM_TILE), ceil(M / GEMM_TILE)), block = (GEMM_TILE, GEMM_TILE).
extern "C" __global__ void blasGemm(const float *A, const float *B, float *C, int M, int N, int K,
									int64 sai, int64 sak, int64 sbk, int64 sbj, float alpha, float beta)
{
	__shared__ float ta[GEMM_TILE][GEMM_TILE], tb[GEMM_TILE][GEMM_TILE + 1];

	int row = blockIdx.y * GEMM_TILE + threadIdx.y, col = blockIdx.x * GEMM_TILE + threadIdx.x;
	float acc = 0.0f;

	for (int k0 = 0; k0 < K; k0 += GEMM_TILE)
	{
		int ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;

		ta[threadIdx.y][threadIdx.x] = (row < M && ka < K) ? A[row * sai + ka * sak] : 0.0f;
		tb[threadIdx.y][threadIdx.x] = (kb < K && col < N) ? B[kb * sbk + col * sbj] : 0.0f;
		__syncthreads();

#pragma unroll
		for (int k = 0; k < GEMM_TILE; k++)
			acc += ta[threadIdx.y][k] * tb[k][threadIdx.x];

		__syncthreads();
	}

	if (row < M && col < N)
	{
		int64 idx = (int64)row * N + col;
		C[idx] = (beta == 0.0f) ? alpha * acc : alpha * acc + beta * C[idx];
	}
}

// out[j] = alpha * sum_i A[i, j] + beta * out[j] for an R x C matrix: threads across columns keep reads coalesced.
// grid = ceil(C / BLOCK_SIZE), block = BLOCK_SIZE.
extern "C" __global__ void blasSumCols(const float *A, float *out, int64 R, int64 C, float alpha, float beta)
{
	int64 j = (int64)blockIdx.x * blockDim.x + threadIdx.x;
	if (j >= C)
		return;

	float acc = 0.0f;
	for (int64 i = 0; i < R; i++)
		acc += A[i * C + j];

	out[j] = (beta == 0.0f) ? alpha * acc : alpha * acc + beta * out[j];
}

// out[i] = alpha * sum_j A[i, j] + beta * out[i]: one warp per row. grid = ceil(R / (BLOCK_SIZE / 32)),
// block = BLOCK_SIZE.
extern "C" __global__ void blasSumRows(const float *A, float *out, int64 R, int64 C, float alpha, float beta)
{
	int64 i = (int64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x % 32;

	if (i >= R)
		return;

	float acc = 0.0f;
	for (int64 j = lane; j < C; j += 32)
		acc += A[i * C + j];

	for (int offset = 16; offset > 0; offset >>= 1)
		acc += __shfl_down_sync(0xffffffffu, acc, offset);

	if (lane == 0)
		out[i] = (beta == 0.0f) ? alpha * acc : alpha * acc + beta * out[i];
}
