"""The shipped configs read for people: config groups and their options, each key's value and one-line help.

Used by ``--help`` of every command and by ``tools/config_reference.py`` (``docs/configuration.md``).
A key's help is its schema field's ``help`` (``sciencegen/config.py``) or, for the untyped keys of a primary
config, the YAML comment beside it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from typing import Any

from ..config import config_dir

__all__ = ["GROUP_ORDER", "HIDDEN", "default_text", "flat_keys", "listing", "schema_fields", "value_text",
           "yaml_comments", "yaml_text"]

#: groups in this order first, then any other (alphabetically)
GROUP_ORDER = ["dataset", "conditioning", "model", "train", "sampler", "generate", "evaluate", "experiment"]
#: groups that are not options a user picks
HIDDEN = ("hydra", "schema")


def value_text(v: Any) -> str:
    """A config value written as on the command line (YAML flow style)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {value_text(x)}" for k, x in v.items()) + "}"
    return str(v)


def default_text(node: Any, key: str) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(node, key):
        return "**required**"
    v = node._get_node(key)
    v = OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v._value()
    return f"`{value_text(v)}`"


def yaml_comments(text: str) -> tuple[str, dict[str, str]]:
    """The description of a YAML file and ``{dotted key: its comment}``.

    The description is the file's first comment lines, less ``@package`` and indented command examples. A
    key's comment is the one after it on its line (continued by comment lines indented under it), else the
    comment lines right above it. A light reading of the shipped files: block mappings, one key per line.
    """
    lines = text.splitlines()
    desc = []
    for line in lines:
        if not line.startswith("#"):
            break
        if "@package" not in line and not line[1:].startswith("  "):
            desc.append(line[1:].strip())
    notes: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last: str | None = None
    for line in lines:
        m = re.match(r"^(\s*)([A-Za-z_]\w*):(.*)$", line)
        c = re.match(r"^(\s*)#\s?(.*)$", line)
        if c:
            if last is not None and len(c.group(1)) > stack[-1][0]:
                notes[last] += " " + c.group(2).strip()
            else:
                above.append(c.group(2).strip())
                last = None
            continue
        if not m:
            above, last = [], None
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        trailing = re.search(r"(?:^|\s)#\s?(.*)$", rest)
        if trailing:
            notes[dotted], last = trailing.group(1).strip(), dotted
        else:
            last = None
            if above:
                notes[dotted] = " ".join(above)
        above = []
    return " ".join(desc), notes


def yaml_text(path: str) -> str:
    return config_dir().joinpath(path).read_text()


def schema_fields(schema: type, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(dotted key, type, help)`` of a schema, nested schemas flattened."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from schema_fields(kind, f"{prefix}{f.name}.")
            continue
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        yield f"{prefix}{f.name}", text.replace("typing.", ""), f.metadata.get("help", "")


def flat_keys(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    from omegaconf import DictConfig

    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none() and len(child):
            yield from flat_keys(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", (node, key)


def listing() -> tuple[list[str], dict[str, list[str]]]:
    """Config groups (sub-folders of ``conf``) and their options (YAML files)."""
    root = config_dir()
    options = {d.name: sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
               for d in root.iterdir() if d.is_dir() and not d.name.startswith("_") and d.name not in HIDDEN}
    groups = sorted(options, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    return groups, options
