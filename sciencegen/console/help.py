"""``--help`` of the Hydra commands: what the command does, the config groups a user picks, every key's help.

Hydra's own ``--help`` lists its internal groups (``schema/*``, ``hydra/*``) and no key's meaning; this one
shows the config the command would run (overrides on the command line included, so
``sciencegen-generate sampler=heun --help`` shows Heun's keys), the groups with their options, and each key
with its current value and one-line help. Hydra's help stays under ``--hydra-help``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from .confdoc import GROUP_ORDER, HIDDEN, flat_keys, listing, schema_fields, value_text, yaml_comments, yaml_text

__all__ = ["ABOUT", "help_text"]

#: command -> (primary config, what it does, its page in docs/)
ABOUT: dict[str, tuple[str, str, str]] = {
    "sciencegen": ("sciencegen", "the whole job on one config: data -> train -> generate -> evaluate; rerun to "
                   "resume", "docs/quickstart.md"),
    "sciencegen-data": ("data", "generate a built-in dataset or prepare a user dataset (a Zarr store with its "
                        "statistics)", "docs/data.md"),
    "sciencegen-train": ("train", "train a score model (EDM denoiser) on a dataset; rerun to resume from the "
                         "newest checkpoint", "docs/training.md"),
    "sciencegen-generate": ("generate", "sample an ensemble with a Picard or sequential sampler into a chunked "
                            "Zarr store; rerun to resume", "docs/generate.md"),
    "sciencegen-evaluate": ("evaluate", "score an ensemble store against the exact law or held-out data: "
                            "metrics.json, report.md, figures", "docs/evaluate.md"),
}


def _value(node: Any, key: str) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(node, key):
        return "??? (required)"
    child = node._get_node(key)
    v = OmegaConf.to_container(child, resolve=False) if OmegaConf.is_config(child) else child._value()
    return value_text(v)


def _key_help(cfg: Any, group: str) -> dict[str, str]:
    """``{key within the group: help}`` from the schema that types the group's node."""
    import dataclasses

    from omegaconf import OmegaConf

    kind = OmegaConf.get_type(cfg[group])
    if not (kind and dataclasses.is_dataclass(kind)):
        return {}
    return {k: text for k, _, text in schema_fields(kind)}


def _rows(cfg: Any, groups: Sequence[str], notes: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(dotted key, value, help)`` of every key of the composed config, hydra's node left out."""
    helps = {g: _key_help(cfg, g) for g in groups if g in cfg}
    rows = []
    for dotted, (node, key) in flat_keys(cfg):
        head, _, rest = dotted.partition(".")
        if head == "hydra":
            continue
        text = helps[head].get(rest, "") if head in helps else notes.get(dotted, "")
        rows.append((dotted, _value(node, key), text))
    return rows


def help_text(prog: str, overrides: Sequence[str] = (), width: int = 110) -> str:
    """The ``--help`` text of ``prog`` composed with ``overrides`` (a composition error propagates)."""
    from .. import __version__
    from .precheck import compose

    config_name, what, page = ABOUT[prog]
    cfg = compose(config_name, list(overrides))
    _, options = listing()
    choices = {g: c for g, c in cfg.hydra.runtime.choices.items() if g in options and g not in HIDDEN}
    groups = sorted(choices, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))
    _, notes = yaml_comments(yaml_text(f"{config_name}.yaml"))
    out = [f"{prog} (sciencegen {__version__}): {what}.", "",
           f"usage: {prog} [GROUP=OPTION ...] [KEY=VALUE ...] [--multirun] [--cfg job] [--version]", "",
           "Config groups (GROUP=OPTION; * marks the option in use):"]
    for g in groups:
        opts = ", ".join(f"{o}*" if o == choices[g] else o for o in options[g])
        out.append(f"  {g:<10} {opts}")
    if "dataset" in choices and "conditioning" in options and "conditioning" not in choices:
        out.append(f"  {'+conditioning':<10} {', '.join(options['conditioning'])} (added to the dataset; several: "
                   "+conditioning=[state,static]; docs/conditional.md)")
    out += ["", "Keys (KEY=VALUE; the value in use, then what the key does):"]
    rows = _rows(cfg, groups, notes)
    left = min(max((len(k) + len(v) + 3 for k, v, _ in rows), default=0), 52)
    for key, value, text in rows:
        head = f"  {key} = {value}"
        wrapped = textwrap.wrap(text, max(width - left - 2, 30)) or [""]
        if len(head) > left:
            out.append(head)
            head = ""
        out.append(f"{head:<{left}}  {wrapped[0]}".rstrip())
        out += [f"{'':<{left}}  {line}" for line in wrapped[1:]]
    out += ["", f"More: {page} and docs/configuration.md (every key of every option); --cfg job prints the composed "
            "config; --hydra-help shows Hydra's own flags (--multirun, --config-dir, ...)."]
    return "\n".join(out) + "\n"
