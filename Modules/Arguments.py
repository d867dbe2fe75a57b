"""The checks of constructor arguments, in the words every module uses: a ValueError naming the module, the argument,
what is accepted and what came. A bad argument changes nothing (the module is not created)."""

import numpy as np

from PuzzleLib.Backend.Checks import isRealNumber


def checkNumber(owner, name, value, expected, isValid):
    """Raises ValueError naming `owner` and argument `name` unless `value` is a real number (not a bool) for which
    ``isValid(value)`` holds; `expected` says what is accepted (``"a finite number > 0"``)."""
    if not isRealNumber(value) or not isValid(float(value)):
        raise ValueError("%s: %s must be %s; got %r" % (owner, name, expected, value))


def checkBool(owner, name, value):
    """Raises ValueError naming `owner` and argument `name` unless `value` is a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError("%s: %s must be True or False; got %r" % (owner, name, value))


def checkPositiveInt(owner, name, value):
    """Raises ValueError naming `owner` and `name` unless `value` is a positive int (bools are not ints here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError("%s: %s must be a positive int; got %r" % (owner, name, value))


def checkName(owner, name):
    """Returns `name`; raises ValueError naming `owner` unless it is None or a str without "/".

    HDF5 reads "/" as a path: the entries of "a/b" would land in a group "a", and "a/b" and "a//b" would collide.
    """
    if name is not None and not isinstance(name, str):
        raise ValueError("%s: name must be a str or None; got %.80r (%s)" % (owner, name, type(name).__name__))
    if name is not None and "/" in name:
        raise ValueError("%s: name must not contain '/' (HDF5 would nest it into groups); got %r" % (owner, name))
    return name
