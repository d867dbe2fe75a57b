"""Optimizer: the base of the parameter-update rules (set up on a module, then `update()` after each backward)."""

from PuzzleLib.Modules.Module import Module, ModuleError
from PuzzleLib.Modules.Transaction import Snapshot


def namedVars(module):
    """{"<prefix>.<param>": Variable} of a module, or of every module inside a container."""
    walk = getattr(module, "namedVars", None)
    if walk is not None:
        return walk()
    prefix = module.saveName()
    return {"%s.%s" % (prefix, entry): var for entry, var in module.vars.items()}


class Optimizer:
    """Base of the optimizers, in PuzzleLib's style: ``opt.setupOn(net)``, then per batch ``opt.zeroGradParams()``,
    forward, cost, ``net.backward(grad)``, ``opt.update()``.

    Gradients follow PuzzleLib's sign convention (costs hand back the negated gradient of the loss), so every rule
    *adds* ``learnRate * grad``. A subclass implements `setupState` (per-parameter buffers, from the memory pool) and
    `updateVar`.

    Args:
        learnRate (float): >= 0, the step size.

    Raises:
        ValueError: at construction, for a negative or non-numeric learning rate.
        ModuleError: `setupOn` of a non-module; `update` before `setupOn`, or after the module's parameters were
            replaced (e.g. by `calcMode`): call `setupOn` again.
    """

    def __init__(self, learnRate):
        self.checkRate("learnRate", learnRate)
        self.learnRate = learnRate
        self.module, self.states = None, {}

    def checkRate(self, name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError("%s: %s must be a number >= 0; got %r" % (type(self).__name__, name, value))

    def setupOn(self, module):
        """Attaches to `module` (a module or a container) and creates a state per trainable parameter."""
        if not isinstance(module, Module):
            raise ModuleError("%s.setupOn expects a Module; got %s" % (type(self).__name__, type(module).__name__))
        self.module = module
        self.states = {name: (var, self.setupState(var)) for name, var in namedVars(module).items()}

    def zeroGradParams(self):
        """Sets every parameter gradient of the module to zero."""
        self.checkSetup()
        self.module.zeroGradParams()

    def update(self):
        """Applies one step of the rule to every parameter, all or nothing: the parameters and states are copied on the
        device first and put back if the step raises (an interrupt included)."""
        self.checkSetup()
        current = namedVars(self.module)
        if current.keys() != self.states.keys() or any(
            current[name] is not var for name, (var, _) in self.states.items()
        ):
            raise ModuleError(
                "%s: the module's parameters changed since setupOn (calcMode, load into an empty module...); "
                "call setupOn again" % type(self).__name__
            )
        # NOTE: a step that raises part-way (an interrupt) must not leave some parameters moved and others not
        Snapshot(self, self.stateArrays()).run(self.step)

    def step(self):
        """The rule on every parameter in turn (inside `update`'s transaction)."""
        for var, state in self.states.values():
            self.updateVar(var, state)

    def stateArrays(self):
        """The arrays a step writes: every parameter and every per-parameter state that is an array."""
        arrays = []
        for var, state in self.states.values():
            arrays.append(var.data)
            arrays.extend(state if isinstance(state, (list, tuple)) else [] if state is None else [state])
        return arrays

    def checkSetup(self):
        if self.module is None:
            raise ModuleError("%s: call setupOn(module) first" % type(self).__name__)

    def setupState(self, var):
        return None

    def updateVar(self, var, state):
        raise NotImplementedError()


def unittest():
    from PuzzleLib.Modules.Linear import Linear

    optimizer = Optimizer(0.1)
    fc = Linear(3, 2, name="fc")
    optimizer.setupOn(fc)
    assert sorted(optimizer.states) == ["fc.W", "fc.b"]

    try:
        Optimizer(0.1).update()
    except ModuleError as e:
        assert "setupOn" in str(e)
    else:
        raise AssertionError("Optimizer.update ran before setupOn")

    try:
        Optimizer(-1.0)
    except ValueError as e:
        assert "learnRate" in str(e)
    else:
        raise AssertionError("Optimizer accepted a negative learning rate")


if __name__ == "__main__":
    unittest()
