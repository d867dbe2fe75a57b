"""PuzzleLib: batch normalization modules for the GPU, with a numpy CPU backend.

Importing the package, or any module of it, is plain Python imports: no device is touched and nothing compiles until
the first array is created, on the backend `PuzzleLib.Config` picks.
"""

import warnings

__version__ = "0.1.0"

# NOTE: every module file runs its own self-test (``python -m PuzzleLib.Modules.BatchNorm``, SPEC section 5); its
# package imports it first, so runpy warns that it executes the file a second time, as __main__. That second copy only
# runs unittest(), so the notice says nothing useful; it is silenced for this package's files and nothing else.
warnings.filterwarnings(
    "ignore", message=r"'PuzzleLib\.[\w.]+' found in sys\.modules after import of package", category=RuntimeWarning
)
