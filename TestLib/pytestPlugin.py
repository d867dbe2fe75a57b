"""pytest plugin of the suite (pyproject.toml loads it with ``-p``): the library is imported as `PuzzleLib` only.

The repository root is the package. pytest's importlib mode names a file after the top-most directory that has an
__init__.py: it would import the root's __init__.py as "<checkout dir>" (for its Package node), TestLib/__init__.py as
"<checkout dir>.TestLib", and, for the test files in TestLib/tests (no __init__.py), the parent "TestLib" when the
checkout is on sys.path (``python -m pytest`` puts it there). Each of those names is bound here to the package already
imported as `PuzzleLib` or `PuzzleLib.TestLib`, so every file runs once; TestLib/tests/test_config.py checks it.
"""

import sys
from pathlib import Path

import PuzzleLib
import PuzzleLib.TestLib

# NOTE: at import, not in pytest_configure: the initial conftest files are imported before that hook runs
root = Path(PuzzleLib.__file__).resolve().parent
for alias, module in (
    (root.name, PuzzleLib),
    (root.name + ".TestLib", PuzzleLib.TestLib),
    ("TestLib", PuzzleLib.TestLib),
):
    sys.modules.setdefault(alias, module)
