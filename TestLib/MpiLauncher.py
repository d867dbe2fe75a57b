"""Starts Python programs on several MPI processes (``mpiexec -n N``) for the tests and the examples.

The MPI is the one mpi4py was built for: its ``mpiexec`` is looked up beside the running Python first (a virtual
environment with the Open MPI wheel of ``pip install "PuzzleLib[mpi]"`` has it there), then on ``PATH``. Open MPI
needs two settings on a machine with few cores or as root (a container's user): ``--oversubscribe`` (more processes
than cores, as the tests' three ranks on two cores) and permission to run as root.
"""

import functools
import os
import shutil
import signal
import subprocess
import sys


class MpiUnavailable(RuntimeError):
    """mpi4py or mpiexec is missing."""


@functools.lru_cache(maxsize=1)
def mpiexecPath():
    """The path of ``mpiexec``; raises `MpiUnavailable` (with the command that installs it) when there is none or
    mpi4py does not import."""
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        raise MpiUnavailable('mpi4py is not installed (%s): pip install "PuzzleLib[mpi]"' % e) from None
    here = os.path.dirname(sys.executable)
    path = shutil.which("mpiexec", path=here) or shutil.which("mpiexec")
    if path is None:
        raise MpiUnavailable('no mpiexec beside %s or on PATH: pip install "PuzzleLib[mpi]"' % sys.executable)
    return path


@functools.lru_cache(maxsize=1)
def isOpenMpi():
    version = subprocess.run([mpiexecPath(), "--version"], capture_output=True, text=True, timeout=60)
    text = (version.stdout + version.stderr).lower()
    return "open mpi" in text or "openrte" in text or "prte" in text


def skipUnlessAvailable():
    """Skips the calling test (with the reason) where mpi4py or mpiexec is missing; fails it instead under
    ``PUZZLELIB_REQUIRE_MPI=1`` (as `.ci/run` sets it), so that a machine meant to run the multi-process tests does."""
    import pytest

    try:
        mpiexecPath()
    except MpiUnavailable as e:
        if os.environ.get("PUZZLELIB_REQUIRE_MPI") == "1":
            pytest.fail("PUZZLELIB_REQUIRE_MPI=1, but %s" % e)
        pytest.skip(str(e))


def command(ranks, args):
    """The argv that runs ``python -m mpi4py args...`` on `ranks` processes: mpi4py's runner aborts every process when
    one of them raises, where a plain ``python`` would leave the others waiting in a collective."""
    options = ["--oversubscribe"] if isOpenMpi() else []
    return [mpiexecPath(), "-n", str(ranks), *options, sys.executable, "-m", "mpi4py", *args]


def environment(backend=None):
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONUNBUFFERED": "1"})
    if backend is not None:
        env["PUZZLELIB_BACKEND"] = backend
    return env


def run(ranks, args, timeout=300, backend=None):
    """Runs ``python -m mpi4py args...`` on `ranks` processes (on `backend`, ``PUZZLELIB_BACKEND``'s value, when
    given) and returns the `subprocess.CompletedProcess` (text output); after `timeout` seconds every process of the
    run is killed and `subprocess.TimeoutExpired` raised, so a hang never outlives a test."""
    process = subprocess.Popen(
        command(ranks, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(backend),
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        # NOTE: the ranks are mpiexec's children: killing mpiexec alone would leave them running
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
