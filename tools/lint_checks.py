"""Project lint checks that ruff cannot express (run by `make lint`).

SimpleITK's `GetArrayViewFromImage(image)` returns a NumPy view into the image's buffer without keeping
the image alive: once the image is freed, reading the view reads freed memory (stale values, or a
segmentation fault when the allocator has returned the pages). Two patterns make that happen:

- AV1: `GetArrayViewFromImage(<expression>)` of anything but a name or an attribute, e.g.
  `GetArrayViewFromImage(read_image(path))` or `GetArrayViewFromImage(a + b)`: the argument is a
  temporary image, freed as soon as the call returns.
- AV2: a function returns (or yields) a view of an image that is local to it, e.g.
  `image = read_image(path); return GetArrayViewFromImage(image)`, or a name bound to such a view, or a
  reshape/transpose/slice of it: the image dies with the function. Return `GetArrayFromImage` (a copy),
  `view.copy()`, or the image itself.

Usage: `python tools/lint_checks.py [PATH ...]` (default: the current folder); prints one line per finding
(`path:line:col: code message`) and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

VIEW_FUNCTION = "GetArrayViewFromImage"
# methods and attributes of an ndarray whose result still shares its buffer
VIEW_METHODS = {"reshape", "transpose", "view", "swapaxes", "squeeze", "ravel", "__array__"}
VIEW_ATTRIBUTES = {"T", "mT", "real", "imag", "flat"}
# module functions that return a view of their first argument when they can
VIEW_WRAPPERS = {
    "asarray",
    "asanyarray",
    "ascontiguousarray",
    "moveaxis",
    "rollaxis",
    "swapaxes",
    "transpose",
    "squeeze",
    "expand_dims",
    "flip",
    "fliplr",
    "flipud",
    "rot90",
    "ravel",
    "reshape",
    "atleast_3d",
    "from_numpy",
    "as_tensor",
}
SKIPPED_DIRS = {".venv", ".git", "build", "__pycache__"}


def _name(node: ast.expr) -> str | None:
    """Last name of a called function (`GetArrayViewFromImage` of `sitk.GetArrayViewFromImage`)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _image_argument(call: ast.Call) -> ast.expr | None:
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg == "image"), None)


def _is_view_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) == VIEW_FUNCTION


def _is_reference(node: ast.expr) -> bool:
    """A name or an attribute chain: an object someone holds, not a temporary."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


class _FunctionChecker:
    """AV2 for one function body (nested functions and classes are checked on their own)."""

    def __init__(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function = function
        self.outer: set[str] = set()  # global / nonlocal names live on after the function
        self.locals: set[str] = set()  # names bound in the body (a parameter bound again counts too)
        self.views: set[str] = set()

    def own_nodes(self) -> Iterator[ast.AST]:
        """Nodes of the body in source order, without descending into nested scopes."""
        stack = list(reversed(self.function.body))
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                continue
            stack.extend(reversed(list(ast.iter_child_nodes(node))))

    def _targets(self, node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Assign):
            return node.targets
        if isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
            return [node.target]
        if isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            return [node.target]
        if isinstance(node, ast.withitem) and node.optional_vars is not None:
            return [node.optional_vars]
        return []

    def _is_local_image(self, node: ast.expr | None) -> bool:
        return isinstance(node, ast.Name) and node.id in self.locals and node.id not in self.outer

    def is_view(self, node: ast.expr | None) -> bool:
        """True when `node` evaluates to (a container holding) a view of a local image."""
        if node is None:
            return False
        if isinstance(node, ast.Name):
            return node.id in self.views
        if _is_view_call(node):
            return self._is_local_image(_image_argument(node))
        if isinstance(node, ast.Subscript | ast.Starred):
            return self.is_view(node.value)
        if isinstance(node, ast.Attribute):
            return node.attr in VIEW_ATTRIBUTES and self.is_view(node.value)
        if isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Attribute) and function.attr in VIEW_METHODS:
                return self.is_view(function.value)
            return _name(function) in VIEW_WRAPPERS and bool(node.args) and self.is_view(node.args[0])
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(self.is_view(element) for element in node.elts)
        if isinstance(node, ast.Dict):
            return any(self.is_view(value) for value in node.values)
        if isinstance(node, ast.IfExp):
            return self.is_view(node.body) or self.is_view(node.orelse)
        return False

    def findings(self) -> Iterator[ast.AST]:
        nodes = list(self.own_nodes())
        for node in nodes:
            if isinstance(node, ast.Global | ast.Nonlocal):
                self.outer.update(node.names)
        for node in nodes:
            for target in self._targets(node):
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.locals.add(name.id)
        for node in nodes:  # names bound to views, in source order (good enough for straight-line code)
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                targets = self._targets(node)
                if self.is_view(node.value):
                    self.views.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.Return | ast.Yield | ast.YieldFrom) and self.is_view(node.value):
                yield node


def check_source(source: str, filename: str = "<string>") -> list[tuple[int, int, str, str]]:
    """Findings (line, column, code, message) of one Python source."""
    tree = ast.parse(source, filename)
    findings = []
    for node in ast.walk(tree):
        if _is_view_call(node):
            argument = _image_argument(node)
            if argument is not None and not _is_reference(argument):
                findings.append(
                    (
                        node.lineno,
                        node.col_offset,
                        "AV1",
                        f"{VIEW_FUNCTION} of a temporary image (freed when the call returns): bind the image "
                        "to a name first, or use GetArrayFromImage",
                    )
                )
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for escape in _FunctionChecker(node).findings():
                findings.append(
                    (
                        escape.lineno,
                        escape.col_offset,
                        "AV2",
                        f"{node.name}() returns a view of its local image (freed when it returns): "
                        "return a copy (GetArrayFromImage) or the image",
                    )
                )
    return sorted(findings)


def python_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*.py")):
            if not SKIPPED_DIRS.intersection(file.relative_to(path).parts):
                yield file


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or [Path(".")]
    count = 0
    for file in python_files(paths):
        for line, column, code, message in check_source(file.read_text(encoding="utf-8"), str(file)):
            print(f"{file}:{line}:{column + 1}: {code} {message}")
            count += 1
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main())
