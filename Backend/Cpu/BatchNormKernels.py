"""Batch normalization of the CPU backend (`BatchNormBackend` of `Backend.Contract`): which implementation a plan is
made on, the C kernels of `Backend.Cpu.CBatchNorm` or the numpy kernels of `Backend.Cpu.NumpyBatchNorm`, as
`PuzzleLib.Config.cpuKernels` asks. Twin of `Backend.Cuda.BatchNormKernels`.

- ``"auto"`` (the default): the C kernels, compiled on the first batch-norm call (`Backend.Cpu.SourceLibrary`); where
  that fails (no compiler, or it refuses the source) the numpy kernels, with one log line that says why.
- ``"c"``: the C kernels; where they cannot be built, every CPU batch-norm call raises `PuzzleLib.Config.ConfigError`
  with the compiler's complaint (never a silent fallback).
- ``"numpy"``: the numpy kernels.

Whatever the setting, a plan fused with an activation or a residual is a numpy plan (the C source does not fuse them
yet), and so is float16 data where the compiler has no ``_Float16`` type (the C build says so). The choice is made
once per plan (`Backend.BatchNormPlan.planOf` keeps plans per setting), never per call.
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
    except (CompileError, OSError, RuntimeError) as e:
        if Config.cpuKernels == "auto":
            Config.logger.warning("CPU batch-norm kernels: numpy, because the C ones cannot be built: %s", e)
        return str(e)


def implementation(dtype, options):
    """The plan class (`CBatchNorm.CPlan` or `NumpyBatchNorm.NumpyPlan`) that computes batch norm for data of `dtype`
    with `options` (a `Contract.PlanOptions`) under `Config.cpuKernels`.

    Raises:
        PuzzleLib.Config.ConfigError: the C kernels were asked for and cannot be built here.
    """
    choice = Config.cpuKernels
    if choice == "numpy":
        return NumpyBatchNorm.NumpyPlan

    problem = cProblem()
    if problem is not None:
        if choice == "c":
            raise Config.ConfigError(
                "the C batch-norm kernels (asked for by PUZZLELIB_CPU_KERNELS or useCpuKernels) cannot be built: %s"
                % problem
            )
        return NumpyBatchNorm.NumpyPlan
    fused = options.activation is not None or options.residual
    return CBatchNorm.CPlan if dtype.char in CBatchNorm.kernels and not fused else NumpyBatchNorm.NumpyPlan


def plan(backend, layout, dtype, options):
    """The plan of `layout` and `dtype` with `options` on `backend` (this one), on the implementation `implementation`
    picks."""
    return implementation(dtype, options)(backend, layout, dtype, options)
