"""All or nothing: the one way a call that changes state puts it back when it raises, Ctrl-C included.

`Snapshot` copies what a call may change (an object's attributes and the arrays it writes in place) and
`Snapshot.run` runs the call: if anything raises, the copies are put back before the exception goes on. Module calls
(forward, backward, updateParams, load), containers (all children or none), optimizers and `recomputeStatistics` all
go through it. Where the kernel that changes arrays saves them itself as it runs (`KernelBackup`: a training forward's
running statistics), nothing is copied beforehand (`KernelSaved`); a call that changes nothing but its results drops
them (`ResultsOnly`). `deferredInterrupts` holds Ctrl-C back while state is put back, so that the restore itself
cannot be cut short.
"""

import contextlib
import signal
import threading

import numpy as np


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


class ResultsOnly(Transaction):
    """The transaction of a call that changes nothing of its owner but its results (an evaluation forward): no copy at
    all; the restore drops the results (the owner's ``releaseResults``), as every failed forward leaves them."""

    def __init__(self, owner):
        self.owner = owner

    def restore(self):
        with deferredInterrupts():
            self.owner.releaseResults()


class KernelBackup:
    """Where a kernel saves the per-map arrays it changes in place as it changes them, with the stamp of the call it ran
    for (`Contract.TrainForward`'s ``backup`` and ``stamp``), so that a call copies nothing beforehand: the running
    statistics of a training forward, which a copy before each call would cost more than the kernel on small batches.

    ``array`` is float32, ``rows * maps + 1`` elements: row k holds the k-th array, the stamp comes last. Each call
    takes the next stamp (`nextStamp`) for its kernel; the counter is never put back by a restore, so a stamp names one
    call (until it wraps after 2**24 - 1 calls, float32's integers). `KernelSaved` is the transaction of such a call.

    Args:
        arrays (module): the backend's ``gpuarray``; maps (int): elements per row; rows (int): arrays saved.
    """

    STAMPS = 1 << 24

    def __init__(self, arrays, maps, rows):
        # NOTE: zeros: stamp 0 is never given, so a kernel that never ran is never taken for one that did
        self.array = arrays.zeros((rows * maps + 1,), np.float32)
        self.maps, self.rows, self.stamp = maps, rows, 0

    def nextStamp(self):
        self.stamp = self.stamp % (self.STAMPS - 1) + 1
        return self.stamp

    def putBack(self, arrays):
        """Copies the rows back into `arrays` (at most `rows`, each of `maps` float32 elements, in the kernel's order)
        when the stamp there is the last one given, that is when the kernel has run for the last call (reading the
        device once)."""
        maps = self.maps
        if float(self.array[self.rows * maps :].get()[0]) != self.stamp:
            return
        for k, ary in enumerate(arrays):
            ary.set(self.array[k * maps : (k + 1) * maps].reshape(ary.shape))


class KernelSaved(Snapshot):
    """The transaction of a call whose kernel saves `arrays` itself, into the `KernelBackup` the owner holds as its
    attribute `attribute` (None until a call makes one, which may be this call): the owner's attributes are copied as
    by `Snapshot`, the arrays are not. The restore puts the arrays back when this call took a stamp and its kernel ran
    (`KernelBackup.putBack`), then the attributes."""

    def __init__(self, owner, arrays, attribute):
        super().__init__(owner, [])
        self.arrays, self.attribute = arrays, attribute
        backup = getattr(owner, attribute)
        # NOTE: a backup made during the call starts at stamp 0, which no kernel is ever given
        self.firstStamp = 0 if backup is None else backup.stamp

    def restore(self):
        with deferredInterrupts():
            backup = getattr(self.owner, self.attribute)
            if backup is not None and backup.stamp != self.firstStamp:
                backup.putBack(self.arrays)
            super().restore()


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
