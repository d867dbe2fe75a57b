"""Typed parameter lists of kernel entry points, declared once in Python beside the C sources.

A `Signature` lists a ``__global__`` function's parameters in order, each with its C type. The CUDA backend builds
both the format pycuda prepares the function with and the argument tuple of every launch from it
(`Backend.Cuda.Launch`), so no format string is written by hand; ``TestLib/tests/test_kernel_signatures.py`` compiles
each source to PTX and checks every declared entry's parameter sizes and alignments against the compiled one.

Types: `Pointer` (any device pointer; takes a GPUArray, None for a null pointer, or an int address), `Int32` (C
``int``), `Int64` (``long long``), `Float32` (``float``), `Float64` (``double``), `Struct` (a C struct passed by
value, given as a dict of its fields) and `Array` (a fixed-size array field of a struct). This module needs neither
pycuda nor a device.

A launch repeated with the same geometry takes a `Binding` (`Signature.bind`): the argument tuple with every value
that does not change from call to call converted and in place once, so that a call only fills in its addresses and
the few scalars of its own.
"""

import ctypes
import struct


class Parameter:
    """One kernel parameter: its `name`, its C type (`ctype`, a ctypes type), the `struct` format that packs it and the
    function that turns a given value into what that format takes."""

    def __init__(self, name, ctype, format, convert):
        self.name, self.ctype, self.format, self.convert = name, ctype, format, convert

    def pack(self, value):
        """The values `struct.pack` takes for this parameter, as a tuple."""
        return (self.convert(value),)

    def __repr__(self):
        return "Parameter(%r, %s)" % (self.name, self.ctype.__name__)


def address(value):
    """A device address from a GPUArray (its ``ptr``), an int, or None (a null pointer)."""
    return 0 if value is None else int(getattr(value, "ptr", value))


def Pointer(name):
    return Parameter(name, ctypes.c_void_p, "P", address)


def Int32(name):
    return Parameter(name, ctypes.c_int32, "i", int)


def Int64(name):
    return Parameter(name, ctypes.c_int64, "q", int)


def Float32(name):
    return Parameter(name, ctypes.c_float, "f", float)


def Float64(name):
    return Parameter(name, ctypes.c_double, "d", float)


class Array(Parameter):
    """A fixed-size C array (a struct field such as ``long long dims[8]``), given as a sequence of `count` values.

    Args:
        element (`Parameter`): the element type, named as the field; count (int): the length.
    """

    def __init__(self, element, count):
        super().__init__(element.name, element.ctype * count, element.format * count, element.convert)
        self.count = count

    def pack(self, value):
        values = list(value)
        if len(values) != self.count:
            raise TypeError("%s takes %d values; got %d" % (self.name, self.count, len(values)))
        return tuple(self.convert(v) for v in values)


class Struct(Parameter):
    """A C struct passed by value, mirrored field by field; its value is a dict {field name: value} or a NamedTuple
    with those fields.

    The format is the fields' formats in order plus the struct's trailing padding, so that it packs to exactly the C
    layout (``struct`` aligns every field natively but adds no padding at the end).

    Args:
        name (str): the parameter's name; typeName (str): the C struct's name; fields (list of `Parameter`).
    """

    def __init__(self, name, typeName, fields):
        self.typeName, self.fields = typeName, list(fields)
        ctype = type(typeName, (ctypes.Structure,), {"_fields_": [(f.name, f.ctype) for f in self.fields]})
        packed = "".join(f.format for f in self.fields)
        padding = ctypes.sizeof(ctype) - struct.calcsize(packed)
        super().__init__(name, ctype, packed + "x" * padding, None)

    def pack(self, value):
        value = value._asdict() if hasattr(value, "_asdict") else value
        names = [f.name for f in self.fields]
        if set(value) != set(names):
            raise TypeError("%s %s takes the fields %s; got %s" % (self.typeName, self.name, names, sorted(value)))
        return tuple(item for f in self.fields for item in f.pack(value[f.name]))


class Signature:
    """The parameter list of an ``extern "C" __global__`` entry point, or of a family of them (the instances of one
    template, whose names differ by a suffix).

    Args:
        pattern (str): the entry's name, with ``{field}`` placeholders for a family (``"bnStatsRows_{dtype}_v{vec}"``).
        parameters (`Parameter`): in the order of the C declaration.

    Attributes:
        format (str): the `struct` format pycuda's ``prepare`` takes, built from the parameters.
    """

    def __init__(self, pattern, *parameters):
        self.pattern, self.parameters = pattern, list(parameters)
        self.format = "".join(p.format for p in self.parameters)

    def name(self, **fields):
        """The entry's name: the pattern with its placeholders filled."""
        return self.pattern.format(**fields)

    def pack(self, **values):
        """The argument tuple of a launch, in declaration order, from one keyword per parameter.

        Raises:
            TypeError: a parameter is missing or an unknown one is given (both are named).
        """
        names = [p.name for p in self.parameters]
        if set(values) != set(names):
            missing, unknown = sorted(set(names) - set(values)), sorted(set(values) - set(names))
            raise TypeError("kernel parameters %s expected; missing %s, unknown %s" % (names, missing, unknown))
        args = []
        for p in self.parameters:
            args.extend(p.pack(values[p.name]))
        return tuple(args)

    def fields(self):
        """[(name, `Parameter`)] of every value a launch passes, in order: a struct's fields named
        ``"<struct>.<field>"``, an array field once per element."""
        result = []
        for p in self.parameters:
            if isinstance(p, Struct):
                for field in p.fields:
                    count = field.count if isinstance(field, Array) else 1
                    result.extend([("%s.%s" % (p.name, field.name), field)] * count)
            else:
                result.append((p.name, p))
        return result

    def bind(self, dynamic, **static):
        """A `Binding` of this entry: every value named in `static` (names as `fields` gives them; a struct's fields
        ``"p.mean"`` are given as keywords ``p_mean``) converted once, the values named in `dynamic` (in that order)
        left to each call.

        Raises:
            TypeError: a value is neither static nor dynamic, or given twice, or unknown (named).
        """
        static = {name.replace("_", ".", 1) if "_" in name else name: value for name, value in static.items()}
        names = [name for name, _ in self.fields()]
        unknown = sorted((set(static) | set(dynamic)) - set(names))
        missing = sorted(set(names) - set(static) - set(dynamic))
        twice = sorted(set(static) & set(dynamic))
        if unknown or missing or twice:
            raise TypeError("%s: unknown %s, missing %s, both static and dynamic %s" % (self.pattern, unknown, missing,
                                                                                        twice))
        template = [field.convert(static[name]) if name in static else 0 for name, field in self.fields()]
        return Binding(template, [names.index(name) for name in dynamic])

    def layout(self):
        """[(size, alignment)] of each parameter as the C compiler lays it out, for the checks against PTX."""
        return [(ctypes.sizeof(p.ctype), ctypes.alignment(p.ctype)) for p in self.parameters]


class Binding:
    """The argument list of one entry's launches with their static values in place (`Signature.bind`).

    Attributes:
        template (list): every value in order, 0 where a call fills one in; slots (list of int): where the dynamic
            values go, in the order `Signature.bind` was given them.
        arguments (function): ``arguments(*values)``, the argument tuple of a launch with `values` (already converted:
            addresses as ints, 0 for a null pointer) in the dynamic slots.
    """

    def __init__(self, template, slots):
        self.template, self.slots = template, slots
        # NOTE: the tuple is written out once as a function of the dynamic values (the static ones are its globals),
        # so a launch builds its arguments in one step instead of filling a copy of the template slot by slot
        where = {slot: index for index, slot in enumerate(slots)}
        items = ["v%d" % where[k] if k in where else "s%d" % k for k in range(len(template))]
        source = "lambda %s: (%s,)" % (", ".join("v%d" % i for i in range(len(slots))), ", ".join(items))
        self.arguments = eval(source, {"s%d" % k: value for k, value in enumerate(template) if k not in where})
