"""The structure of the compiled batch-norm kernels, checked without a GPU wherever nvcc and cuobjdump are here: what
a change that serializes a loop, drops a vector width or inflates registers would break (`Benchmarks.KernelReport`
reads it off ptxas and the SASS).

For every entry point at sm_80 and sm_90: no register spill, and at least `MIN_BLOCKS` blocks of the launch's 256
threads resident per multiprocessor (the occupancy the launch code then finds through the driver; the resident passes
of spatial maps, whose blocks of up to `Kernels.BatchNorm.RESIDENT_THREADS` hold a map in registers, need one; those
over rows have blocks of 256 threads at most, as the rows reductions). For the kernels that move the data (not the
fused elementwise passes, not the per-map ones): global loads as wide as the vector (16 bytes for v4 float32 and v8
float16), and the main loop's loads in flight before their first use: `MIN_LOADS` for the statistics, the fused
gradient sums, the 16-byte elementwise passes and the resident passes (whose loads are not in a loop),
`MIN_SOME_LOADS` for the gradient sums and the narrower elementwise passes (ptxas pipelines their loads with the
arithmetic there, two at a time).
"""

import re

import pytest

from PuzzleLib.Benchmarks import KernelReport
from PuzzleLib.Kernels import BatchNorm

pytestmark = [
    pytest.mark.backendIndependent,
    pytest.mark.cudaBuild,
    pytest.mark.skipif(KernelReport.missingTools() is not None, reason=str(KernelReport.missingTools())),
]

ARCHS = ("sm_80", "sm_90")
MIN_BLOCKS = 2
MIN_LOADS = 4
MIN_SOME_LOADS = 2

DATA_KERNELS = re.compile(
    r"^bn(Stats|Grad|Apply)(Spatial(?:PerThread)?(?:Unaligned|Short)?|Rows)_(\w+_)?f(16|32)_v(\d+)$"
)
FUSED_SUMS = re.compile(r"^bnGrad(Spatial|Rows)Fused_f(16|32)_v(\d+)$")


def facts(arch):
    return {fact.name: fact for fact in KernelReport.report(arch)}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_without_spills_at_the_occupancy_the_launches_need(arch):
    found = facts(arch)
    assert len(found) > 90, sorted(found)
    spilled = {name: fact.spilledBytes for name, fact in found.items() if fact.spilledBytes}
    assert not spilled, spilled
    crowded = {name: (fact.registers, fact.blocksPerMultiprocessor) for name, fact in found.items()
               if fact.threads == BatchNorm.BLOCK_SIZE and fact.blocksPerMultiprocessor < MIN_BLOCKS}
    assert not crowded, crowded


@pytest.mark.parametrize("arch", ARCHS)
def test_data_kernels_use_16_byte_loads_and_keep_loads_in_flight(arch):
    found = facts(arch)
    checked = 0
    for name, fact in found.items():
        match = DATA_KERNELS.match(name)
        if match is None or "Fused" in name:
            continue
        checked += 1
        vec = int(match.group(5))
        if vec > 1:
            assert fact.widestLoadBits == vec * int(match.group(4)), (name, fact)
        sixteenBytes = vec * int(match.group(4)) == 128
        wide = match.group(1) == "Stats" or (match.group(1) == "Apply" and sixteenBytes)
        least = MIN_LOADS if wide else MIN_SOME_LOADS
        assert fact.loadsInFlight >= least, (name, fact)
    # NOTE: per data type and vector width: statistics and gradient sums on both layouts and with a thread per map,
    # four elementwise modes; per data type the spatial ones of unaligned segments at the widest width, and the four
    # elementwise modes over short maps' segments for the types that have them
    widths = BatchNorm.vectorWidths
    assert checked == ((3 * 2 + 4 * 2) * sum(map(len, widths.values())) + (2 * 2 + 4) * len(widths)
                       + 4 * len(BatchNorm.shortSegmentTypes)), checked


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_gradient_sums_keep_loads_in_flight(arch):
    """The gradient sums after a fused forward (dy, y and x of several vectors loaded before the first use: they took
    2 or 3 loads at a time, one vector of each input)."""
    found = {name: fact for name, fact in facts(arch).items() if FUSED_SUMS.match(name)}
    assert len(found) == 2 * sum(map(len, BatchNorm.vectorWidths.values())), sorted(found)
    for name, fact in found.items():
        _, bits, vec = FUSED_SUMS.match(name).groups()
        if int(vec) > 1:
            assert fact.widestLoadBits == int(vec) * int(bits), (name, fact)
        assert fact.loadsInFlight >= MIN_LOADS, (name, fact)


@pytest.mark.parametrize("arch", ARCHS)
def test_resident_passes_issue_their_loads_at_once(arch):
    resident = {name: fact for name, fact in facts(arch).items() if KernelReport.RESIDENT_PASS.match(name)}
    held = list(BatchNorm.residentHeld.values()) + list(BatchNorm.rowsResidentHeld.values())
    assert len(resident) == sum(map(len, held)), sorted(resident)
    built = 0
    for name, fact in resident.items():
        vec, held = map(int, re.search(r"_v(\d+)_h(\d+)$", name).groups())
        # NOTE: the passes of 64 values a thread are built from sm_90 on (an empty kernel below)
        if arch < "sm_90" and vec * held > BatchNorm.RESIDENT_VALUES_BEFORE_HOPPER:
            assert fact.widestLoadBits == 0, (name, fact)
            continue
        built += 1
        assert fact.widestLoadBits == 128 and fact.loadsInFlight >= MIN_LOADS, (name, fact)
    assert built >= len(resident) - 2, built


def test_the_report_reads_loads_in_flight_off_a_loop():
    """The SASS reading itself, on a hand-written loop: two loads, then a use of the first, then a third load."""
    body = [
        (0x10, "LDG.E.128", ["R4", "desc[UR4][R2.64]"]),
        (0x20, "LDG.E.128", ["R8", "desc[UR4][R12.64]"]),
        (0x30, "FADD", ["R20", "R5", "R20"]),
        (0x40, "LDG.E.128", ["R14", "desc[UR4][R16.64]"]),
        (0x50, "BRA", ["0x10"]),
    ]
    assert KernelReport.loadsBeforeFirstUse(KernelReport.mainLoop(body)) == 2
    assert KernelReport.loadBits("LDG.E.U16") == 16 and KernelReport.loadBits("LDG.E.128") == 128
    assert KernelReport.registersOf("desc[UR4][R2.64]") == {2, 3}
