"""foldBatchNorm(net): an inference copy of a network with each BatchNorm after a Linear folded into its weights."""

import copy

import numpy as np

from PuzzleLib.Backend import Checks, gpuarray
from PuzzleLib.Containers.Sequential import Sequential
from PuzzleLib.Modules.Activation import Activation
from PuzzleLib.Modules.BatchNorm import BatchNorm
from PuzzleLib.Modules.Linear import Linear
from PuzzleLib.Modules.Module import Module, ModuleError


def foldedWeights(linear, bn):
    """(W', b') in float64 for `linear` (W of shape (insize, outsize), b or none) followed by `bn` in evaluation:
    ``gain = scale / sqrt(var + epsilon)``, ``W' = W * gain`` (each output column), ``b' = (b - mean) * gain + bias``.
    A non-affine BatchNorm's scale and bias are its constant 1 and 0, so it folds like any other."""
    scale, bias, mean, var = (ary.get().astype(np.float64).ravel() for ary in (bn.scale, bn.bias, bn.mean, bn.var))
    gain = scale / np.sqrt(var + bn.epsilon)
    W = linear.W.get().astype(np.float64)
    b = linear.b.get().astype(np.float64) if linear.useBias else np.zeros(linear.outsize)
    return W * gain, (b - mean) * gain + bias


def checkFoldable(linear, bn):
    if linear.W is None or bn.scale is None:
        empty = linear if linear.W is None else bn
        raise ModuleError("foldBatchNorm: %s is empty; load or set its parameters first" % empty.describe())
    if bn.size != linear.outsize:
        raise ModuleError(
            "foldBatchNorm: %s normalizes %d features but %s before it gives %d"
            % (bn.describe(), bn.size, linear.describe(), linear.outsize)
        )


def foldInto(linear, bn):
    """A copy of `linear` that computes ``bn(linear(x))`` of an evaluation-mode `bn`, and the Activation that `bn`
    computed fused (None when none)."""
    checkFoldable(linear, bn)
    W, b = foldedWeights(linear, bn)
    folded = copy.deepcopy(linear)
    folded.setUseBias(True)
    folded.W.set(W.astype(folded.calctype))
    folded.b.set(b.astype(folded.calctype))
    if bn.fused is None:
        return folded, None
    # NOTE: in place: it overwrites the Linear's output, which no backward reads (Linear's reads its input)
    activation = Activation(bn.fused.kind, inplace=True, slope=Checks.slopeArgument(*bn.fused))
    activation.calcMode(folded.calctype)
    return folded, activation


def foldChildren(container):
    """A new Sequential with `container`'s children copied, each Linear followed by a BatchNorm folded."""
    result = Sequential(name=container.name)
    modules = list(container)
    i = 0
    while i < len(modules):
        module = modules[i]
        following = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(module, Sequential):
            result.append(foldChildren(module))
        elif isinstance(module, Linear) and isinstance(following, BatchNorm):
            folded, activation = foldInto(module, following)
            result.append(folded)
            if activation is not None:
                result.append(activation)
            i += 1
        else:
            result.append(copy.deepcopy(module))
        i += 1
    result.calctype = container.calctype
    return result


def foldBatchNorm(net):
    """An evaluation-mode copy of `net` in which every `BatchNorm` (or `SyncBatchNorm`) that directly follows a
    `Linear` in a `Sequential` is folded into that Linear, the usual preparation of a network for inference.

    In evaluation a BatchNorm is an affine map per feature, ``(z - mean) * gain + bias`` with
    ``gain = scale / sqrt(var + epsilon)`` (its running statistics), so after ``z = x W + b``::

        W' = W * gain          (each output column j of W times gain[j])
        b' = (b - mean) * gain + bias

    and ``x W' + b'`` is the pair's output: one matrix product and no normalization pass. The fold is computed in
    float64 and rounded to the Linear's calc type, so the folded network's output equals the unfolded network's in
    evaluation within float32 rounding. A non-affine BatchNorm (``affine=False``) folds with its constant scale 1 and
    bias 0 (PyTorch's ``fuse_linear_bn_eval`` once failed on that case). A BatchNorm that computes an activation
    (``activation="relu"``...) leaves an `Activation` of the same kind and slope in its place, in place (it overwrites
    the Linear's output, which no backward reads), so the folded pair keeps one array where the pair kept two. A
    Linear without a bias gets one. The pairs are looked for inside each Sequential, nested ones included; a BatchNorm
    that follows anything else (or that is the first child of a container after a Linear in the outer one) is kept,
    as a copy.

    `net` is left as it was: the result holds copies of its modules (`Module.__deepcopy__`), named as in `net`; a
    positional name (``"0"``, ``"1"``...) is that of the new position.

    Args:
        net (Module): a Sequential (or any module: a lone module comes back copied, in evaluation mode).

    Returns:
        Module: the folded copy, in evaluation mode; its Linears are trainable as any other (fine-tuning a folded
        network trains W' and b').

    Raises:
        ModuleError: a `net` that is not a Module, an empty Linear or BatchNorm in a pair, or a BatchNorm whose size
            differs from the Linear's outputs (nothing is created).

    Example:
        >>> inference = foldBatchNorm(net)              # net: Linear, BatchNorm, Activation, Linear
        >>> scores = inference(gpuarray.to_gpu(batch))  # Linear (folded), Activation, Linear
    """
    if not isinstance(net, Module):
        raise ModuleError("foldBatchNorm expects a Module (a Sequential); got %s" % type(net).__name__)
    folded = foldChildren(net) if isinstance(net, Sequential) else copy.deepcopy(net)
    folded.evalMode()
    return folded


def unittest():
    from PuzzleLib.TestLib import Reference

    np.random.seed(0)
    net = Sequential()
    net.append(Linear(6, 5, initscheme="gaussian"))
    net.append(BatchNorm(5, affine=False))
    net.append(Activation("sigmoid"))
    net(gpuarray.to_gpu(np.random.normal(3.0, 2.0, (16, 6)).astype(np.float32)))

    folded = foldBatchNorm(net)
    assert [type(module).__name__ for module in folded] == ["Linear", "Activation"] and net[1].train

    hostData = np.random.randn(7, 6).astype(np.float32)
    fc, bn = net[0], net[1]
    h = hostData.astype(np.float64) @ fc.W.get() + fc.b.get()
    ref = Reference.batchNormEval(h, np.ones(5), np.zeros(5), bn.mean.get(), bn.var.get(), bn.epsilon, axes=(0,))
    assert np.allclose(folded(gpuarray.to_gpu(hostData)).get(), 1.0 / (1.0 + np.exp(-ref)), atol=1e-6)

    try:
        foldBatchNorm(np.zeros(3))
    except ModuleError as e:
        assert "got ndarray" in str(e)
    else:
        raise AssertionError("foldBatchNorm accepted an ndarray")


if __name__ == "__main__":
    unittest()
