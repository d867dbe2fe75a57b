"""All or nothing: the one way a call that changes state puts it back when it raises, Ctrl-C included.

`Snapshot` copies what a call may change (an object's attributes and the arrays it writes in place) and
`Snapshot.run` runs the call: if anything raises, the copies are put back before the exception goes on. Module calls
(forward, backward, updateParams, load), containers (all children or none), optimizers and `recomputeStatistics` all
go through it. `deferredInterrupts` holds Ctrl-C back while state is put back, so that the restore itself cannot be
cut short.
"""

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferredInterrupts():
    """Holds back Ctrl-C (SIGINT) for the duration of the block: a KeyboardInterrupt that arrives meanwhile is raised
    when the block ends, so the block's state changes happen entirely or not at all. Only the main thread receives
    signals; elsewhere (and where signal handlers cannot be set) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received = []
    # NOTE: None is a handler set outside Python, which could not be put back
    if signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class Transaction:
    """The state a call may change, to put back if it raises; `restore` is what a subclass provides."""

    owner = None

    def restore(self):
        raise NotImplementedError()

    def run(self, step, *args, keep=None, **kwargs):
        """Returns ``step(*args, **kwargs)``, stored first as the owner's attribute `keep` when given (a call's
        result, such as a module's ``data``). If anything raises, an interrupt included, the state is put back
        (`restore`) before the exception goes on.

        NOTE: the result is stored and returned inside the protected region, so no line of the caller runs between
        the last change and its return."""
        try:
            result = step(*args, **kwargs)
            if keep is not None:
                setattr(self.owner, keep, result)
            return result
        except BaseException:
            self.restore()
            raise


class Snapshot(Transaction):
    """An object's state before a call that may raise: its attributes and copies of the arrays the call changes in
    place (the backend's `Backup`: one device block on CUDA, plain numpy arrays on the CPU backend).

    Args:
        owner: a module, an optimizer, or None (the arrays alone).
        arrays (list of GPUArray): the arrays the call may write (of one backend).
        containers (bool): also copy the attributes that are dicts or lists, one level deep (a load may add
            parameters to a module created empty); other calls only rebind attributes.
    """

    def __init__(self, owner, arrays, containers=False):
        self.owner = owner
        self.fields = fields = None if owner is None else owner.__dict__.copy()
        if containers:
            for key, value in fields.items():
                if type(value) in (dict, list):
                    fields[key] = value.copy()
        self.backup = arrays[0].backend.gpuarray.Backup(arrays) if arrays else None

    def restore(self):
        with deferredInterrupts():
            if self.backup is not None:
                self.backup.restore()
            if self.owner is not None:
                self.owner.__dict__.clear()
                self.owner.__dict__.update(self.fields)


class CombinedSnapshot(Transaction):
    """The snapshots of a container and of its children, put back together (`Containers.Sequential`).

    Args:
        owner: the container; snapshots (list of `Transaction`): its own and its children's.
    """

    def __init__(self, owner, snapshots):
        self.owner, self.snapshots = owner, snapshots

    def restore(self):
        for snapshot in self.snapshots:
            snapshot.restore()
