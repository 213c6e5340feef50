"""The source stays readable (issue 12, item 6): no function in csrc/ or python/kvtier/ is longer than about 150
lines. A function that grows past it is split by concern (bind_copy was 259 lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 150

_HEADER_END = re.compile(r"\)\s*(?:const|override|noexcept|final|mutable|->\s*[\w:<>,\s*&]+|\s)*$")
_NOT_A_FUNCTION = re.compile(r"^\s*(?:if|for|while|switch|catch|do|else)\b")


def _code_only(text: str) -> str:
    """``text`` with comments, string and character literals blanked (newlines kept, so line numbers hold)."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|R"\((?:.|\n)*?\)"|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def cpp_function_lengths(text: str) -> list[tuple[int, int, str]]:
    """(first line, lines, header) of each outermost function body in C++ source ``text`` (free functions and
    member functions, lambdas counted in the function that holds them)."""
    code = _code_only(text)
    out: list[tuple[int, int, str]] = []
    stack: list[tuple[bool, int, str]] = []  # (is a function body, line of its "{", header)
    header_start = 0
    for i, c in enumerate(code):
        if c == "{":
            header = code[header_start:i]
            in_function = any(f for f, _, _ in stack)
            is_function = (
                not in_function and bool(_HEADER_END.search(header)) and not _NOT_A_FUNCTION.match(header)
            )
            stack.append((is_function, code.count("\n", 0, i) + 1, " ".join(header.split())[:100]))
            header_start = i + 1
        elif c == "}":
            if stack:
                is_function, line, header = stack.pop()
                if is_function:
                    out.append((line, code.count("\n", 0, i) + 1 - line + 1, header))
            header_start = i + 1
        elif c == ";":
            header_start = i + 1
    return out


def python_function_lengths(text: str) -> list[tuple[int, int, str]]:
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            out.append((node.lineno, node.end_lineno - node.lineno + 1, node.name))
    return out


def test_the_length_check_sees_functions() -> None:
    src = "namespace a {\nstruct S {\n  int f() const {\n    return 1;\n  }\n};\n" + (
        "void g(int x) {\n  auto l = [&] {\n    if (x) {\n      x = 2;\n    }\n  };\n  // }\n  const char* s = \"{\";\n}\n}\n"
    )
    assert [(line, n) for line, n, _ in cpp_function_lengths(src)] == [(3, 3), (7, 9)]


@pytest.mark.parametrize("folder", ["csrc", "python/kvtier"])
def test_no_function_is_longer_than_about_150_lines(folder: str) -> None:
    long = []
    for path in sorted((ROOT / folder).rglob("*")):
        if path.suffix in (".cpp", ".h"):
            found = cpp_function_lengths(path.read_text())
        elif path.suffix == ".py":
            found = python_function_lengths(path.read_text())
        else:
            continue
        long += [f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)" for line, n, name in found if n > MAX_LINES]
    assert not long, "split by concern: " + "; ".join(long)


def _block_size_defaults(tree: ast.AST) -> list[tuple[int, str, ast.expr]]:
    """(line, name, default) of every default given to a block size: parameters and dataclass fields whose name
    holds ``block_size``, and ``default=`` of command-line options named ``--...block-size``."""
    found: list[tuple[int, str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            found += [(d.lineno, arg.arg, d) for arg, d in pairs if "block_size" in arg.arg]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if "block_size" in node.target.id:
                found.append((node.lineno, node.target.id, node.value))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.args[0].value
            if isinstance(name, str) and name.startswith("--") and name.endswith("block-size"):
                found += [(kw.value.lineno, name, kw.value) for kw in node.keywords if kw.arg == "default"]
    return found


def test_the_default_block_size_is_written_once() -> None:
    """Every block-size default is the core's (kvtier.config.DEFAULT_BLOCK_SIZE, from csrc/core/spec.h), never a
    number written again: defaults live in one place."""
    written = []
    for path in sorted((ROOT / "python/kvtier").rglob("*.py")):
        for line, name, default in _block_size_defaults(ast.parse(path.read_text())):
            if isinstance(default, ast.Constant) and isinstance(default.value, int):
                written.append(f"{path.relative_to(ROOT)}:{line} {name}={default.value}")
    assert not written, "use kvtier.config.DEFAULT_BLOCK_SIZE: " + "; ".join(written)


def test_the_default_block_size_is_the_cores() -> None:
    from kvtier import _core
    from kvtier.config import DEFAULT_BLOCK_SIZE, StoreConfig

    assert DEFAULT_BLOCK_SIZE == _core.StoreSpec().block_size == StoreConfig().block_size


def test_one_exception_translator() -> None:
    """Core and CUDA errors become kvtier.errors exceptions in one place (docs/architecture.md): module.cpp."""
    registering = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "csrc").rglob("*.cpp"))
        if "register_exception_translator" in _code_only(path.read_text())
    ]
    assert registering == ["csrc/bindings/module.cpp"]
