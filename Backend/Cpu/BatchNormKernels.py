"""Batch-normalization primitives of the CPU backend (`BatchNormPrimitives` of `Backend.Contract`, which states what
each function computes): the C kernels of `Backend.Cpu.CBatchNorm` where they can be built, else the numpy kernels of
`Backend.Cpu.NumpyBatchNorm`, as `PuzzleLib.Config.cpuKernels` asks. Twin of `Backend.Cuda.BatchNormKernels`.

- ``"auto"`` (the default): the C kernels, compiled on the first batch-norm call (`Backend.Cpu.SourceLibrary`); where
  that fails (no compiler, or it refuses the source) the numpy kernels, with one log line that says why.
- ``"c"``: the C kernels; where they cannot be built, every CPU batch-norm call raises `PuzzleLib.Config.ConfigError`
  with the compiler's complaint (never a silent fallback).
- ``"numpy"``: the numpy kernels.

Float16 data runs on the numpy kernels where the compiler has no ``_Float16`` type (the C build says so).
"""

import threading

from PuzzleLib import Config
from PuzzleLib.Backend.Cpu import CBatchNorm, NumpyBatchNorm
from PuzzleLib.Backend.Cpu.SourceLibrary import CompileError

dataTypes = NumpyBatchNorm.dataTypes

# NOTE: the outcome of building the C kernels, once per process: None until tried, then True or the reason they failed
cBuild = {"outcome": None}
cBuildLock = threading.Lock()


def cProblem():
    """None when the C kernels are loaded (building them on the first call), else the reason they cannot be."""
    # NOTE: the calls after the first read the outcome without the lock, so no interrupt can leave it held there
    outcome = cBuild["outcome"]
    if outcome is None:
        with cBuildLock:
            if cBuild["outcome"] is None:
                cBuild["outcome"] = buildC()
            outcome = cBuild["outcome"]
    return None if outcome is True else outcome


def buildC():
    """Loads the C kernels; returns True, or the reason they cannot be built (logged once under ``"auto"``)."""
    try:
        CBatchNorm.load()
        return True
    except (CompileError, OSError) as e:
        if Config.cpuKernels == "auto":
            Config.logger.warning("CPU batch-norm kernels: numpy, because the C ones cannot be built: %s", e)
        return str(e)


def implementation(dtype):
    """The module (`CBatchNorm` or `NumpyBatchNorm`) that computes batch norm for data of `dtype` under
    `Config.cpuKernels`.

    Raises:
        PuzzleLib.Config.ConfigError: the C kernels were asked for and cannot be built here.
    """
    choice = Config.cpuKernels
    if choice == "numpy":
        return NumpyBatchNorm

    problem = cProblem()
    if problem is not None:
        if choice == "c":
            raise Config.ConfigError(
                "the C batch-norm kernels (asked for by PUZZLELIB_CPU_KERNELS or useCpuKernels) cannot be built: %s"
                % problem
            )
        return NumpyBatchNorm
    return CBatchNorm if dtype.char in CBatchNorm.kernels else NumpyBatchNorm


def trainForward(
    data, out, shape3, *, scale, bias, running, saved, epsilon, factor, skipped, activation=None, residual=None
):
    implementation(data.dtype).trainForward(
        data, out, shape3, scale=scale, bias=bias, running=running, saved=saved, epsilon=epsilon, factor=factor,
        skipped=skipped, activation=activation, residual=residual,
    )


def batchStatistics(data, shape3, *, saved):
    implementation(data.dtype).batchStatistics(data, shape3, saved=saved)


def normalize(data, out, shape3, *, scale, bias, saved, activation=None, residual=None):
    implementation(data.dtype).normalize(
        data, out, shape3, scale=scale, bias=bias, saved=saved, activation=activation, residual=residual
    )


def evalForward(data, out, shape3, *, scale, bias, running, epsilon, activation=None, residual=None):
    implementation(data.dtype).evalForward(
        data, out, shape3, scale=scale, bias=bias, running=running, epsilon=epsilon, activation=activation,
        residual=residual,
    )


def backward(
    data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, activation=None, outdata=None, bias=None,
    resgrad=None,
):
    implementation(grad.dtype).backward(
        data, grad, ingrad, shape3, scale=scale, saved=saved, scalegrad=scalegrad, biasgrad=biasgrad,
        activation=activation, outdata=outdata, bias=bias, resgrad=resgrad,
    )


def inputGradient(data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, count):
    implementation(data.dtype).inputGradient(
        data, grad, ingrad, shape3, scale=scale, saved=saved, scalegrad=scalegrad, biasgrad=biasgrad, count=count
    )


def frozenBackward(
    data, grad, ingrad, shape3, *, scale, running, epsilon, scalegrad, biasgrad, activation=None, outdata=None,
    resgrad=None,
):
    implementation(grad.dtype).frozenBackward(
        data, grad, ingrad, shape3, scale=scale, running=running, epsilon=epsilon, scalegrad=scalegrad,
        biasgrad=biasgrad, activation=activation, outdata=outdata, resgrad=resgrad,
    )


def renormStatistics(
    moments, count, *, scale, bias, running, renorm, saved, correction, corrected, epsilon, factor, renormMomentum,
    clipping, skipped,
):
    # NOTE: per-map vectors only, the same numpy step under either kernel set
    NumpyBatchNorm.renormStatistics(
        moments, count, scale=scale, bias=bias, running=running, renorm=renorm, saved=saved, correction=correction,
        corrected=corrected, epsilon=epsilon, factor=factor, renormMomentum=renormMomentum, clipping=clipping,
        skipped=skipped,
    )


def renormCombine(correction, x, y, out):
    NumpyBatchNorm.renormCombine(correction, x, y, out)
