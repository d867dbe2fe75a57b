"""Backend selection (SPEC section 1), cheap import, and one import name for the whole package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from PuzzleLib import Config

ROOT = Path(__file__).resolve().parents[2]
CUDA_PROBLEM = Config.cudaProblem()


def runPython(code, backend=None):
    env = dict(os.environ)
    env.pop("PUZZLELIB_BACKEND", None)
    if backend is not None:
        env["PUZZLELIB_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=120)


@pytest.mark.skipif(CUDA_PROBLEM is None, reason="CUDA works on this machine")
def test_asking_for_cuda_where_it_cannot_work_names_what_is_missing():
    result = runPython("from PuzzleLib.Backend import gpuarray", backend="cuda")
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and "PUZZLELIB_BACKEND=cuda cannot work" in result.stderr
    assert CUDA_PROBLEM.split(" (")[0] in result.stderr


@pytest.mark.skipif(CUDA_PROBLEM is None, reason="CUDA works on this machine")
def test_auto_falls_back_to_cpu_with_one_log_line_saying_why():
    result = runPython("from PuzzleLib import Config; from PuzzleLib.Backend import gpuarray; print(Config.backend)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"
    lines = [line for line in result.stderr.splitlines() if line.startswith("PuzzleLib:")]
    assert len(lines) == 1 and "auto -> cpu, because" in lines[0]


def test_cpu_backend_is_chosen_silently():
    result = runPython(
        "from PuzzleLib import Config; from PuzzleLib.Backend import gpuarray; print(Config.backend)", "cpu"
    )
    assert result.returncode == 0 and result.stdout.strip() == "cpu" and result.stderr == ""


def test_unknown_backend_is_an_error():
    result = runPython("from PuzzleLib.Backend import gpuarray", backend="tpu")
    assert result.returncode != 0 and "one of 'auto', 'cuda', 'cpu'; got 'tpu'" in result.stderr


def test_importing_the_package_touches_no_backend():
    code = (
        "import sys, PuzzleLib, PuzzleLib.Modules, PuzzleLib.Config\n"
        "loaded = [m for m in sys.modules if m.startswith(('pycuda', 'PuzzleLib.Backend'))]\n"
        "print(loaded)"
    )
    result = runPython(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]" and result.stderr == ""


def test_library_is_imported_under_one_name_only():
    from PuzzleLib.Modules import BatchNorm  # noqa: F401

    seen = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path is None or Path(path).resolve().parent.name == "tests":
            continue
        resolved = Path(path).resolve()
        if ROOT in resolved.parents or resolved.parent == ROOT:
            assert module.__name__.startswith("PuzzleLib"), "%s imported as %r" % (resolved, module.__name__)
            assert seen.setdefault(resolved, module) is module, "%s imported twice" % resolved


def test_set_backend_refuses_once_a_backend_is_in_use():
    from PuzzleLib.Backend import gpuarray  # noqa: F401

    with pytest.raises(Config.ConfigError, match="already in use"):
        Config.setBackend("cpu")


@pytest.mark.parametrize("package", ["Modules", "Containers", "Cost", "Optimizers"])
def test_package_names_are_the_classes_whatever_was_imported_first(package):
    import importlib
    import inspect

    pkg = importlib.import_module("PuzzleLib.%s" % package)
    assert pkg.__all__
    for name in pkg.__all__:
        importlib.import_module("PuzzleLib.%s.%s" % (package, type(pkg).names[name]))
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert inspect.isclass(value) and value.__name__ == name, "%s.%s is %r" % (package, name, value)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = pkg.Nope
