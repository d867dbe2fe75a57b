"""Both backends follow `Backend.Contract`: each module of a backend defines every function of its protocol with the
same parameters (names, order, keyword-only or not) and every attribute the protocol names, and every batch-norm plan
of a backend defines each primitive of `Backend.BatchNormPlan` as a method taking the plan and one record. The sources
are read, not imported, so the CUDA backend is checked on machines without pycuda too."""

import ast
import inspect
from pathlib import Path

import pytest

from PuzzleLib.Backend import BatchNormPlan, Contract

pytestmark = pytest.mark.backendIndependent

BACKEND_DIR = Path(Contract.__file__).resolve().parent
FAMILIES = {
    "gpuarray": (Contract.GPUArrayModule, "GPUArray.py"),
    "batchNorm": (Contract.BatchNormBackend, "BatchNormKernels.py"),
    "blas": (Contract.BlasPrimitives, "Blas.py"),
    "elementWise": (Contract.ElementWisePrimitives, "ElementWise.py"),
    "permute": (Contract.PermutePrimitives, "Permute.py"),
}


def contractFunctions(protocol):
    """{name: [(parameter, keyword-only?)]} of the protocol's methods, without self."""
    functions = {}
    for name, member in vars(protocol).items():
        if inspect.isfunction(member) and not name.startswith("_"):
            params = list(inspect.signature(member).parameters.values())[1:]
            functions[name] = [(p.name, p.kind == p.KEYWORD_ONLY) for p in params]
    return functions


def sourceDefinitions(path):
    """({name: [(parameter, keyword-only?)]} of the module's top-level functions, names it assigns or defines)."""
    tree = ast.parse(path.read_text())
    functions, names = {}, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = [(a.arg, False) for a in node.args.posonlyargs + node.args.args]
            functions[node.name] += [(a.arg, True) for a in node.args.kwonlyargs]
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return functions, names | set(functions)


def test_the_backend_bundle_names_one_module_per_family():
    fields = [field for field in Contract.Backend.__dataclass_fields__ if field != "name"]
    assert fields == list(FAMILIES)


# NOTE: every backend's complete plan (the CPU's C plan is its numpy plan with the passes the C source has replaced)
PLANS = [("Cpu", "NumpyBatchNorm.py", "NumpyPlan"), ("Cpu", "CBatchNorm.py", "CPlan"),
         ("Cuda", "BatchNormKernels.py", "CudaPlan")]
COMPLETE = {"NumpyPlan", "CudaPlan"}
# NOTE: the primitives a backend computes; Batch Renormalization's two composites are the base plan's, made of them
PRIMITIVES = sorted(
    name for name, member in vars(BatchNormPlan.BatchNormPlan).items()
    if inspect.isfunction(member) and not name.startswith("_") and name not in ("renormForward", "renormBackward")
)


@pytest.mark.parametrize("package, fileName, className", PLANS)
def test_each_plan_defines_the_primitives_as_methods_of_one_record(package, fileName, className):
    tree = ast.parse((BACKEND_DIR / package / fileName).read_text())
    (plan,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == className]
    methods = {node.name: [a.arg for a in node.args.args] for node in plan.body if isinstance(node, ast.FunctionDef)}
    for name in PRIMITIVES:
        if name in methods:
            assert methods[name] == ["self", "call"], "%s.%s takes %s" % (className, name, methods[name])
        else:
            assert className not in COMPLETE, "%s lacks %s" % (className, name)


def test_every_primitive_has_a_record_and_a_base_that_states_it():
    for name in PRIMITIVES:
        member = getattr(BatchNormPlan.BatchNormPlan, name)
        assert member.__doc__ and "`Contract." in member.__doc__, name


@pytest.mark.parametrize("package", ["Cpu", "Cuda"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_backend_module_follows_its_protocol(package, family):
    protocol, fileName = FAMILIES[family]
    checkFollows(protocol, package, fileName)


def checkFollows(protocol, package, fileName):
    functions, names = sourceDefinitions(BACKEND_DIR / package / fileName)

    for name, expected in contractFunctions(protocol).items():
        assert name in functions, "%s/%s lacks %s of %s" % (package, fileName, name, protocol.__name__)
        assert functions[name] == expected, "%s/%s: %s differs from %s" % (package, fileName, name, protocol.__name__)
    missing = sorted(set(protocol.__annotations__) - names)
    assert missing == [], "%s/%s lacks %s" % (package, fileName, missing)


@pytest.mark.parametrize("package", ["Cpu", "Cuda"])
def test_backend_package_bundles_its_modules(package):
    source = (BACKEND_DIR / package / "__init__.py").read_text()
    for family, (_, fileName) in FAMILIES.items():
        assert "%s=%s" % (family, fileName[:-3]) in source.replace(" ", ""), (package, family)
