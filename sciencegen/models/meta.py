"""What a checkpoint's meta records beside the weights, and how two recorded configs are compared.

* :func:`code_version`: the versions of the code that wrote a checkpoint (sciencegen, git commit, torch);
* :func:`normalise`, :func:`first_difference`, :func:`compact`: JSON values compared as stored, so a config
  equals its stored copy (tuples as lists) and a difference is named by its dotted path. Used by
  :func:`sciencegen.models.checkpoint.check_compatible` and by generation (a store's identity against a rerun's).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["code_version", "compact", "first_difference", "git_describe", "normalise"]

_GIT_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------------------- comparison


def first_difference(a: Any, b: Any, where: str) -> tuple[str, Any, Any] | None:
    """The dotted path and the two values of the first difference between JSON values ``a`` and ``b``.

    Parameters
    ----------
    a, b
        JSON values (dicts, lists, scalars), e.g. after :func:`normalise`.
    where
        The path of ``a`` and ``b`` themselves (``""`` at the top).

    Returns
    -------
    tuple or None
        ``(path, value in a, value in b)`` (a missing key reads ``"<missing>"``), or ``None`` when equal.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{where}.{k}"
            if k not in a or k not in b:
                return sub, a.get(k, "<missing>"), b.get(k, "<missing>")
            diff = first_difference(a[k], b[k], sub)
            if diff is not None:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = first_difference(x, y, f"{where}[{i}]")
            if diff is not None:
                return diff
        return None
    return None if a == b else (where, a, b)


def normalise(value: Any) -> Any:
    """JSON round trip (tuples → lists, keys → str) so a config compares equal to its stored copy."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def compact(value: Any) -> str:
    """One-line JSON of ``value`` (sorted keys), for messages."""
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


# ------------------------------------------------------------------------------------------ provenance


def _git(args: list[str], cwd: Path) -> str | None:
    """Output of ``git args`` run in ``cwd``; ``None`` if git fails, is missing or times out."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # never take index.lock for a status
    try:
        r = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_describe(pkg_dir: Path) -> str | None:
    """Short commit of the checkout holding ``pkg_dir`` (+ ``-dirty``), or ``None`` if it is not one.

    ``pkg_dir`` must be tracked by that checkout (a package installed inside some unrelated repository
    gives ``None``). Dirty: modified/staged tracked files anywhere in the repository, or untracked
    (not ignored) files inside ``pkg_dir``.
    """
    if _git(["ls-files", "--error-unmatch", "--", "__init__.py"], pkg_dir) is None:
        return None
    head = _git(["rev-parse", "--short", "HEAD"], pkg_dir)
    if head is None or not head.strip():
        return None
    tracked = _git(["status", "--porcelain", "--untracked-files=no"], pkg_dir)
    local = _git(["status", "--porcelain", "--untracked-files=normal", "--", "."], pkg_dir)
    dirty = bool((tracked or "").strip() or (local or "").strip())
    return head.strip() + ("-dirty" if dirty else "")


def code_version() -> dict[str, str | None]:
    """Versions of the code producing a checkpoint, for its ``meta``.

    Returns
    -------
    dict
        ``{"sciencegen": sciencegen.__version__, "git": "<short hash>[-dirty]" or None, "torch":
        torch.__version__}``. ``git`` is ``None`` when the package is not in a git checkout (an installed
        wheel) or git is missing/slow (each call has a timeout).
    """
    import sciencegen

    return {
        "sciencegen": sciencegen.__version__,
        "git": git_describe(Path(sciencegen.__file__).resolve().parent),
        "torch": torch.__version__,
    }
