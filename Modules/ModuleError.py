"""ModuleError: what a module raises for input it refuses, in its own words."""


class ModuleError(Exception):
    """Bad input to a module (shape, dtype, state or file), or a call it cannot make in its state; the message names
    the module, what it expected and what came, and the module is left exactly as it was."""
