"""batchNorm(layer): a fully connected layer batch-normalized, its bias dropped and its activation fused."""

import copy

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Containers.Sequential import Sequential
from PuzzleLib.Modules.Activation import Activation
from PuzzleLib.Modules.BatchNorm import BatchNorm
from PuzzleLib.Modules.Linear import Linear
from PuzzleLib.Modules.Module import ModuleError


def splitLayer(layer):
    """(linear, activation or None) of a `Linear`, or of a `Sequential` of a Linear and at most one Activation."""
    if isinstance(layer, Linear):
        return layer, None
    if isinstance(layer, Sequential):
        modules = list(layer)
        if 1 <= len(modules) <= 2 and isinstance(modules[0], Linear):
            if len(modules) == 1:
                return modules[0], None
            if isinstance(modules[1], Activation):
                return modules[0], modules[1]
        kinds = ", ".join(type(module).__name__ for module in modules) or "nothing"
        raise ModuleError(
            "batchNorm expects a Linear, or a Sequential of a Linear and one Activation; got %s holding %s"
            % (layer.describe(), kinds)
        )
    raise ModuleError(
        "batchNorm expects a Linear, or a Sequential of a Linear and one Activation; got %s" % type(layer).__name__
    )


def batchNorm(layer, name=None, **options):
    """Batch-normalizes a fully connected layer before its activation, as Ioffe & Szegedy 2015 (arXiv 1502.03167,
    section 3.2) place the normalization: ``act(BN(x W))``. This is Lasagne's ``batch_norm(layer)`` for this library's
    modules.

    `layer` is a `Linear`, or a `Sequential` of a Linear and one `Activation` (a layer with its activation). The
    result is a new `Sequential` of two children: a copy of the Linear without its bias, then a `BatchNorm` of its
    outputs that computes the activation, if there is one, in its own passes (``BatchNorm(outsize,
    activation=..., slope=...)``: no separate activation pass, no extra buffer). `layer` is left as it was.

    Equivalence: the result computes what ``Sequential[Linear (with its bias b), BatchNorm, Activation]`` computes,
    in training and in evaluation, with one parameter vector less and one pass over the data fewer:

    - BN subtracts the batch mean of each feature, which holds b, so ``BN(x W + b) = BN(x W)`` in training; the
      gradient of b is the sum over the batch of BN's input gradient, which is 0, so b never trains;
    - the running mean of ``x W + b`` is that of ``x W`` plus b, from the first batch on (with the default
      ``initFactor=1`` the first batch replaces the initial mean), so evaluation gives the same output too;
    - ``BatchNorm(activation=act)`` computes act(BN(z)) with the same formulas as an `Activation` after it.

    Args:
        layer (Linear or Sequential): the layer; a Sequential must hold a Linear, then one Activation or nothing.
        name (str or None): the container's name (prefix of its saved entries).
        **options: `BatchNorm`'s arguments (epsilon, initFactor, minFactor, sscale, affine, inplace, skipNonFinite,
            renorm, virtualBatch, activation, slope...); ``activation`` and ``slope`` only where `layer` has no
            Activation of its own.

    Returns:
        Sequential: ``[Linear(insize, outsize, useBias=False), BatchNorm(outsize, ...)]``, in training mode, in the
        Linear's calc type; ``block[0]`` is the Linear (weights copied from `layer`), ``block[1]`` the BatchNorm.

    Raises:
        ModuleError: a `layer` of another kind or make-up (nothing is created).
        ValueError, TypeError: a bad option, as `BatchNorm` raises it; an ``activation`` option for a layer that has
            an Activation.

    Example:
        >>> block = batchNorm(Linear(64, 100))                            # Linear without bias, then BatchNorm(100)
        >>> layer = Sequential(); layer.append(Linear(64, 100)); layer.append(Activation(relu))
        >>> block = batchNorm(layer)                                      # ... then BatchNorm(100, activation="relu")
    """
    linear, activation = splitLayer(layer)
    if activation is not None:
        given = sorted(set(options) & {"activation", "slope"})
        if given:
            raise ValueError(
                "batchNorm: the layer has its own Activation (%r); the options %s cannot set another"
                % (activation.activation, ", ".join(given))
            )
        options.update(activation=activation.activation, slope=activation.slope)

    # NOTE: every check runs (the BatchNorm's arguments included) before anything is copied
    bn = BatchNorm(linear.outsize, **options)
    if linear.calctype != bn.calctype:
        bn.calcMode(linear.calctype)
    linear = copy.deepcopy(linear)
    linear.setUseBias(False)

    block = Sequential(name=name)
    block.append(linear)
    block.append(bn)
    block.calctype = linear.calctype
    return block


def unittest():
    from PuzzleLib.TestLib import Reference

    np.random.seed(0)
    layer = Sequential()
    layer.append(Linear(5, 4, initscheme="gaussian"))
    layer.append(Activation("tanh"))
    layer[0].vars["b"].data.set(np.random.randn(4).astype(np.float32))
    block = batchNorm(layer, name="block")

    fc, bn = block[0], block[1]
    assert not fc.useBias and "b" not in fc.vars and layer[0].useBias and bn.activation == "tanh"
    hostData = np.random.randn(8, 5).astype(np.float32)
    out = block(gpuarray.to_gpu(hostData)).get()

    # NOTE: the reference keeps the layer's bias: the normalization removes it
    h = hostData.astype(np.float64) @ layer[0].W.get() + layer[0].b.get()
    ref = Reference.batchNormTrain(h, bn.scale.get().reshape(1, 4), bn.bias.get().reshape(1, 4), (0,), bn.epsilon)
    assert np.allclose(out, np.tanh(ref.out), atol=1e-5)

    try:
        batchNorm(Activation("relu"))
    except ModuleError as e:
        assert "got Activation" in str(e)
    else:
        raise AssertionError("batchNorm accepted an Activation")


if __name__ == "__main__":
    unittest()
