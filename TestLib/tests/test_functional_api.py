"""The Theano-like functional API of `Backend.Dnn` against the float64 reference, on every backend.

`batchNormTrain`, `batchNormTest` and `batchNormalization` follow Theano's ``batch_normalization_train``,
``batch_normalization_test`` and ``batch_normalization``; their backward functions are checked against the reference's
chain rule and against float64 finite differences (float64 data exists on the CPU backend only; elsewhere those
cases skip with the reason). Cases cover per-activation and spatial modes, odd axis tuples, channels-last data, the
dropped-axes parameter form, non-adjacent kept axes (the permuted fallback) and every error case.
"""

import numpy as np
import pytest

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.TestLib import Backends, GradientCheck, Reference

EPS = 1e-4


def requireFloat64(backend):
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))

# name: (data shape, axes as passed, the same axes as a sorted non-negative tuple, written out independently)
CASES = {
    "per_activation_2d": ((9, 5), "per-activation", (0,)),
    "peractivation_theano_spelling": ((9, 5), "peractivation", (0,)),
    "per_activation_4d": ((6, 3, 2, 4), "per-activation", (0,)),
    "spatial_3d": ((4, 3, 7), "spatial", (0, 2)),
    "spatial_4d": ((3, 4, 5, 6), "spatial", (0, 2, 3)),
    "spatial_2d_is_per_activation": ((7, 4), "spatial", (0,)),
    "sequence_axes_0_1": ((5, 7, 3), (0, 1), (0, 1)),
    "axes_0_2_on_3d": ((4, 3, 6), (0, 2), (0, 2)),
    "channels_last_4d": ((3, 5, 6, 4), (0, 1, 2), (0, 1, 2)),
    "channels_last_5d": ((2, 3, 4, 5, 3), (0, 1, 2, 3), (0, 1, 2, 3)),
    "negative_axes": ((4, 3, 6), [0, -1], (0, 2)),
    "unsorted_axes": ((3, 5, 6, 4), (2, 0, 1), (0, 1, 2)),
    "all_axes": ((6, 4), (0, 1), (0, 1)),
    "nonadjacent_axis_1_of_3d": ((4, 3, 6), (1,), (1,)),
    "nonadjacent_axes_0_2_of_4d": ((3, 4, 5, 6), (0, 2), (0, 2)),
    "nonadjacent_axes_1_3_of_5d": ((2, 3, 4, 3, 2), (1, 3), (1, 3)),
}


def paramShape(shape, axes, dropped):
    if dropped:
        return tuple(dim for axis, dim in enumerate(shape) if axis not in axes)
    return tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))


def makeCase(name, dropped, dtype=np.float32, seed=0):
    shape, axes, normalized = CASES[name]
    rng = np.random.default_rng(seed)
    pshape = paramShape(shape, normalized, dropped)
    ptype = np.float64 if dtype == np.float64 else np.float32
    x = rng.normal(1.5, 2.0, size=shape).astype(dtype)
    gamma = rng.normal(1.0, 0.3, size=pshape).astype(ptype)
    beta = rng.normal(0.0, 0.5, size=pshape).astype(ptype)
    return x, gamma, beta, axes, normalized


@pytest.mark.parametrize("dropped", [False, True], ids=["keepdims_params", "dropped_params"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_train_matches_reference(name, dropped):
    x, gamma, beta, axes, normalized = makeCase(name, dropped)
    pshape = gamma.shape
    rng = np.random.default_rng(1)
    runMean = rng.normal(size=pshape).astype(np.float32)
    runVar = rng.uniform(0.5, 2.0, size=pshape).astype(np.float32)
    factor = 0.3

    args = [gpuarray.to_gpu(a) for a in (x, gamma, beta, runMean, runVar)]
    out, mean, invstd, newMean, newVar = Dnn.batchNormTrain(
        args[0], args[1], args[2], axes, EPS, runningAverageFactor=factor, runningMean=args[3], runningVar=args[4]
    )

    ref = Reference.batchNormTrain(x, gamma, beta, normalized, EPS)
    m = int(np.prod([x.shape[axis] for axis in normalized]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert mean.shape == pshape and invstd.shape == pshape and newMean.shape == pshape and newVar.shape == pshape
    np.testing.assert_allclose(out.get(), ref.out, atol=2e-5)
    np.testing.assert_allclose(mean.get().ravel(), ref.mean.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(invstd.get().ravel(), ref.invstd.ravel(), rtol=1e-5)

    # Theano's documented update, written out here: unbiased by m / (m - 1)
    expectMean = runMean.astype(np.float64).ravel() * (1 - factor) + ref.mean.ravel() * factor
    expectVar = runVar.astype(np.float64).ravel() * (1 - factor) + m / (m - 1) * ref.var.ravel() * factor
    np.testing.assert_allclose(newMean.get().ravel(), expectMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(newVar.get().ravel(), expectVar, rtol=1e-5)

    # pure: the arguments are untouched, the results are new arrays
    for given, host in zip(args, (x, gamma, beta, runMean, runVar), strict=True):
        np.testing.assert_array_equal(given.get(), host)
    assert newMean.ptr != args[3].ptr and newVar.ptr != args[4].ptr


@pytest.mark.parametrize("name", ["spatial_4d", "sequence_axes_0_1", "nonadjacent_axis_1_of_3d"])
def test_train_without_running_statistics_returns_three(name):
    x, gamma, beta, axes, normalized = makeCase(name, dropped=True)
    result = Dnn.batchNormTrain(*(gpuarray.to_gpu(a) for a in (x, gamma, beta)), axes=axes, epsilon=EPS)
    assert len(result) == 3
    np.testing.assert_allclose(
        result[0].get(), Reference.batchNormTrain(x, gamma, beta, normalized, EPS).out, atol=2e-5
    )


@pytest.mark.parametrize("dropped", [False, True], ids=["keepdims_params", "dropped_params"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_train_backward_matches_reference(name, dropped):
    x, gamma, beta, axes, normalized = makeCase(name, dropped, seed=2)
    grad = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    gx = gpuarray.to_gpu(x)
    _, mean, invstd = Dnn.batchNormTrain(gx, gpuarray.to_gpu(gamma), gpuarray.to_gpu(beta), axes, EPS)

    dx, dgamma, dbeta = Dnn.batchNormTrainBackward(
        gx, gpuarray.to_gpu(grad), gpuarray.to_gpu(gamma), mean, invstd, axes
    )
    refDx, refDgamma, refDbeta = Reference.batchNormBackward(x, grad, gamma, normalized, EPS)
    assert dgamma.shape == gamma.shape and dbeta.shape == gamma.shape
    np.testing.assert_allclose(dx.get(), refDx, atol=2e-5)
    np.testing.assert_allclose(dgamma.get().ravel(), refDgamma.ravel(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta.get().ravel(), refDbeta.ravel(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dropped", [False, True], ids=["keepdims_params", "dropped_params"])
@pytest.mark.parametrize("name", ["per_activation_2d", "spatial_4d", "channels_last_5d", "nonadjacent_axes_0_2_of_4d"])
def test_test_mode_matches_reference(name, dropped):
    x, gamma, beta, axes, normalized = makeCase(name, dropped, seed=4)
    rng = np.random.default_rng(5)
    mean = rng.normal(size=gamma.shape).astype(np.float32)
    var = rng.uniform(0.5, 3.0, size=gamma.shape).astype(np.float32)

    out = Dnn.batchNormTest(*(gpuarray.to_gpu(a) for a in (x, gamma, beta, mean, var)), axes=axes, epsilon=EPS)
    ref = Reference.batchNormEval(x, gamma, beta, mean, var, EPS, axes=normalized)
    np.testing.assert_allclose(out.get(), ref, atol=2e-5)

    grad = rng.normal(size=x.shape).astype(np.float32)
    dx, dgamma, dbeta, dmean, dvar = Dnn.batchNormTestBackward(
        *(gpuarray.to_gpu(a) for a in (x, grad, gamma, mean, var)), axes=axes, epsilon=EPS
    )
    refDx, refDgamma, refDbeta = Reference.frozenBackward(x, grad, gamma, mean, var, EPS, axes=normalized)
    np.testing.assert_allclose(dx.get(), refDx, atol=2e-5)
    np.testing.assert_allclose(dgamma.get().ravel(), refDgamma.ravel(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta.get().ravel(), refDbeta.ravel(), rtol=1e-4, atol=1e-4)
    assert dmean.shape == mean.shape and dvar.shape == var.shape


def test_float16_inputs_follow_the_reference():
    x, gamma, beta, axes, normalized = makeCase("channels_last_4d", dropped=True, dtype=np.float16)
    out, mean, invstd = Dnn.batchNormTrain(*(gpuarray.to_gpu(a) for a in (x, gamma, beta)), axes=axes, epsilon=EPS)
    assert out.dtype == np.float16 and mean.dtype == np.float32
    np.testing.assert_allclose(out.get(), Reference.batchNormTrain(x, gamma, beta, normalized, EPS).out, atol=1e-2)


# batchNormalization ---------------------------------------------------------------------------------------------------

BROADCAST_CASES = {
    # name: (inputs shape, gamma, beta, mean, std shapes)
    "per_map_spatial": ((4, 3, 5), (1, 3, 1), (1, 3, 1), (1, 3, 1), (1, 3, 1)),
    "mixed_broadcast": ((4, 3, 5), (1, 3, 1), (1, 1, 1), (1, 3, 5), (1, 1, 5)),
    "nonadjacent_kept": ((3, 4, 2, 5), (1, 4, 1, 5), (1, 4, 1, 1), (1, 1, 1, 5), (1, 4, 1, 5)),
    "scalars": ((6, 2), (1, 1), (1, 1), (1, 1), (1, 1)),
}


def makeBroadcast(name, dtype=np.float32, seed=6):
    shape, *pshapes = BROADCAST_CASES[name]
    rng = np.random.default_rng(seed)
    ptype = np.float64 if dtype == np.float64 else np.float32
    x = rng.normal(0.5, 2.0, size=shape).astype(dtype)
    gamma, beta, mean = (rng.normal(size=s).astype(ptype) for s in pshapes[:3])
    std = rng.uniform(0.5, 2.0, size=pshapes[3]).astype(ptype)
    return x, gamma, beta, mean, std


def theanoBatchNormalization(x, gamma, beta, mean, std):
    x, gamma, beta, mean, std = (np.asarray(a, dtype=np.float64) for a in (x, gamma, beta, mean, std))
    return (x - mean) * (gamma / std) + beta


@pytest.mark.parametrize("name", sorted(BROADCAST_CASES))
def test_batch_normalization_matches_theano_formula(name):
    arrays = makeBroadcast(name)
    out = Dnn.batchNormalization(*(gpuarray.to_gpu(a) for a in arrays))
    np.testing.assert_allclose(out.get(), theanoBatchNormalization(*arrays), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BROADCAST_CASES))
def test_batch_normalization_gradients_by_finite_differences(name, backend):
    requireFloat64(backend)
    arrays = list(makeBroadcast(name, dtype=np.float64))
    grad = np.random.default_rng(7).normal(size=arrays[0].shape)
    results = Dnn.batchNormalizationBackward(
        gpuarray.to_gpu(arrays[0]), gpuarray.to_gpu(grad), *(gpuarray.to_gpu(a) for a in arrays[1:])
    )

    for index, analytic in enumerate(results):
        assert analytic.shape == arrays[index].shape

        def func(value, index=index):
            args = [gpuarray.to_gpu(value if i == index else a) for i, a in enumerate(arrays)]
            return Dnn.batchNormalization(*args).get()

        numeric = GradientCheck.numericGradient(func, arrays[index], grad)
        assert GradientCheck.relativeError(analytic.get(), numeric) < 1e-6, "gradient %d" % index


@pytest.mark.parametrize("name", ["per_activation_2d", "sequence_axes_0_1", "nonadjacent_axis_1_of_3d", "all_axes"])
def test_train_gradients_by_finite_differences(name, backend):
    requireFloat64(backend)
    x, gamma, beta, axes, _ = makeCase(name, dropped=True, dtype=np.float64, seed=8)
    grad = np.random.default_rng(9).normal(size=x.shape)
    arrays = [x, gamma, beta]

    gx = gpuarray.to_gpu(x)
    _, mean, invstd = Dnn.batchNormTrain(gx, gpuarray.to_gpu(gamma), gpuarray.to_gpu(beta), axes, EPS)
    assert mean.dtype == np.float64
    results = Dnn.batchNormTrainBackward(gx, gpuarray.to_gpu(grad), gpuarray.to_gpu(gamma), mean, invstd, axes)

    for index, analytic in enumerate(results):

        def func(value, index=index):
            args = [gpuarray.to_gpu(value if i == index else a) for i, a in enumerate(arrays)]
            return Dnn.batchNormTrain(*args, axes=axes, epsilon=EPS)[0].get()

        numeric = GradientCheck.numericGradient(func, arrays[index], grad)
        assert GradientCheck.relativeError(analytic.get(), numeric) < 1e-6, "gradient %d" % index


@pytest.mark.parametrize("name", ["spatial_3d", "channels_last_4d", "nonadjacent_axes_0_2_of_4d"])
def test_test_gradients_by_finite_differences(name, backend):
    requireFloat64(backend)
    x, gamma, beta, axes, _ = makeCase(name, dropped=False, dtype=np.float64, seed=10)
    rng = np.random.default_rng(11)
    mean = rng.normal(size=gamma.shape)
    var = rng.uniform(0.5, 2.0, size=gamma.shape)
    grad = rng.normal(size=x.shape)
    arrays = [x, gamma, beta, mean, var]

    results = Dnn.batchNormTestBackward(
        gpuarray.to_gpu(x), gpuarray.to_gpu(grad), *(gpuarray.to_gpu(a) for a in (gamma, mean, var)), axes, EPS
    )
    # results are (dinputs, dgamma, dbeta, dmean, dvar): the argument order of the forward
    for index, analytic in enumerate(results):

        def func(value, index=index):
            args = [gpuarray.to_gpu(value if i == index else a) for i, a in enumerate(arrays)]
            return Dnn.batchNormTest(*args, axes=axes, epsilon=EPS).get()

        numeric = GradientCheck.numericGradient(func, arrays[index], grad)
        assert GradientCheck.relativeError(analytic.get(), numeric) < 1e-6, "gradient %d" % index


# errors ---------------------------------------------------------------------------------------------------------------


def arrays3(shape=(4, 3, 5), pshape=(3,)):
    rng = np.random.default_rng(12)
    return (
        gpuarray.to_gpu(rng.normal(size=shape).astype(np.float32)),
        gpuarray.to_gpu(np.ones(pshape, np.float32)),
        gpuarray.to_gpu(np.zeros(pshape, np.float32)),
    )


@pytest.mark.parametrize(
    "axes, fragments",
    [
        ((0, 3), ["[-3, 2]", "3D", "out of range: 3"]),
        ((0, -4), ["out of range: -4"]),
        ((0, 2, 2), ["twice", "repeated: 2"]),
        ((0, 2, -1), ["twice", "repeated: 2"]),
        ((), ["at least one axis"]),
        ("spatial2", ["'spatial'", "'spatial2'"]),
        ((0, 1.0), ["tuple of ints", "1.0"]),
        ((True,), ["tuple of ints", "True"]),
        (0, ["tuple of ints", "got 0"]),
    ],
    ids=[
        "out_of_range",
        "negative_out_of_range",
        "duplicated",
        "duplicated_negative",
        "empty",
        "unknown_name",
        "float_entry",
        "bool_entry",
        "bare_int",
    ],
)
def test_bad_axes_raise_value_error(axes, fragments):
    x, gamma, beta = arrays3()
    for call in (
        lambda: Dnn.batchNormTrain(x, gamma, beta, axes),
        lambda: Dnn.batchNormTest(x, gamma, beta, gamma, gamma, axes),
        lambda: Dnn.batchNormTrainBackward(x, x, gamma, gamma, gamma, axes),
    ):
        with pytest.raises(ValueError) as info:
            call()
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize(
    "pshape", [(4,), (1, 4, 1), (3, 5), (1, 3)], ids=["wrong_size", "wrong_keepdims", "kept_batch", "wrong_rank"]
)
def test_mismatched_parameter_shape_names_both_allowed_shapes(pshape):
    x, _, beta = arrays3()
    gamma = gpuarray.to_gpu(np.ones(pshape, np.float32))
    with pytest.raises(ValueError) as info:
        Dnn.batchNormTrain(x, gamma, beta, "spatial")
    message = str(info.value)
    assert "gamma" in message and "(1, 3, 1)" in message and "(3,)" in message and str(pshape) in message


def test_mismatched_running_statistics_shape():
    x, gamma, beta = arrays3()
    good, bad = gpuarray.zeros((3,), np.float32), gpuarray.zeros((1, 1, 3), np.float32)
    with pytest.raises(ValueError, match="runningVar must have shape"):
        Dnn.batchNormTrain(x, gamma, beta, "spatial", runningMean=good, runningVar=bad)


@pytest.mark.parametrize("given", ["runningMean", "runningVar"])
def test_running_statistics_must_come_together(given):
    x, gamma, beta = arrays3()
    stat = gpuarray.zeros((3,), np.float32)
    with pytest.raises(ValueError, match="runningMean and runningVar must be given together") as info:
        Dnn.batchNormTrain(x, gamma, beta, "spatial", **{given: stat})
    assert "only %s" % given in str(info.value)
    np.testing.assert_array_equal(stat.get(), 0)


def test_bad_epsilon_factor_and_batch():
    x, gamma, beta = arrays3()
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        Dnn.batchNormTrain(x, gamma, beta, "spatial", epsilon=0.0)
    with pytest.raises(ValueError, match=r"runningAverageFactor must be in \[0, 1\]; got 1.5"):
        Dnn.batchNormTrain(x, gamma, beta, "spatial", runningAverageFactor=1.5)
    one = gpuarray.to_gpu(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="at least 2 elements per map"):
        Dnn.batchNormTrain(one, gamma, beta, "per-activation")


def test_float64_parameters_need_float64_inputs():
    x, _, beta = arrays3()
    gamma = gpuarray.to_gpu(np.ones(3, np.float64))
    with pytest.raises(ValueError, match="gamma must have dtype float32; got float64"):
        Dnn.batchNormTrain(x, gamma, beta, "spatial")


@pytest.mark.parametrize("shape", [(3,), (1, 3, 1, 1), (2, 3, 1)], ids=["wrong_rank", "extra_axis", "wrong_size"])
def test_batch_normalization_rejects_non_broadcastable(shape):
    x = gpuarray.to_gpu(np.ones((4, 3, 5), np.float32))
    ok = gpuarray.to_gpu(np.ones((1, 3, 1), np.float32))
    bad = gpuarray.to_gpu(np.ones(shape, np.float32))
    with pytest.raises(ValueError) as info:
        Dnn.batchNormalization(x, ok, ok, ok, bad)
    assert "std must have the dimensionality of inputs (3D)" in str(info.value) and str(shape) in str(info.value)


def test_batch_norm_nd_takes_axes_as_its_mode():
    """The cuDNN-like entry point takes a tuple of normalized axes as `mode` and updates the running statistics in
    place."""
    rng = np.random.default_rng(13)
    x = rng.normal(3.0, 2.0, size=(4, 5, 6, 3)).astype(np.float32)
    scale, bias = rng.normal(1.0, 0.1, size=(1, 1, 1, 3)).astype(np.float32), np.zeros((1, 1, 1, 3), np.float32)
    mean, var = gpuarray.zeros((1, 1, 1, 3), np.float32), gpuarray.to_gpu(np.ones((1, 1, 1, 3), np.float32))

    out, savemean, saveinvvar = Dnn.batchNormNd(
        gpuarray.to_gpu(x), gpuarray.to_gpu(scale), gpuarray.to_gpu(bias), mean, var, 1e-5, 0.25, mode=(0, 1, 2)
    )
    ref = Reference.batchNormTrain(x, scale, bias, (0, 1, 2), 1e-5)
    np.testing.assert_allclose(out.get(), ref.out, atol=2e-5)
    expectMean, expectVar = Reference.runningUpdate(0.0, 1.0, ref.mean, ref.var, ref.m, 0.25)
    np.testing.assert_allclose(mean.get(), expectMean, rtol=1e-5)
    np.testing.assert_allclose(var.get(), expectVar, rtol=1e-5)


# Permute: the fallback for kept axes that are not adjacent ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    "shape, perm", [((4, 3, 6), (0, 2, 1)), ((3, 4, 5, 6), (1, 3, 0, 2)), ((2, 1, 3, 4, 5), (4, 1, 0, 3, 2))]
)
def test_permute_moves_every_element(shape, perm, dtype):
    from PuzzleLib.Backend import Permute

    x = np.random.default_rng(14).normal(size=shape).astype(dtype)
    out = gpuarray.empty(np.transpose(x, perm).shape, dtype)
    assert Permute.permute(gpuarray.to_gpu(x), perm, out=out) is out
    np.testing.assert_array_equal(out.get(), np.transpose(x, perm))


@pytest.mark.parametrize("shape, perm", [((4, 3, 6), (0, 2, 1)), ((3, 4, 5, 6), (1, 3, 0, 2)), ((5,), (0,))])
def test_permute_matches_numpy_and_checks_its_arguments(shape, perm):
    from PuzzleLib.Backend import Permute

    x = np.random.default_rng(15).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(Permute.permute(gpuarray.to_gpu(x), perm).get(), np.transpose(x, perm))

    with pytest.raises(ValueError, match="permutation of range"):
        Permute.permute(gpuarray.to_gpu(x), tuple(reversed(perm)) + (0,))
    wrong = gpuarray.empty(shape[:-1] + (shape[-1] + 1,), np.float32)
    with pytest.raises(ValueError, match="out must have shape"):
        Permute.permute(gpuarray.to_gpu(x), perm, out=wrong)
