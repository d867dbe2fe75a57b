"""Declaration of ``ElementWise.cu``: the constants it is built with and the parameters of every entry point
(launched by `Backend.Cuda.ElementWise`)."""

from PuzzleLib.Kernels.Signature import Float32, Int32, Int64, Pointer, Signature

SOURCE = "ElementWise.cu"

BLOCK_SIZE = 256
CE_WARPS = 8
defines = {"BLOCK_SIZE": BLOCK_SIZE, "CE_WARPS": CE_WARPS}

activations = ("sigmoid", "relu", "tanh", "leakyRelu", "elu")

# NOTE: every activation takes a slope (leakyRelu's negative slope, elu's alpha); the others ignore it
activationForward = Signature("{act}Forward", Pointer("x"), Pointer("y"), Int64("n"), Float32("slope"))
activationBackward = Signature(
    "{act}Backward", Pointer("grad"), Pointer("y"), Pointer("ingrad"), Int64("n"), Float32("slope")
)
addVectorToRows = Signature(
    "addVectorToRows", Pointer("data"), Pointer("vector"), Pointer("out"), Int64("rows"), Int64("cols")
)
softmaxCrossEntropy = Signature(
    "softmaxCrossEntropy",
    Pointer("scores"), Pointer("labels"), Pointer("grad"), Pointer("rowStats"), Int64("rows"), Int32("classes"),
    Float32("gradScale"),
)


def entries():
    """{entry name: `Signature`} of every entry point the source compiles to."""
    result = {signature.name(): signature for signature in (addVectorToRows, softmaxCrossEntropy)}
    for act in activations:
        for signature in (activationForward, activationBackward):
            result[signature.name(act=act)] = signature
    return result
