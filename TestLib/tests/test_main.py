"""``python -m PuzzleLib``: every problem found before any work is one line on stderr and exit status 2, and the JSON
file is written atomically."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from PuzzleLib import Config

pytestmark = pytest.mark.backendIndependent

ROOT = Path(__file__).resolve().parents[2]
CUDA_PROBLEM = Config.cudaProblem()
PREFIX = "python -m PuzzleLib: error: "


def runMain(*args, env=None, shadowed=None, tmp_path=None):
    """Runs the main job in a new process; `shadowed` names a module made unimportable (a file on PYTHONPATH that
    raises ImportError)."""
    environment = dict(os.environ)
    environment.pop("PUZZLELIB_BACKEND", None)
    environment.update(env or {})
    if shadowed is not None:
        fake = tmp_path / "shadow"
        fake.mkdir()
        (fake / ("%s.py" % shadowed)).write_text("raise ImportError(%r)\n" % ("No module named %s" % shadowed))
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake), environment.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "PuzzleLib", *args], capture_output=True, text=True, env=environment, cwd=ROOT.parent,
        timeout=600,
    )


def assertOneLineError(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    # NOTE: nothing printed means no work started: the backend line, the demonstration and the experiment's header come
    # first in a run
    assert result.stdout == "", result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.skipif(CUDA_PROBLEM is None, reason="CUDA works on this machine")
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_cuda_that_cannot_work_is_a_one_line_error(how):
    if how == "flag":
        result = runMain("--backend", "cuda", "--skip-demo", "--epochs", "1")
        source = "--backend cuda"
    else:
        result = runMain("--skip-demo", "--epochs", "1", env={"PUZZLELIB_BACKEND": "cuda"})
        source = "PUZZLELIB_BACKEND=cuda"
    assertOneLineError(result, source, "the CUDA backend cannot work here", CUDA_PROBLEM.split(" (")[0])


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_numpys_range_is_a_one_line_error(seed):
    assertOneLineError(runMain("--seed", seed, "--skip-demo", "--epochs", "1"), "--seed", "[0, 2**32 - 1]", seed)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--epochs", "0"], ["--epochs", "positive integer", "0"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
        (["--backend", "tpu"], ["--backend", "'tpu'"]),
    ],
    ids=["zero_epochs", "unknown_option", "unknown_backend"],
)
def test_argparse_errors_are_one_line(args, fragments):
    assertOneLineError(runMain(*args), *fragments)


def test_malformed_backend_variable_is_a_one_line_error():
    result = runMain("--skip-demo", "--epochs", "1", env={"PUZZLELIB_BACKEND": "tpu"})
    assertOneLineError(result, "PUZZLELIB_BACKEND must be one of 'auto', 'cuda', 'cpu'; got 'tpu'")


@pytest.mark.parametrize(
    "module, package, extra", [("tqdm", "tqdm", "examples"), ("sklearn", "scikit-learn", "examples")]
)
def test_missing_package_is_a_one_line_error_before_the_demo(tmp_path, module, package, extra):
    result = runMain("--epochs", "1", shadowed=module, tmp_path=tmp_path)
    assertOneLineError(result, "needs %s" % package, "PuzzleLib[%s]" % extra)


def test_plot_without_matplotlib_is_a_one_line_error(tmp_path):
    result = runMain("--skip-demo", "--epochs", "1", "--plot", str(tmp_path / "x.png"), shadowed="matplotlib",
                     tmp_path=tmp_path)
    assertOneLineError(result, "--plot needs matplotlib", "PuzzleLib[plot]")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_output_into_a_missing_folder_is_a_one_line_error_before_training(tmp_path, option):
    missing = tmp_path / "missing"
    target = missing / ("x.json" if option == "--json" else "x.png")
    result = runMain("--skip-demo", "--epochs", "3", option, str(target))
    assertOneLineError(result, option, str(target), "the folder %s does not exist" % missing)
    assert not missing.exists()


def test_json_onto_a_folder_is_a_one_line_error(tmp_path):
    assertOneLineError(runMain("--skip-demo", "--epochs", "3", "--json", str(tmp_path)), "a folder, not a file")


def test_json_is_written_atomically(tmp_path, monkeypatch, capsys):
    from PuzzleLib import __main__ as cli

    path, reference = tmp_path / "numbers.json", tmp_path / "reference.json"
    path.write_text('{"old": true}')

    def failingDump(obj, f, **kwargs):
        f.write('{"networks": ')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", failingDump)
    with pytest.raises(OSError, match="disk full"):
        cli.main(["--epochs", "1", "--skip-demo", "--json", str(path)])
    assert path.read_text() == '{"old": true}'
    assert sorted(os.listdir(tmp_path)) == ["numbers.json"]
    assert "BN test acc" in capsys.readouterr().out

    monkeypatch.undo()
    cli.writeJson({"a": [1, 2.5]}, str(path))
    with open(reference, "w") as f:
        f.write("{}")
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}
    assert os.stat(path).st_mode == os.stat(reference).st_mode
    assert sorted(os.listdir(tmp_path)) == ["numbers.json", "reference.json"]
