"""Every kernel declaration (``Kernels/<Name>.py``) against the entry points nvcc compiles from its source.

The CUDA backend builds the format pycuda packs kernel arguments with, and every launch's argument tuple, from these
declarations; a declaration out of step with the C signature would pass garbage to a kernel without any error. Here
each source is compiled to PTX (with the defines the backend uses) and, for every entry point, the parameters' sizes
and alignments in the PTX must equal the declared ones, the packed format must cover exactly the PTX parameter space,
and no entry point may be undeclared; the preprocessed source must name the parameters, and the fields of structs
passed by value, as the declaration does and in its order. Runs on every machine with nvcc, with or without a GPU or
pycuda.
"""

import re
import shutil
import struct
import subprocess

import pytest

from PuzzleLib.Kernels import BatchNorm, Blas, ElementWise, Permute, Signature, sourcePath

nvcc = shutil.which("nvcc")
pytestmark = [
    pytest.mark.backendIndependent,
    pytest.mark.cudaBuild,
    pytest.mark.skipif(nvcc is None, reason="nvcc is not installed on this machine"),
]

DECLARATIONS = {module.SOURCE: module for module in (BatchNorm, Blas, ElementWise, Permute)}
PTX_SIZES = {"u8": 1, "s8": 1, "b8": 1, "u16": 2, "s16": 2, "b16": 2, "f16": 2, "u32": 4, "s32": 4, "b32": 4,
             "f32": 4, "u64": 8, "s64": 8, "b64": 8, "f64": 8}

ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.S)
SCALAR = re.compile(r"\.param\s+\.(\w+)\s+\w+$")
BYTES = re.compile(r"\.param\s+\.align\s+(\d+)\s+\.b8\s+\w+\[(\d+)\]$")
GLOBAL = (r'extern\s+"C"\s+__attribute__\(\(global\)\)\s+void\s+(?:__attribute__\(\(launch_bounds\([^)]*\)\)\)\s+)?'
          r"%s\s*\(([^)]*)\)")


def compiledEntries(declaration, tmp_path):
    """{entry name: [(size, alignment)]} from the PTX of the declaration's source."""
    ptx = tmp_path / (declaration.SOURCE + ".ptx")
    defines = ["-D%s=%s" % item for item in sorted(declaration.defines.items())]
    command = [nvcc, "-ptx", "-arch=sm_90", "-O3", *defines, "-o", str(ptx), sourcePath(declaration.SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    entries = {}
    for name, params in ENTRY.findall(ptx.read_text()):
        layout = []
        for param in filter(None, (p.strip() for p in params.split(","))):
            scalar, blob = SCALAR.match(param), BYTES.match(param)
            assert scalar or blob, "unexpected PTX parameter %r of %s" % (param, name)
            if scalar:
                size = PTX_SIZES[scalar.group(1)]
                layout.append((size, size))
            else:
                layout.append((int(blob.group(2)), int(blob.group(1))))
        entries[name] = layout
    return entries


def sourceNames(declaration):
    """Readers of the preprocessed source: ``(parameters(entry), fields(struct))``, each giving the names in order
    (the source's own, after macro expansion; the CUDA headers it includes are never asked for)."""
    defines = ["-D%s=%s" % item for item in sorted(declaration.defines.items())]
    command = [nvcc, "-E", "-arch=sm_90", *defines, sourcePath(declaration.SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = result.stdout

    def lastName(declarator):
        return re.sub(r"\[[^\]]*\]", "", declarator).split()[-1].lstrip("*")

    def parameters(entry):
        found = re.search(GLOBAL % re.escape(entry), text)
        assert found, "no entry point %s in %s" % (entry, declaration.SOURCE)
        return [lastName(p) for p in found.group(1).split(",")]

    def fields(struct):
        found = re.search(r"struct\s+%s\s*\{(.*?)\};" % re.escape(struct), text, re.S)
        assert found, "no struct %s in %s" % (struct, declaration.SOURCE)
        return [lastName(piece) for decl in found.group(1).split(";") if decl.strip() for piece in decl.split(",")]

    return parameters, fields


def parameterSpace(layout):
    """Bytes from the first parameter to the end of the last, each aligned as the ABI aligns it."""
    offset = 0
    for size, alignment in layout:
        offset = -(-offset // alignment) * alignment + size
    return offset


@pytest.mark.parametrize("source", sorted(DECLARATIONS))
def test_declarations_match_the_compiled_entry_points(source, tmp_path):
    declaration = DECLARATIONS[source]
    compiled, declared = compiledEntries(declaration, tmp_path), declaration.entries()

    assert sorted(set(compiled) - set(declared)) == [], "entry points compiled but not declared"
    assert sorted(set(declared) - set(compiled)) == [], "entry points declared but not compiled"
    for name, signature in declared.items():
        assert signature.layout() == compiled[name], name
        assert struct.calcsize(signature.format) == parameterSpace(compiled[name]), name


@pytest.mark.parametrize("source", sorted(DECLARATIONS))
def test_declared_names_follow_the_source(source):
    declaration = DECLARATIONS[source]
    parameters, fields = sourceNames(declaration)
    for name, signature in declaration.entries().items():
        assert [p.name for p in signature.parameters] == parameters(name), name
        for parameter in signature.parameters:
            if isinstance(parameter, Signature.Struct):
                assert [f.name for f in parameter.fields] == fields(parameter.typeName), parameter.typeName


def test_launch_arguments_come_in_declaration_order_with_struct_padding():
    signature = Signature.Signature(
        "k", Signature.Pointer("x"), Signature.Int32("n"),
        Signature.Struct("p", "P", [Signature.Pointer("a"), Signature.Float32("f")]),
    )
    class Array:
        ptr = 4096

    assert signature.format == "PiPfxxxx"
    assert signature.pack(p={"f": 0.5, "a": None}, n=3, x=Array()) == (4096, 3, 0, 0.5)
    assert struct.calcsize(signature.format) == 8 + 8 + 16
    with pytest.raises(TypeError, match=r"missing \['n'\], unknown \['m'\]"):
        signature.pack(x=None, m=3, p={"a": 0, "f": 0.0})
    with pytest.raises(TypeError, match="takes the fields"):
        signature.pack(x=None, n=3, p={"a": 0})
