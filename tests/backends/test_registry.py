"""resnet_fast/backends/__init__.py: the registry is checked against the op list, and a backend whose
module does not match its declaration raises when it loads (no silent fallback to another backend)."""

import sys
import types

import pytest

from resnet_fast import backends, composites
from resnet_fast.conventions import aten_conv, conv_backward


def _module(name, monkeypatch, **functions):
    mod = types.ModuleType(name)
    for key, fn in functions.items():
        setattr(mod, key, fn)
    monkeypatch.setitem(sys.modules, name, mod)
    return name


def _primitives():
    def stub(*args):
        raise AssertionError("not called")

    return dict(conv=aten_conv, conv_backward=conv_backward, channel_stats=stub, bn_act=stub, bn_act_backward=stub)


def test_every_backend_declares_known_names():
    backends._check_table()
    assert set(backends.OPS) <= set(dir(composites))
    for b in backends.BACKENDS.values():
        assert set(b.overrides) <= set(backends.OPS) and set(b.hooks) <= set(backends.HOOKS), b.name


def test_reference_backend_loads_every_op():
    table, hooks = backends.load("reference")
    assert sorted(table) == sorted(backends.OPS) and sorted(hooks) == sorted(backends.HOOKS)


def test_unknown_override_name_raises(monkeypatch):
    bad = backends.Backend("bad", ("cpu",), "input", "resnet_fast.backends.eager", overrides={"conv_bn_stat": "x:y"})
    monkeypatch.setitem(backends.BACKENDS, "bad", bad)
    with pytest.raises(ValueError, match="unknown ops"):
        backends._check_table()


def test_unknown_layout_raises(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "bad", backends.Backend("bad", ("cpu",), "nchw16c", "m"))
    with pytest.raises(ValueError, match="layout"):
        backends._check_table()


def test_missing_primitive_raises(monkeypatch):
    prims = _primitives()
    del prims["bn_act_backward"]
    mod = _module("fake_backend_missing", monkeypatch, **prims)
    monkeypatch.setitem(backends.BACKENDS, "bad", backends.Backend("bad", ("cpu",), "input", mod))
    with pytest.raises(AttributeError, match="lacks the primitives \\['bn_act_backward'\\]"):
        backends.load("bad")


def test_missing_override_function_raises(monkeypatch):
    mod = _module("fake_backend_override", monkeypatch, **_primitives())
    monkeypatch.setitem(backends.BACKENDS, "bad", backends.Backend(
        "bad", ("cpu",), "input", mod, overrides={"conv_bias_act": f"{mod}:conv_bias_act"}))
    with pytest.raises(AttributeError, match="does not exist"):
        backends.load("bad")


def test_undeclared_op_function_raises(monkeypatch):
    mod = _module("fake_backend_undeclared", monkeypatch, **_primitives(), conv_bn_stats=lambda *a: None)
    monkeypatch.setitem(backends.BACKENDS, "bad", backends.Backend("bad", ("cpu",), "input", mod))
    with pytest.raises(RuntimeError, match="without declaring them"):
        backends.load("bad")
