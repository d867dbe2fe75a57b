"""Atomic file writes: a file is written beside its target under a hidden temporary name and moved over it, so a
write that fails, is interrupted or is killed never leaves a truncated or half-written file in its place (a killed
process leaves only the hidden temporary file behind)."""

import contextlib
import os
import secrets
import stat


def writeAtomically(path, write):
    """Calls ``write(temporaryPath)`` to fill a hidden temporary file beside the target of `path`, flushes it to disk
    and moves it over the target with `os.replace`; on any failure, KeyboardInterrupt included, removes the temporary
    file and re-raises, leaving an existing target as it was. An existing target's permission bits are kept, a new file
    gets the umask's.

    Args:
        path (str or os.PathLike): the file to create or replace; when it is a symlink, the file it points to.
        write (callable): writes the whole content into the path it is given (e.g. opens it with h5py or `open`).

    Raises:
        OSError: from the file system (a missing folder, a full disk), or whatever `write` raises.
    """
    # NOTE: a symlink keeps pointing where it did, so the file it points to is the one replaced
    target = os.path.realpath(os.fspath(path))
    folder, base = os.path.split(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None

    temporary, fd = createTemporary(folder, base)
    try:
        try:
            write(temporary)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    syncFolder(folder)


def createTemporary(folder, base):
    """Creates a new hidden file ``.<base>.<random>.tmp`` in `folder`; returns (path, descriptor)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(folder, ".%s.%s.tmp" % (base[:200], secrets.token_hex(4)))
        try:
            # NOTE: mode 0o666 lets the umask decide, as for any new file (mkstemp would give 0o600)
            return path, os.open(path, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError("no free temporary name beside %s" % os.path.join(folder, base))


def syncFolder(folder):
    """Flushes `folder`'s entries (the rename of a save) to disk where the system allows opening a folder."""
    directory = getattr(os, "O_DIRECTORY", None)
    if directory is None:
        return
    try:
        fd = os.open(folder, os.O_RDONLY | directory)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
