"""The per-shape dispatch table (resnet_fast/backends/tables) and the registry's engine router, on CPU with
fake engines on a fake backend row (plain-PyTorch primitives): a call goes to the engine its table entry
names, or to the op's default where the entry is missing or its engine cannot serve the call (dtype, device,
package); an entry without a passing check against aten is refused; forcing an engine; files round trip;
a bad file raises when loaded strictly and is ignored with a warning at run time."""

import json
import sys
import types
import warnings

import pytest
import torch

import resnet_fast
from resnet_fast import backends, composites
from resnet_fast import reference as ref
from resnet_fast.backends import Engine, tables

F32, F64 = torch.float32, torch.float64
CHECK = {"against": "aten float32", "passed": True, "max_err": 1e-4, "bound": 1e-2}


@pytest.fixture
def fake(monkeypatch):
    """A backend row "fake" over the reference primitives whose conv_bn_stats / backward have engines that
    record their calls and then run the composite; returns (op table, calls)."""
    calls = []
    mod = types.ModuleType("fake_engine_module")

    def spy(tag, op):
        def fn(P, *args):
            calls.append(tag)
            return getattr(composites, op)(P, *args)
        return fn

    mod.fwd, mod.bwd = spy("spy-fwd", "conv_bn_stats"), spy("spy-bwd", "conv_bn_stats_backward")
    mod.gpu = spy("gpu", "conv_bn_stats")
    mod.absent = lambda: False
    monkeypatch.setitem(sys.modules, "fake_engine_module", mod)
    row = backends.Backend("fake", ("cpu",), "input", "resnet_fast.backends.eager", engines={
        "conv_bn_stats": {"spy": Engine("fake_engine_module:fwd", (F32,)),
                          "gpu-only": Engine("fake_engine_module:gpu", (F32,), ("cuda",)),
                          "no-package": Engine("fake_engine_module:gpu", (F32,), ("cpu",),
                                               "fake_engine_module:absent")},
        "conv_bn_stats_backward": {"spy": Engine("fake_engine_module:bwd", (F32, F64))}})
    monkeypatch.setitem(backends.BACKENDS, "fake", row)
    monkeypatch.setattr(backends, "_requirements", {})
    backends._check_table()
    return backends.load("fake")[0], calls


def _unit(dtype=F32, c=4, k=6, r=3):
    x = torch.randn(2, c, 6, 5, dtype=dtype)
    w = torch.randn(k, c, r, r, dtype=dtype) / (c * r * r) ** 0.5
    pro = (torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype))
    return (x, *pro, True, w, [1, 1], [r // 2] * 2, [1, 1], 1)


def _bwd_args(fwd_args):
    y, mean, var = ref.conv_bn_stats(*fwd_args)
    x, m, s, b, relu, w, *conv = fwd_args
    return (torch.randn_like(y), torch.randn_like(mean), torch.randn_like(var), x, m, s, b, relu, w, y, mean,
            *conv, [True] * 5)


def _entry(engine, **over):
    return {"engine": engine, "n": 2, "ms": {engine: 1.0}, "check": dict(CHECK), **over}


def test_keys_are_batch_independent_and_shared_by_both_directions():
    a, b = _unit(), _unit()
    b = (torch.randn(7, *a[0].shape[1:]), *a[1:])
    assert tables.call_key("conv_bn_stats", a) == tables.call_key("conv_bn_stats", b)
    fwd, bwd = tables.call_key("conv_bn_stats", a), tables.call_key("conv_bn_stats_backward", _bwd_args(a))
    assert fwd.replace("|fwd|", "|bwd|") == bwd
    assert fwd == tables.key(F32, "fwd", 4, 6, 5, 6, 3, 3, [1, 1], [1, 1], [1, 1], 1, True, True)
    assert tables.call_key("conv_bn_stats", (a[0], None, None, None, False, *a[5:])).endswith("pro0relu0")


def test_calls_go_to_the_engine_their_entry_names_else_the_default(fake):
    table, calls = fake
    args, other = _unit(), _unit(c=5)
    entries = {tables.call_key("conv_bn_stats", args): _entry("spy"),
               tables.call_key("conv_bn_stats_backward", _bwd_args(args)): _entry("spy")}
    with tables.installed("cpu", entries):
        got = table["conv_bn_stats"](*args)
        table["conv_bn_stats"](*other)  # no entry for this shape: the default
        table["conv_bn_stats_backward"](*_bwd_args(args))
    assert calls == ["spy-fwd", "spy-bwd"]
    for g, w in zip(got, ref.conv_bn_stats(*args)):
        torch.testing.assert_close(g, w)
    table["conv_bn_stats"](*args)  # no table at all: the default
    assert calls == ["spy-fwd", "spy-bwd"]


def test_an_engine_that_cannot_serve_the_call_falls_back_to_the_default(fake):
    table, calls = fake
    args = _unit()
    key = tables.call_key("conv_bn_stats", args)
    for engine in ("gpu-only", "no-package"):  # CUDA only / its package does not import
        with tables.installed("cpu", {key: _entry(engine)}):
            y, _, _ = table["conv_bn_stats"](*args)
    args64 = _unit(F64)  # "spy" serves float32 only
    with tables.installed("cpu", {tables.call_key("conv_bn_stats", args64): _entry("spy")}):
        table["conv_bn_stats"](*args64)
    assert calls == []


def test_entries_without_a_passing_check_are_refused():
    key = tables.key(F32, "bwd", 4, 6, 5, 6, 3, 3, [1, 1], [1, 1], [1, 1], 1, True, True)
    doc = tables.document({"name": "cpu", "capability": ""}, {}, "test")
    bad = {"unchecked": _entry("triton-closed", check=None),
           "failed": _entry("triton-closed", check={**CHECK, "passed": False}),
           "unknown engine": _entry("warp-drive"),
           "forward engine on bwd": _entry("triton-gemm"),
           "engine not a name": {**_entry("triton-closed"), "engine": ["triton-closed"]},
           "check not an object": _entry("triton-closed", check=True)}
    for why, entry in bad.items():
        with pytest.raises(tables.TableError, match="refused 1 entries"):
            tables.parse({**doc, "entries": {key: entry}}, why)
        with pytest.raises(tables.TableError):
            with tables.installed("cpu", {key: entry}):
                pass
        with pytest.warns(UserWarning, match="refused"):
            assert tables.parse({**doc, "entries": {key: entry, key.replace("c4", "c8"): _entry("triton-closed")}},
                                why, strict=False) == {key.replace("c4", "c8"): _entry("triton-closed")}
    with pytest.raises(tables.TableError, match="malformed key"):
        tables.parse({**doc, "entries": {"float16|bwd|c4": _entry("triton-closed")}}, "short key")


def test_files_round_trip_and_name_their_device_and_versions(tmp_path):
    dev = {"name": "NVIDIA H200", "capability": "9.0"}
    entries = {tables.key(torch.float16, d, 64, 56, 56, 64, 3, 3, [1, 1], [1, 1], [1, 1], 1, True, True):
               _entry(e) for d, e in (("fwd", "cudnn-fused"), ("bwd", "triton-closed"))}
    entries[tables.key(torch.bfloat16, "bwd", 64, 56, 56, 64, 3, 3, [1, 1], [1, 1], [1, 1], 1, True, True)] = \
        _entry("closed-wgrad+cudnn-dgrad")  # an engine of the registry's TRITON_ENGINES: a name tables accept
    path = tmp_path / f"{tables.slug(dev)}.json"
    assert path.name == "nvidia-h200-sm90.json"
    tables.save(str(path), tables.document(dev, entries, "test"))
    assert tables.load_file(str(path), dev) == entries
    with pytest.raises(tables.TableError, match="not on this device"):
        tables.load_file(str(path), {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"})
    data = json.loads(path.read_text())
    data["versions"]["torch"] = "1.13.1"
    path.write_text(json.dumps(data))
    with pytest.raises(tables.TableError, match="torch 1.13.1"):
        tables.load_file(str(path), dev)
    with pytest.raises(tables.TableError):  # save never writes what loading would refuse
        tables.save(str(tmp_path / "x.json"), tables.document(dev, {next(iter(entries)): _entry("x")}, "test"))
    for shipped in sorted(p for p in __import__("os").listdir(tables.SHIPPED) if p.endswith(".json")):
        tables.load_file(f"{tables.SHIPPED}/{shipped}")  # every table the package ships loads strictly


def test_a_bad_file_raises_when_strict_and_is_ignored_with_a_warning_at_run_time(fake, tmp_path, monkeypatch):
    table, calls = fake
    args = _unit()
    path = tmp_path / "table.json"
    malformed = {"format": tables.FORMAT, "device": {}, "versions": ["torch"], "entries": {}}
    for content in ("{not json", json.dumps({"format": "something else"}), json.dumps([1, 2]), json.dumps(malformed)):
        path.write_text(content)
        with pytest.raises(tables.TableError, match="table.json"):
            tables.load_file(str(path))
        monkeypatch.setenv("RESNET_FAST_DISPATCH_TABLE", str(path))
        tables.reset()
        with pytest.warns(UserWarning, match="dispatch table ignored"):
            table["conv_bn_stats"](*args)
    assert calls == []
    good = tables.document({"name": "cpu", "capability": ""},
                           {tables.call_key("conv_bn_stats", args): _entry("spy")}, "test")
    path.write_text(json.dumps(good))
    tables.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table["conv_bn_stats"](*args)  # the user's table, read from the environment's path
    assert calls == ["spy-fwd"]
    monkeypatch.delenv("RESNET_FAST_DISPATCH_TABLE")
    tables.reset()


def test_use_engine_and_the_environment_force_an_engine(fake, monkeypatch):
    table, calls = fake
    args = _unit()
    with resnet_fast.use_engine("conv_bn_stats", "spy"):
        table["conv_bn_stats"](*args)
        table["conv_bn_stats"](*_unit(F64))  # spy cannot serve float64: the default
    with resnet_fast.use_engine("conv_bn_stats", "gpu-only"):
        table["conv_bn_stats"](*args)  # cannot serve cpu: the default
    table["conv_bn_stats"](*args)
    assert calls == ["spy-fwd"]
    with pytest.raises(ValueError, match="no engine 'warp'"):
        with resnet_fast.use_engine("conv_bn_stats", "warp"):
            pass
    with pytest.raises(ValueError, match="has no alternative engines"):
        with resnet_fast.use_engine("bn_act", "spy"):
            pass
    monkeypatch.setenv("RESNET_FAST_ENGINE", "conv_bn_stats_backward=spy")
    monkeypatch.setattr(tables, "_env_forced", None)
    table["conv_bn_stats_backward"](*_bwd_args(args))
    assert calls == ["spy-fwd", "spy-bwd"]
    monkeypatch.setenv("RESNET_FAST_ENGINE", "conv_bn_stats_backward=nope")
    monkeypatch.setattr(tables, "_env_forced", None)
    with pytest.raises(ValueError, match="RESNET_FAST_ENGINE"):
        table["conv_bn_stats_backward"](*_bwd_args(args))
    monkeypatch.setattr(tables, "_env_forced", None)


def test_the_registry_checks_engine_declarations(monkeypatch):
    bad = backends.Backend("bad", ("cpu",), "input", "resnet_fast.backends.eager",
                           engines={"bn_act": {"x": Engine("resnet_fast.composites:bn_act", (F32,))}})
    monkeypatch.setitem(backends.BACKENDS, "bad", bad)
    with pytest.raises(ValueError, match="declares engines for \\['bn_act'\\]"):
        backends._check_table()
    missing = backends.Backend("bad", ("cpu",), "input", "resnet_fast.backends.eager",
                               engines={"conv_bn_stats": {"x": Engine("resnet_fast.composites:nope", (F32,))}})
    monkeypatch.setitem(backends.BACKENDS, "bad", missing)
    with pytest.raises(AttributeError, match="resnet_fast.composites:nope does not exist"):
        backends.load("bad")
