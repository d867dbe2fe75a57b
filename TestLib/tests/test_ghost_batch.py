"""Ghost batch normalization (Hoffer, Hubara & Soudry 2017, arXiv 1705.08741): the modules' ``virtualBatch`` option,
on every backend, against the float64 reference applied to each ghost batch and float64 finite differences."""

import numpy as np
import pytest
from mpi4py import MPI

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm2D, SyncBatchNorm2D
from PuzzleLib.Modules.Module import ModuleError
from PuzzleLib.TestLib import Backends, Reference
from PuzzleLib.TestLib.GradientCheck import moduleInputGradientError, numericGradient, relativeError

EPS = 1e-5
# NOTE: module factory, data shape, normalized axes; 11 samples in ghost batches of 4: 4, 4 and 3
CASES = {
    "BatchNorm2D": (lambda **kw: BatchNorm2D(3, **kw), (11, 3, 2, 3), (0, 2, 3)),
    "channelsLast": (lambda **kw: BatchNorm2D(3, axis=-1, **kw), (11, 2, 3, 3), (0, 1, 2)),
    "BatchNorm": (lambda **kw: BatchNorm(3, **kw), (11, 3), (0,)),
}
GHOSTS = [(0, 4), (4, 8), (8, 11)]


def ghostReference(host, scale, bias, axes, mean, var, numOfProps=0, initFactor=1.0, minFactor=0.1):
    """Each ghost batch normalized by itself, the running statistics updated once per ghost batch in order."""
    out = np.empty(host.shape)
    for start, stop in GHOSTS:
        ref = Reference.batchNormTrain(host[start:stop], scale, bias, axes, EPS)
        out[start:stop] = ref.out
        numOfProps += 1
        factor = max(initFactor / numOfProps, minFactor)
        mean, var = Reference.runningUpdate(mean, var, ref.mean, ref.var, ref.m, factor)
    return out, mean, var


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_ghost_batch_is_normalized_by_itself_and_updates_the_running_statistics(case):
    make, shape, axes = CASES[case]
    bn = make(virtualBatch=4, minFactor=0.3)
    scale, bias = bn.scale.get().astype(np.float64), bn.bias.get().astype(np.float64)
    keep = np.empty(shape)
    mean, var = (Reference.asParam(ary.get(), keep, axes) for ary in (bn.mean, bn.var))

    numOfProps = 0
    for step in range(2):
        host = np.random.normal(1.0 + step, 2.0, shape).astype(np.float32)
        host[4:8] += 5.0  # NOTE: the ghost batches differ, so normalizing the whole batch would fail the comparison
        out = bn(gpuarray.to_gpu(host)).get()
        expected, mean, var = ghostReference(host, scale, bias, axes, mean, var, numOfProps, minFactor=0.3)
        numOfProps += 3
        np.testing.assert_allclose(out, expected, atol=2e-5)
        np.testing.assert_allclose(bn.mean.get().ravel(), mean.ravel(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.var.get().ravel(), var.ravel(), rtol=1e-5)
        assert bn.numOfProps == numOfProps

        whole = Reference.batchNormTrain(host, scale, bias, axes, EPS).out
        assert np.abs(out - whole).max() > 0.5

    assert bn.savemean.shape == (3,) + bn.mean.shape and bn.saveinvvar.shape == bn.savemean.shape
    for g, (start, stop) in enumerate(GHOSTS):
        ref = Reference.batchNormTrain(host[start:stop], scale, bias, axes, EPS)
        np.testing.assert_allclose(bn.savemean.get()[g].ravel(), ref.mean.ravel(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_is_each_ghost_batchs_own_with_the_parameter_gradients_summed(case):
    make, shape, axes = CASES[case]
    bn = make(virtualBatch=4)
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    scale = bn.scale.get()
    bn(gpuarray.to_gpu(host))
    bn.backward(gpuarray.to_gpu(grad))

    dx, dscale, dbias = np.empty(shape), 0.0, 0.0
    for start, stop in GHOSTS:
        part = Reference.batchNormBackward(host[start:stop], grad[start:stop], scale, axes, EPS)
        dx[start:stop] = part[0]
        dscale, dbias = dscale + part[1], dbias + part[2]
    np.testing.assert_allclose(bn.grad.get(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), rtol=1e-5, atol=1e-4)

    # NOTE: the accumulating path (scale and momentum) sums the same gradients
    bn.backward(gpuarray.to_gpu(grad), scale=2.0, momentum=1.0)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), 3 * dscale.ravel(), rtol=1e-4, atol=1e-4)
    bn.backward(gpuarray.to_gpu(grad), updParamGrads=False)
    np.testing.assert_allclose(bn.grad.get(), dx, rtol=1e-4, atol=1e-5)


def test_float64_finite_differences(backend):
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))
    bn = BatchNorm2D(2, virtualBatch=2)
    bn.calcMode(np.float64)
    host, grad = np.random.normal(0.5, 1.5, (5, 2, 2, 2)), np.random.randn(5, 2, 2, 2)

    # NOTE: 1e-6 as for the plain module: `Dnn.batchNormNd` saves float32 statistics (1e-7 here, whatever the step)
    assert moduleInputGradientError(bn, host, grad) < 1e-6

    scale, bias = bn.scale.get().astype(np.float64), bn.bias.get().astype(np.float64)

    def byScale(s):
        return np.concatenate(
            [Reference.batchNormTrain(host[k : k + 2], s, bias, (0, 2, 3), EPS).out for k in (0, 2, 4)]
        )

    assert relativeError(bn.vars["scale"].grad.get(), numericGradient(byScale, scale, grad)) < 1e-6


def test_ghost_batches_with_renorm_take_their_corrections_in_turn():
    bn = BatchNorm(3, virtualBatch=4, renorm=True, renormMomentum=0.5, renormClipping={"rmax": 1.5, "dmax": 0.5})
    host = np.random.normal(1.0, 2.0, (11, 3)).astype(np.float32)
    grad = np.random.randn(11, 3).astype(np.float32)
    scale, bias = bn.scale.get().reshape(1, 3).astype(np.float64), bn.bias.get().reshape(1, 3).astype(np.float64)
    out = bn(gpuarray.to_gpu(host)).get()
    bn.backward(gpuarray.to_gpu(grad))

    renormMean, renormStd = np.zeros((1, 3)), np.ones((1, 3))
    dscale = 0.0
    for g, (start, stop) in enumerate(GHOSTS):
        part, partGrad = host[start:stop], grad[start:stop]
        ref = Reference.batchRenormTrain(part, scale, bias, (0,), EPS, renormMean, renormStd,
                                         rmin=1 / 1.5, rmax=1.5, dmax=0.5)
        np.testing.assert_allclose(out[start:stop], ref.out, atol=2e-5)
        np.testing.assert_allclose(bn.renormCorrection.r.get()[g].ravel(), ref.r.ravel(), rtol=1e-5)
        dx, ds, _ = Reference.batchRenormBackward(part, partGrad, scale, (0,), EPS, ref.r, ref.d)
        np.testing.assert_allclose(bn.grad.get()[start:stop], dx, rtol=1e-4, atol=1e-5)
        dscale = dscale + ds
        renormMean, renormStd = 0.5 * renormMean + 0.5 * ref.mean, 0.5 * renormStd + 0.5 * ref.sigma
    np.testing.assert_allclose(bn.renormStd.get().ravel(), renormStd.ravel(), rtol=1e-5)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), rtol=1e-4, atol=1e-4)


def test_evaluation_is_unchanged():
    bn, plain = BatchNorm2D(3, virtualBatch=2), BatchNorm2D(3)
    host = np.random.normal(1.0, 2.0, (6, 3, 2, 2)).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    for attr in ("scale", "bias", "mean", "var"):
        getattr(plain, attr).set(getattr(bn, attr).get())
    bn.evalMode(), plain.evalMode()
    assert np.array_equal(bn(gpuarray.to_gpu(host)).get(), plain(gpuarray.to_gpu(host)).get())


def test_a_batch_no_larger_than_the_ghost_batch_is_one_ghost_batch():
    bn, plain = BatchNorm(3, virtualBatch=8), BatchNorm(3)
    plain.scale.set(bn.scale.get())
    host = np.random.normal(1.0, 2.0, (8, 3)).astype(np.float32)
    np.testing.assert_allclose(bn(gpuarray.to_gpu(host)).get(), plain(gpuarray.to_gpu(host)).get(), rtol=0, atol=1e-6)
    assert bn.numOfProps == 1 and np.allclose(bn.var.get(), plain.var.get())


def test_a_last_ghost_batch_of_one_element_per_map_is_refused_and_nothing_changes():
    bn = BatchNorm(3, virtualBatch=4)
    bn(gpuarray.to_gpu(np.random.randn(8, 3).astype(np.float32)))
    before = bn.mean.get(), bn.var.get(), bn.numOfProps
    with pytest.raises(ModuleError, match=r"virtualBatch=4 needs at least 2 elements per map in every ghost batch.*1 "):
        bn(gpuarray.to_gpu(np.random.randn(9, 3).astype(np.float32)))
    assert np.array_equal(bn.mean.get(), before[0]) and np.array_equal(bn.var.get(), before[1])
    assert bn.numOfProps == before[2]

    # NOTE: one sample of spatial data holds several elements per map: a ghost batch of one is allowed there
    spatial = BatchNorm2D(3, virtualBatch=4)
    spatial(gpuarray.to_gpu(np.random.randn(9, 3, 2, 2).astype(np.float32)))
    assert spatial.numOfProps == 3


@pytest.mark.parametrize("value", [0, -4, 2.5, True, "4"])
def test_bad_virtual_batch_is_refused(value):
    with pytest.raises(ValueError, match="virtualBatch must be a positive int"):
        BatchNorm2D(3, virtualBatch=value)


def test_synchronized_modules_refuse_ghost_batches():
    with pytest.raises(ValueError, match="virtualBatch is not supported by the synchronized modules"):
        SyncBatchNorm2D(3, virtualBatch=4, comm=MPI.COMM_SELF)


# --- the functional API's ingrad argument, which each ghost batch's backward writes its rows through


@pytest.mark.parametrize("test", [False, True], ids=["training", "frozen"])
def test_backward_writes_the_input_gradient_into_given_rows(test):
    host = np.random.normal(1.0, 2.0, (6, 3, 4)).astype(np.float32)
    grad = np.random.randn(6, 3, 4).astype(np.float32)
    scale = np.random.normal(1.0, 0.5, (1, 3, 1)).astype(np.float32)
    mean, var = np.full((1, 3, 1), 0.5, np.float32), np.full((1, 3, 1), 2.0, np.float32)
    x, dy = gpuarray.to_gpu(host[2:5]), gpuarray.to_gpu(grad[2:5])
    p = [gpuarray.to_gpu(a) for a in (scale, mean, var)]
    target = gpuarray.to_gpu(np.full(host.shape, 7.0, np.float32))

    _, savemean, saveinvvar = Dnn.batchNormNd(x, p[0], gpuarray.zeros((1, 3, 1), np.float32), None, None, EPS)
    ingrad, _, _ = Dnn.batchNormNdBackward(
        x, dy, p[0], savemean, saveinvvar, EPS, test=test, mean=p[1], var=p[2], ingrad=target[2:5]
    )
    if test:
        expected = Reference.frozenBackward(host[2:5], grad[2:5], scale, mean, var, EPS)[0]
    else:
        expected = Reference.batchNormBackward(host[2:5], grad[2:5], scale, (0, 2), EPS)[0]
    assert ingrad.ptr == target[2:5].ptr
    result = target.get()
    np.testing.assert_allclose(result[2:5], expected, rtol=1e-4, atol=1e-5)
    assert (result[:2] == 7.0).all() and (result[5:] == 7.0).all()


@pytest.mark.parametrize("case", ["updGrad", "shape", "overlaps_grad", "renorm_overlaps_data"])
def test_a_bad_ingrad_is_refused_and_nothing_is_written(case):
    host = np.random.normal(1.0, 2.0, (6, 3)).astype(np.float32)
    x, dy = gpuarray.to_gpu(host), gpuarray.to_gpu(np.random.randn(6, 3).astype(np.float32))
    scale, bias = gpuarray.to_gpu(np.ones((1, 3), np.float32)), gpuarray.zeros((1, 3), np.float32)
    renormMean, renormStd = gpuarray.zeros((1, 3), np.float32), gpuarray.to_gpu(np.ones((1, 3), np.float32))
    _, savemean, saveinvvar, r, d = Dnn.batchRenormNd(x, scale, bias, None, None, renormMean, renormStd, mode=(0,))
    target = gpuarray.zeros((6, 3), np.float32)
    kwargs, message = {
        "updGrad": ({"ingrad": target, "updGrad": False}, "updGrad is False"),
        "shape": ({"ingrad": gpuarray.zeros((5, 3), np.float32)}, "ingrad must have shape (6, 3)"),
        "overlaps_grad": ({"ingrad": dy}, "ingrad must not share memory with grad"),
        "renorm_overlaps_data": ({"ingrad": x}, "ingrad must not share memory with data"),
    }[case]
    before = (host.copy(), dy.get())
    with pytest.raises(ValueError) as info:
        if case.startswith("renorm"):
            Dnn.batchRenormNdBackward(x, dy, scale, savemean, saveinvvar, r, d, (0,), **kwargs)
        else:
            Dnn.batchNormNdBackward(x, dy, scale, savemean, saveinvvar, EPS, (0,), **kwargs)
    assert message in str(info.value)
    assert np.array_equal(x.get(), before[0]) and np.array_equal(dy.get(), before[1])
    assert not target.get().any()
