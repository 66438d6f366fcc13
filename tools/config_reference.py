"""Write ``docs/configuration.md``, the configuration reference, from the configs and their schemas.

    python tools/config_reference.py            # (re)write docs/configuration.md
    python tools/config_reference.py --check    # exit 1 when docs/configuration.md is out of date

For each app (primary config in ``conf/``) its config groups with their default and options,
and the keys of the primary config itself (help from their YAML comments; these keys have no schema).
For each option of each group a table ``key | type | default | help``: the type and help come from the
schema the option names (``sciencegen/config.py``), the default from composing the option with Hydra.
Options sharing a schema (``train``, ``sampler``) share one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sciencegen.config import config_dir

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "configuration.md"

#: apps in pipeline order: (command, primary config)
APPS = [("sciencegen-data", "data"), ("sciencegen-train", "train"), ("sciencegen-generate", "generate"),
        ("sciencegen-evaluate", "evaluate"), ("sciencegen", "sciencegen")]
#: groups in this order first, then any other (alphabetically)
GROUP_ORDER = ["dataset", "model", "train", "sampler", "generate", "evaluate", "experiment"]
#: groups that are not options a user picks
HIDDEN = ("hydra", "schema")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(v: Any) -> str:
    """A config value written as on the command line (YAML flow style)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _default(node: Any, key: str) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(node, key):
        return "**required**"
    v = node._get_node(key)
    v = OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v._value()
    return f"`{_value(v)}`"


def _comments(text: str) -> tuple[str, dict[str, str]]:
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


def _first_line(text: str) -> str:
    return text.splitlines()[0].lstrip("#").strip() if text.startswith("#") else ""


def _yaml_text(path: str) -> str:
    return config_dir().joinpath(path).read_text()


def _fields(schema: type, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(dotted key, type, help)`` of a schema, nested schemas flattened."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _fields(kind, f"{prefix}{f.name}.")
            continue
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        yield f"{prefix}{f.name}", text.replace("typing.", ""), f.metadata.get("help", "")


def _flat(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    from omegaconf import DictConfig

    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none() and len(child):
            yield from _flat(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", (node, key)


def _listing() -> tuple[list[str], dict[str, list[str]]]:
    """Config groups (sub-folders of ``conf``) and their options (YAML files)."""
    root = config_dir()
    options = {d.name: sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
               for d in root.iterdir() if d.is_dir() and not d.name.startswith("_") and d.name not in HIDDEN}
    groups = sorted(options, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    return groups, options


def option_overrides() -> list[str]:
    """Overrides composing every option of every typed group at once, each under its own package.

    ``+dataset@dataset__grf=grf`` puts ``dataset=grf`` at ``dataset__grf``: one composition instead of one per
    option (Hydra's own config is composed once). Experiments (``# @package _global_``) are left out.
    """
    groups, options = _listing()
    return [f"+{g}@{g}__{o}={o}" for g in groups for o in options[g]
            if "@package _global_" not in _yaml_text(f"{g}/{o}.yaml")]


def render(compose: Callable[[str | None, list[str]], Any] | None = None) -> str:
    """The configuration reference (Markdown).

    ``compose(config_name, overrides)`` composes a config (with ``hydra`` when ``config_name`` is given);
    default: Hydra's ``compose`` in one ``initialize_config_dir`` context.
    """
    if compose is None:
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return render(lambda name, over: hydra_compose(name, overrides=over,
                                                           return_hydra_config=name is not None))
    from omegaconf import OmegaConf

    out: list[str] = [
        "# Configuration reference",
        "",
        "<!-- generated by tools/config_reference.py from conf/ and sciencegen/config.py: do not edit;",
        "     regenerate with `python tools/config_reference.py` (a test runs it with --check) -->",
        "",
        "Every app is a [Hydra](https://hydra.cc) app over a primary config in `conf/`; pick a group "
        "option with `GROUP=OPTION` (e.g. `dataset=kolmogorov`) and set a key with `GROUP.KEY=VALUE` (e.g. "
        "`dataset.size=64`). The options of the groups `dataset`, `model`, `train`, `sampler`, `generate` and "
        "`evaluate` are typed by a schema (a dataclass of `sciencegen/config.py`): a misspelt or mistyped key "
        "stops the app before it starts, with one line naming the key:",
        "",
        "```",
        "$ sciencegen-generate generate.members=ten",
        "sciencegen-generate: error: generate.members=ten: Value 'ten' of type 'str' could not be converted to "
        "Integer",
        "$ sciencegen-train train.lrr=1e-3",
        "sciencegen-train: error: train.lrr: no such key; train has: max_steps, max_minutes, batch_size, ...",
        "```",
        "",
        "Types: `X | None` also takes `null`; `Any` marks a key taking values of more than one type (a name or a "
        "list of names; a mapping or `null`; `generate.distributed`: `auto` or `false`). **required** (`???`) keys "
        "must be given. "
        "Defaults are shown unresolved: `${...}` is an interpolation.",
        "",
    ]
    groups, options = _listing()
    used: dict[str, list[str]] = {g: [] for g in groups}

    out += ["## Apps", ""]
    for prog, primary in APPS:
        cfg = compose(primary, [])
        choices = {g: c for g, c in cfg.hydra.runtime.choices.items() if g in options}
        desc, notes = _comments(_yaml_text(f"{primary}.yaml"))
        out += [f"### {prog}", "", f"`conf/{primary}.yaml`. {desc}", ""]
        out += ["| group | default | options |", "|---|---|---|"]
        for g in sorted(choices, key=groups.index):
            used[g].append(prog)
            out.append(f"| [`{g}`](#{g}) | `{choices[g]}` | {', '.join(options[g])} |")
        own = [(k, ref) for k, ref in _flat(cfg) if k.split(".")[0] not in (*choices, "hydra")]
        if own:
            out += ["", "Keys of the primary config (untyped):", "", "| key | default | help |", "|---|---|---|"]
            out += [f"| `{k}` | {_cell(_default(*ref))} | {_cell(notes.get(k, ''))} |" for k, ref in own]
        out.append("")

    out += ["## Config groups", ""]
    every = compose(None, option_overrides())
    for g in groups:
        out += [f"### {g}", ""]
        apps = ", ".join(f"`{p}`" for p in used[g]) or "none"
        out += [f"Options: {', '.join(f'`{o}`' for o in options[g])}. Used by {apps}.", ""]
        nodes = {o: every[f"{g}__{o}"] for o in options[g] if f"{g}__{o}" in every}
        kinds = {o: OmegaConf.get_type(nodes[o]) if o in nodes else None for o in options[g]}
        schemas = {o: k if dataclasses.is_dataclass(k) else None for o, k in kinds.items()}
        for schema in dict.fromkeys(schemas.values()):
            opts = [o for o in options[g] if schemas[o] is schema]
            if schema is None:
                for o in opts:
                    out += _untyped(g, o)
                continue
            title = ", ".join(f"`{g}={o}`" for o in opts)
            out += [f"#### {title}", ""]
            for o in opts:
                desc, _ = _comments(_yaml_text(f"{g}/{o}.yaml"))
                if len(opts) > 1:  # the first sentence line of each: the rest is the schema's text
                    first = _first_line(_yaml_text(f"{g}/{o}.yaml")).removeprefix(f"{o}: ")
                    out.append(f"- `{o}`: {first}")
                else:
                    out.append(desc)
            out += ["", f"Schema `{schema.__name__}`: {_doc(schema)}", ""]
            out += ["| key | type | default | help |", "|---|---|---|---|"]
            for key, kind, help_ in _fields(schema):
                values = {o: _default(*_locate(nodes[o], key)) for o in opts}
                out.append(f"| `{key}` | `{_cell(kind)}` | {_cell(_merge(values))} | {_cell(help_)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _doc(schema: type) -> str:
    """A schema's docstring as one Markdown paragraph."""
    text = " ".join((schema.__doc__ or "").split())
    return re.sub(r":\w+:`([^`]+)`", r"`\1`", text).replace("``", "`")


def _locate(node: Any, dotted: str) -> tuple[Any, str]:
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    return node, leaf


def _merge(values: dict[str, str]) -> str:
    """One default, or the defaults per option when the options differ."""
    distinct = list(dict.fromkeys(values.values()))
    if len(distinct) == 1:
        return distinct[0]
    if all(v == f"`{o}`" for o, v in values.items()):
        return "the option's name"
    return "; ".join(f"{v} ({', '.join(o for o in values if values[o] == v)})" for v in distinct)


def _untyped(group: str, option: str) -> list[str]:
    """An option without a schema (``experiment``): its description and what it sets."""
    from omegaconf import OmegaConf

    text = _yaml_text(f"{group}/{option}.yaml")
    desc, _ = _comments(text)
    conf = OmegaConf.create(text)
    sets = []
    for entry in conf.get("defaults") or []:
        if isinstance(entry, str):
            sets.append(entry)
        else:
            sets += [f"{k.replace('override ', '').lstrip('/')}={v}" for k, v in entry.items()]
    body = OmegaConf.masked_copy(conf, [k for k in conf if k not in ("defaults", "hydra")])
    sets += [f"{k}={_default(*ref).strip('`')}" for k, ref in _flat(body)]
    sweep = OmegaConf.select(conf, "hydra.sweeper.params")
    if sweep:
        sets += [f"--multirun {k}={v}" for k, v in sweep.items()]
    return [f"#### `{group}={option}`", "", desc, "", "Sets: " + ", ".join(f"`{s}`" for s in sets), ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date instead of writing it")
    p.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.relative_to(ROOT)}")
    a = p.parse_args(argv)
    text = render()
    if a.check:
        current = a.output.read_text() if a.output.exists() else ""
        if current != text:
            print(f"{a.output} is out of date: run python tools/config_reference.py", file=sys.stderr)
            return 1
        print(f"{a.output} is up to date")
        return 0
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(text)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
