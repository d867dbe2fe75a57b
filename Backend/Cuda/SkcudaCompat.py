"""Loads ``skcuda.cublas`` (scikit-cuda 0.5.3) on current Python, numpy and CUDA, without lasting side effects.

scikit-cuda 0.5.3 (2019) does not import as it stands today:

- its package ``__init__`` and ``version`` modules import ``pkg_resources``, which setuptools >= 82 no longer ships;
- it looks for the CUDA libraries under fixed names (``libcublas.so``, ``libcublas.so.10.1``, ..., ``libcudart.so.*``
  up to 10.1 and ``libcuda.so``), while CUDA 13 installs only ``libcublas.so.13`` / ``libcudart.so.13`` - from the
  NVIDIA wheels under ``site-packages/nvidia/cu13/lib`` - and a driver may provide only ``libcuda.so.1``.
  (The numpy aliases it uses, ``np.typeDict`` and ``np.float``, appear only in ``skcuda.misc`` and ``skcuda.fft``,
  which the project never imports, so numpy needs nothing.)

`loadCublas()` therefore, for the duration of the import only: puts a minimal ``pkg_resources`` stand-in into
``sys.modules`` (in place of the real one, if any), and redirects ``ctypes.cdll.LoadLibrary`` from those fixed
names to the libraries found on this machine. Both are undone before it returns, whether the import worked or not;
a failed attempt also drops the partly imported ``skcuda`` modules. The library reads the cuBLAS version by creating
a handle in the current context (its soname parser expects ``major.minor``), so a CUDA context must be current.
"""

import contextlib
import ctypes
import glob
import importlib
import importlib.metadata
import importlib.util
import os
import re
import site
import sys
import types
import warnings


def libraryDirs():
    """Directories that may hold CUDA 13 (or older) libraries: NVIDIA wheels, CUDA_HOME/CUDA_PATH, /usr/local/cuda."""
    roots = list(sys.path)
    with contextlib.suppress(AttributeError):
        roots += site.getsitepackages() + [site.getusersitepackages()]

    dirs = []
    for root in roots:
        if not root:
            continue
        for sub in ("nvidia/cu13/lib", "nvidia/cublas/lib", "nvidia/cuda_runtime/lib", "nvidia/cu12/lib"):
            dirs.append(os.path.join(root, sub))

    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "lib64"))
    dirs += ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]

    seen, result = set(), []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            result.append(d)
    return result


def versionKey(path):
    return tuple(int(v) for v in re.findall(r"\d+", os.path.basename(path).split(".so", 1)[-1]))


def findLibrary(stem):
    """Full path of ``<stem>.so.<highest version>`` (e.g. stem ``libcublas``), or None."""
    candidates = []
    for d in libraryDirs():
        candidates += [p for p in glob.glob(os.path.join(d, stem + ".so*")) if re.search(r"\.so(\.\d+)*$", p)]
    return max(candidates, key=versionKey) if candidates else None


def makePkgResourcesStub():
    stub = types.ModuleType("pkg_resources")

    def declare_namespace(name):
        return None

    def require(name):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "0"
        return [types.SimpleNamespace(project_name=name, version=version)]

    stub.declare_namespace = declare_namespace
    stub.require = require
    return stub


@contextlib.contextmanager
def patchedImport(redirects):
    # NOTE: the stand-in replaces even an installed pkg_resources during the import: the real `require` also checks
    # every dependency's distribution metadata, which fails for wheels unpacked with `pip --target` or for a pycuda
    # built from source, though nothing of it is needed
    missing = object()
    previous = sys.modules.get("pkg_resources", missing)
    sys.modules["pkg_resources"] = makePkgResourcesStub()

    loader = ctypes.cdll
    shadowed = "LoadLibrary" in vars(loader)
    original = loader.LoadLibrary

    def loadLibrary(name):
        for pattern, path in redirects:
            if re.fullmatch(pattern, os.path.basename(str(name))):
                return original(path)
        return original(name)

    loader.LoadLibrary = loadLibrary
    try:
        with warnings.catch_warnings():
            # NOTE: skcuda warns that it creates a cuBLAS handle to read the version, and its sources carry invalid
            # escape sequences that Python 3.12 flags; neither concerns the caller
            warnings.simplefilter("ignore")
            yield
    finally:
        if shadowed:
            loader.LoadLibrary = original
        else:
            del loader.LoadLibrary
        if previous is missing:
            sys.modules.pop("pkg_resources", None)
        else:
            sys.modules["pkg_resources"] = previous


def loadCublas():
    """Imports and returns ``skcuda.cublas``; a CUDA context must be current.

    Raises:
        ImportError: scikit-cuda is not installed, or its import failed (the message says why).
        OSError: cuBLAS or the CUDA runtime library cannot be found or loaded.
    """
    if "skcuda.cublas" in sys.modules:
        return sys.modules["skcuda.cublas"]
    if importlib.util.find_spec("skcuda") is None:
        raise ImportError("scikit-cuda is not installed")

    cublas, cudart = findLibrary("libcublas"), findLibrary("libcudart")
    if cublas is None:
        raise OSError("libcublas.so.* was found in none of %s" % libraryDirs())

    redirects = [(r"libcublas\.so(\.[\d.]+)?", cublas), (r"libcuda\.so", "libcuda.so.1")]
    if cudart is not None:
        redirects.append((r"libcudart\.so(\.[\d.]+)?", cudart))

    before = set(sys.modules)
    try:
        with patchedImport(redirects):
            return importlib.import_module("skcuda.cublas")
    except BaseException:
        for name in set(sys.modules) - before:
            if name == "skcuda" or name.startswith("skcuda."):
                del sys.modules[name]
        raise
