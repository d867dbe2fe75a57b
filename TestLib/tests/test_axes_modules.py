"""Modules with the channel axis (`axis=-1`: channels-last data) against the float64 reference, on the backend in use.

Every rule of SPEC section 4 is checked for channels-last 3D, 4D and 5D data: the factor schedule over several batches,
evaluation, in-place evaluation, backward after both modes, gradient accumulation, save/load, and the errors.
"""

import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND, ModuleError
from PuzzleLib.TestLib import Reference

# name: (factory, data shape); the maps are on the last axis
CASES = {
    "sequence_1d_channels_last": (lambda maps, **kw: BatchNorm1D(maps, axis=-1, **kw), (5, 7, 3)),
    "images_2d_channels_last": (lambda maps, **kw: BatchNorm2D(maps, axis=-1, **kw), (3, 5, 6, 4)),
    "volumes_3d_channels_last": (lambda maps, **kw: BatchNorm3D(maps, axis=-1, **kw), (2, 3, 4, 5, 3)),
    "nd_channels_last_index": (lambda maps, **kw: BatchNormND(2, maps, axis=3, **kw), (3, 4, 5, 2)),
}


def build(case, **kw):
    factory, shape = CASES[case]
    return factory(shape[-1], **kw), shape, tuple(range(len(shape) - 1))


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_schedule_and_outputs(name):
    bn, shape, axes = build(name, initFactor=1.0, minFactor=0.3)
    assert bn.scale.shape == (1,) * (len(shape) - 1) + (shape[-1],) and bn.mean.shape == bn.scale.shape
    assert bn.axis == len(shape) - 1

    rng = np.random.default_rng(0)
    mean, var = np.zeros(shape[-1]), np.ones(shape[-1])
    for step in range(1, 6):
        x = rng.normal(step, 1.0 + step, size=shape).astype(np.float32)
        out = bn(gpuarray.to_gpu(x)).get()
        ref = Reference.batchNormTrain(x, bn.scale.get(), bn.bias.get(), axes, bn.epsilon)
        factor = max(1.0 / step, 0.3)
        mean, var = Reference.runningUpdate(mean, var, ref.mean.ravel(), ref.var.ravel(), ref.m, factor)

        np.testing.assert_allclose(out, ref.out, atol=2e-5)
        np.testing.assert_allclose(bn.mean.get().ravel(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.var.get().ravel(), var, rtol=1e-5)
        assert bn.numOfProps == step

    grad = rng.normal(size=shape).astype(np.float32)
    bn.backward(gpuarray.to_gpu(grad))
    dx, dscale, dbias = Reference.batchNormBackward(x, grad, bn.scale.get(), axes, bn.epsilon)
    np.testing.assert_allclose(bn.grad.get(), dx, atol=2e-5)
    np.testing.assert_allclose(bn.vars["scale"].grad.get(), dscale, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.vars["bias"].grad.get(), dbias, rtol=1e-4, atol=1e-4)

    # accumulation: grad = scale * d + momentum * grad
    before = bn.vars["scale"].grad.get().astype(np.float64)
    bn.backward(gpuarray.to_gpu(grad), scale=0.5, momentum=0.25)
    np.testing.assert_allclose(bn.vars["scale"].grad.get(), 0.5 * dscale + 0.25 * before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_eval_inplace_and_frozen_backward(name):
    bn, shape, axes = build(name, inplace=True)
    rng = np.random.default_rng(1)
    bn.mean.set(rng.normal(size=bn.mean.shape).astype(np.float32))
    bn.var.set(rng.uniform(0.5, 2.0, size=bn.var.shape).astype(np.float32))
    bn.evalMode()

    x = rng.normal(size=shape).astype(np.float32)
    data = gpuarray.to_gpu(x)
    stats = gpuarray.memoryPool.stats()["allocations"]
    out = bn(data)
    assert out.ptr == data.ptr and gpuarray.memoryPool.stats()["allocations"] == stats
    scale, mean, var = bn.scale.get(), bn.mean.get(), bn.var.get()
    np.testing.assert_allclose(
        out.get(), Reference.batchNormEval(x, scale, bn.bias.get(), mean, var, bn.epsilon, axes=axes), atol=2e-5
    )
    np.testing.assert_array_equal(bn.mean.get(), mean)

    bn.inplace = False
    bn(gpuarray.to_gpu(x))
    grad = rng.normal(size=shape).astype(np.float32)
    bn.backward(gpuarray.to_gpu(grad))
    dx, dscale, dbias = Reference.frozenBackward(x, grad, scale, mean, var, bn.epsilon, axes=axes)
    np.testing.assert_allclose(bn.grad.get(), dx, atol=2e-5)
    np.testing.assert_allclose(bn.vars["scale"].grad.get(), dscale, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.vars["bias"].grad.get(), dbias, rtol=1e-4, atol=1e-4)


def test_channels_last_equals_channels_first_moved():
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, size=(3, 4, 5, 6)).astype(np.float32)
    first, last = BatchNorm2D(4), BatchNorm2D(4, axis=-1)
    last.scale.set(np.moveaxis(first.scale.get(), 1, -1).copy())
    outFirst, outLast = first(gpuarray.to_gpu(x)).get(), last(gpuarray.to_gpu(np.moveaxis(x, 1, -1).copy())).get()
    np.testing.assert_allclose(outLast, np.moveaxis(outFirst, 1, -1), atol=1e-6)
    np.testing.assert_allclose(last.var.get().ravel(), first.var.get().ravel(), rtol=1e-6)


def test_save_load_channels_last(tmp_path):
    bn, shape, _ = build("images_2d_channels_last", name="bn")
    bn(gpuarray.to_gpu(np.random.default_rng(3).normal(size=shape).astype(np.float32)))
    path = tmp_path / "bn.h5"
    bn.save(path)

    other = BatchNorm2D(shape[-1], axis=-1, name="bn", empty=True)
    other.load(path)
    for param in ("scale", "bias", "mean", "var"):
        np.testing.assert_array_equal(getattr(other, param).get(), getattr(bn, param).get())

    # NOTE: the entries are per-map vectors, and only size-1 axes differ: a channels-first module reads the same maps
    first = BatchNorm2D(shape[-1], name="bn")
    first.load(path)
    for param in ("scale", "bias", "mean", "var"):
        np.testing.assert_array_equal(getattr(first, param).get().ravel(), getattr(bn, param).get().ravel())

    wider = BatchNorm2D(shape[-1] + 1, name="bn")
    before = wider.mean.get()
    with pytest.raises(ModuleError, match=r"expected shape \(1, 5, 1, 1\).*\(1, 1, 1, 4\)"):
        wider.load(path)
    np.testing.assert_array_equal(wider.mean.get(), before)


def test_wrong_maps_and_rank_name_the_axis():
    bn = BatchNorm2D(16, axis=-1)
    with pytest.raises(ModuleError, match=r"BatchNorm2D expects data with 16 maps on axis 3 \(channels-last\); got 8"):
        bn(gpuarray.zeros((2, 5, 5, 8), np.float32))
    with pytest.raises(ModuleError, match=r"expects 4D data \(batch, height, width, maps\); got shape \(2, 5, 16\)"):
        bn(gpuarray.zeros((2, 5, 16), np.float32))
    assert bn.numOfProps == 0 and bn.mean.get().max() == 0


@pytest.mark.parametrize("axis", [0, 4, -4, -5, 1.0, True, "last"])
def test_bad_axis_raises_value_error(axis):
    with pytest.raises(ValueError, match="axis"):
        BatchNorm2D(4, axis=axis)


def test_middle_axis_and_batchnorm_axis():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    bn = BatchNorm2D(4, axis=2)
    out = bn(gpuarray.to_gpu(x)).get()
    np.testing.assert_allclose(
        out, Reference.batchNormTrain(x, bn.scale.get(), bn.bias.get(), (0, 1, 3), 1e-5).out, atol=2e-5
    )

    dense = BatchNorm(6, axis=-1)
    assert dense.axis == 1 and dense.scale.shape == (1, 6, 1, 1)
    with pytest.raises(ValueError, match="axis must be 1 or -1"):
        BatchNorm(6, axis=0)
