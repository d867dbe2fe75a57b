"""Declaration of ``Blas.cu`` (the fallback where cuBLAS does not load): the constants it is built with and the
parameters of every entry point (launched by `Backend.Cuda.Blas`)."""

from PuzzleLib.Kernels.Signature import Float32, Int32, Int64, Pointer, Signature

SOURCE = "Blas.cu"

BLOCK_SIZE = 256
GEMM_TILE = 16
defines = {"BLOCK_SIZE": BLOCK_SIZE, "GEMM_TILE": GEMM_TILE}

axpby = Signature(
    "blasAxpby", Pointer("x"), Pointer("y"), Pointer("out"), Int64("n"), Float32("alpha"), Float32("beta")
)
gemm = Signature(
    "blasGemm",
    Pointer("A"), Pointer("B"), Pointer("C"), Int32("M"), Int32("N"), Int32("K"), Int64("sai"), Int64("sak"),
    Int64("sbk"), Int64("sbj"), Float32("alpha"), Float32("beta"),
)
sumCols = Signature(
    "blasSumCols", Pointer("A"), Pointer("out"), Int64("R"), Int64("C"), Float32("alpha"), Float32("beta")
)
sumRows = Signature(
    "blasSumRows", Pointer("A"), Pointer("out"), Int64("R"), Int64("C"), Float32("alpha"), Float32("beta")
)


def entries():
    """{entry name: `Signature`} of every entry point the source compiles to."""
    return {signature.name(): signature for signature in (axpby, gemm, sumCols, sumRows)}
