// Axis permutation (generalized transpose) of a C-contiguous tensor, used by Backend/Cuda/Permute.py.
//
// Batch normalization over axes whose kept (non-normalized) axes are not adjacent, e.g. axes (1,) of (N, C, T), cannot
// be viewed as (outer, maps, inner) without moving data; only that rare case permutes (see Backend/Dnn.py). Channels-
// last data and every module layout never come here.
//
// One thread per output element gathers from the source: the output is written coalesced, the source read is strided.
// The kernels only move bytes, so one instantiation per element size serves every dtype (2: float16, 4: float32,
// 8: float64). Index arithmetic is 64-bit: tensors may exceed 2^31 elements.

#ifndef PERMUTE_MAX_DIMS
#define PERMUTE_MAX_DIMS 8
#endif

#ifndef PERMUTE_BLOCK_SIZE
#define PERMUTE_BLOCK_SIZE 256
#endif

// Passed by value; the Python side packs it with the same layout (all 64-bit fields, no padding).
struct PermuteShape
{
    long long ndim;
    long long outDims[PERMUTE_MAX_DIMS];     // output shape
    long long srcStrides[PERMUTE_MAX_DIMS];  // source stride (in elements) of the source axis that output axis i reads
};

template <typename T>
__device__ __forceinline__ void permuteBody(const T *__restrict__ src, T *__restrict__ dst, long long size,
                                            const PermuteShape &shape)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride)
    {
        long long rest = i, offset = 0;
        for (int axis = (int)shape.ndim - 1; axis >= 0; axis--)
        {
            const long long dim = shape.outDims[axis];
            const long long coord = rest % dim;
            rest /= dim;
            offset += coord * shape.srcStrides[axis];
        }
        dst[i] = src[offset];
    }
}

extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK_SIZE)
    permute_b2(const unsigned short *src, unsigned short *dst, long long size, PermuteShape shape)
{
    permuteBody(src, dst, size, shape);
}

extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK_SIZE)
    permute_b4(const unsigned int *src, unsigned int *dst, long long size, PermuteShape shape)
{
    permuteBody(src, dst, size, shape);
}

extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK_SIZE)
    permute_b8(const unsigned long long *src, unsigned long long *dst, long long size, PermuteShape shape)
{
    permuteBody(src, dst, size, shape);
}
