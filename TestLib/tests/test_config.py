"""Backend selection (SPEC section 1; the backend is chosen at the first allocation and every array carries its own),
imports that touch no device, and one import name for the whole package."""

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from PuzzleLib import Config

pytestmark = pytest.mark.backendIndependent

ROOT = Path(__file__).resolve().parents[2]
CUDA_PROBLEM = Config.cudaProblem()
ALLOCATE = "from PuzzleLib import Config; from PuzzleLib.Backend import gpuarray; gpuarray.empty(3); "


def runPython(code, backend=None, args=()):
    env = dict(os.environ)
    env.pop("PUZZLELIB_BACKEND", None)
    if backend is not None:
        env["PUZZLELIB_BACKEND"] = backend
    command = [sys.executable, *args] if args else [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd="/", timeout=120)


@pytest.mark.skipif(CUDA_PROBLEM is None, reason="CUDA works on this machine")
def test_asking_for_cuda_where_it_cannot_work_fails_at_the_first_allocation_naming_what_is_missing():
    imported = runPython("from PuzzleLib.Backend import Dnn, gpuarray; from PuzzleLib.Modules import BatchNorm", "cuda")
    assert imported.returncode == 0 and imported.stderr == "", imported.stderr

    result = runPython(ALLOCATE, backend="cuda")
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and "the CUDA backend cannot work here" in result.stderr
    assert CUDA_PROBLEM.split(" (")[0] in result.stderr


@pytest.mark.skipif(CUDA_PROBLEM is None, reason="CUDA works on this machine")
def test_auto_falls_back_to_cpu_at_the_first_allocation_with_one_log_line_saying_why():
    result = runPython("from PuzzleLib import Config; print(Config.backend); " + ALLOCATE + "print(Config.backend)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["auto", "cpu"]
    lines = [line for line in result.stderr.splitlines() if line.startswith("PuzzleLib:")]
    assert len(lines) == 1 and "auto -> cpu, because" in lines[0]


def test_cpu_backend_is_chosen_silently():
    result = runPython(ALLOCATE + "print(Config.backend)", "cpu")
    assert result.returncode == 0 and result.stdout.strip() == "cpu" and result.stderr == ""


def test_unknown_backend_is_an_error_that_names_the_variable():
    result = runPython("from PuzzleLib.Backend import gpuarray", backend="tpu")
    assert result.returncode != 0
    assert "PUZZLELIB_BACKEND must be one of 'auto', 'cuda', 'cpu'; got 'tpu'" in result.stderr


def test_importing_anything_touches_no_backend():
    code = (
        "import sys, PuzzleLib, PuzzleLib.Modules, PuzzleLib.Containers, PuzzleLib.Cost, PuzzleLib.Optimizers\n"
        "import PuzzleLib.Kernels.BatchNorm, PuzzleLib.TestLib.Reference\n"
        "from PuzzleLib import Config\n"
        "from PuzzleLib.Backend import BatchNormLayout, Blas, Dnn, ElementWise, Permute, TheanoBatchNorm, gpuarray\n"
        "backends = ('pycuda', 'PuzzleLib.Backend.Cpu', 'PuzzleLib.Backend.Cuda')\n"
        "loaded = [m for m in sys.modules if m.startswith(backends)]\n"
        "print(loaded, Config.backend)"
    )
    result = runPython(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] auto" and result.stderr == ""


def test_a_module_file_runs_its_own_self_test_quietly():
    result = runPython(None, "cpu", args=("-m", "PuzzleLib.Modules.BatchNorm"))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


def test_library_is_imported_under_one_name_only():
    from PuzzleLib.Modules import BatchNorm  # noqa: F401

    seen = {}
    # NOTE: a virtual environment made in the checkout (python -m venv .venv) holds the installed packages, not ours
    environment = Path(sys.prefix).resolve()
    inside = environment if ROOT in environment.parents else None
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        # NOTE: a relative __file__ (torch.ops has "_ops.py") names no file; resolved, it would point into the checkout
        if path is None or not Path(path).is_absolute() or Path(path).resolve().parent.name == "tests":
            continue
        resolved = Path(path).resolve()
        if inside is not None and inside in resolved.parents:
            continue
        if ROOT in resolved.parents or resolved.parent == ROOT:
            assert module.__name__.startswith("PuzzleLib"), "%s imported as %r" % (resolved, module.__name__)
            assert seen.setdefault(resolved, module) is module, "%s imported twice" % resolved


def test_use_backend_picks_the_backend_of_new_arrays_as_call_and_as_context():
    from PuzzleLib.Backend import gpuarray

    before = Config.backend
    with Config.useBackend("cpu"):
        assert Config.backend == "cpu" and gpuarray.empty(2).backend.name == "cpu"
        with pytest.raises(Config.ConfigError, match="one of 'auto', 'cuda', 'cpu'; got 'gpu'"):
            Config.useBackend("gpu")
        assert Config.backend == "cpu"
    assert Config.backend == before

    try:
        Config.useBackend("cpu")
        assert Config.backend == "cpu"
    finally:
        Config.backend = before


@pytest.mark.parametrize("package", ["Modules", "Containers", "Cost", "Optimizers"])
def test_package_names_are_the_classes_whatever_was_imported_first(package):
    pkg = importlib.import_module("PuzzleLib.%s" % package)
    assert pkg.__all__
    for name in pkg.__all__:
        importlib.import_module(getattr(pkg, name).__module__)
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert inspect.isclass(value) and value.__name__ == name, "%s.%s is %r" % (package, name, value)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = pkg.Nope


def test_malformed_device_index_is_an_error_that_names_the_variable():
    env = dict(os.environ, PUZZLELIB_DEVICE="first")
    result = subprocess.run([sys.executable, "-c", "import PuzzleLib.Config"], capture_output=True, text=True,
                            env=env, cwd="/", timeout=120)
    assert result.returncode != 0 and "PUZZLELIB_DEVICE must be a non-negative integer; got 'first'" in result.stderr
