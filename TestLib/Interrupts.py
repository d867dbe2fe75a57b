"""Interrupts injected where a line starts: how the failure-safety tests land a Ctrl-C at every point of a call.

`runInterruptedAt(call, line, traced)` runs `call` with a trace function that raises `InjectedInterrupt` (a
KeyboardInterrupt) where the `line`-th traced line would start, counting only the lines of code objects for which
``traced(code)`` is true. A test runs it for line 1, 2, ... and checks after each run that nothing changed, until the
call finishes without reaching the line.
"""

import sys


class InjectedInterrupt(KeyboardInterrupt):
    pass


def runInterruptedAt(call, line, traced):
    """Runs `call`, interrupted where its `line`-th traced line starts; returns the number of traced lines the call
    executed when it ran to its end (then below `line`).

    Raises:
        InjectedInterrupt: the call reached its `line`-th traced line.
    """
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count == line:
                raise InjectedInterrupt()
        return local

    def start(frame, event, arg):
        return local if traced(frame.f_code) else None

    sys.settrace(start)
    try:
        call()
    finally:
        sys.settrace(None)
    return count
