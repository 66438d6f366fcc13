"""The house rules (tools/check_structure.py): the package keeps them, and the checker catches each breach."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_structure", ROOT / "tools" / "check_structure.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_structure"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_the_house_rules():
    found = _checker().problems()
    assert not found, "house rules broken (python tools/check_structure.py):\n" + "\n".join(found)


def _function(name: str, lines: int, reason: str = "") -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))  # + the def and the return
    doc = '    """Doc.\n\n    More doc.\n    """\n'
    return f"def {name}():{reason}\n{doc}    # a comment\n\n{body}    return 0\n"


def test_each_breach_is_caught(tmp_path):
    pkg = tmp_path / "sciencegen"
    (pkg / "pipelines").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "pipelines" / "__init__.py").write_text("")
    (pkg / "big.py").write_text("x = 1\n" * 601)
    (pkg / "funcs.py").write_text(_function("ok", 60) + _function("too_long", 61)
                                  + _function("explained", 90, "  # long: one formula") + "_private = 1\n")
    (pkg / "pipelines" / "a.py").write_text("from . import b\nfrom .b import run_b\n")
    (pkg / "pipelines" / "b.py").write_text("def run_b():\n    return 1\n")
    (pkg / "low.py").write_text("from .pipelines.b import run_b\nfrom .funcs import _private\n"
                                "from .sub._hid import x\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("from ._hid import x\n")  # inside its package: allowed
    (pkg / "sub" / "_hid.py").write_text("x = 1\n")
    found = "\n".join(_checker().problems(pkg))
    assert "sciencegen/big.py: 601 lines" in found
    assert "too_long() has 61 lines of code" in found
    assert "ok()" not in found and "explained()" not in found
    assert found.count("pipeline sciencegen.pipelines.a imports another pipeline, sciencegen.pipelines.b") == 2
    assert "sciencegen.low is below the pipelines but imports sciencegen.pipelines.b" in found
    assert "imports private name(s) _private of sciencegen.funcs" in found
    assert "sciencegen/low.py:3: imports the private module sciencegen.sub._hid from outside its package" in found
    assert len(found.splitlines()) == 7, found
