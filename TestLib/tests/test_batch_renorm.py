"""Batch Renormalization (Ioffe 2017, arXiv 1702.03275): `Dnn.batchRenormNd` and `Dnn.batchRenormNdBackward`, and the
modules' ``renorm`` option, on every backend, against the float64 reference (`Reference.batchRenormTrain`) and float64
finite differences."""

import io

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm2D, SyncBatchNorm2D
from PuzzleLib.Modules.Module import ModuleError
from PuzzleLib.TestLib import Backends, Reference
from PuzzleLib.TestLib.GradientCheck import moduleInputGradientError, numericGradient, relativeError

EPS = 1e-5
CLIP = {"rmax": 3.0, "dmax": 2.0}
# NOTE: mode, data shape, normalized axes, maps axis
CASES = {
    "spatial": ("spatial", (4, 3, 5, 6), (0, 2, 3), 1),
    "perActivation": ("perActivation", (16, 3), (0,), 1),
    "channelsLast": ((0, 1, 2), (3, 4, 5, 3), (0, 1, 2), 3),
}


def perMap(values, shape, axes, dtype=np.float32):
    """A per-map host array of the keepdims shape of `shape` for `axes`."""
    keep = tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))
    return np.asarray(values, dtype=np.float64).reshape(keep).astype(dtype)


def renormState(shape, axes, dtype=np.float32):
    """Per-map arrays where the three maps meet rmax, no bound, and rmin (r) and -dmax, none, dmax (d) with data of
    standard deviation about 2 and mean about 1."""
    scale = perMap([1.5, 0.7, -1.1], shape, axes, dtype)
    bias = perMap([0.3, -0.2, 0.5], shape, axes, dtype)
    renormMean = perMap([4.0, 1.2, -30.0], shape, axes, dtype)
    renormStd = perMap([0.5, 2.2, 9.0], shape, axes, dtype)
    return scale, bias, renormMean, renormStd


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_updates_match_the_float64_reference(case):
    mode, shape, axes, _ = CASES[case]
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    scale, bias, renormMean, renormStd = renormState(shape, axes)
    mean, var = perMap([0.1, 0.2, 0.3], shape, axes), perMap([1.0, 2.0, 3.0], shape, axes)
    arrays = [gpuarray.to_gpu(a) for a in (host, scale, bias, mean, var, renormMean, renormStd)]

    out, savemean, saveinvvar, r, d = Dnn.batchRenormNd(*arrays, EPS, 0.25, 0.9, mode, **CLIP)
    ref = Reference.batchRenormTrain(host, scale, bias, axes, EPS, renormMean, renormStd,
                                     rmin=1 / 3, rmax=3.0, dmax=2.0)

    # NOTE: the state was built so that every bound is met once and each of r and d runs free once
    assert sorted(np.round(ref.r.ravel(), 6).tolist())[0] == round(1 / 3, 6) and ref.r.max() == 3.0
    assert ref.d.min() == -2.0 and ref.d.max() == 2.0
    np.testing.assert_allclose(out.get(), ref.out, atol=2e-5)
    np.testing.assert_allclose(r.get(), ref.r, rtol=1e-5)
    np.testing.assert_allclose(d.get(), ref.d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(savemean.get(), ref.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saveinvvar.get(), ref.invstd, rtol=1e-5)

    newMean, newVar = Reference.runningUpdate(mean, var, ref.mean, ref.var, ref.m, 0.25)
    np.testing.assert_allclose(arrays[3].get(), newMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays[4].get(), newVar, rtol=1e-5)
    np.testing.assert_allclose(arrays[5].get(), 0.9 * renormMean + 0.1 * ref.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays[6].get(), 0.9 * renormStd + 0.1 * ref.sigma, rtol=1e-5)


def test_float64_forward_is_exact(backend):
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))
    _, shape, axes, _ = CASES["spatial"]
    host = np.random.normal(1.0, 2.0, shape)
    scale, bias, renormMean, renormStd = renormState(shape, axes, np.float64)
    arrays = [gpuarray.to_gpu(a) for a in (host, scale, bias, renormMean, renormStd)]
    out, savemean, saveinvvar, r, d = Dnn.batchRenormNd(*arrays[:3], None, None, *arrays[3:], EPS, rmax=2.5)
    ref = Reference.batchRenormTrain(host, scale, bias, axes, EPS, renormMean, renormStd, rmin=0.4, rmax=2.5)
    assert savemean.dtype == r.dtype == np.float64
    np.testing.assert_allclose(out.get(), ref.out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.get(), ref.r, rtol=1e-13)
    np.testing.assert_allclose(d.get(), ref.d, rtol=1e-13, atol=1e-15)


def test_missing_bounds_are_none_and_a_missing_rmin_is_one_over_rmax():
    shape, axes = (6, 3), (0,)
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    scale, bias, renormMean, renormStd = renormState(shape, axes)

    def correction(**bounds):
        arrays = [gpuarray.to_gpu(a) for a in (host, scale, bias, renormMean, renormStd)]
        _, _, _, r, d = Dnn.batchRenormNd(*arrays[:3], None, None, *arrays[3:], EPS, mode="perActivation", **bounds)
        return r.get().ravel(), d.get().ravel()

    free = Reference.batchRenormTrain(host, scale, bias, axes, EPS, renormMean, renormStd)
    r, d = correction()
    np.testing.assert_allclose(r, free.r.ravel(), rtol=1e-5)
    np.testing.assert_allclose(d, free.d.ravel(), rtol=1e-5)
    r, _ = correction(rmax=2.0)
    np.testing.assert_allclose(r, np.clip(free.r.ravel(), 0.5, 2.0), rtol=1e-5)
    r, _ = correction(rmax=2.0, rmin=0.0)
    np.testing.assert_allclose(r, np.clip(free.r.ravel(), 0.0, 2.0), rtol=1e-5)
    r, d = correction(rmax=1.0, dmax=0.0)
    assert r.tolist() == [1.0] * 3 and d.tolist() == [0.0] * 3


def test_with_r_one_and_d_zero_it_is_batch_normalization():
    mode, shape, axes, _ = CASES["spatial"]
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    scale, bias, renormMean, renormStd = renormState(shape, axes)
    x, dy = gpuarray.to_gpu(host), gpuarray.to_gpu(grad)
    p = [gpuarray.to_gpu(a) for a in (scale, bias, renormMean, renormStd)]

    out, savemean, saveinvvar, r, d = Dnn.batchRenormNd(x, p[0], p[1], None, None, p[2], p[3], rmax=1.0, dmax=0.0)
    plain, plainMean, plainInvstd = Dnn.batchNormNd(x, p[0], p[1], None, None, EPS)
    np.testing.assert_allclose(out.get(), plain.get(), rtol=1e-6, atol=1e-6)

    renormed = Dnn.batchRenormNdBackward(x, dy, p[0], savemean, saveinvvar, r, d)
    expected = Dnn.batchNormNdBackward(x, dy, p[0], plainMean, plainInvstd, EPS)
    for got, want in zip(renormed, expected, strict=True):
        np.testing.assert_allclose(got.get(), want.get(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_matches_the_reference_with_r_and_d_constant(case):
    mode, shape, axes, _ = CASES[case]
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    scale, bias, renormMean, renormStd = renormState(shape, axes)
    x = gpuarray.to_gpu(host)
    p = [gpuarray.to_gpu(a) for a in (scale, bias, renormMean, renormStd)]
    _, savemean, saveinvvar, r, d = Dnn.batchRenormNd(x, p[0], p[1], None, None, p[2], p[3], EPS, mode=mode, **CLIP)

    ingrad, scalegrad, biasgrad = Dnn.batchRenormNdBackward(
        x, gpuarray.to_gpu(grad), p[0], savemean, saveinvvar, r, d, mode
    )
    ref = Reference.batchRenormTrain(host, scale, bias, axes, EPS, renormMean, renormStd,
                                     rmin=1 / 3, rmax=3.0, dmax=2.0)
    dx, dscale, dbias = Reference.batchRenormBackward(host, grad, scale, axes, EPS, ref.r, ref.d)
    np.testing.assert_allclose(ingrad.get(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scalegrad.get(), dscale, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(biasgrad.get(), dbias, rtol=1e-5, atol=1e-4)


def test_finite_differences_in_float64_with_r_and_d_held_constant(backend):
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))
    shape, axes = (3, 3, 2, 3), (0, 2, 3)
    host = np.random.normal(1.0, 2.0, shape)
    grad = np.random.randn(*shape)
    scale, bias, renormMean, renormStd = renormState(shape, axes, np.float64)
    p = [gpuarray.to_gpu(a) for a in (scale, bias, renormMean, renormStd)]
    x = gpuarray.to_gpu(host)
    _, savemean, saveinvvar, r, d = Dnn.batchRenormNd(x, p[0], p[1], None, None, p[2], p[3], EPS, rmax=3.0)
    ingrad, scalegrad, biasgrad = Dnn.batchRenormNdBackward(x, gpuarray.to_gpu(grad), p[0], savemean, saveinvvar, r, d)
    r0, d0 = r.get(), d.get()

    def held(data, gain=scale):
        """The forward with this call's r and d frozen: the function whose gradient backward computes."""
        ref = Reference.batchNormTrain(data, np.ones_like(gain), np.zeros_like(gain), axes, EPS)
        return (ref.out * r0 + d0) * gain + bias

    assert relativeError(ingrad.get(), numericGradient(held, host, grad)) < 1e-8
    assert relativeError(scalegrad.get(), numericGradient(lambda s: held(host, s), scale, grad)) < 1e-6
    assert relativeError(biasgrad.get(), numericGradient(lambda b: held(host) - bias + b, bias, grad)) < 1e-6


def test_finite_differences_of_the_forward_itself_where_the_bounds_hold_r_and_d(backend):
    """Where r and d sit at their bounds they are locally constant, so the forward's own finite differences check the
    backward (no freezing by the test)."""
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))
    shape, axes = (4, 3, 3), (0, 2)
    host = np.random.normal(1.0, 2.0, shape)
    grad = np.random.randn(*shape)
    scale, bias, _, _ = renormState(shape, axes, np.float64)
    # NOTE: far from the data's statistics: r at rmax or rmin and d at +-dmax in every map
    renormMean, renormStd = perMap([30.0, -300.0, 30.0], shape, axes, np.float64), perMap([0.1, 50, 0.1], shape, axes)
    p = [gpuarray.to_gpu(a) for a in (scale, bias)]

    def forward(data):
        stats = [gpuarray.to_gpu(a) for a in (renormMean, renormStd.astype(np.float64))]
        out, savemean, saveinvvar, r, d = Dnn.batchRenormNd(
            gpuarray.to_gpu(data), *p, None, None, *stats, EPS, 1.0, 0.5, mode=axes, rmax=2.0, dmax=1.5
        )
        return out, (savemean, saveinvvar, r, d)

    out, saved = forward(host)
    assert sorted(np.abs(saved[2].get()).ravel().tolist()) == [0.5, 2.0, 2.0]
    assert np.abs(saved[3].get()).ravel().tolist() == [1.5, 1.5, 1.5]
    ingrad, _, _ = Dnn.batchRenormNdBackward(gpuarray.to_gpu(host), gpuarray.to_gpu(grad), p[0], *saved, mode=axes)
    numeric = numericGradient(lambda data: forward(data)[0].get(), host, grad)
    assert relativeError(ingrad.get(), numeric) < 1e-8


def test_a_map_with_a_non_finite_batch_keeps_its_running_and_renorm_statistics():
    shape, axes = (6, 3), (0,)
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    host[2, 1] = np.nan
    scale, bias, renormMean, renormStd = renormState(shape, axes)
    state = [perMap([0.1, 0.2, 0.3], shape, axes), perMap([1.0, 2.0, 3.0], shape, axes), renormMean, renormStd]
    arrays = [gpuarray.to_gpu(a) for a in state]
    skipped = gpuarray.zeros(renormMean.shape, np.float32)
    x = gpuarray.to_gpu(host)
    out, _, _, _, _ = Dnn.batchRenormNd(
        x, gpuarray.to_gpu(scale), gpuarray.to_gpu(bias), *arrays, EPS, 0.5, 0.9, "perActivation", skipped=skipped
    )
    assert skipped.get().ravel().tolist() == [0.0, 1.0, 0.0]
    ref = Reference.batchRenormTrain(host, scale, bias, axes, EPS, renormMean, renormStd)
    for before, after in zip(state, arrays, strict=True):
        assert after.get()[0, 1] == before[0, 1]
    np.testing.assert_allclose(arrays[2].get()[:, ::2], (0.9 * renormMean + 0.1 * ref.mean)[:, ::2], rtol=1e-5)
    np.testing.assert_allclose(arrays[3].get()[:, ::2], (0.9 * renormStd + 0.1 * ref.sigma)[:, ::2], rtol=1e-5)
    assert np.isnan(out.get()[:, 1]).all() and np.isfinite(out.get()[:, ::2]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rmax": 0.5}, "rmax must be >= 1"),
        ({"rmin": 1.5}, "rmin must be in [0, 1]"),
        ({"dmax": -1.0}, "dmax must be >= 0"),
        ({"rmax": "3"}, "rmax must be a number"),
        ({"renormMomentum": 1.5}, "renormMomentum must be in [0, 1]"),
        ({"factor": -0.1}, "factor must be in [0, 1]"),
        ({"renormStd": "mean"}, "skipped must not share memory with renormMean"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_is_written(kwargs, message):
    shape, axes = (6, 3), (0,)
    scale, bias, renormMean, renormStd = renormState(shape, axes)
    x = gpuarray.to_gpu(np.random.randn(*shape).astype(np.float32))
    mean, var, rm, rs = (gpuarray.to_gpu(a) for a in (np.zeros_like(scale), np.ones_like(scale), renormMean, renormStd))
    skipped = None
    if kwargs.get("renormStd") == "mean":
        kwargs, skipped = {}, rm
    before = [a.get() for a in (mean, var, rm, rs)]
    with pytest.raises(ValueError) as info:
        Dnn.batchRenormNd(
            x, gpuarray.to_gpu(scale), gpuarray.to_gpu(bias), mean, var, rm, rs, mode="perActivation",
            skipped=skipped, **kwargs,
        )
    assert message in str(info.value)
    for array, saved in zip((mean, var, rm, rs), before, strict=True):
        assert np.array_equal(array.get(), saved)


def test_a_batch_of_one_element_per_map_is_refused():
    renormMean, renormStd = gpuarray.zeros((1, 3), np.float32), gpuarray.to_gpu(np.ones((1, 3), np.float32))
    scale, bias = gpuarray.to_gpu(np.ones((1, 3), np.float32)), gpuarray.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="at least 2 elements per map"):
        Dnn.batchRenormNd(gpuarray.zeros((1, 3), np.float32), scale, bias, None, None, renormMean, renormStd)
    assert renormStd.get().tolist() == [[1.0, 1.0, 1.0]]


# --- modules


def simulate(batches, scale, bias, axes, clipping, momentum=0.99, initFactor=1.0, minFactor=0.1):
    """Float64 steps of a renorm module over `batches`: (outputs, mean, var, renormMean, renormStd)."""
    shape = batches[0].shape
    renormMean, renormStd = perMap([0.0] * 3, shape, axes, np.float64), perMap([1.0] * 3, shape, axes, np.float64)
    mean, var = renormMean.copy(), renormStd.copy()
    outputs = []
    for step, host in enumerate(batches):
        ref = Reference.batchRenormTrain(host, scale, bias, axes, EPS, renormMean, renormStd, **clipping)
        outputs.append(ref.out)
        factor = max(initFactor / (step + 1), minFactor)
        mean, var = Reference.runningUpdate(mean, var, ref.mean, ref.var, ref.m, factor)
        renormMean = momentum * renormMean + (1 - momentum) * ref.mean
        renormStd = momentum * renormStd + (1 - momentum) * ref.sigma
    return outputs, mean, var, renormMean, renormStd


@pytest.mark.parametrize("kind", ["BatchNorm2D", "channelsLast", "BatchNorm"])
def test_a_module_follows_the_float64_simulation_over_several_steps(kind):
    if kind == "BatchNorm":
        bn, shape, axes = BatchNorm(3, renorm=True, renormMomentum=0.8), (16, 3), (0,)
    else:
        axis = -1 if kind == "channelsLast" else 1
        bn = BatchNorm2D(3, renorm=True, renormMomentum=0.8, axis=axis, renormClipping={"rmax": 1.5, "dmax": 0.5})
        shape = (4, 3, 5, 6) if axis == 1 else (4, 5, 6, 3)
        axes = (0, 2, 3) if axis == 1 else (0, 1, 2)
    batches = [np.random.normal(1.0 + step, 2.0, shape).astype(np.float32) for step in range(4)]
    scale, bias = bn.scale.get().astype(np.float64), bn.bias.get().astype(np.float64)
    clipping = {"rmin": 1 / 1.5, "rmax": 1.5, "dmax": 0.5} if kind != "BatchNorm" else {}
    outputs, mean, var, renormMean, renormStd = simulate(batches, scale, bias, axes, clipping, momentum=0.8)

    for host, expected in zip(batches, outputs, strict=True):
        out = bn(gpuarray.to_gpu(host)).get()
        np.testing.assert_allclose(out, expected.reshape(out.shape), atol=5e-5)
    for attr, expected in (("mean", mean), ("var", var), ("renormMean", renormMean), ("renormStd", renormStd)):
        np.testing.assert_allclose(getattr(bn, attr).get().ravel(), expected.ravel(), rtol=1e-5, atol=1e-6)
    assert bn.numOfProps == 4
    assert not np.allclose(renormMean, mean), "the two kinds of moving statistics must differ here"

    # NOTE: evaluation is batch normalization's, with the running statistics
    bn.evalMode()
    out = bn(gpuarray.to_gpu(batches[0])).get()
    expected = Reference.batchNormEval(batches[0], scale, bias, mean, var, EPS, axes)
    np.testing.assert_allclose(out, expected.reshape(out.shape), atol=1e-4)


def test_module_backward_and_accumulation_follow_the_reference():
    bn = BatchNorm2D(3, renorm=True, renormClipping={"rmax": 1.2, "dmax": 0.3})
    shape, axes = (4, 3, 5, 6), (0, 2, 3)
    first = np.random.normal(0.0, 1.0, shape).astype(np.float32)
    bn(gpuarray.to_gpu(first))
    renormMean, renormStd = bn.renormMean.get(), bn.renormStd.get()
    host = np.random.normal(2.0, 3.0, shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    scale = bn.scale.get()
    ref = Reference.batchRenormTrain(host, scale, bn.bias.get(), axes, EPS, renormMean, renormStd, rmin=1 / 1.2,
                                     rmax=1.2, dmax=0.3)
    assert (np.abs(ref.d) == 0.3).all() and (ref.r == 1.2).any()
    dx, dscale, dbias = Reference.batchRenormBackward(host, grad, scale, axes, EPS, ref.r, ref.d)

    bn.backward(gpuarray.to_gpu(grad))
    np.testing.assert_allclose(bn.grad.get(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.vars["scale"].grad.get(), dscale, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.vars["bias"].grad.get(), dbias, rtol=1e-5, atol=1e-4)

    bn.backward(gpuarray.to_gpu(grad), scale=0.5, momentum=1.0)
    np.testing.assert_allclose(bn.vars["scale"].grad.get(), 1.5 * dscale, rtol=1e-4, atol=1e-4)


def test_module_float64_gradient_check(backend):
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))
    bn = BatchNorm(3, renorm=True, renormMomentum=1.0, renormClipping={"rmax": 1.1, "dmax": 0.2})
    bn.calcMode(np.float64)
    bn.renormMean.set(np.array([[5.0, -500.0, 5.0]], np.float32).reshape(bn.renormMean.shape))
    bn.renormStd.set(np.array([[0.01, 100.0, 0.01]], np.float32).reshape(bn.renormStd.shape))
    host, grad = np.random.normal(0.5, 1.5, (6, 3)), np.random.randn(6, 3)

    # NOTE: renormMomentum 1 keeps the renorm statistics, and the bounds hold r and d: the forward is a function of x
    assert moduleInputGradientError(bn, host, grad) < 1e-7
    assert np.allclose(np.abs(bn.renormCorrection.d.get()), 0.2)
    assert np.allclose(np.sort(bn.renormCorrection.r.get().ravel()), [1 / 1.1, 1.1, 1.1])


def test_clipping_can_change_between_steps_and_is_checked():
    bn = BatchNorm(3, renorm=True)
    assert bn.renormClipping == {}
    bn.renormClipping = {"rmax": 1, "dmax": 0}
    assert bn.renormClipping == {"rmax": 1.0, "dmax": 0.0}
    bn(gpuarray.to_gpu(np.random.normal(3.0, 4.0, (8, 3)).astype(np.float32)))
    assert bn.renormCorrection.r.get().ravel().tolist() == [1.0] * 3
    assert bn.renormCorrection.d.get().ravel().tolist() == [0.0] * 3

    with pytest.raises(ValueError, match="rmax must be >= 1"):
        bn.renormClipping = {"rmax": 0.9}
    with pytest.raises(ValueError, match="some of the keys"):
        bn.renormClipping = {"r_max": 2.0}
    assert bn.renormClipping == {"rmax": 1.0, "dmax": 0.0}
    with pytest.raises(ValueError, match="renormClipping needs renorm=True"):
        BatchNorm(3).renormClipping = {"rmax": 2.0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"renorm": 1}, "renorm must be True or False"),
        ({"renormClipping": {"rmax": 2.0}}, "renormClipping needs renorm=True"),
        ({"renorm": True, "renormClipping": {"dmax": -1}}, "dmax must be >= 0"),
        ({"renorm": True, "renormClipping": [3.0]}, "renormClipping must be None or a dict"),
        ({"renorm": True, "renormMomentum": -0.5}, "renormMomentum must be in [0, 1]"),
    ],
)
def test_bad_module_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        BatchNorm2D(3, **kwargs)
    assert message in str(info.value) and "BatchNorm2D" in str(info.value)


def test_synchronized_modules_refuse_renorm():
    with pytest.raises(ValueError, match="renorm is not supported by the synchronized modules"):
        SyncBatchNorm2D(3, renorm=True, comm=MPI.COMM_SELF)


def test_renorm_statistics_are_saved_and_loaded():
    bn = BatchNorm2D(3, renorm=True, name="bn")
    bn(gpuarray.to_gpu(np.random.normal(2.0, 3.0, (4, 3, 2, 2)).astype(np.float32)))
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as hdf:
        bn.save(hdf)
    loaded = BatchNorm2D(3, renorm=True, name="bn", empty=True)
    with h5py.File(buffer, "r") as hdf:
        assert "bn.renormStd" in hdf["attrs"]
        loaded.load(hdf)
    for attr in ("renormMean", "renormStd", "mean", "var"):
        assert np.array_equal(getattr(loaded, attr).get(), getattr(bn, attr).get())
    assert not np.array_equal(bn.renormStd.get(), np.ones((1, 3, 1, 1), np.float32))


def test_a_failed_training_forward_leaves_the_renorm_statistics():
    bn = BatchNorm(3, renorm=True)
    bn(gpuarray.to_gpu(np.random.normal(2.0, 3.0, (8, 3)).astype(np.float32)))
    before = bn.renormMean.get(), bn.renormStd.get(), bn.numOfProps
    with pytest.raises(ModuleError, match="at least 2 elements per map"):
        bn(gpuarray.to_gpu(np.ones((1, 3), np.float32)))
    assert np.array_equal(bn.renormMean.get(), before[0]) and np.array_equal(bn.renormStd.get(), before[1])
    assert bn.numOfProps == before[2]
