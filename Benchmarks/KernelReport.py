"""What the compiler made of the batch-norm kernels, per entry point, without a GPU: a review aid and the structural
check's source (``TestLib/tests/test_kernel_structure.py``).

For one architecture it compiles ``Kernels/BatchNorm.cu`` to a cubin as the runtime does (`Kernels.NVCC_OPTIONS`, the
declaration's defines) with ``ptxas -v``, disassembles it with ``cuobjdump -sass`` and reports for every kernel:

- registers per thread, spilled bytes (stores + loads), static shared memory (from ptxas);
- the threads of its largest launch (`launchThreads`) and the blocks of them resident per multiprocessor
  (`Kernels.blocksPerMultiprocessor`, the rule the launch code applies to the driver's numbers) on the
  architecture's multiprocessor;
- the width of its widest global load (bits), and the global loads its main loop (the innermost loop with the most
  loads of the data, not counting the partials a reduction's last block reads; for the resident passes, whose loads
  are in no loop, the kernel from its first vector load on) issues before the first instruction that reads one of their
  results: the loads in flight per thread, which is what keeps a memory-bound loop at the memory's pace (one load in
  flight makes it latency-bound).

Usage::

    python -m PuzzleLib.Benchmarks.KernelReport [--arch sm_90] [--out report.md]

Needs nvcc and cuobjdump (which runs nvdisasm): nvcc from the CUDA toolkit, cuobjdump and nvdisasm from it or from
NVIDIA's ``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` wheels (in the ``test`` extra).

Raises (`report`): RuntimeError when either tool is missing or the compile fails, with the tool's message.
"""

import argparse
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from typing import NamedTuple

from PuzzleLib.Kernels import NVCC_OPTIONS, BatchNorm, blocksPerMultiprocessor, sourcePath

# (threads, 32-bit registers, bytes of shared memory) of one multiprocessor, per architecture (CUDA programming guide,
# compute capabilities table)
MULTIPROCESSORS = {"sm_80": (2048, 65536, 167936), "sm_90": (2048, 65536, 233472)}
# NOTE: the most threads a batch-norm launch has (rows blocks of few maps have a few less: 3 lanes x 85 rows), but for
# the resident passes of spatial maps (up to RESIDENT_THREADS, whole warps as a map's slice needs; those over rows
# have rows blocks)
LAUNCH_THREADS = BatchNorm.BLOCK_SIZE
RESIDENT_PASS = re.compile(r"^bn\w+Resident")
ROWS_RESIDENT_PASS = re.compile(r"^bn\w+ResidentRows_")

LOAD_BITS = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


class KernelFacts(NamedTuple):
    name: str
    threads: int
    registers: int
    spilledBytes: int
    sharedBytes: int
    blocksPerMultiprocessor: int
    widestLoadBits: int
    loadsInFlight: int


def tool(name):
    """The CUDA tool `name` on PATH, else from NVIDIA's wheels (``nvidia/*/bin``), else None."""
    found = shutil.which(name)
    if found is not None:
        return found
    if importlib.util.find_spec("nvidia") is None:
        return None
    for folder in importlib.util.find_spec("nvidia").submodule_search_locations:
        for candidate in sorted(glob.glob(os.path.join(folder, "*", "bin", name))):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def missingTools():
    """None when nvcc, cuobjdump and nvdisasm are here, else a sentence naming what is missing and how to get it."""
    missing = [name for name in ("nvcc", "cuobjdump", "nvdisasm") if tool(name) is None]
    if not missing:
        return None
    return "%s not found: install the CUDA toolkit (nvcc), and the test extra for NVIDIA's cuobjdump and nvdisasm" % (
        ", ".join(missing))


def run(command, env=None):
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError("%s failed:\n%s%s" % (os.path.basename(command[0]), result.stdout, result.stderr))
    return result


def compileOutputs(arch):
    """(ptxas -v messages, SASS text) of BatchNorm.cu built for `arch` as the runtime builds it."""
    problem = missingTools()
    if problem is not None:
        raise RuntimeError(problem)
    defines = ["-D%s=%s" % item for item in sorted(BatchNorm.defines.items())]
    options = [option for option in NVCC_OPTIONS if option not in ("-Xptxas", "-warn-spills")]
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernels.cubin")
        built = run([tool("nvcc"), "-cubin", "-arch=%s" % arch, *options, "-Xptxas", "-v", *defines,
                     sourcePath(BatchNorm.SOURCE), "-o", cubin])
        # NOTE: cuobjdump runs the nvdisasm beside it or the one NVDISASM_PATH names
        environment = dict(os.environ, NVDISASM_PATH=os.path.dirname(tool("nvdisasm")))
        sass = run([tool("cuobjdump"), "-sass", cubin], env=environment).stdout
    return built.stdout + built.stderr, sass


def ptxasFacts(messages):
    """{kernel: (registers, spilled bytes, shared bytes)} from ``ptxas -v``."""
    facts, current = {}, None
    for line in messages.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        if entry:
            current = entry.group(1)
            facts[current] = [0, 0, 0]
            continue
        if current is None:
            continue
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spills:
            facts[current][1] = int(spills.group(1)) + int(spills.group(2))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            facts[current][0] = int(used.group(1))
            shared = re.search(r"(\d+) bytes smem", line)
            facts[current][2] = int(shared.group(1)) if shared else 0
    return {name: tuple(values) for name, values in facts.items()}


INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def sassFunctions(sass):
    """{kernel: [(address, opcode, operands)]} from ``cuobjdump -sass``."""
    functions, current = {}, None
    for line in sass.splitlines():
        header = re.search(r"Function : (\w+)", line)
        if header:
            current = functions.setdefault(header.group(1), [])
            continue
        match = INSTRUCTION.search(line)
        if match and current is not None:
            operands = [op.strip() for op in match.group(4).split(",") if op.strip()]
            current.append((int(match.group(1), 16), match.group(3), operands))
    return functions


def registersOf(operand):
    """The general registers an operand names (``R4.64`` is R4 and R5)."""
    result = set()
    for number, wide in re.findall(r"\bR(\d+)(\.64)?", operand):
        result.add(int(number))
        if wide:
            result.add(int(number) + 1)
    return result


def loadBits(opcode):
    parts = opcode.split(".")
    for part in reversed(parts):
        if part in LOAD_BITS:
            return LOAD_BITS[part]
    return 32


def isGlobalLoad(opcode):
    return opcode.startswith("LDG")


def isDataLoad(opcode):
    """A global load of the data (not a ``.STRONG.GPU`` one: the partials that a reduction's last block reads from
    L2, ``__ldcg``)."""
    return isGlobalLoad(opcode) and ".STRONG.GPU" not in opcode


def mainLoop(instructions):
    """The instructions of the innermost loop (a backward branch's span holding no other) with the most data loads
    (`isDataLoad`), or [] for none: the reductions' loop over the columns their last block finishes holds loops."""
    spans = []
    for index, (address, opcode, operands) in enumerate(instructions):
        if not opcode.startswith("BRA") or not operands:
            continue
        target = re.match(r"(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", operands[-1])
        if target is None or target.group(1) is None:
            continue
        start = int(target.group(1), 16)
        if start < address:
            spans.append((start, address, index))
    best = []
    for start, end, index in spans:
        if any(start <= other < otherEnd <= end and (other, otherEnd) != (start, end) for other, otherEnd, _ in spans):
            continue
        body = [ins for ins in instructions[:index + 1] if ins[0] >= start]
        if sum(isDataLoad(op) for _, op, _ in body) > sum(isDataLoad(op) for _, op, _ in best):
            best = body
    return best


def fromFirstVectorLoad(instructions):
    """The instructions from the first global load wider than 32 bits on (a resident pass's loads of its held vectors:
    the per-map values it reads before them are not the data)."""
    for index, (_, opcode, _) in enumerate(instructions):
        if isDataLoad(opcode) and loadBits(opcode) > 32:
            return instructions[index:]
    return []


def loadsBeforeFirstUse(body):
    """Global loads a loop body issues before an instruction reads a register one of them writes."""
    pending, count = set(), 0
    for _, opcode, operands in body:
        stores = opcode.startswith(("ST", "RED", "ATOM"))
        sources = operands if stores else operands[1:]
        if any(registersOf(op) & pending for op in sources):
            break
        if isGlobalLoad(opcode):
            count += 1
            first = re.match(r"R(\d+)", operands[0]) if operands else None
            if first:
                width = max(1, loadBits(opcode) // 32)
                pending.update(range(int(first.group(1)), int(first.group(1)) + width))
    return count


def launchThreads(name):
    """The threads of the largest block the launch code gives entry `name`."""
    spatialResident = RESIDENT_PASS.match(name) and not ROWS_RESIDENT_PASS.match(name)
    return BatchNorm.RESIDENT_THREADS if spatialResident else LAUNCH_THREADS


@functools.lru_cache(maxsize=None)
def report(arch):
    """[`KernelFacts`] of every entry point of BatchNorm.cu built for `arch` (``"sm_80"`` or ``"sm_90"``)."""
    messages, sass = compileOutputs(arch)
    resources, functions = ptxasFacts(messages), sassFunctions(sass)
    facts = []
    for name in sorted(resources):
        registers, spilled, shared = resources[name]
        instructions = functions.get(name, [])
        loads = [opcode for _, opcode, _ in instructions if isGlobalLoad(opcode)]
        threads = launchThreads(name)
        body = fromFirstVectorLoad(instructions) if RESIDENT_PASS.match(name) else mainLoop(instructions)
        facts.append(KernelFacts(
            name, threads, registers, spilled, shared,
            blocksPerMultiprocessor(registers, shared, threads, MULTIPROCESSORS[arch]),
            max((loadBits(opcode) for opcode in loads), default=0), loadsBeforeFirstUse(body),
        ))
    return facts


def markdown(arch, facts):
    lines = [
        "Kernels of BatchNorm.cu for %s" % arch, "",
        "| kernel | threads | registers | spilled bytes | shared bytes | blocks/SM | widest load (bits) "
        "| loads in flight |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| %s | %d | %d | %d | %d | %d | %d | %d |" % fact for fact in facts]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(MULTIPROCESSORS),
                        help="architectures to report (default: all of %s)" % ", ".join(sorted(MULTIPROCESSORS)))
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args()
    text = "\n".join(markdown(arch, report(arch)) for arch in (args.arch or sorted(MULTIPROCESSORS)))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
