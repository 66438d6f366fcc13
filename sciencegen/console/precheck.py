"""The config precheck of every Hydra command: the command line composed once before Hydra runs the job, so
that a mistake (a misspelt key, a wrong type, a missing file, an unwritable run directory, a YAML syntax error in
a user's config) is one line naming the key or the file and the fix (exit status 2), never a traceback.

Hydra's own flags are read as Hydra reads them (``--config-dir``, ``--config-path``, ``--config-name``,
``--multirun``); :func:`precheck` is the entry point, :func:`compose` composes as the app does.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigProblem", "Search", "compose", "one_line", "precheck", "run_dir_problem"]


@dataclass(frozen=True)
class Search:
    """Where Hydra looks for the configs: ``--config-path`` (the primary directory), ``--config-dir`` (added)."""

    config_path: str | None = None
    config_dir: str | None = None


class ConfigProblem(Exception):
    """A mistake on the command line found before composing, already phrased as one line."""


def _search_path(search: Search) -> Any:
    """Hydra's config search path of the apps, built as ``hydra.main`` builds it from its flags."""
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.utils import validate_config_path

    from ..config import config_dir

    config_path = str(config_dir()) if search.config_path is None else search.config_path
    try:
        validate_config_path(config_path)
    except ValueError:
        raise ConfigProblem(f"--config-path {config_path}: a directory, not a file; name the config "
                             "with --config-name") from None
    if os.path.isabs(config_path) and not os.path.isdir(config_path):
        raise ConfigProblem(f"--config-path {config_path}: no such directory")
    path = create_automatic_config_search_path(None, "sciencegen.cli", config_path)
    if search.config_dir is not None:
        where = os.path.abspath(search.config_dir)
        if not os.path.isdir(where):
            raise ConfigProblem(f"--config-dir {search.config_dir}: no such directory")
        path.prepend(provider="command-line", path=f"file://{where}", anchor=SearchPathQuery(provider="schema"))
    return path


def compose(config_name: str, overrides: list[str], search: Search | None = None) -> Any:
    """Compose ``config_name`` with ``overrides`` (the ``hydra`` node included) as the app does, without running it.

    ``search`` holds Hydra's ``--config-path`` / ``--config-dir``; ``hydra.searchpath`` is an override.
    """
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from hydra.types import RunMode

    from ..config import register

    register()
    path = _search_path(search or Search())
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name="cli", config_search_path=path)
        return hydra.compose_config(config_name, list(overrides), run_mode=RunMode.RUN)
    finally:
        restore_gh_from_backup(backup)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _shell_fix(key: str, value: str) -> str:
    """``key=value`` as one shell word that Hydra reads as one string (a list or mapping stays one)."""
    import shlex

    if value[:1] in "[{" or (value[:1] in "'\"" and value[-1:] == value[:1]):
        return shlex.quote(f"{key}={value}")
    quote = "'" if '"' in value else '"'
    return shlex.quote(f"{key}={quote}{value}{quote}")


def _split_value(argv: list[str]) -> str | None:
    """An override whose value the shell split at a space (``a=/my dir/x`` -> ``a=/my``, ``dir/x``), as one line."""
    groups: list[list[str]] = []
    for arg in argv:  # a word with no '=' (and no '~': a deletion) continues the override before it
        if groups and "=" not in arg and not arg.startswith("~"):
            groups[-1].append(arg)
        else:
            groups.append([arg])
    for words in groups:
        if len(words) > 1 and "=" in words[0]:
            key, _, value = " ".join(words).partition("=")
            return (f"{key}={value}: a value with a space must be one argument (the shell passed "
                    f"{len(words)}); quote it: {_shell_fix(key, value)}")
    return None


def _parse_line(exc: BaseException, overrides: list[str]) -> str:
    """An override Hydra cannot parse: the override, the parser's complaint and how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    bad = None
    for text in overrides:
        try:
            parser.parse_override(text)
        except Exception:
            bad = text
            break
    why = next((str(e).splitlines()[0] for e in _chain(exc)[1:] if str(e) not in ("", "None")),
               str(exc).splitlines()[0])
    if bad is None:
        return f"cannot read the overrides: {why}"
    if "=" not in bad:
        return f"{bad}: not an override: write key=value (or ~key to delete one)"
    key, _, value = bad.partition("=")
    return f"{bad}: cannot read this override ({why}); quote the value: {_shell_fix(key, value)}"


_YAML_HINTS = {
    "mapping values are not allowed here": "quote a value that contains ': ', and indent a nested key under its parent",
    "found character '\\t' that cannot start any token": "indent with spaces, not tabs",
}


def _yaml_line(exc: Any) -> str:
    """A YAML syntax error: the file, line and column, the problem and the usual fix."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{mark.name} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "a config file"
    problem = exc.problem or exc.context or type(exc).__name__
    hint = _YAML_HINTS.get(problem, "fix the YAML syntax there (indentation, quotes, brackets)")
    return f"{where}: {problem}; {hint}"


def _config_file(config_path: str, overrides: list[str], search: Search | None) -> str | None:
    """The YAML file of ``config_path`` (e.g. ``experiment/mine``) on the search path, or None."""
    from importlib import resources
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        dirs = [str(e.path) for e in _search_path(search or Search()).get_path()]
    except ConfigProblem:
        dirs = []
    for text in overrides:
        if text.startswith("hydra.searchpath="):
            try:
                dirs += [str(d) for d in OverridesParser.create().parse_override(text).value()]
            except Exception:
                pass
    for d in dirs:
        try:
            scheme, _, rest = d.rpartition("://")
            base = Path(str(resources.files(rest.replace("/", ".")))) if scheme == "pkg" else Path(rest)
        except Exception:
            continue
        if scheme in ("", "file", "pkg") and (base / f"{config_path}.yaml").is_file():
            return str(base / f"{config_path}.yaml")
    return None


def _key_line(file: str, key: str) -> int | None:
    """The line of ``key`` (dotted; also matched by its tail, for a file under a package) in a YAML file."""
    import yaml

    try:
        with open(file) as f:
            root = yaml.compose(f, Loader=yaml.SafeLoader)
    except Exception:
        return None

    def find(node: Any, parts: list[str]) -> int | None:
        if not isinstance(node, yaml.MappingNode):
            return None
        for k, v in node.value:
            if getattr(k, "value", None) == parts[0]:
                return k.start_mark.line + 1 if len(parts) == 1 else find(v, parts[1:])
        return None

    parts = key.split(".")
    return next((line for start in range(len(parts)) if (line := find(root, parts[start:]))), None)


def _where(text: str, key: str, overrides: list[str], search: Search | None) -> str:
    """`` (FILE, line N)`` for a key set in a config file (Hydra's ``In 'group/option'``), else ''."""
    import re

    named = re.match(r"In '([^']+)'", text)
    file = _config_file(named.group(1), overrides, search) if named else None
    if file is None:
        return f" (in config '{named.group(1)}')" if named else ""
    line = _key_line(file, key)
    return f" ({file}, line {line})" if line else f" ({file})"


def _override_value(key: str, overrides: list[str]) -> str | None:
    """The value ``overrides`` give ``key`` (``key=V``, ``+key=V``, ``++key=V``), or None."""
    return next((o.split("=", 1)[1] for o in overrides if "=" in o and o.lstrip("+~").split("=", 1)[0] == key), None)


def _allowed(cause: BaseException, key: str, config_name: str, overrides: list[str], search: Search | None) -> str:
    """``; PARENT has: k1, k2, ...`` for a misspelt ``key``: the schema's fields, else the composed node's keys."""
    import dataclasses

    from omegaconf import OmegaConf

    parent = key.rpartition(".")[0]
    schema = getattr(cause, "object_type", None)
    if dataclasses.is_dataclass(schema):
        names = [f.name for f in dataclasses.fields(schema)]
    else:
        keep = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
        try:
            node = compose(config_name, keep, search)
            names = [str(k) for k in (OmegaConf.select(node, parent) if parent else node)]
        except Exception:
            return ""
    return f"; {parent or 'the config'} has: {', '.join(names)}"


def _group_line(text: str, config_name: str, overrides: list[str]) -> str | None:
    """Group choices Hydra rejects: an option that does not exist, a group the config does not have."""
    import re

    if "Could not load 'hydra/launcher/submitit" in text or "Could not find 'hydra/launcher/submitit" in text:
        return ("hydra/launcher: the SLURM launcher is not installed; pip install 'sciencegen[slurm]' "
                "(hydra-submitit-launcher)")
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        avail = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}={option}: no such {group}; choose one of {', '.join(a for a in avail if a != 'schema')}"
    absent = re.match(r"Could not override '([^']+)'\. No match in the defaults list", text)
    if absent:
        group = absent.group(1)
        over = next((o for o in overrides if o.split("=", 1)[0] == group), f"{group}=...")
        return f"{over}: the {config_name} config has no {group} to override; add one with +{over}"
    ambiguous = re.match(r"Ambiguous value for argument '([^']+)'", text)
    if ambiguous:
        over = ambiguous.group(1)
        key, _, value = over.partition("=")
        return (f"{over}: ambiguous: write {key}=[{value}] for a list, {_shell_fix(key, value)} for a string, "
                "or add --multirun to sweep over the values")
    return None


def one_line(exc: BaseException, config_name: str, overrides: list[str], search: Search | None = None) -> str:
    """A Hydra composition error as one line: the key, the file and line where it was set, and what is allowed."""
    import re

    import yaml
    from hydra.errors import OverrideParseException

    if isinstance(exc, ConfigProblem):
        return str(exc)
    chain = _chain(exc)
    syntax = next((e for e in chain if isinstance(e, yaml.MarkedYAMLError)), None)
    if syntax is not None:
        return _yaml_line(syntax)
    if any(isinstance(e, OverrideParseException) for e in chain):
        return _parse_line(exc, overrides)
    text = str(exc)
    if text.startswith("Primary config module") and search is not None and search.config_path is not None:
        return (f"--config-path {search.config_path}: no such directory; a relative one names a module of the "
                "sciencegen package: give an absolute directory, or add one with --config-dir")
    group = _group_line(text, config_name, overrides)
    if group:
        return group
    cause = next((e for e in chain if getattr(e, "full_key", None)), exc.__cause__ or exc)
    key = getattr(cause, "full_key", None) or ""
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if not key:
        return first
    value = _override_value(key, overrides)
    where = "" if value is not None else _where(text, key, overrides, search)
    if "not in struct" in first or re.match(r"Key '[^']+' not in", first):
        return f"{key}: no such key{where}{_allowed(cause, key, config_name, overrides, search)}"
    return f"{key}{'=' + value if value is not None else ''}: {first}{where}"


_SHOW_ONLY = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun")


def _hydra_args(argv: list[str]) -> argparse.Namespace | None:
    """Hydra's reading of the command line; None where Hydra answers by itself (help, version, info, a bad flag)."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:  # --version, or a flag Hydra rejects: Hydra says so itself when it runs
        return None
    return None if any(getattr(args, k, None) for k in _SHOW_ONLY) else args


_SWEEP_CHECKS = 32  # compositions a --multirun precheck may spend (about 0.1 s each)


def _sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Jobs of a ``--multirun`` sweep that together use every swept value once (``a=1,2 b=x,y`` -> ``a=1 b=x``,
    ``a=2 b=x``, ``a=1 b=y``), at most ``_SWEEP_CHECKS``; none where the sweep cannot be listed (intervals).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for text, o in zip(overrides, parsed, strict=True):
        try:
            swept = list(o.sweep_string_iterator()) if o.is_sweep_override() and o.is_discrete_sweep() else None
        except Exception:
            swept = None
        if o.is_sweep_override() and not swept:
            return []
        values.append([f"{o.get_key_element()}={v}" for v in swept] if swept else [text])
    first = [v[0] for v in values]
    jobs = [first]
    for i, vals in enumerate(values):
        jobs += [first[:i] + [v] + first[i + 1:] for v in vals[1:]]
    return jobs[:_SWEEP_CHECKS]


def _flag_problem(args: argparse.Namespace) -> str | None:
    """Hydra's flags that cannot go together, as one line (Hydra itself raises a traceback)."""
    given = [f for f, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg is not None))
             if on]
    if len(given) > 1:
        return f"{' and '.join(given)}: give only one of --run, --multirun, --cfg"
    if args.resolve and args.cfg is None:
        return "--resolve: only with --cfg (or --help)"
    return None


def precheck(prog: str, config_name: str, argv: list[str]) -> None:
    """Compose the command line once before Hydra does, so that a mistake is one line (exit status 2).

    Hydra's flags are read as Hydra reads them: ``--config-dir``/``-cd``, ``--config-path``/``-cp``,
    ``--config-name``/``-cn`` change what is composed; ``--multirun`` composes jobs using each swept value;
    ``--help``, ``--hydra-help``, ``--info``, ``--version`` and flags Hydra rejects are left to Hydra.
    """
    args = _hydra_args(argv)
    if args is None:
        return
    name = args.config_name or config_name
    search = Search(args.config_path, args.config_dir)
    overrides = list(args.overrides)
    problem = _split_value(overrides) or _flag_problem(args)
    if problem is None:
        job = overrides
        try:
            for job in _sweep_jobs(overrides) if args.multirun else [overrides]:
                cfg = compose(name, job, search)
        except Exception as exc:  # Hydra/OmegaConf/YAML errors of every kind
            problem = one_line(exc, name, job, search)
        else:
            problem = None if args.multirun or args.cfg else run_dir_problem(cfg)
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def run_dir_problem(cfg: Any) -> str | None:
    """Why Hydra could not write its run directory (it logs there before the job starts), or None."""
    from omegaconf import OmegaConf

    try:
        run = Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).absolute()
    except Exception:  # an interpolation only Hydra's job can resolve: leave it to Hydra
        return None
    near = next(p for p in (run, *run.parents) if p.exists())
    fix = "run from a writable directory or set hydra.run.dir=PATH"
    if not near.is_dir():
        return f"cannot write the run directory {run} (hydra.run.dir): {near} is a file; {fix}"
    if os.access(near, os.W_OK):
        return None
    readonly = bool(os.statvfs(near).f_flag & os.ST_RDONLY)
    why = "the filesystem is read-only" if readonly else "permission denied"
    return f"cannot write the run directory {run} (hydra.run.dir): {why}; {fix}"
