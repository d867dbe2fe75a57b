"""Persistence: the file layout of the original PuzzleLib (written and read), the layout this library wrote before
(read), atomic saves, and the arguments `save` and `load` refuse.

PuzzleLib's layout: every parameter is ``params/<index>`` (``"0"``, ``"1"``, ... one running index over the whole
file), ``links/<name>.<param>`` is an integer dataset holding that index, and the running statistics are
``attrs/<name>.<attr>``; a non-affine BatchNorm keeps its scale and bias among the parameters. Its loader reads a
parameter as ``params[str(links[key][()])]``; `originalRead` below follows that rule and nothing else.
"""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Containers import Sequential
from PuzzleLib.Modules import Activation, BatchNorm, BatchNorm1D, BatchNorm2D, Linear, ModuleError
from PuzzleLib.Modules.Module import Module

# --- helpers


def originalRead(f, key):
    """A parameter by the original loader's rule."""
    return f["params"][str(f["links"][key][()])][()]


def writeOriginal(path, params, attrs):
    """A file exactly as the original PuzzleLib writes it: `params` ({key: array}, in order) as ``params/<index>`` with
    integer links, `attrs` ({key: array}) as ``attrs/<key>``."""
    with h5py.File(path, "w") as f:
        paramGroup, linkGroup, attrGroup = f.create_group("params"), f.create_group("links"), f.create_group("attrs")
        for index, (key, value) in enumerate(params.items()):
            paramGroup.create_dataset(str(index), data=value)
            linkGroup.create_dataset(key, data=index)
        for key, value in attrs.items():
            attrGroup.create_dataset(key, data=value)


def writeEarlier(path, params, attrs):
    """A file as this library wrote it before: params named by their key, links holding that name as a string."""
    with h5py.File(path, "w") as f:
        paramGroup, linkGroup, attrGroup = f.create_group("params"), f.create_group("links"), f.create_group("attrs")
        for key, value in params.items():
            paramGroup.create_dataset(key, data=value)
            linkGroup[key] = key
        for key, value in attrs.items():
            attrGroup.create_dataset(key, data=value)


def randomMaps(shape, low=0.5, high=2.0):
    return np.random.uniform(low, high, size=shape).astype(np.float32)


def buildNet():
    net = Sequential(name="net")
    net.append(Linear(4, 3, name="fc0"))
    net.append(BatchNorm(3, name="bn0"))
    net.append(BatchNorm(3, affine=False, name="plain"))
    net.append(Activation("relu"))
    net.append(Linear(3, 2, name="fc1"))
    return net


def netArrays(net):
    """{key: ndarray} of every parameter and attribute of `net`, computed from the modules, not from a file."""
    arrays = {}
    for childName, module in zip(net.names, net.modules, strict=True):
        for entry, var in module.vars.items():
            arrays["net.%s.%s" % (childName, entry)] = var.data.get()
        for entry, attr in module.attrs.items():
            arrays["net.%s.%s" % (childName, entry)] = attr.get()
    return arrays


def trainedNet():
    net = buildNet()
    net(gpuarray.to_gpu(np.random.randn(8, 4).astype(np.float32)))
    return net


@pytest.fixture
def goodFile(tmp_path):
    """A checkpoint on disk and its bytes."""
    path = tmp_path / "net.h5"
    trainedNet().save(path)
    return path, path.read_bytes()


class Injected(Exception):
    pass


def failOnThirdDataset(monkeypatch, exc):
    """Makes the third dataset written in this process raise `exc` (a save then fails in the middle of writing)."""
    original = h5py.Group.create_dataset
    calls = []

    def createDataset(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs.get("name"))
        if len(calls) == 3:
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", createDataset)
    return calls


# --- item: atomic saves


@pytest.mark.parametrize("exc", [Injected("disk full"), KeyboardInterrupt()], ids=["exception", "keyboard_interrupt"])
def test_save_failing_mid_write_leaves_old_file_and_no_temporary(goodFile, monkeypatch, exc):
    path, before = goodFile
    np.random.seed(99)
    other = buildNet()
    calls = failOnThirdDataset(monkeypatch, exc)

    with pytest.raises(type(exc)):
        other.save(path)

    assert len(calls) == 3
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["net.h5"]


def test_save_killed_mid_write_leaves_old_file(goodFile, backend):
    path, before = goodFile
    script = textwrap.dedent(
        """
        import os, signal, sys
        import h5py
        from PuzzleLib.Modules import BatchNorm2D

        original = h5py.Group.create_dataset
        calls = []

        def createDataset(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)

        h5py.Group.create_dataset = createDataset
        BatchNorm2D(3, name="other").save(sys.argv[1])
        print("not killed")
        """
    )
    env = dict(os.environ, PUZZLELIB_BACKEND=backend.name)
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "not killed" not in done.stdout
    assert path.read_bytes() == before
    # NOTE: a killed process cannot clean up; its temporary file is hidden and never taken for the checkpoint
    assert all(name == "net.h5" or name.startswith(".net.h5.") for name in os.listdir(path.parent))


@pytest.mark.parametrize("kind", ["batchnorm", "linear", "sequential_child"])
def test_save_of_empty_module_refuses_and_leaves_old_file(goodFile, monkeypatch, kind):
    path, before = goodFile
    if kind == "batchnorm":
        module = BatchNorm2D(3, empty=True)
    elif kind == "linear":
        module = Linear(4, 3, empty=True)
    else:
        module = Sequential(name="net")
        module.append(Linear(4, 3, name="fc0"))
        module.append(BatchNorm(3, name="bn0", empty=True))
    calls = failOnThirdDataset(monkeypatch, Injected("must not write"))

    with pytest.raises(ModuleError, match="empty"):
        module.save(path)
    with pytest.raises(ModuleError, match="empty"):
        module.save(path.parent / "new.h5")

    assert calls == []
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["net.h5"]


def test_save_keeps_permission_bits_and_symlinks(goodFile):
    path, _ = goodFile
    os.chmod(path, 0o640)
    trainedNet().save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640

    link = path.parent / "latest.h5"
    link.symlink_to(path.name)
    net = trainedNet()
    net.save(link)
    assert link.is_symlink() and os.readlink(link) == "net.h5"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    loaded = buildNet()
    loaded.load(path)
    assert np.array_equal(loaded["fc0"].W.get(), net["fc0"].W.get())

    umask = os.umask(0o027)
    try:
        trainedNet().save(path.parent / "fresh.h5")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(path.parent / "fresh.h5").st_mode) == 0o640
    assert sorted(os.listdir(path.parent)) == ["fresh.h5", "latest.h5", "net.h5"]


# --- item: the original's layout, written


def test_saved_file_reads_by_the_original_rule(tmp_path):
    net = trainedNet()
    expected = netArrays(net)
    net.save(tmp_path / "net.h5")

    with h5py.File(tmp_path / "net.h5", "r") as f:
        linkKeys = set(f["links"])
        assert all(np.issubdtype(f["links"][key].dtype, np.integer) for key in linkKeys)
        assert set(f["params"]) == {str(index) for index in range(len(linkKeys))}
        assert sorted(int(f["links"][key][()]) for key in linkKeys) == list(range(len(linkKeys)))

        statistics = {key for key in expected if key.endswith((".mean", ".var"))}
        assert linkKeys == set(expected) - statistics
        assert set(f["attrs"]) == statistics
        # NOTE: the non-affine BatchNorm's scale and bias are parameters in the original's files
        assert {"net.plain.scale", "net.plain.bias"} <= linkKeys

        for key in linkKeys:
            assert np.array_equal(originalRead(f, key), expected[key]), key
        for key in statistics:
            assert np.array_equal(f["attrs"][key][()], expected[key]), key


def test_saving_into_an_open_group_continues_the_index(tmp_path):
    first, second = Linear(3, 2, name="a"), BatchNorm2D(2, affine=False, name="b")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f.create_group("params").create_dataset("0", data=np.zeros(1, np.float32))
        f.create_group("links").create_dataset("old.w", data=0)
        first.save(f)
        second.save(f)

        assert set(f["params"]) == {"0", "1", "2", "3", "4"}
        assert [int(f["links"][key][()]) for key in ("a.W", "a.b", "b.scale", "b.bias")] == [1, 2, 3, 4]
        assert np.array_equal(originalRead(f, "old.w"), np.zeros(1, np.float32))
        assert np.array_equal(originalRead(f, "a.W"), first.W.get())
        assert np.array_equal(originalRead(f, "b.scale"), second.scale.get())

        with pytest.raises(ModuleError, match="'a.W'"):
            first.save(f)
        assert len(f["params"]) == 5

    loaded = Linear(3, 2, name="a", empty=True)
    loaded.load(tmp_path / "two.h5")
    assert np.array_equal(loaded.W.get(), first.W.get()) and np.array_equal(loaded.b.get(), first.b.get())


# --- items: the original's layout and the earlier one, read


def test_original_file_of_a_network_loads(tmp_path):
    np.random.seed(3)
    params = {
        "net.fc0.W": randomMaps((4, 3)),
        "net.fc0.b": randomMaps((3,)),
        "net.bn0.scale": randomMaps((1, 3, 1, 1)),
        "net.bn0.bias": randomMaps((1, 3, 1, 1)),
        "net.plain.scale": np.ones((1, 3, 1, 1), np.float32),
        "net.plain.bias": np.zeros((1, 3, 1, 1), np.float32),
        "net.fc1.W": randomMaps((3, 2)),
        "net.fc1.b": randomMaps((2,)),
    }
    attrs = {"net.%s.%s" % (bn, name): randomMaps((1, 3, 1, 1)) for bn in ("bn0", "plain") for name in ("mean", "var")}
    writeOriginal(tmp_path / "original.h5", params, attrs)

    net = buildNet()
    net.load(tmp_path / "original.h5")
    loaded = netArrays(net)
    assert set(loaded) == set(params) | set(attrs)
    for key, value in {**params, **attrs}.items():
        assert np.array_equal(loaded[key], value), key
    assert set(net["plain"].vars) == set()


@pytest.mark.parametrize("empty", [False, True], ids=["built", "empty"])
def test_original_file_of_a_non_affine_batchnorm2d_loads(tmp_path, empty):
    scale, bias = np.full((1, 3, 1, 1), 1.0, np.float32), np.zeros((1, 3, 1, 1), np.float32)
    mean, var = randomMaps((1, 3, 1, 1)), randomMaps((1, 3, 1, 1))
    writeOriginal(tmp_path / "bn.h5", {"bn.scale": scale, "bn.bias": bias}, {"bn.mean": mean, "bn.var": var})

    bn = BatchNorm2D(3, affine=False, name="bn", empty=empty)
    bn.load(tmp_path / "bn.h5")
    for name, value in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
        assert np.array_equal(getattr(bn, name).get(), value), name
    assert bn.vars == {} and set(bn.attrs) == {"scale", "bias", "mean", "var"}


def test_earlier_layout_still_loads(tmp_path):
    np.random.seed(4)
    params = {"net.fc0.W": randomMaps((4, 3)), "net.fc0.b": randomMaps((3,))}
    params.update({"net.bn0.scale": randomMaps((1, 3, 1, 1)), "net.bn0.bias": randomMaps((1, 3, 1, 1))})
    params.update({"net.fc1.W": randomMaps((3, 2)), "net.fc1.b": randomMaps((2,))})
    # NOTE: the earlier layout kept a non-affine BatchNorm's scale and bias in attrs
    attrs = {"net.%s.%s" % (bn, name): randomMaps((1, 3, 1, 1)) for bn in ("bn0", "plain") for name in ("mean", "var")}
    attrs.update({"net.plain.scale": randomMaps((1, 3, 1, 1)), "net.plain.bias": randomMaps((1, 3, 1, 1))})
    writeEarlier(tmp_path / "earlier.h5", params, attrs)

    net = buildNet()
    net.load(tmp_path / "earlier.h5")
    loaded = netArrays(net)
    for key, value in {**params, **attrs}.items():
        assert np.array_equal(loaded[key], value), key


def test_saved_file_round_trips(tmp_path):
    net = trainedNet()
    net.save(tmp_path / "net.h5")
    np.random.seed(5)
    other = buildNet()
    other.load(tmp_path / "net.h5")
    expected, loaded = netArrays(net), netArrays(other)
    for key, value in expected.items():
        assert np.array_equal(loaded[key], value), key


# --- item: size-1 axes


def test_batchnorm1d_loads_the_original_four_axis_entries(tmp_path):
    entries = {name: randomMaps((1, 5, 1, 1)) for name in ("scale", "bias", "mean", "var")}
    writeOriginal(
        tmp_path / "bn1d.h5",
        {"bn.scale": entries["scale"], "bn.bias": entries["bias"]},
        {"bn.mean": entries["mean"], "bn.var": entries["var"]},
    )
    bn = BatchNorm1D(5, name="bn")
    bn.load(tmp_path / "bn1d.h5")
    for name, value in entries.items():
        assert getattr(bn, name).shape == (1, 5, 1)
        assert np.array_equal(getattr(bn, name).get(), value.reshape(1, 5, 1)), name


def test_linear_loads_entries_that_differ_in_size_1_axes_only(tmp_path):
    W, b = randomMaps((4, 3)), randomMaps((3,))
    writeOriginal(tmp_path / "fc.h5", {"fc.W": W.reshape(1, 4, 1, 3), "fc.b": b.reshape(3, 1)}, {})
    fc = Linear(4, 3, name="fc")
    fc.load(tmp_path / "fc.h5")
    assert np.array_equal(fc.W.get(), W) and np.array_equal(fc.b.get(), b)


@pytest.mark.parametrize(
    "maps, shape", [(5, (1, 6, 1, 1)), (5, (1, 5, 2)), (10, (1, 5, 2, 1))], ids=["maps", "elements", "split_maps"]
)
def test_other_batchnorm_shapes_are_still_refused(tmp_path, maps, shape):
    value = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    writeOriginal(tmp_path / "bad.h5", {"bn.scale": value, "bn.bias": value}, {"bn.mean": value, "bn.var": value})
    bn = BatchNorm1D(maps, name="bn")
    before = {name: getattr(bn, name).get() for name in ("scale", "bias", "mean", "var")}
    with pytest.raises(ModuleError, match=r"'bn\.scale': expected shape \(1, %d, 1\)" % maps):
        bn.load(tmp_path / "bad.h5")
    for name, value in before.items():
        assert np.array_equal(getattr(bn, name).get(), value), name


def test_transposed_weights_are_still_refused(tmp_path):
    writeOriginal(tmp_path / "fc.h5", {"fc.W": randomMaps((3, 4)), "fc.b": randomMaps((3,))}, {})
    fc = Linear(4, 3, name="fc")
    before = fc.W.get()
    with pytest.raises(ModuleError, match=r"'fc\.W': expected shape \(4, 3\).*shape \(3, 4\)"):
        fc.load(tmp_path / "fc.h5")
    assert np.array_equal(fc.W.get(), before)


# --- item: names


@pytest.mark.parametrize("name", ["a/b", "a//b", "/", "net/"])
@pytest.mark.parametrize(
    "make",
    [
        lambda name: BatchNorm2D(3, name=name),
        lambda name: BatchNorm(3, name=name),
        lambda name: Linear(2, 3, name=name),
        lambda name: Activation("relu", name=name),
        lambda name: Sequential(name=name),
    ],
    ids=["BatchNorm2D", "BatchNorm", "Linear", "Activation", "Sequential"],
)
def test_names_with_a_slash_are_refused(make, name):
    with pytest.raises(ValueError, match="name.*%r" % name):
        make(name)


@pytest.mark.parametrize("name", [5, b"bn", ("a",)], ids=["int", "bytes", "tuple"])
def test_names_must_be_str_or_none(name):
    with pytest.raises((ValueError, TypeError), match="name must be a str or None"):
        BatchNorm2D(3, name=name)
    assert BatchNorm2D(3, name=None).name is None and Module(name="ok").name == "ok"


def test_save_and_load_refuse_a_prefix_with_a_slash(tmp_path):
    bn = BatchNorm2D(3)
    with pytest.raises(ValueError, match="name.*'a/b'"):
        bn.save(tmp_path / "bn.h5", name="a/b")
    assert not (tmp_path / "bn.h5").exists()


def test_a_renamed_child_with_a_slash_is_refused_at_save(goodFile):
    path, before = goodFile
    fc = Linear(4, 3)
    fc.name = "x/y"
    net = Sequential(name="net")
    net.append(fc)
    with pytest.raises(ModuleError, match="'net.x/y.W'.*'/'"):
        net.save(path)
    assert path.read_bytes() == before


# --- item: arguments of save and load

EXPECTED_PATH = r"expected a path \(str or os\.PathLike\) or an open h5py Group; got .*\(%s\)"


@pytest.mark.parametrize("hdf", [None, 123, 1.5, [b"net.h5"]], ids=["None", "int", "float", "list"])
def test_load_refuses_what_is_not_a_path_or_group(hdf):
    bn = BatchNorm2D(3)
    before = bn.scale.get()
    with pytest.raises(ModuleError, match=EXPECTED_PATH % type(hdf).__name__):
        bn.load(hdf)
    assert np.array_equal(bn.scale.get(), before)


@pytest.mark.parametrize("hdf", [None, 123], ids=["None", "int"])
def test_save_refuses_what_is_not_a_path_or_group(hdf):
    with pytest.raises(ModuleError, match=EXPECTED_PATH % type(hdf).__name__):
        BatchNorm2D(3).save(hdf)


def test_ctrl_c_while_a_load_is_applied_leaves_the_module_as_it_was(tmp_path, monkeypatch):
    net = trainedNet()
    net.save(tmp_path / "net.h5")
    np.random.seed(6)
    other = buildNet()
    before = netArrays(other)
    original = Linear.makeSetter

    def makeSetter(self, group, entry, value):
        apply = original(self, group, entry, value)

        def interrupted():
            os.kill(os.getpid(), signal.SIGINT)
            apply()

        return interrupted

    monkeypatch.setattr(Linear, "makeSetter", makeSetter)
    with pytest.raises(KeyboardInterrupt):
        other.load(tmp_path / "net.h5")
    after = netArrays(other)
    for key, value in before.items():
        assert np.array_equal(after[key], value), key
