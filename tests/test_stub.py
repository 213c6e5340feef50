"""python/kvtier/_core.pyi against the live compiled module ``kvtier._core``.

The stub is parsed with ``ast`` (never imported). The live side comes from the module itself:
its public names, and the signatures pybind11 writes into the first line of every ``__doc__``
(``name(self: kvtier._core.Store, ns: typing.SupportsInt | ..., *, key: bytes | None = None) -> int``),
which are parsed with ``ast`` too. A binding added, removed or renamed, or a parameter added,
renamed, reordered, made keyword-only or given a default, without the stub following, fails here.
"""

from __future__ import annotations

import ast
import enum
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import kvtier
from kvtier import _core

REPO = Path(__file__).resolve().parents[1]
STUB_PATH = REPO / "python" / "kvtier" / "_core.pyi"

# pybind11's own plumbing on every bound class: not part of the API.
_PYBIND_INTERNAL = re.compile(r"^_pybind11_")


# --------------------------------------------------------------------------- the live module side
@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "positional_only" | "positional_or_keyword" | "keyword_only" | "var_positional" | "var_keyword"
    has_default: bool
    default: str | None  # ast.unparse of the default
    annotation: str | None  # ast.unparse of the annotation


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str | None


def _params_of(args: ast.arguments) -> tuple[Param, ...]:
    out: list[Param] = []
    positional = [(a, "positional_only") for a in args.posonlyargs] + [(a, "positional_or_keyword") for a in args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for (a, kind), d in zip(positional, defaults):
        out.append(
            Param(
                a.arg,
                kind,
                d is not None,
                None if d is None else ast.unparse(d),
                None if a.annotation is None else ast.unparse(a.annotation),
            )
        )
    if args.vararg is not None:
        out.append(Param(args.vararg.arg, "var_positional", False, None, None))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out.append(
            Param(
                a.arg,
                "keyword_only",
                d is not None,
                None if d is None else ast.unparse(d),
                None if a.annotation is None else ast.unparse(a.annotation),
            )
        )
    if args.kwarg is not None:
        out.append(Param(args.kwarg.arg, "var_keyword", False, None, None))
    return tuple(out)


_UNNAMED = re.compile(r"^arg\d+$")


def _normalise_pybind_params(params: tuple[Param, ...]) -> tuple[Param, ...]:
    """pybind11 names an argument declared without ``py::arg`` ``argN``; it cannot be passed by
    keyword, so the stub declares it positional-only."""
    return tuple(
        Param(p.name, "positional_only", p.has_default, p.default, p.annotation)
        if _UNNAMED.match(p.name) and p.kind == "positional_or_keyword"
        else p
        for p in params
    )


def _doc_signatures(obj: object, name: str) -> list[Signature]:
    """Every signature pybind11 wrote into ``obj.__doc__`` (several for an overloaded function)."""
    doc = obj.__doc__ or ""
    lines = doc.splitlines()
    assert lines, f"{name}: no __doc__; pybind11 signatures are missing (built with py::options().disable_function_signatures()?)"
    if lines[0].strip() == "Overloaded function.":
        sig_lines = [re.sub(r"^\d+\.\s*", "", ln) for ln in lines if re.match(r"^\d+\.\s", ln)]
    else:
        sig_lines = [lines[0]]
    out = []
    for line in sig_lines:
        line = line.strip()
        fname = name.rsplit(".", 1)[-1]
        if fname and line.startswith(fname + "("):
            line = line[len(fname) :]
        assert line.startswith("("), f"{name}: unexpected signature line {line!r}"
        tree = ast.parse(f"def _f{line}: ...")
        fn = tree.body[0]
        assert isinstance(fn, ast.FunctionDef)
        out.append(
            Signature(_normalise_pybind_params(_params_of(fn.args)), None if fn.returns is None else ast.unparse(fn.returns))
        )
    return out


def _is_pybind_function(v: object) -> bool:
    # Module functions are builtin_function_or_method; methods are pybind11 "instancemethod" objects.
    return type(v).__name__ in ("builtin_function_or_method", "instancemethod")


def _live_class_members(cls: type) -> dict[str, str]:
    """name -> "method" | "staticmethod" | "classmethod" | "property" for what the binding defines."""
    out: dict[str, str] = {}
    for k, v in vars(cls).items():
        if _PYBIND_INTERNAL.match(k):
            continue
        if isinstance(v, property):
            if k.startswith("_") and not (k.startswith("__") and k.endswith("__")):
                continue
            out[k] = "property"
        elif isinstance(v, staticmethod):
            out[k] = "staticmethod"
        elif isinstance(v, classmethod):
            out[k] = "classmethod"
        elif _is_pybind_function(v):
            # Dunders count only when the binding defines them (pybind11 wraps them as instancemethod);
            # inherited slot wrappers such as a constructor-less class's __init__ do not.
            if k.startswith("_") and not (k.startswith("__") and k.endswith("__")):
                continue
            out[k] = "method"
    return out


def _live_public_names() -> dict[str, object]:
    return {k: getattr(_core, k) for k in dir(_core) if not k.startswith("_")}


# --------------------------------------------------------------------------- the stub side
def _stub_tree() -> ast.Module:
    return ast.parse(STUB_PATH.read_text(encoding="utf-8"), filename=str(STUB_PATH))


def _decorator_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names = set()
    for d in fn.decorator_list:
        if isinstance(d, ast.Name):
            names.add(d.id)
        elif isinstance(d, ast.Attribute):
            names.add(d.attr if d.attr != "setter" else "setter")
        elif isinstance(d, ast.Call) and isinstance(d.func, ast.Name):
            names.add(d.func.id)
    return names


def _stub_toplevel() -> dict[str, ast.stmt]:
    """Public top-level definitions of the stub (imports and private aliases excluded)."""
    out: dict[str, ast.stmt] = {}
    for node in _stub_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        if name.startswith("_"):
            continue
        if isinstance(node, ast.FunctionDef) and name in out:
            raise AssertionError(f"stub defines {name} twice; use @overload for overloaded bindings")
        out.setdefault(name, node)
    return out


def _stub_functions(body: list[ast.stmt], name: str) -> list[ast.FunctionDef]:
    return [n for n in body if isinstance(n, ast.FunctionDef) and n.name == name]


def _stub_class_members(cls: ast.ClassDef) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            decos = _decorator_names(node)
            if "property" in decos:
                kind = "property"
            elif "setter" in decos:
                kind = "property"
            elif "staticmethod" in decos:
                kind = "staticmethod"
            elif "classmethod" in decos:
                kind = "classmethod"
            else:
                kind = "method"
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            kind, name = "property", node.target.id  # an attribute annotation stands for a property
        else:
            continue
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            continue
        out[name] = kind
    return out


def _stub_signature(fn: ast.FunctionDef) -> Signature:
    return Signature(_params_of(fn.args), None if fn.returns is None else ast.unparse(fn.returns))


def _stub_signatures(body: list[ast.stmt], name: str) -> list[Signature]:
    fns = _stub_functions(body, name)
    if len(fns) > 1:
        fns = [f for f in fns if "overload" in _decorator_names(f)]
    return [_stub_signature(f) for f in fns]


# --------------------------------------------------------------------------- type comparison
# Only the simple, unambiguous parts are compared: whether a parameter's basic Python type (int,
# float, bool, str, bytes) agrees, and whether None is accepted. Arguments bound as plain `object`
# (py::handle) are validated at run time and may carry any annotation in the stub.
_BASIC = ("int", "float", "bool", "str", "bytes")


def _pybind_basic(annotation: str | None) -> set[str] | None:
    """{'int', 'None'}-style summary of a pybind11 annotation, or None if it is not a basic type."""
    if annotation is None:
        return None
    parts = {p.strip() for p in annotation.split("|")}
    kinds: set[str] = set()
    for p in parts:
        if p in ("typing.SupportsInt", "typing.SupportsIndex") and "typing.SupportsFloat" not in parts:
            kinds.add("int")
        elif p in ("typing.SupportsFloat", "typing.SupportsIndex"):
            kinds.add("float")
        elif p in _BASIC:
            kinds.add(p)
        elif p == "None":
            kinds.add("None")
        else:
            return None
    return kinds


def _stub_basic(annotation: str | None) -> set[str] | None:
    if annotation is None:
        return None
    parts = {p.strip() for p in annotation.split("|")}
    if not parts <= set(_BASIC) | {"None"}:
        return None
    return parts


def _tuple_len(annotation: str) -> int:
    """Elements of a ``tuple[...]`` annotation (commas at the top level of its brackets)."""
    depth, n = 0, 1
    for ch in annotation[len("tuple[") : -1]:
        depth += ch == "["
        depth -= ch == "]"
        n += ch == "," and depth == 0
    return n


def _compare(where: str, live: Signature, stub: Signature, is_method: bool) -> list[str]:
    problems = []
    lp = list(live.params)
    sp = list(stub.params)
    if is_method:
        # pybind11 writes `self: kvtier._core.X` (or `arg0: kvtier._core.X` for a property getter).
        assert lp and lp[0].kind in ("positional_or_keyword", "positional_only"), f"{where}: no self in {live}"
        if not sp or sp[0].name != "self":
            problems.append(f"{where}: stub method must take self first")
        lp, sp = lp[1:], sp[1:]
    names_live = [p.name for p in lp]
    names_stub = [p.name for p in sp]
    if names_live != names_stub:
        problems.append(f"{where}: parameter names differ: binding {names_live} vs stub {names_stub}")
        return problems
    for a, b in zip(lp, sp):
        if a.kind != b.kind:
            problems.append(f"{where}({a.name}): binding kind {a.kind} vs stub {b.kind}")
        if a.has_default != b.has_default:
            problems.append(f"{where}({a.name}): binding default {a.default} vs stub {b.default}")
        elif a.has_default and a.default != b.default and b.default != "...":
            problems.append(f"{where}({a.name}): binding default {a.default} vs stub {b.default}")
        kl, ks = _pybind_basic(a.annotation), _stub_basic(b.annotation)
        if kl is not None:
            if ks is None:
                problems.append(f"{where}({a.name}): binding type {a.annotation!r} but stub {b.annotation!r}")
            elif (kl - {"None"}) - (ks - {"None"}) and not (kl - {"None"} == {"int"} and "float" in ks):
                problems.append(f"{where}({a.name}): binding type {a.annotation!r} but stub {b.annotation!r}")
            elif ("None" in kl) != ("None" in ks):
                problems.append(f"{where}({a.name}): binding optional={('None' in kl)} but stub {b.annotation!r}")
        elif a.annotation is not None and a.annotation != "object" and b.annotation is None:
            problems.append(f"{where}({a.name}): stub has no annotation")
    rl, rs = _pybind_basic(live.returns), _stub_basic(stub.returns)
    if stub.returns is None:
        problems.append(f"{where}: stub has no return annotation")
    elif rl is not None and rl != rs:
        problems.append(f"{where}: binding returns {live.returns!r} but stub {stub.returns!r}")
    elif live.returns is not None and live.returns.startswith("numpy.typing.NDArray[") and "NDArray[" not in stub.returns:
        problems.append(f"{where}: binding returns {live.returns!r} but stub {stub.returns!r}")
    elif live.returns is not None and live.returns.startswith("numpy.typing.NDArray["):
        dt = live.returns[len("numpy.typing.NDArray[numpy.") : -1]
        if not stub.returns.endswith(f".{dt}]"):
            problems.append(f"{where}: binding returns {live.returns!r} but stub {stub.returns!r}")
    elif live.returns is not None and live.returns.startswith("tuple["):
        if not stub.returns.startswith("tuple[") or _tuple_len(stub.returns) != _tuple_len(live.returns):
            problems.append(f"{where}: binding returns {live.returns!r} but stub {stub.returns!r}")
    return problems


# --------------------------------------------------------------------------- tests
def test_stub_exists_and_parses() -> None:
    assert STUB_PATH.is_file(), f"missing {STUB_PATH}"
    tree = _stub_tree()
    compile(tree, str(STUB_PATH), "exec")  # syntactically valid Python, not only a valid AST


def test_stub_has_no_implementation() -> None:
    """A stub holds declarations only: bodies are ``...`` or a docstring."""
    for node in ast.walk(_stub_tree()):
        if isinstance(node, ast.FunctionDef):
            body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
            assert not body, f"{node.name} has an implementation in the stub"


def test_module_names_match() -> None:
    live = set(_live_public_names())
    stub = set(_stub_toplevel())
    assert live - stub == set(), f"bound in kvtier._core but missing from _core.pyi: {sorted(live - stub)}"
    assert stub - live == set(), f"in _core.pyi but not bound in kvtier._core: {sorted(stub - live)}"


def test_module_kinds_match() -> None:
    stub = _stub_toplevel()
    for name, obj in _live_public_names().items():
        node = stub[name]
        if inspect.isclass(obj):
            assert isinstance(node, ast.ClassDef), f"{name} is a class in the module but not in the stub"
        elif callable(obj):
            assert isinstance(node, ast.FunctionDef), f"{name} is a function in the module but not in the stub"
        else:
            assert isinstance(node, (ast.AnnAssign, ast.Assign)), f"{name} is a value in the module but not in the stub"


def _classes() -> list[str]:
    return sorted(k for k, v in _live_public_names().items() if inspect.isclass(v))


def _functions() -> list[str]:
    return sorted(k for k, v in _live_public_names().items() if not inspect.isclass(v) and callable(v))


@pytest.mark.parametrize("cls_name", _classes())
def test_class_members_match(cls_name: str) -> None:
    cls = getattr(_core, cls_name)
    node = _stub_toplevel()[cls_name]
    assert isinstance(node, ast.ClassDef)
    live = _live_class_members(cls)
    stub = _stub_class_members(node)
    assert set(live) - set(stub) == set(), f"{cls_name}: bound but missing from the stub: {sorted(set(live) - set(stub))}"
    assert set(stub) - set(live) == set(), f"{cls_name}: in the stub but not bound: {sorted(set(stub) - set(live))}"
    for k in live:
        assert live[k] == stub[k], f"{cls_name}.{k}: a {live[k]} in the module, a {stub[k]} in the stub"


@pytest.mark.parametrize("func_name", _functions())
def test_function_signatures(func_name: str) -> None:
    live = _doc_signatures(getattr(_core, func_name), func_name)
    stub = _stub_signatures(_stub_tree().body, func_name)
    assert len(live) == len(stub), f"{func_name}: {len(live)} binding overload(s) vs {len(stub)} in the stub"
    problems = []
    for i, (a, b) in enumerate(zip(live, stub)):
        problems += _compare(f"{func_name}#{i}" if len(live) > 1 else func_name, a, b, is_method=False)
    assert not problems, "\n".join(problems)


def _methods() -> list[tuple[str, str]]:
    out = []
    for c in _classes():
        for m, kind in sorted(_live_class_members(getattr(_core, c)).items()):
            out.append((c, m))
    return out


@pytest.mark.parametrize(("cls_name", "member"), _methods(), ids=[f"{c}.{m}" for c, m in _methods()])
def test_member_signatures(cls_name: str, member: str) -> None:
    cls = getattr(_core, cls_name)
    raw = vars(cls)[member]
    node = _stub_toplevel()[cls_name]
    assert isinstance(node, ast.ClassDef)
    where = f"{cls_name}.{member}"
    if isinstance(raw, property):
        # A getter's doc is "(self: kvtier._core.X) -> T"; a read-only property has no setter.
        (live,) = _doc_signatures(raw.fget, "")
        fns = _stub_functions(node.body, member)
        getters = [f for f in fns if "property" in _decorator_names(f)]
        setters = [f for f in fns if "setter" in _decorator_names(f)]
        if getters:
            stub = _stub_signature(getters[0])
            assert [p.name for p in stub.params] == ["self"], f"{where}: a property getter takes only self"
            rl, rs = _pybind_basic(live.returns), _stub_basic(stub.returns)
            assert rl is None or rl == rs, f"{where}: binding gives {live.returns!r}, stub {stub.returns!r}"
        assert bool(setters) == (raw.fset is not None), f"{where}: writable in the module != writable in the stub"
        return
    fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
    live_sigs = _doc_signatures(fn, member)
    stub_sigs = _stub_signatures(node.body, member)
    assert len(live_sigs) == len(stub_sigs), f"{where}: {len(live_sigs)} binding overload(s) vs {len(stub_sigs)} in the stub"
    problems = []
    for a, b in zip(live_sigs, stub_sigs):
        problems += _compare(where, a, b, is_method=not isinstance(raw, staticmethod))
    assert not problems, "\n".join(problems)


def test_parameter_names_are_the_bound_ones() -> None:
    """Spot-check the parser against the binding: keyword calls with the stub's names work."""
    cfg = kvtier.StoreConfig(block_size=2, block_bytes=4, host=kvtier.TierConfig(capacity_bytes=64), vocab_size=100)
    s = _core.Store(spec=cfg.spec(), ids=False, limit=100)
    ns = s.add_namespace(kvtier.Namespace(model="m").key(2))
    assert s.insert(ns=ns, session="", tokens=[1, 2], payload=bytes(4), payload_first=0, now=1.0) == (0, 1, 1)
    blocks, disk_blocks, pin, probe, on_device = s.match(ns=ns, tokens=[1, 2], now=2.0, touch=True, pin=True)
    assert (blocks, disk_blocks, probe, on_device, pin.blocks, pin.active) == (1, 0, None, None, 1, True)
    assert s.load_pinned(pin=pin, out=bytearray(4)) == (1, [])
    assert s.keys_pinned(pin).shape == (1, 32)
    s.unpin(pin)
    assert s.evict(bytes=4, now=3.0) == 4
    assert s.evict_device(bytes=4, now=3.0) == 0  # no device tier
    assert s.device_stats()["capacity_bytes"] == 0
    with pytest.raises(kvtier.InvalidArgumentError, match="metadata-only"):
        s.replay(offsets=[0], blocks=[], times=[], ns_keys=[b"k" * 32], ns_index=None, sessions=None, session_table=[])
    meta_cfg = kvtier.StoreConfig(block_size=2, block_bytes=4, metadata_only=True, host=kvtier.TierConfig(capacity_bytes=64))
    meta = _core.Store(meta_cfg.spec(), ids=False, limit=100)
    hits, ids = meta.replay(offsets=[0], blocks=[], times=[], ns_keys=[b"k" * 32])
    assert hits.shape == (0,) and len(ids) == 1
    assert _core.blake3(data=b"", out_len=4) == _core.blake3(b"")[:4]
    # Unnamed parameters are positional-only: the stub marks them with "/".
    with pytest.raises(TypeError):
        s.add_namespace(arg0=b"\0" * 32)  # type: ignore[call-arg]
    s.close()
    assert s.closed


def test_detects_a_missing_binding() -> None:
    """The comparison itself catches drift: a stub with a name removed, or a renamed parameter."""
    text = STUB_PATH.read_text(encoding="utf-8")
    tree = ast.parse(text)
    body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "namespace_key")]
    assert {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} != set(_live_public_names())

    renamed = ast.parse(text.replace("def truncate(self, n: int)", "def truncate(self, count: int)"))
    ts = next(n for n in renamed.body if isinstance(n, ast.ClassDef) and n.name == "TokenSequence")
    (live,) = _doc_signatures(vars(_core.TokenSequence)["truncate"], "truncate")
    (stub,) = _stub_signatures(ts.body, "truncate")
    assert _compare("TokenSequence.truncate", live, stub, is_method=True)


def test_detects_a_new_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the module gains (module function or class member) shows up as missing from the stub."""
    monkeypatch.setattr(_core, "brand_new_binding", _core.namespace_key, raising=False)
    assert "brand_new_binding" in set(_live_public_names()) - set(_stub_toplevel())
    monkeypatch.setattr(_core.Store, "brand_new_method", vars(_core.Store)["clock"], raising=False)
    node = _stub_toplevel()["Store"]
    assert isinstance(node, ast.ClassDef)
    assert "brand_new_method" in set(_live_class_members(_core.Store)) - set(_stub_class_members(node))


def test_stub_is_installed_with_the_package() -> None:
    """py.typed is shipped, so the stub must ship beside the extension for type checkers to see it."""
    pkg = Path(kvtier.__file__).parent
    if pkg.resolve() == STUB_PATH.parent.resolve():
        return  # running from the source tree
    installed = pkg / "_core.pyi"
    assert installed.exists(), f"{installed} is missing: the wheel does not ship the stub"
    assert installed.read_text(encoding="utf-8") == STUB_PATH.read_text(encoding="utf-8")


@pytest.mark.slow
def test_stubtest(tmp_path: Path) -> None:
    """mypy's stubtest, when mypy is installed: a second, independent check of names and signatures."""
    pytest.importorskip("mypy.stubtest")
    allow = tmp_path / "allowlist.txt"
    # pybind11 classes have pybind11's metaclass; a constructor-less class keeps object's __init__.
    pybind_classes = [c for c in _classes() if not issubclass(getattr(_core, c), enum.Enum)]
    allow.write_text(
        "\n".join(
            [f"kvtier._core.{c}" for c in pybind_classes]
            + [f"kvtier._core.{c}.__init__" for c in pybind_classes if "__init__" not in _live_class_members(getattr(_core, c))]
            # A native enum (enum.Enum subclass) carries pybind11's capsule.
            + ["kvtier._core.Policy.__pybind11_native_enum__"]
        )
        + "\n"
    )
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(f"[mypy]\ncache_dir = {tmp_path / 'cache'}\n")
    # Only the stub is checked: an empty package stub beside it keeps the rest of kvtier out of it.
    stubs = tmp_path / "stubs" / "kvtier"
    stubs.mkdir(parents=True)
    (stubs / "__init__.pyi").write_text("")
    (stubs / "_core.pyi").write_text(STUB_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    env = dict(os.environ, MYPYPATH=str(stubs.parent))
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(cfg), "--allowlist", str(allow), "kvtier._core"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
