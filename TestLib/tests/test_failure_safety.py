"""A call that raises, an interrupt included, leaves modules, containers and optimizers exactly as they were, and the
CPU kernels never return while their worker threads still write.

The exhaustive tests raise a KeyboardInterrupt at every line the library executes during a call, one run per line (a
trace function raises it where the line would start), and check after each run that the call changed nothing and that
the memory pool holds no block more than before.
"""

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.Cpu import NumpyChunks
from PuzzleLib.Containers import Sequential
from PuzzleLib.Modules import BatchNorm, BatchNorm2D, Linear
from PuzzleLib.Modules.Activation import Activation, sigmoid
from PuzzleLib.Modules.Module import ModuleError
from PuzzleLib.Modules.Transaction import deferredInterrupts
from PuzzleLib.Optimizers import SGD, MomentumSGD
from PuzzleLib.TestLib.Interrupts import InjectedInterrupt, runInterruptedAt

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# NOTE: the pool's own bookkeeping is a few Python lines that an interrupt is not expected inside; every other line of
# the library is a place the injected interrupt may land
UNTRACED = ("MemoryPool.py", os.sep + "tests" + os.sep)


MODULE_DIRS = tuple(os.path.join(PACKAGE_DIR, name) for name in ("Modules", "Containers"))


def traced(filename, within):
    return filename.startswith(within) and not any(part in filename for part in UNTRACED)


def leaves(module):
    for child in getattr(module, "modules", [module]):
        yield from (leaves(child) if child is not module else [child])


def moduleState(*modules):
    """Everything a call may change, as host values: counters, parameters, gradients, statistics, cached results."""
    state = []
    for module in modules:
        for leaf in leaves(module) if hasattr(module, "vars") else [module]:
            if hasattr(leaf, "vars"):
                state.append((leaf.numOfProps if hasattr(leaf, "numOfProps") else None, id(leaf.grad)))
                state.extend((var.data.get(), var.grad.get()) for var in leaf.vars.values())
                state.extend(attr.get() for attr in leaf.attrs.values())
            else:
                state.extend(state_.get() for _, state_ in leaf.states.values() if state_ is not None)
    return state


def assertSameState(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        if isinstance(a, tuple) and not isinstance(a[0], np.ndarray):
            assert a == b
        else:
            for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
                np.testing.assert_array_equal(x, y)


def checkEveryInterruptChangesNothing(call, *owners, within=PACKAGE_DIR):
    """Interrupts `call` at each of its lines in turn (the lines of the files under `within`): each interrupted run
    must leave `owners` as they were and no pool block active. Returns the number of lines tried."""
    pool = gpuarray.memoryPool
    gc.collect()
    before, activeBefore = moduleState(*owners), pool.stats()["activeBytes"]

    line = 1
    while True:
        try:
            executed = runInterruptedAt(call, line, lambda code: traced(code.co_filename, within))
        except InjectedInterrupt:
            pass
        else:
            assert executed < line, "the call ran to its end without reaching line %d" % line
            break
        assertSameState(before, moduleState(*owners))
        assert pool.stats()["activeBytes"] == activeBefore, "an interrupt at line %d left a pool block active" % line
        line += 1

    assert line > 20
    return line


def network():
    net = Sequential(name="net")
    net.append(Linear(5, 4, name="fc0"))
    net.append(BatchNorm(4, name="bn0"))
    net.append(Activation(sigmoid))
    net.append(Linear(4, 3, name="fc1"))
    return net


# --- modules: forward, backward, parameter updates


def test_interrupted_training_forward_changes_no_statistic_and_no_counter():
    host = np.random.normal(5.0, 2.0, size=(4, 3, 3, 2)).astype(np.float32)
    data = gpuarray.to_gpu(host)
    # NOTE: another module's call loads the kernels and makes the plan first, so that the interrupts land around the
    # kernel's call (after it too: its running update must be put back), not only in the loading
    loader = BatchNorm2D(3)
    loader(data)
    bn = BatchNorm2D(3)
    checkEveryInterruptChangesNothing(lambda: bn(data), bn)
    # NOTE: the last run was not interrupted
    assert bn.numOfProps == 1 and np.allclose(bn.mean.get().ravel(), host.mean(axis=(0, 2, 3)), atol=1e-5)

    # a later call, with skip counts to put back too (map 1 skipped once, by a batch with a NaN)
    poisoned = host.copy()
    poisoned[0, 1, 0, 0] = np.nan
    poisoned = gpuarray.to_gpu(poisoned)
    with pytest.warns(RuntimeWarning):
        # NOTE: kept, as its input: an interrupted call drops the module's references to them, not their blocks
        previous = bn(poisoned)
    checkEveryInterruptChangesNothing(lambda: bn(data), bn)
    assert previous.shape == data.shape
    assert bn.numOfProps == 3 and bn.skipCounts.get().ravel().tolist() == [0.0, 1.0, 0.0]


def test_interrupted_evaluation_forward_changes_nothing_and_keeps_no_result(monkeypatch):
    bn = BatchNorm2D(3)
    data = gpuarray.to_gpu(np.random.normal(5.0, 2.0, size=(4, 3, 3, 2)).astype(np.float32))
    bn(data)
    bn.evalMode()
    checkEveryInterruptChangesNothing(lambda: bn(data), bn)

    # NOTE: a kernel that fails: the module keeps neither the input nor an output of the call, nor the previous one's
    bn(data)
    plan = bn.planOf(data, bn.fused, False)
    monkeypatch.setattr(plan, "evalForward", lambda call: (_ for _ in ()).throw(MemoryError("device full")))
    with pytest.raises(MemoryError):
        bn(data)
    assert bn.inData is None and bn.data is None


@pytest.mark.parametrize("momentum", [0.0, 0.5], ids=["written_in_place", "accumulated"])
def test_interrupted_backward_changes_no_gradient(momentum):
    bn = BatchNorm2D(3)
    data = gpuarray.to_gpu(np.random.randn(4, 3, 2, 2).astype(np.float32))
    grad = gpuarray.to_gpu(np.random.randn(4, 3, 2, 2).astype(np.float32))
    bn(data)
    bn.backward(grad)
    checkEveryInterruptChangesNothing(lambda: bn.backward(grad, momentum=momentum), bn)


def test_cpu_snapshot_copies_take_no_pool_block(backend):
    """On the CPU backend a snapshot copies into plain numpy arrays, outside the pool, and puts them back."""
    if backend.name != "cpu":
        pytest.skip("the CUDA backend's snapshot copies are pool arrays")
    bn = BatchNorm2D(3)
    bn(gpuarray.to_gpu(np.random.randn(4, 3, 2, 2).astype(np.float32)))
    mean, var = bn.mean.get(), bn.var.get()

    gc.collect()
    before = gpuarray.memoryPool.stats()["allocations"]
    snapshot = bn.snapshot("forward")
    assert gpuarray.memoryPool.stats()["allocations"] == before

    bn.mean.fill(np.nan)
    bn.var.fill(np.nan)
    snapshot.restore()
    assert np.array_equal(bn.mean.get(), mean) and np.array_equal(bn.var.get(), var)


def test_interrupted_network_forward_and_backward_change_no_child():
    # NOTE: the lines of the containers and modules only; the backend's lines are covered by the single-module tests
    net = network()
    data = gpuarray.to_gpu(np.random.randn(6, 5).astype(np.float32))
    checkEveryInterruptChangesNothing(lambda: net(data), net, within=MODULE_DIRS)

    grad = gpuarray.to_gpu(np.random.randn(*net.data.shape).astype(np.float32))
    checkEveryInterruptChangesNothing(lambda: net.backward(grad), net, within=MODULE_DIRS)


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: MomentumSGD(0.1, 0.9)], ids=["SGD", "MomentumSGD"])
def test_interrupted_optimizer_step_moves_no_parameter(make):
    net = network()
    optimizer = make()
    optimizer.setupOn(net)
    for var in net.namedVars().values():
        var.grad.set(np.random.randn(*var.shape).astype(np.float32))
    optimizer.update()
    checkEveryInterruptChangesNothing(optimizer.update, net, optimizer)


def test_interrupted_update_params_moves_no_parameter():
    net = network()
    for var in net.namedVars().values():
        var.grad.set(np.random.randn(*var.shape).astype(np.float32))
    checkEveryInterruptChangesNothing(lambda: net.updateParams(0.1), net, within=MODULE_DIRS)


def test_interrupted_load_changes_nothing(tmp_path):
    source = network()
    source(gpuarray.to_gpu(np.random.randn(6, 5).astype(np.float32)))
    source.save(tmp_path / "net.h5")

    np.random.seed(5)
    net = network()
    checkEveryInterruptChangesNothing(lambda: net.load(tmp_path / "net.h5"), net, within=MODULE_DIRS)
    # NOTE: the last run was not interrupted
    for key, var in source.namedVars().items():
        np.testing.assert_array_equal(net.namedVars()[key].data.get(), var.data.get())
    np.testing.assert_array_equal(net["bn0"].mean.get(), source["bn0"].mean.get())


# --- containers: all or nothing, and no module twice


def test_a_later_child_that_raises_leaves_the_earlier_ones_unchanged(monkeypatch):
    net = network()
    data = gpuarray.to_gpu(np.random.randn(6, 5).astype(np.float32))
    before = moduleState(net)

    def outOfMemory(data):
        raise MemoryError("device out of memory")

    monkeypatch.setattr(net["fc1"], "updateData", outOfMemory)
    with pytest.raises(MemoryError):
        net(data)
    assertSameState(before, moduleState(net))
    assert net["bn0"].numOfProps == 0


def test_a_module_cannot_be_appended_twice_or_into_itself():
    net, bn = Sequential(name="net"), BatchNorm(4, name="bn")
    net.append(bn)
    with pytest.raises(ModuleError, match="already holds"):
        net.append(bn)

    inner = Sequential(name="inner")
    shared = Linear(4, 4, name="shared")
    inner.append(shared)
    net.append(inner)
    with pytest.raises(ModuleError, match="already holds"):
        net.append(shared)

    with pytest.raises(ModuleError, match="cannot hold itself"):
        net.append(net)
    with pytest.raises(ModuleError, match="cannot hold itself"):
        inner.append(net)
    assert [child.name for child in net] == ["bn", "inner"] and len(inner) == 1


# --- the CPU kernels' worker threads


@pytest.fixture
def fourWorkers(monkeypatch):
    monkeypatch.setattr(Config, "cpuThreads", 4)
    # NOTE: eight chunks of one row each (a row is CHUNK_ELEMENTS long), spread over four groups
    return NumpyChunks.Chunks((8, 1, NumpyChunks.CHUNK_ELEMENTS))


def slowWork(active, started, fail=None):
    lock = threading.Lock()

    def work(rows, scratch):
        with lock:
            active[0] += 1
            started.append(rows.start)
        try:
            if fail is not None and rows.start == fail:
                raise ValueError("chunk %d failed" % rows.start)
            time.sleep(0.2)
        finally:
            with lock:
                active[0] -= 1

    return work


@pytest.mark.backendIndependent
def test_interrupt_returns_only_after_every_worker_stopped(fourWorkers):
    active, started = [0], []
    timer = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        fourWorkers.run(slowWork(active, started))
    timer.join()

    assert active[0] == 0, "the call returned while %d chunk(s) still ran" % active[0]
    count = len(started)
    time.sleep(0.5)
    assert len(started) == count < 8, "chunks started after the call had returned"


@pytest.mark.backendIndependent
def test_a_failing_chunk_returns_only_after_every_worker_stopped(fourWorkers):
    active, started = [0], []
    with pytest.raises(ValueError, match="chunk 0 failed"):
        fourWorkers.run(slowWork(active, started, fail=0))
    assert active[0] == 0, "the call returned while %d chunk(s) still ran" % active[0]


@pytest.mark.backendIndependent
def test_deferred_interrupt_is_raised_when_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferredInterrupts():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
