"""The house rules of ``sciencegen/``, checked from the source (``tests/test_structure.py`` runs this in CI).

* a module has at most 600 lines;
* a function (method, nested function) has at most 60 lines of code — docstring, comments and blank lines not
  counted — unless a comment ``# long: REASON`` on its ``def`` line or right above it says why;
* a pipeline (``sciencegen/pipelines/*.py``) imports no other pipeline, and nothing below the pipelines imports
  them (only ``sciencegen/cli.py`` runs them);
* no module imports another module's private (``_name``) names, nor a private module of another package.

Usage: ``python tools/check_structure.py`` prints one line per breach and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sciencegen"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _code_lines(source: str) -> set[int]:
    """Line numbers holding code: not blank, not only a comment, not part of a string statement (docstring)."""
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
    tree = ast.parse(source)
    for node in ast.walk(tree):  # docstrings and other bare string statements
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            lines.difference_update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _has_reason(text: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    around = [text[node.lineno - 1], *(text[i - 1] for i in range(max(first - 1, 1), node.lineno))]
    return any("# long:" in line for line in around)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """``(absolute module, names)`` of an import statement inside ``module``."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [a.name for a in node.names]
    if node.module is None:  # from . import x: x may be a module
        return [(f"{target}.{n}", []) for n in names] + [(target, names)]
    return [(target, names)]


def _imports(path: Path, tree: ast.Module, root: Path) -> Iterator[tuple[int, str, list[str]]]:
    module = _module_name(path, root)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target, names in _imported(node, module, path.name == "__init__.py"):
                yield node.lineno, target, names


def _import_problems(path: Path, tree: ast.Module, root: Path) -> Iterator[str]:
    rel = path.relative_to(root)
    module = _module_name(path, root)
    in_pipelines = module.startswith("sciencegen.pipelines.")
    for line, target, names in _imports(path, tree, root):
        where = f"{rel}:{line}"
        if target.startswith("sciencegen.pipelines.") and target != module:
            if in_pipelines and target != "sciencegen.pipelines":
                yield f"{where}: pipeline {module} imports another pipeline, {target}"
            elif not in_pipelines and module != "sciencegen.cli":
                yield f"{where}: {module} is below the pipelines but imports {target}"
        hidden = [part for part in target.split(".")[1:] if part.startswith("_") and not part.startswith("__")]
        package = target.rsplit(".", 1)[0]
        inside = module == package or module.startswith(package + ".")
        if hidden and target.startswith("sciencegen.") and not inside:
            yield f"{where}: imports the private module {target} from outside its package"
        if target.startswith("sciencegen") and target != module:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                yield f"{where}: imports private name(s) {', '.join(private)} of {target}"


def problems(package: Path = PACKAGE) -> list[str]:
    """Every breach of the rules in ``package``, one line each (``path:line: what``)."""
    out: list[str] = []
    root = package.parent
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root)
        source = path.read_text()
        text = source.splitlines()
        if len(text) > MAX_MODULE_LINES:
            out.append(f"{rel}: {len(text)} lines (at most {MAX_MODULE_LINES}: split the module by concern)")
        tree = ast.parse(source)
        code = _code_lines(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = len([i for i in code if node.lineno <= i <= (node.end_lineno or node.lineno)])
                if n > MAX_FUNCTION_LINES and not _has_reason(text, node):
                    out.append(f"{rel}:{node.lineno}: {node.name}() has {n} lines of code (at most "
                               f"{MAX_FUNCTION_LINES}, or a `# long: REASON` comment beside its def)")
        out += list(_import_problems(path, tree, root))
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
