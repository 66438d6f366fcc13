"""Structured-config schemas (:mod:`sciencegen.config`): every config composes, every YAML key is typed,
a mistyped or misspelt key is an error naming the key (one line from the apps), and the configuration
reference ``docs/configuration.md`` is up to date.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from sciencegen import cli
from sciencegen.config import SCHEMAS, config_dir, register

ROOT = Path(__file__).resolve().parents[1]
CONF = config_dir()
PRIMARIES = sorted(p.name[:-5] for p in CONF.iterdir() if p.name.endswith(".yaml"))
GROUPS = {d.name: sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
          for d in CONF.iterdir() if d.is_dir() and not d.name.startswith("_") and d.name != "hydra"}
# experiments are `# @package _global_` overrides; conditioning options are `# @package dataset.conditioning.NAME`
# additions to the dataset (its schema types `conditioning` as a mapping; the kind checks its own arguments)
TYPED = [g for g in GROUPS if g not in ("experiment", "conditioning")]


def _load_tool():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REF = _load_tool()  # tools/config_reference.py


def env1() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module", autouse=True)
def console_script(tmp_path_factory):
    """A real console script, started first so that it runs while the in-process tests do."""
    tmp = tmp_path_factory.mktemp("cli")
    exe = shutil.which("sciencegen-train")
    cmd = [exe] if exe else [sys.executable, "-c", "from sciencegen.cli import train; train()"]
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={tmp / 'run'}", "train.lr=abc"], cwd=tmp, env=env1(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield proc, tmp
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _schema(group: str, option: str) -> type:
    return SCHEMAS.get((group, option)) or SCHEMAS[(group, "base")]


@functools.cache
def _cached(name: str | None, overrides: tuple[str, ...]) -> DictConfig:
    cfg = _compose(name, list(overrides))
    OmegaConf.set_readonly(cfg, True)  # shared between tests
    return cfg


def _compose(name: str | None, overrides: list[str]) -> DictConfig:
    """Compose a primary config (with ``hydra``) or, with ``name=None``, just ``+group=option`` overrides."""
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=name is not None)


def compose_cached(name: str | None, overrides: list[str]) -> DictConfig:
    return _cached(name, tuple(overrides))


# ------------------------------------------------------------------------------------------- composition


def test_every_option_composes_with_its_schema():
    """Every option of every typed group, each under its own package in one composition (as the reference)."""
    over = REF.option_overrides()
    assert len(over) == sum(len(GROUPS[g]) for g in GROUPS if g != "experiment")
    cfg = compose_cached(None, over)
    for group in TYPED:
        for option in GROUPS[group]:
            assert OmegaConf.get_type(cfg[f"{group}__{option}"]) is _schema(group, option), (group, option)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_composes(primary):
    """Each app's config with its defaults, and with another option of every group (the k-th app the k-th).

    Every option composes alone (above); here the options meet the primary config (its keys, experiments).
    """
    cfg = compose_cached(primary, [])
    choices = {g: c for g, c in cfg.hydra.runtime.choices.items() if g in GROUPS}
    assert choices and not OmegaConf.is_missing(cfg, "data_root"), primary
    for g, c in choices.items():
        if g in TYPED:
            assert OmegaConf.get_type(cfg[g]) is _schema(g, c), (primary, g)
    k = PRIMARIES.index(primary) + 1
    other = {g: [o for o in GROUPS[g] if o != c][k % (len(GROUPS[g]) - 1)]
             for g, c in choices.items() if g in TYPED and len(GROUPS[g]) > 1}
    over = [f"{g}={o}" for g, o in other.items()] + (["~experiment"] if "experiment" in choices else [])
    cfg = compose_cached(primary, over)
    for g, o in other.items():
        assert OmegaConf.get_type(cfg[g]) is _schema(g, o), (primary, over, g)


def test_conditioning_options_add_a_kind_to_the_dataset():
    """``+conditioning=[...]`` puts each kind under ``dataset.conditioning.NAME``; each builds its kind."""
    from sciencegen.data.conditioning import ConditionKind, make_kinds

    cfg = _compose("data", [f"+conditioning=[{','.join(GROUPS['conditioning'])}]",
                            "dataset.conditioning.variables.names=[u]", "dataset.conditioning.state.lag=2"])
    assert list(cfg.dataset.conditioning) == GROUPS["conditioning"]
    kinds = make_kinds(cfg.dataset.conditioning)
    assert all(isinstance(k, ConditionKind) for k in kinds.values()) and kinds["state"].lag == 2


def test_experiments_compose():
    default = compose_cached("sciencegen", []).hydra.runtime.choices.experiment
    for exp in GROUPS["experiment"]:
        cfg = compose_cached("sciencegen", [] if exp == default else [f"experiment={exp}"])
        assert cfg.hydra.runtime.choices.experiment == exp
        for g in TYPED:
            assert OmegaConf.get_type(cfg[g]) is _schema(g, cfg.hydra.runtime.choices[g]), (exp, g)


def test_structured_values():
    """Typed values convert (int -> float); ???, interpolations, mappings and lists over null all work."""
    cfg = _compose("generate", ["dataset=netcdf", "dataset.select={level: 1000.0, time: {start: 2020-01-01}}",
                                "dataset.periodic={lon: true}", "model=unet", "model.periodic=[true,false]",
                                "model.channel_mult=[1,2]", "generate.distributed=false"])
    assert OmegaConf.is_missing(cfg.dataset, "path") and OmegaConf.is_missing(cfg.dataset, "variables")
    assert cfg.dataset.select == {"level": 1000.0, "time": {"start": "2020-01-01"}} and cfg.dataset.periodic.lon
    assert list(cfg.model.periodic) == [True, False] and list(cfg.model.channel_mult) == [1, 2]
    assert cfg.generate.distributed is False  # auto | false: Any, so that false stays a bool
    cfg = _compose("train", ["train.max_minutes=3", "model=oracle", "model.dataset=${dataset}"])
    assert cfg.train.max_minutes == 3.0 and isinstance(cfg.train.max_minutes, float)
    assert OmegaConf.to_container(cfg.model, resolve=False)["dataset"] == "${dataset}"
    assert OmegaConf.to_container(cfg.model, resolve=True)["dataset"]["name"] == "grf"


# ------------------------------------------------------------------------------------------- YAML <-> schema


def _fields(schema: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(schema)
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out[prefix + f.name] = f
            out.update(_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def _yaml_keys(conf: DictConfig, prefix: str = "") -> set[str]:
    keys = set()
    for k in conf:
        if k == "defaults":
            continue
        keys.add(prefix + k)
        if isinstance(conf._get_node(k), DictConfig):
            keys |= _yaml_keys(conf[k], f"{prefix}{k}.")
    return keys


@pytest.mark.parametrize("group", TYPED)
def test_yaml_keys_match_schema(group):
    """Every YAML key is a schema field, every field has help, and no field is dead (unset and no default)."""
    for option in GROUPS[group]:
        schema = _schema(group, option)
        text = CONF.joinpath(group, f"{option}.yaml").read_text()
        conf = OmegaConf.create(text)
        keys = _yaml_keys(conf)
        names = [d if isinstance(d, str) else next(iter(d)) for d in conf.get("defaults", [])]
        for parent in names:  # an option extending another (train=gpu: default) gets its keys too
            if not parent.startswith("/") and parent != "_self_":
                keys |= _yaml_keys(OmegaConf.create(CONF.joinpath(group, f"{parent}.yaml").read_text()))
        assert any(n.startswith(f"/schema/{group}/") for n in names) or any(
            n in GROUPS[group] for n in names), f"{group}/{option}.yaml names no schema"
        fields = _fields(schema)
        assert keys <= set(fields), f"{group}/{option}.yaml keys without a schema field: {keys - set(fields)}"
        for name, f in fields.items():
            assert f.metadata.get("help"), f"{schema.__name__}.{name} has no help"
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            assert name in keys or has_default, f"{schema.__name__}.{name}: not in {group}/{option}.yaml, no default"
            if name in keys and not isinstance(f.default, type(dataclasses.MISSING)):
                assert f.default is None, f"{schema.__name__}.{name}: default {f.default!r} duplicates the YAML"
        # the YAML's values fit the schema (OmegaConf validates each value on merge)
        body = OmegaConf.masked_copy(conf, [k for k in conf if k != "defaults"])
        OmegaConf.merge(OmegaConf.structured(schema), body)


# ------------------------------------------------------------------------------------------- errors

MISTYPED = {"dataset": ("dataset.size", "big"), "model": ("model.channel_mult", "[1,two]"),
            "train": ("train.ema.decay", "slow"), "sampler": ("sampler.steps", "ten"),
            "generate": ("generate.members", "ten"), "evaluate": ("evaluate.bins", "many"),
            "sde": ("sde.sigma_max", "huge")}
MISSPELT = {"dataset": "dataset.sizee", "model": "model.presett", "train": "train.lrr",
            "sampler": "sampler.stepz", "generate": "generate.memberz", "evaluate": "evaluate.binz",
            "sde": "sde.sigma_maxx"}


@pytest.mark.parametrize("group", TYPED)
def test_mistyped_and_misspelt_keys_are_rejected(group):
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    assert set(MISTYPED) == set(TYPED)
    option = "unet" if group == "model" else GROUPS[group][0] if group != "dataset" else "grf"
    key, value = MISTYPED[group]
    with pytest.raises(Exception) as info:
        _compose(None, [f"+{group}={option}", f"{key}={value}"])
    cause = info.value.__cause__
    assert isinstance(cause, ValidationError), repr(info.value)
    assert cause.full_key.startswith(key) and value.strip("[]").split(",")[-1] in str(cause)
    with pytest.raises(Exception) as info:
        _compose(None, [f"+{group}={option}", f"{MISSPELT[group]}=1"])
    cause = info.value.__cause__
    assert isinstance(cause, (ConfigKeyError, ConfigAttributeError)), repr(info.value)
    assert cause.full_key == MISSPELT[group]
    assert "not in" in str(cause)


CLI_CASES = [("generate", "sampler.stepz=10", "sampler.stepz: no such key; sampler has: name, steps"),
             ("generate", "sampler.steps=ten", "sampler.steps=ten: Value 'ten' of type 'str' could not be converted"),
             ("generate", "sampler=picardd", "sampler=picardd: no such sampler; choose one of dpm2m"),
             ("generate", "generate.members=ten", "generate.members=ten: Value 'ten'"),
             ("train", "train.lr=abc", "train.lr=abc: Value 'abc' of type 'str' could not be converted to Float")]


@pytest.mark.parametrize("app, arg, want", CLI_CASES)
def test_cli_error_is_one_line(app, arg, want, tmp_path, monkeypatch, capsys):
    """The apps' precheck (in process, as the console scripts run it): exit status 2 and one line."""
    monkeypatch.setattr(sys, "argv", [f"sciencegen-{app}", f"hydra.run.dir={tmp_path}", arg,
                                      f"output.path={tmp_path / 'e.zarr'}" if app == "generate" else "run_dir=null"])
    with pytest.raises(SystemExit) as info:
        getattr(cli, app)()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sciencegen-{app}: error: {want}"), err
    assert not (tmp_path / "e.zarr").exists()


def test_console_script_error_is_one_line(console_script):
    """The same through a real process: ``sciencegen-train train.lr=abc``."""
    proc, tmp = console_script
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert err == "sciencegen-train: error: train.lr=abc: Value 'abc' of type 'str' could not be converted to Float\n"
    assert "Traceback" not in out + err and not (tmp / "run").exists()


# ------------------------------------------------------------------------------------------- reference


def test_reference_is_up_to_date():
    """``python tools/config_reference.py --check``, in process: the compositions above are reused."""
    assert REF.OUTPUT.read_text() == REF.render(compose_cached), "run: python tools/config_reference.py"
