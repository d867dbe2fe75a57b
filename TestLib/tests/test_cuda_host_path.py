"""The CUDA backend's host path, checked without a GPU: the pre-packed launch arguments (`Kernels.Signature.bind`)
pack to the same bytes as the arguments given by name, and the launches a batch-norm module makes on a stand-in driver
(`TestLib.StandInCuda`: no kernel runs) are the declared entries, with arguments that pack with their declared formats
and point at the module's arrays. Whether the kernels compute the right numbers needs a GPU (the rest of the suite
checks them there)."""

import json
import math
import os
import random
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from PuzzleLib.Kernels import BatchNorm, Signature

pytestmark = pytest.mark.backendIndependent


def valueFor(parameter, rng):
    if parameter.format == "P":
        return rng.randrange(0, 2**40) * 16
    if parameter.format == "f":
        return struct.unpack("f", struct.pack("f", rng.uniform(-4.0, 4.0)))[0]
    return rng.randrange(-2**20, 2**20)


def namedValues(signature, flat):
    """The keywords `Signature.pack` takes, from one value per flat field (structs as dicts)."""
    values = {}
    for parameter in signature.parameters:
        if isinstance(parameter, Signature.Struct):
            values[parameter.name] = {f.name: flat["%s.%s" % (parameter.name, f.name)] for f in parameter.fields}
        else:
            values[parameter.name] = flat[parameter.name]
    return values


@pytest.mark.parametrize("entry", sorted(BatchNorm.entries()))
def test_a_binding_packs_as_the_arguments_given_by_name(entry):
    signature = BatchNorm.entries()[entry]
    rng = random.Random(entry)
    fields = [(name, parameter) for name, parameter in signature.fields()]
    flat = {name: valueFor(parameter, rng) for name, parameter in fields}
    dynamic = [name for index, (name, _) in enumerate(fields) if index % 2 == 0]
    static = {name.replace(".", "_"): flat[name] for name, _ in fields if name not in dynamic}
    binding = signature.bind(dynamic, **static)

    packed = struct.pack(signature.format, *binding.arguments(*(flat[name] for name in dynamic)))
    assert packed == struct.pack(signature.format, *signature.pack(**namedValues(signature, flat)))


def test_a_binding_refuses_a_value_neither_static_nor_dynamic():
    with pytest.raises(TypeError, match="missing"):
        BatchNorm.renormCombine.bind(("r", "x"), maps=3)


SCRIPT = r"""
import json, sys
from PuzzleLib.TestLib import StandInCuda
StandInCuda.install()
import numpy as np
from PuzzleLib.Backend import gpuarray
from PuzzleLib.Kernels import BatchNorm as declared
from PuzzleLib.Modules import BatchNorm, BatchNorm2D

def argument(launch, name):
    _, _, values = launch
    names = [field for field, _ in declared.entries()[launch[0]].fields()]
    return values[names.index(name)]

def launches(call):
    del StandInCuda.launches[:]
    result = call()
    return result, [(f.name, len(f.packed(args)), args) for f, grid, block, args in StandInCuda.launches]

report = {}
x = gpuarray.to_gpu(np.random.randn(8, 16, 4, 4).astype(np.float32))
bn = BatchNorm2D(16)
out, calls = launches(lambda: bn(x))
report["train"] = [(name, size) for name, size, _ in calls]
report["trainPointers"] = [argument(calls[1], "x") == x.ptr, argument(calls[1], "out") == out.ptr,
                           argument(calls[0], "o.savedMean") == bn.savemean.ptr,
                           argument(calls[0], "o.runningVar") == bn.var.ptr,
                           argument(calls[0], "o.backup") == bn.kernelBackup.array.ptr,
                           argument(calls[0], "o.stamp") == bn.kernelBackup.stamp == 1,
                           argument(calls[0], "o.mirror") == bn.skipMirror.target.ptr,
                           argument(calls[0], "o.invM") == 1 / (8 * 4 * 4),
                           abs(argument(calls[0], "o.unbias") - 128 / 127) < 1e-6]
grad, calls = launches(lambda: bn.backward(x))
report["backward"] = [(name, size) for name, size, _ in calls]
report["backwardPointers"] = [argument(calls[1], "out") == grad.ptr,
                              argument(calls[0], "o.scalegrad") == bn.vars["scale"].grad.ptr,
                              argument(calls[0], "o.invstd") == bn.saveinvvar.ptr,
                              argument(calls[1], "p.scalegrad") == bn.vars["scale"].grad.ptr]
bn.evalMode()
_, calls = launches(lambda: bn(x))
report["eval"] = [(name, size) for name, size, _ in calls]
# NOTE: 18 maps over rows of 2 rows: no resident pass (not 16-byte rows of the layout)
fused = BatchNorm(18, activation="relu")
_, calls = launches(lambda: fused(gpuarray.to_gpu(np.random.randn(32, 18).astype(np.float32))))
report["fused"] = [name for name, _, _ in calls]
# NOTE: 16 maps of 300 rows: the resident passes over rows, 4 lanes (one column) in blocks of a warp (8 rows of lanes,
# 4 rows a thread: 10 blocks, the last with 12 of its 32 rows, where 64 rows of lanes would fill 2); their partials in
# one pool block apart from the outputs
rows = BatchNorm(16, activation="relu")
rowsData = gpuarray.to_gpu(np.random.randn(300, 16).astype(np.float32))
y, calls = launches(lambda: rows(rowsData))
partials = [argument(calls[0], name) for name in ("pn", "pmean", "pm2")]
report["rowsResident"] = [(name, list(grid), list(block)) for (name, _, _), (_, grid, block, _) in
                          zip(calls, StandInCuda.launches)]
report["rowsResidentPointers"] = [argument(calls[0], "x") == rowsData.ptr, argument(calls[0], "out") == y.ptr,
                                  partials[1] - partials[0] == partials[2] - partials[1] == 4 * 16 * 10,
                                  argument(calls[0], "splits") == 10,
                                  argument(calls[0], "o.savedMean") == rows.savemean.ptr,
                                  argument(calls[0], "o.runningVar") == rows.var.ptr,
                                  argument(calls[0], "f.act") == declared.activationNumbers["relu"]]
grad, calls = launches(lambda: rows.backward(rowsData))
partials = [argument(calls[0], name) for name in ("psum", "pdot")]
report["rowsResident"] += [(name, list(grid), list(block)) for (name, _, _), (_, grid, block, _) in
                           zip(calls, StandInCuda.launches)]
report["rowsResidentPointers"] += [argument(calls[0], "out") == grad.ptr, argument(calls[0], "f.y") == y.ptr,
                                   partials[1] - partials[0] == 4 * 16 * 10,
                                   argument(calls[0], "o.biasgrad") == rows.vars["bias"].grad.ptr,
                                   argument(calls[0], "p.invM") == 1 / 300]
# NOTE: 50 maps of 20000 rows: 16-byte vectors over rows of 2 rows (100 elements) in every pass; 50 x 250 partials per
# column, more than a last block merges (a merge kernel does)
wide = BatchNorm(50)
columns = gpuarray.to_gpu(np.random.randn(20000, 50).astype(np.float32))
_, calls = launches(lambda: wide(columns))
report["merged"] = [name for name, _, _ in calls]
report["folded"] = [[argument(call, "rows"), argument(call, "width"), argument(call, "maps")]
                    for call in (calls[0], calls[2])]
_, calls = launches(lambda: wide.backward(columns))
report["merged"] += [name for name, _, _ in calls]
# NOTE: 136 maps (more than the 132 multiprocessors) of 8 x 100 vectors: a block holds a map (4 vectors a thread), one
# launch per training forward and per backward; with an activation, the output is the backward's y
resident = BatchNorm2D(136, activation="relu")
maps = gpuarray.to_gpu(np.random.randn(8, 136, 20, 20).astype(np.float32))
y, calls = launches(lambda: resident(maps))
report["resident"] = [(name, list(grid), list(block)) for (name, _, _), (_, grid, block, _) in
                      zip(calls, StandInCuda.launches)]
report["residentPointers"] = [argument(calls[0], "out") == y.ptr, argument(calls[0], "f.residual") == 0,
                              argument(calls[0], "o.savedInvstd") == resident.saveinvvar.ptr,
                              argument(calls[0], "o.runningMean") == resident.mean.ptr,
                              argument(calls[0], "o.backup") == resident.kernelBackup.array.ptr,
                              argument(calls[0], "f.act") == declared.activationNumbers["relu"]]
grad, calls = launches(lambda: resident.backward(maps))
report["resident"] += [(name, list(grid), list(block)) for (name, _, _), (_, grid, block, _) in
                       zip(calls, StandInCuda.launches)]
report["residentPointers"] += [argument(calls[0], "out") == grad.ptr, argument(calls[0], "f.y") == y.ptr,
                               argument(calls[0], "o.scalegrad") == resident.vars["scale"].grad.ptr,
                               argument(calls[0], "p.invstd") == argument(calls[0], "o.invstd")
                               == resident.saveinvvar.ptr,
                               argument(calls[0], "p.invM") == 1 / 3200]
def geometry(calls):
    return [(call[0], list(grid), list(block), argument(call, "splits"))
            for call, (_, grid, block, _) in zip(calls, StandInCuda.launches)]

# NOTE: maps of 4800 vectors: 16 a thread (64 values) in the resident forward on Hopper; below it, two blocks of 8 a
# thread (32 values) per map
big = BatchNorm2D(136)
bigData = gpuarray.to_gpu(np.random.randn(16, 136, 30, 40).astype(np.float32))
_, calls = launches(lambda: big(bigData))
report["hopper"] = [name for name, _, _ in calls]
# NOTE: a plan decides on its first call: below Hopper, a shape not yet planned (17 x 300 vectors a map)
StandInCuda.CAPABILITY = (8, 0)
_, calls = launches(lambda: big(gpuarray.to_gpu(np.random.randn(17, 136, 30, 40).astype(np.float32))))
report["ampere"] = geometry(calls)
StandInCuda.CAPABILITY = (9, 0)
# NOTE: 4 maps of 64 x 256 vectors: split over 32 blocks each (as many as fill the 132 multiprocessors), 4 vectors a
# thread, in the forward and the backward
few = BatchNorm2D(4)
fewData = gpuarray.to_gpu(np.zeros((64, 4, 32, 32), np.float32))
_, calls = launches(lambda: few(fewData))
report["split"] = geometry(calls)
_, calls = launches(lambda: few.backward(fewData))
report["split"] += geometry(calls)
# NOTE: on Volta the kernels are built without the folded step: a merge kernel always (a shape not yet planned)
StandInCuda.CAPABILITY = (7, 0)
volta = BatchNorm2D(16)
_, calls = launches(lambda: volta(gpuarray.to_gpu(np.random.randn(2, 16, 4, 4).astype(np.float32))))
report["volta"] = [name for name, _, _ in calls]
StandInCuda.CAPABILITY = (9, 0)
ghosts = BatchNorm2D(16, renorm=True, virtualBatch=4)
_, calls = launches(lambda: ghosts(x))
report["ghosts"] = [name for name, _, _ in calls]

# NOTE: device memory is host memory here, so the one-block backup of a snapshot can be checked for real
odd = gpuarray.to_gpu(np.arange(5, dtype=np.float16))
kept = [bn.mean, bn.var, odd]
before = [ary.get() for ary in kept]
backup = type(bn.mean).backend.gpuarray.Backup(kept)
for ary in kept:
    ary.fill(7)
backup.restore()
report["restored"] = all(np.array_equal(ary.get(), old) for ary, old in zip(kept, before))

# NOTE: the counts reach the host without a copy where the forward's kernel writes them (the mirror's target is its
# memory), and through one queued copy a forward where the part is several kernels
import pycuda.driver as cuda
copies = []
queue = cuda.memcpy_dtoh_async
cuda.memcpy_dtoh_async = lambda dst, src, stream=None: (copies.append(src), queue(dst, src))
bn.trainMode()
bn(x)
ghosts(x)
cuda.memcpy_dtoh_async = queue
report["mirrorCopies"] = copies == [ghosts.skipCounts.ptr]
bn.skipMirror.target.set(np.full((1, 16, 1, 1), 3.0, np.float32))
report["mirrorWritten"] = bool((bn.skipMirror.latest() == 3.0).all())

# NOTE: what a kernel would have saved, put back only under the last stamp given
from PuzzleLib.Modules.Transaction import KernelBackup
saved = KernelBackup(type(bn.mean).backend.gpuarray, 16, 3)
rows = np.arange(48, dtype=np.float32)
targets = [gpuarray.zeros((1, 16, 1, 1), np.float32) for _ in range(3)]
saved.array.set(np.append(rows, np.float32(saved.nextStamp() + 1)))
saved.putBack(targets)
report["keptUnderAnotherStamp"] = all(not ary.get().any() for ary in targets)
saved.array.set(np.append(rows, np.float32(saved.stamp)))
saved.putBack(targets)
report["putBack"] = np.array_equal(np.concatenate([ary.get().ravel() for ary in targets]), rows)

# NOTE: an interrupt at any line of a call of Driver.context once the context exists (the end of a `with` block
# included, where an interrupt skips the lock's release) leaves every later call able to answer, from another thread too
import threading

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.TestLib.Interrupts import InjectedInterrupt, runInterruptedAt

def interruptedAt(line):
    try:
        runInterruptedAt(Driver.context, line, lambda code: code is Driver.context.__code__)
    except InjectedInterrupt:
        pass

def answersFromAnotherThread():
    answered = threading.Event()
    threading.Thread(target=lambda: (Driver.context(), answered.set()), daemon=True).start()
    return answered.wait(5)

# NOTE: the first line after which another thread waits ends the search (it would wait forever)
report["contextLockLeftHeld"] = []
for line in range(1, 12):
    interruptedAt(line)
    if not answersFromAnotherThread():
        report["contextLockLeftHeld"] = [line]
        break
print(json.dumps(report))
"""


def test_a_module_on_a_stand_in_driver_launches_the_declared_entries():
    env = dict(os.environ, PUZZLELIB_BACKEND="cuda")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    entries = BatchNorm.entries()

    def size(name):
        return struct.calcsize(entries[name].format)

    # NOTE: maps of 8 x 4 vectors: a thread walks each in the reductions; each reduction merges its partials in its
    # own kernel (two launches per training forward and per backward, not three)
    expected = ["bnStatsSpatialPerThread_f32_v4", "bnApplySpatial_trainForward_f32_v4"]
    assert [name for name, _ in report["train"]] == expected
    assert all(packed == size(name) for name, packed in report["train"] + report["backward"] + report["eval"])
    assert all(report["trainPointers"]) and all(report["backwardPointers"])
    assert [name for name, _ in report["backward"]] == [
        "bnGradSpatialPerThread_f32_v4", "bnApplySpatial_backward_f32_v4"
    ]
    assert [name for name, _ in report["eval"]] == ["bnApplySpatial_evalForward_f32_v4"]
    assert report["fused"] == ["bnStatsRows_f32_v4", "bnApplyRowsFused_trainForward_f32_v4"]
    assert report["volta"] == [
        "bnStatsSpatialPerThread_f32_v4", "bnStatsMerge_f32", "bnApplySpatial_trainForward_f32_v4"
    ]
    assert report["merged"] == [
        "bnStatsRows_f32_v4", "bnStatsMerge_f32", "bnApplyRows_trainForward_f32_v4",
        "bnGradRows_f32_v4", "bnSumsMerge", "bnApplyRows_backward_f32_v4",
    ]
    assert report["folded"] == [[10000, 100, 50]] * 2
    assert report["resident"] == [
        ["bnTrainResident_f32_v4_h4", [136, 1, 1], [224, 1, 1]], ["bnGradResident_f32_v4_h4", [136, 1, 1], [224, 1, 1]]
    ]
    assert all(report["residentPointers"]), report["residentPointers"]
    assert report["rowsResident"] == [
        ["bnTrainResidentRows_f32_v4_h4", [10, 1, 1], [4, 8, 1]],
        ["bnGradResidentRows_f32_v4_h4", [10, 1, 1], [4, 8, 1]],
    ]
    assert all(report["rowsResidentPointers"]), report["rowsResidentPointers"]
    assert report["hopper"] == ["bnTrainResident_f32_v4_h16"]
    assert report["ampere"] == [["bnTrainResident_f32_v4_h8", [272, 1, 1], [320, 1, 1], 2]]
    assert report["split"] == [
        ["bnTrainResident_f32_v4_h4", [128, 1, 1], [128, 1, 1], 32],
        ["bnGradResident_f32_v4_h4", [128, 1, 1], [128, 1, 1], 32],
    ]
    # NOTE: two ghost batches of 4 samples, each: moments (merged in the kernel), the renorm step, the corrected pass
    assert report["restored"] and report["keptUnderAnotherStamp"] and report["putBack"]
    assert report["mirrorCopies"] and report["mirrorWritten"]
    assert report["contextLockLeftHeld"] == []
    assert report["ghosts"] == [
        "bnStatsSpatialPerThread_f32_v4", "bnRenormStatistics", "bnApplySpatial_trainForward_f32_v4",
    ] * 2


GEOMETRY_SCRIPT = r"""
import json, sys
from PuzzleLib.TestLib import StandInCuda
StandInCuda.install()
import numpy as np
from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm1D, BatchNorm2D

report = {}
for case, (shape, dtype, activation) in json.loads(sys.argv[1]).items():
    bn = {2: BatchNorm, 3: BatchNorm1D, 4: BatchNorm2D}[len(shape)](shape[1], activation=activation)
    bn.calcMode(np.dtype(dtype).type)
    x = gpuarray.to_gpu(np.ones(shape, dtype))
    del StandInCuda.launches[:]
    bn(x)
    bn.backward(x)
    bn.evalMode()
    bn(x)
    report[case] = [(f.name, list(grid), list(block)) for f, grid, block, args in StandInCuda.launches]
print(json.dumps(report))
"""

# NOTE: (shape, dtype, fused activation) -> (bytes each thread moves per access: in every pass, or in the elementwise
# passes and in the reductions, the segments suffix of the spatial kernels' names likewise, the rows kernels' (lanes
# across maps, rows of lanes), whether a thread walks a map in the spatial reductions); shapes with the geometry of the
# benchmark's: 7x7 and 14x14 maps, one map, few maps (over rows of 4 rows of 3 maps, of 2 rows of 50; with an
# activation too), small maps (unaligned segments where no vector holds elements of more than two maps: float32 maps
# of 2 or 3, float16 maps of 6; float16 maps of 2 or 3 in the short maps' elementwise passes), channels-last ResNet
# maps; and maps whose folded rows (2 rows of 186: 372 elements) are wider than a block's lanes, which the elementwise
# passes only take
GEOMETRY = {
    "7x7_f32": (((32, 8, 7, 7), "float32", None), (16, "Unaligned", None, False)),
    "7x7_f16": (((32, 8, 7, 7), "float16", None), (16, "Unaligned", None, True)),
    "14x14_f16": (((2, 4, 14, 14), "float16", None), (16, "Unaligned", None, True)),
    "14x14_f32": (((8, 4, 14, 14), "float32", None), (16, "", None, False)),
    "one_map": (((4096, 1), "float32", None), (16, "", None, False)),
    "small_maps": (((1, 1000, 2), "float32", None), (16, "Unaligned", None, True)),
    "short_maps": (((8, 512, 3), "float32", None), (16, "Unaligned", None, True)),
    "six_f16": (((8, 64, 6), "float16", None), (16, "Unaligned", None, True)),
    "small_maps_f16": (((1, 1000, 2), "float16", None), (16, ("Short", "Unaligned"), None, True)),
    "short_maps_f16": (((8, 512, 3), "float16", None), (16, ("Short", "Unaligned"), None, True)),
    "three_maps": (((3000, 3), "float32", None), (16, "", (3, 85), False)),
    "fifty_maps": (((1000, 50), "float32", None), (16, "", (25, 10), False)),
    "fifty_maps_f16": (((1000, 50), "float16", None), (16, "", (25, 10), False)),
    "fused_fifty_maps": (((1000, 50), "float32", "relu"), (16, "", (25, 10), False)),
    "wide_folded": (((512, 186), "float32", None), ((16, 8), "", (31, 8), False)),
    "channels_last_64_f16": (((4096, 64), "float16", None), (16, "", (8, 32), False)),
    "fused_rows": (((512, 64), "float32", "relu"), (16, "", (16, 16), False)),
    "per_activation": (((256, 4096), "float32", None), (16, "", (32, 8), False)),
    "per_activation_f16": (((256, 4096), "float16", None), (16, "", (32, 8), False)),
}
# NOTE: the stand-in's multiprocessors: every launch on a tensor of at least 1 MB must give each of them a block
MULTIPROCESSORS = 132


def geometryReport(table):
    """{case: [(kernel, grid, block)]} of GEOMETRY_SCRIPT on the cases of `table` ({case: (spec, expected)})."""
    env = dict(os.environ, PUZZLELIB_BACKEND="cuda")
    cases = json.dumps({case: spec for case, (spec, _) in table.items()})
    result = subprocess.run([sys.executable, "-c", GEOMETRY_SCRIPT, cases], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_pass_takes_the_widest_vectors_and_busy_lanes_the_data_allows():
    """The launches of a training forward, a backward and an evaluation forward on a stand-in driver: 16-byte vectors
    wherever the tensor's length allows them (the rows kernels: 3 and 50 maps included, the reductions where a block's
    lanes span the folded rows; spatial maps of any extent at least 16 bytes, 7x7 included), rows blocks whose lanes
    across maps all have a map (3 maps: 3 lanes, not 3 of 32), a thread per map where a map has at most a block's worth
    of vectors, and on tensors of 1 MB or more a block for every multiprocessor ((256, 4096) float32 took 64 blocks for
    its statistics)."""
    report = geometryReport(GEOMETRY)
    for case, ((shape, dtype, _), (accessBytes, segments, rowsBlock, perThread)) in GEOMETRY.items():
        launches = report[case]
        # NOTE: a resident pass does a training task in one launch, the reductions in two
        assert len(launches) == 5 - 2 * any("Resident" in name for name, _, _ in launches), (case, launches)
        large = np.prod(shape) * np.dtype(dtype).itemsize >= 1 << 20
        applyBytes, reductionBytes = accessBytes if isinstance(accessBytes, tuple) else (accessBytes, accessBytes)
        applySegments, reductionSegments = segments if isinstance(segments, tuple) else (segments, segments)
        for name, grid, block in launches:
            assert not large or grid[0] * grid[1] >= MULTIPROCESSORS, (case, name, grid)
            vec = int(re.search(r"_v(\d+)", name).group(1))
            elementwise = name.startswith("bnApply")
            assert vec * np.dtype(dtype).itemsize == (applyBytes if elementwise else reductionBytes), (case, name)
            suffix = re.search(r"(Unaligned|Short)_", name)
            assert (suffix.group(1) if suffix else "") == (applySegments if elementwise else reductionSegments), \
                (case, name)
            if rowsBlock is None:
                assert "Rows" not in name, (case, name)
                if name.startswith(("bnStatsSpatial", "bnGradSpatial")):
                    assert ("PerThread" in name) == perThread, (case, name)
                continue
            # NOTE: a resident pass over rows takes columns and rows of lanes of its own (every lane busy, below)
            assert "Rows" in name and ("Resident" in name or tuple(block[:2]) == rowsBlock), (case, name, block)
            # NOTE: rows of lcm(maps, vec) elements, in columns of a block's lanes (a resident pass's grid: its
            # columns times the blocks each is split over)
            columns, remainder = divmod(math.lcm(shape[1], vec), block[0] * vec)
            assert remainder == 0 and grid[0] % columns == 0, (case, name, grid, block)
            assert "Resident" in name or grid[0] == columns, (case, name, grid, block)


# NOTE: channels-last ResNet-50 maps at batch 32 (rows of the maps) -> the launches of a training forward and a
# backward: where a column of channels fits on the multiprocessors (its blocks at most 132, 16 or 32 values a thread),
# one resident pass each (the widest columns: 14x14 float32 forward 32 lanes, 98 blocks a column, its backward of 16
# values a thread 16 lanes; 28x28 float16 4 lanes, 98 blocks a column), else the reductions and elementwise passes
# (56x56: 196 blocks a column of 4 lanes)
CHANNELS_LAST = {
    "14x14_f32": (((6272, 1024), "float32", None), [
        ("bnTrainResidentRows_f32_v4_h8", [8 * 98, 1, 1], [32, 8, 1]),
        ("bnGradResidentRows_f32_v4_h4", [16 * 98, 1, 1], [16, 16, 1]),
    ]),
    "28x28_f16": (((25088, 512), "float16", "relu"), [
        ("bnTrainResidentRows_f16_v8_h4", [16 * 98, 1, 1], [4, 64, 1]),
        ("bnGradResidentRows_f16_v8_h4", [16 * 98, 1, 1], [4, 64, 1]),
    ]),
    "56x56_f32": (((100352, 256), "float32", None), [
        ("bnStatsRows_f32_v4", [2, 1024, 1], [32, 8, 1]), ("bnStatsMerge_f32", [256, 1, 1], [256, 1, 1]),
        ("bnApplyRows_trainForward_f32_v4", [2, 1056, 1], [32, 8, 1]), ("bnGradRows_f32_v4", [2, 1024, 1], [32, 8, 1]),
        ("bnSumsMerge", [256, 1, 1], [256, 1, 1]), ("bnApplyRows_backward_f32_v4", [2, 1056, 1], [32, 8, 1]),
    ]),
}


def test_channels_last_training_is_one_pass_each_way_where_a_column_of_channels_fits():
    """The launches of a training forward and backward on channels-last data on a stand-in driver: one resident pass
    over rows each (x read once, and x and dy once; no merge kernel, no second pass), where the blocks of a column of
    channels fit on the multiprocessors at once (`BatchNormKernels.CudaPlan.rowsResidentShape`)."""
    report = geometryReport(CHANNELS_LAST)
    for case, (_, expected) in CHANNELS_LAST.items():
        # NOTE: the evaluation forward's launch comes last
        assert [tuple(launch) for launch in report[case][:-1]] == [tuple(launch) for launch in expected], case


@pytest.mark.parametrize("registers, shared, blocks", [
    (32, 0, 8), (40, 0, 6), (48, 0, 5), (64, 0, 4), (80, 0, 3), (128, 0, 2), (255, 0, 1), (32, 48 * 1024, 4),
    (16, 0, 8),
])
def test_blocks_per_multiprocessor_follow_the_occupancy_rules(registers, shared, blocks):
    """256-thread blocks on an H100 multiprocessor (2048 threads, 64 K registers, 228 KB of shared memory), as NVIDIA's
    occupancy calculator gives them: registers in units of 256 per warp, 1 KB of shared memory reserved per block."""
    from PuzzleLib.Kernels import blocksPerMultiprocessor

    assert blocksPerMultiprocessor(registers, shared, 256, (2048, 65536, 233472)) == blocks
