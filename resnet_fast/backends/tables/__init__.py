"""Per-shape engine choice from measurement: the dispatch table the registry's engine router reads.

A backend row may declare, per op, alternative engines (resnet_fast/backends/__init__.py, `engines`). For
each call of such an op the router asks `choose(op, args, usable)` which engine serves it; None means the
op's default (the row's override or composite, as without a table). The answer, in order:
  1. an engine forced for the op (`resnet_fast.use_engine`, or RESNET_FAST_ENGINE=op=engine[,op=engine]),
     when it can serve the call (dtype, device, its package importable), else the default;
  2. the table entry for the call's key, when its engine can serve the call, else the default;
  3. the default.

Key (N-independent: one entry serves every batch size; the entry records the batch it was measured at):
    dtype|direction|c{Cin}h{H}w{W}k{Cout}r{R}s{S}|st{sh}x{sw}|p{ph}x{pw}|d{dh}x{dw}|g{groups}|pro{0|1}relu{0|1}
direction "fwd" (conv_bn_stats) or "bwd" (conv_bn_stats_backward); pro: the previous BN+ReLU prologue.

File (JSON), one per device, written by scripts/gpu_probe.py:
    {"format": FORMAT, "device": {"name": "NVIDIA H200", "capability": "9.0"},
     "versions": {"torch": "2.11.0", "triton": "3.6.0", ...}, "measured": "...",
     "entries": {key: {"engine": name, "n": 256, "ms": {engine: ms, ...},
                       "check": {"against": "...", "passed": true, "max_err": e, "bound": b}}}}
An entry's engine must have been checked against aten when it was chosen: loading refuses (drops, with a
warning naming it) an entry whose check is missing or did not pass, or whose engine the op does not have.
Where the tables live (later files override earlier entries):
    resnet_fast/backends/tables/<device slug>.json      shipped with the package (none until a GPU run)
    RESNET_FAST_DISPATCH_TABLE=path, else ~/.cache/resnet_fast/dispatch/<device slug>.json   the user's
A file that cannot be used (unreadable, not JSON, another format, another device, torch or triton of
another major.minor version) is ignored with a warning: the defaults serve, training goes on.
`load_file(path, strict=True)` raises TableError instead (what the tests and the probe use).
CPU devices only read RESNET_FAST_DISPATCH_TABLE or an installed table (the tests' fake tables).
The GPU side of this (the probe's tables, the engines they name) has not run on a GPU yet.
"""

import contextlib
import json
import os
import re
import tempfile
import threading
import warnings
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

FORMAT = "resnet_fast.dispatch_table/1"
DIRECTIONS = {"conv_bn_stats": "fwd", "conv_bn_stats_backward": "bwd"}
OPS_OF = {v: k for k, v in DIRECTIONS.items()}
SHIPPED = os.path.dirname(os.path.abspath(__file__))


class TableError(ValueError):
    """A dispatch-table file that cannot be used (strict loading)."""


def key(dtype: torch.dtype, direction: str, c, h, w, k, r, s, stride, padding, dilation, groups, prologue: bool,
        relu: bool) -> str:
    return (f"{str(dtype).split('.')[-1]}|{direction}|c{c}h{h}w{w}k{k}r{r}s{s}|st{stride[0]}x{stride[1]}|"
            f"p{padding[0]}x{padding[1]}|d{dilation[0]}x{dilation[1]}|g{groups}|pro{int(prologue)}relu{int(relu)}")


_KEY = re.compile(r"^(float16|bfloat16|float32|float64)\|(fwd|bwd)\|c\d+h\d+w\d+k\d+r\d+s\d+\|st\d+x\d+\|"
                  r"p\d+x\d+\|d\d+x\d+\|g\d+\|pro[01]relu[01]$")


def x_of(op: str, args: Sequence) -> torch.Tensor:
    """The activation input of a conv_bn_stats / conv_bn_stats_backward call (its device and dtype decide)."""
    return args[0] if op == "conv_bn_stats" else args[3]


def call_key(op: str, args: Sequence) -> str:
    """The table key of one op call (the op's own argument order, see resnet_fast/ops.py)."""
    if op == "conv_bn_stats":
        x, in_scale, in_relu, weight = args[0], args[2], args[4], args[5]
        stride, padding, dilation, groups = args[6:10]
    else:
        x, in_scale, in_relu, weight = args[3], args[5], args[7], args[8]
        stride, padding, dilation, groups = args[11:15]
    _, c, h, w = x.shape
    k, _, r, s = weight.shape
    return key(x.dtype, DIRECTIONS[op], c, h, w, k, r, s, stride, padding, dilation, groups, in_scale is not None,
               bool(in_relu) and in_scale is not None)


# --- device identity and file locations ---------------------------------------------------------

def device_id(device: torch.device) -> Dict[str, str]:
    if device.type != "cuda":
        return {"name": device.type, "capability": ""}
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}


def slug(dev: Dict[str, str]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", dev["name"].lower()).strip("-")
    return name + (f"-sm{dev['capability'].replace('.', '')}" if dev["capability"] else "")


def user_path(dev: Dict[str, str]) -> str:
    return os.environ.get("RESNET_FAST_DISPATCH_TABLE") or os.path.join(
        os.path.expanduser("~"), ".cache", "resnet_fast", "dispatch", f"{slug(dev)}.json")


def versions() -> Dict[str, str]:
    out = {"torch": torch.__version__.split("+")[0]}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


# --- loading (validation) and saving ---------------------------------------------------------------

def _known_engines() -> Dict[str, set]:
    from .. import engine_names  # the registry (imported late: it imports this module)

    return engine_names()


def parse(data, source: str, dev: Optional[Dict[str, str]] = None, strict: bool = True) -> Dict[str, dict]:
    """The usable entries of a table file's content. File-level problems raise TableError; a bad entry raises
    in strict mode and is dropped with a warning otherwise (an unchecked engine is never chosen)."""
    try:
        return _parse(data, source, dev, strict)
    except (TypeError, AttributeError, KeyError) as e:  # a value of the wrong JSON type somewhere
        raise TableError(f"{source}: malformed ({type(e).__name__}: {e})") from None


def _parse(data, source, dev, strict):
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TableError(f"{source}: not a resnet_fast dispatch table (format must be {FORMAT!r})")
    if not isinstance(data.get("entries"), dict) or not isinstance(data.get("device"), dict):
        raise TableError(f"{source}: needs 'device' and 'entries' objects")
    if dev is not None and (data["device"].get("name"), data["device"].get("capability")) != \
            (dev["name"], dev["capability"]):
        raise TableError(f"{source}: measured on {data['device']}, not on this device {dev}")
    mine, theirs = versions(), data.get("versions") or {}
    for lib in ("torch", "triton"):
        if lib in mine and lib in theirs and _major_minor(mine[lib]) != _major_minor(str(theirs[lib])):
            raise TableError(f"{source}: measured with {lib} {theirs[lib]}, this process has {mine[lib]} "
                             "(engines are re-checked per version: run scripts/gpu_probe.py)")
    known, good, refused = _known_engines(), {}, []
    for k, e in data["entries"].items():
        problem = None
        if not isinstance(k, str) or not _KEY.match(k):
            problem = "malformed key"
        elif not isinstance(e, dict) or not isinstance(e.get("engine"), str) or \
                e["engine"] not in known.get(OPS_OF[k.split("|")[1]], ()):
            problem = f"unknown engine {e.get('engine') if isinstance(e, dict) else e!r}"
        elif not isinstance(e.get("check"), dict) or e["check"].get("passed") is not True:
            problem = "no passing check against aten"
        if problem:
            refused.append(f"{k}: {problem}")
        else:
            good[k] = e
    if refused:
        msg = f"{source}: refused {len(refused)} entries: " + "; ".join(refused[:5])
        if strict:
            raise TableError(msg)
        warnings.warn(f"resnet_fast dispatch table {msg}")
    return good


def load_file(path: str, dev: Optional[Dict[str, str]] = None, strict: bool = True) -> Dict[str, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise TableError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None
    return parse(data, path, dev, strict)


def document(dev: Dict[str, str], entries: Dict[str, dict], measured: str, extra_versions=None) -> dict:
    return {"format": FORMAT, "device": dict(dev), "versions": {**versions(), **(extra_versions or {})},
            "measured": measured, "entries": dict(sorted(entries.items()))}


def save(path: str, doc: dict) -> None:
    """Atomic write (a reader never sees half a file)."""
    parse(doc, path, strict=True)  # never write what loading would refuse
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


# --- runtime state -----------------------------------------------------------------------------------

_lock = threading.Lock()
_tables: Dict[str, Dict[str, dict]] = {}   # device string -> entries (loaded once per device)
_installed: Dict[str, Dict[str, dict]] = {}  # device type -> entries given in-process (tests, the probe)
_forced: Dict[str, str] = {}               # op -> engine (use_engine)
_env_forced: Optional[Dict[str, str]] = None


def _lenient(path: str, dev) -> Dict[str, dict]:
    try:
        return load_file(path, dev, strict=False)
    except TableError as e:
        warnings.warn(f"resnet_fast: dispatch table ignored ({e}); the default engines serve")
        return {}


def entries_for(device: torch.device) -> Dict[str, dict]:
    if device.type in _installed:
        return _installed[device.type]
    name = str(device)
    if name not in _tables:
        with _lock:
            dev = device_id(device)
            entries: Dict[str, dict] = {}
            paths = [os.environ["RESNET_FAST_DISPATCH_TABLE"]] if os.environ.get("RESNET_FAST_DISPATCH_TABLE") else []
            if device.type == "cuda":
                shipped = os.path.join(SHIPPED, f"{slug(dev)}.json")
                paths = ([shipped] if os.path.exists(shipped) else []) + [user_path(dev)]
            for p in paths:
                if os.path.exists(p):
                    entries.update(_lenient(p, dev))
            _tables[name] = entries
    return _tables[name]


def reset() -> None:
    """Forget the loaded tables (they are read again on the next call)."""
    _tables.clear()


@contextlib.contextmanager
def installed(device_type: str, entries: Dict[str, dict]) -> Iterator[None]:
    """Within the block, `entries` (validated as a file would be) is the table of every device of that type."""
    good = parse({"format": FORMAT, "device": {}, "entries": entries}, "installed table", strict=True)
    with _scoped(_installed, device_type, good):
        yield


def _env() -> Dict[str, str]:
    global _env_forced
    if _env_forced is None:
        spec, out = os.environ.get("RESNET_FAST_ENGINE", ""), {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            op, _, name = item.partition("=")
            check_engine(op, name, "RESNET_FAST_ENGINE")
            out[op] = name
        _env_forced = out
    return _env_forced


def check_engine(op: str, name: str, what: str = "use_engine") -> None:
    known = _known_engines()
    if op not in known:
        raise ValueError(f"{what}: {op!r} has no alternative engines; ops with engines: {sorted(known)}")
    if name not in known[op]:
        raise ValueError(f"{what}: {op} has no engine {name!r}; known: {sorted(known[op])}")


@contextlib.contextmanager
def forced(op: str, name: str) -> Iterator[None]:
    check_engine(op, name)
    with _scoped(_forced, op, name):
        yield


@contextlib.contextmanager
def _scoped(mapping: dict, key, value) -> Iterator[None]:
    """mapping[key] = value within the block; the previous value (or its absence) restored after."""
    missing = object()
    saved = mapping.get(key, missing)
    mapping[key] = value
    try:
        yield
    finally:
        if saved is missing:
            mapping.pop(key, None)
        else:
            mapping[key] = saved


def choose(op: str, args: Sequence, usable: Callable[[str, torch.Tensor], bool]) -> Optional[str]:
    """The engine for this call, or None for the op's default (see the module docstring)."""
    x = x_of(op, args)
    name = _forced.get(op) or _env().get(op)
    if name is not None:
        return name if usable(name, x) else None
    entries = entries_for(x.device)
    if not entries:
        return None
    entry = entries.get(call_key(op, args))
    if entry is None or not usable(entry["engine"], x):
        return None
    return entry["engine"]
