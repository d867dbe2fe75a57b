"""Declaration of ``Permute.cu``: the constants it is built with and the parameters of every entry point (launched by
`Backend.Cuda.Permute`)."""

from PuzzleLib.Kernels.Signature import Array, Int64, Pointer, Signature, Struct

SOURCE = "Permute.cu"

MAX_DIMS = 8
BLOCK_SIZE = 256
defines = {"PERMUTE_MAX_DIMS": MAX_DIMS, "PERMUTE_BLOCK_SIZE": BLOCK_SIZE}

# element sizes in bytes with an instance each (the kernels move bytes, so one serves every dtype of that size)
itemSizes = (2, 4, 8)

permute = Signature(
    "permute_b{itemsize}",
    Pointer("src"), Pointer("dst"), Int64("size"),
    Struct(
        "shape", "PermuteShape",
        [Int64("ndim"), Array(Int64("outDims"), MAX_DIMS), Array(Int64("srcStrides"), MAX_DIMS)],
    ),
)


def entries():
    """{entry name: `Signature`} of every entry point the source compiles to."""
    return {permute.name(itemsize=itemsize): permute for itemsize in itemSizes}
