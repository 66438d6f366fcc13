"""Config mistakes in files and on the command line are one line that keeps their detail (issue 13).

Every case runs the real console entry in a fresh process (``cwd`` a temporary directory) and checks: exit status
2, exactly one line ``PROG: error: ...`` on stderr, no traceback, nothing written; the line names the key, the
file and line where the mistake is (computed here from the text the test wrote), and the fix. Hydra's own flags
(``--cfg job``, ``--multirun``, ``--help``, ``--version``) keep working.

The processes are all started by one fixture, so that they import in parallel.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from sciencegen.config import config_dir

SHIPPED = config_dir()
APP = {"generate": "sciencegen-generate", "main": "sciencegen", "data": "sciencegen-data"}

# a misspelt key in a user experiment (the `# @package _global_` form of the shipped ones)
MINE = "# @package _global_\n# my experiment\ngenerate: {memberz: 4}\n"
# a YAML syntax error: an unquoted value with ': ' on line 4
SYNTAX = "# @package _global_\ngenerate:\n  members: 4\n  batch_size: 2: 3\n"
# a value of the wrong type in a file
TYPED = "# @package _global_\ngenerate:\n  batch_size: 2\n  members: ten\n"


def _shipped_broken() -> str:
    """The shipped quick experiment with `members` misspelt."""
    text = SHIPPED.joinpath("experiment", "quick.yaml").read_text()
    assert re.search(r"^  members: ", text, flags=re.M), "conf/experiment/quick.yaml changed: update this test"
    return re.sub(r"^  members: ", "  memberz: ", text, count=1, flags=re.M)


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle`` (the independent truth for the messages)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1",
           "HYDRA_FULL_ERROR": "0"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        env.pop(k, None)
    return env


def _cases(tmp: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (app, argv): every command line of this module; ``tmp/cd`` etc. are the user config dirs."""
    cd, bad, sp = tmp / "cd", tmp / "bad", tmp / "sp"
    small = ["generate.members=2", "generate.batch_size=2", "dataset.size=8", "generate.progress=false"]
    return {
        "mine_config_dir": ("main", ["--config-dir", str(cd), "experiment=mine"]),
        "mine_searchpath": ("generate", [f"hydra.searchpath=[file://{sp}]", "+experiment=mine"]),
        "shipped_copy_cd": ("main", ["-cd", "cd", "experiment=broken_quick"]),  # relative, as typed
        "typed_in_file": ("main", ["--config-dir", str(cd), "experiment=typed"]),
        "syntax_searchpath": ("generate", [f"hydra.searchpath=[file://{bad}]", "+experiment=mine"]),
        "syntax_with_cfg": ("generate", ["--cfg", "job", "-cd", str(bad), "+experiment=mine"]),
        "space_output": ("generate", [f"output.path={tmp}/my", "dir/x.zarr"]),
        "space_glob": ("data", ["dataset=netcdf", "dataset.path=/data/my", "files/*.nc"]),
        "no_experiment_group": ("generate", ["--config-dir", str(cd), "experiment=mine"]),
        "missing_config_dir": ("generate", ["--config-dir", str(tmp / "nope"), "sampler.steps=4"]),
        "multirun_bad_value": ("generate", ["--multirun", "sampler=picard_sde,picardd", "hydra.sweep.dir=ms_bad"]),
        "multirun_with_cfg": ("generate", ["--multirun", "--cfg", "job", "sampler.steps=2,3"]),
        "cfg_misspelt": ("generate", ["--cfg", "job", "sampler.stepz=3"]),
        "cfg_job": ("generate", ["--config-dir", str(cd), "--cfg", "job", "generate.members=3", "+experiment=good"]),
        "multirun": ("generate", ["--multirun", "sampler.steps=2,3", "hydra.sweep.dir=ms", *small]),
        "help": ("generate", ["--help"]),
        "version": ("generate", ["--version"]),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Write the user config dirs, start every case at once; ``runs(name)`` -> (returncode, stdout, stderr, cwd)."""
    tmp = tmp_path_factory.mktemp("cfgerr")
    for d, files in {"cd": {"mine": MINE, "typed": TYPED, "broken_quick": _shipped_broken(),
                            "good": "# @package _global_\ngenerate: {batch_size: 3}\n"},
                     "sp": {"mine": MINE}, "bad": {"mine": SYNTAX}}.items():
        (tmp / d / "experiment").mkdir(parents=True)
        for name, text in files.items():
            (tmp / d / "experiment" / f"{name}.yaml").write_text(text)
    procs = {}
    for name, (app, argv) in _cases(tmp).items():
        cwd = tmp / "work" / name
        cwd.mkdir(parents=True)
        (cwd / "cd").symlink_to(tmp / "cd")
        procs[name] = (subprocess.Popen([sys.executable, "-c", f"from sciencegen.cli import {app}; {app}()", *argv],
                                        cwd=cwd, env=_env(), text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE), cwd)
    results: dict[str, tuple[int, str, str, Path]] = {}

    def result(name: str) -> tuple[int, str, str, Path]:
        if name not in results:
            proc, cwd = procs[name]
            out, err = proc.communicate(timeout=300)
            results[name] = proc.returncode, out, err, cwd
        return results[name]

    result.tmp = tmp
    yield result
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _one_line(runs, name: str) -> tuple[str, Path]:
    """The case's message (after ``PROG: error: ``), checked to be one line with exit status 2 and nothing written."""
    code, out, err, cwd = runs(name)
    app = APP[_cases(runs.tmp)[name][0]]
    assert code == 2, (name, code, out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"{app}: error: "), err
    assert "Traceback" not in out + err and not (cwd / "runs").exists() and not (cwd / "outputs").exists()
    return err[len(f"{app}: error: "):].rstrip("\n"), cwd


# ------------------------------------------------------------------------------------------- misspelt keys


@pytest.mark.parametrize("name, file, text", [("mine_config_dir", "cd", MINE), ("mine_searchpath", "sp", MINE),
                                              ("shipped_copy_cd", "cd", None)])
def test_misspelt_key_in_a_file_names_key_file_and_line(runs, name, file, text):
    msg, cwd = _one_line(runs, name)
    option = "broken_quick" if text is None else "mine"
    text = text or _shipped_broken()
    base = cwd if name == "shipped_copy_cd" else runs.tmp  # `-cd cd`: relative to the working directory
    path = base / file / "experiment" / f"{option}.yaml"
    head, _, allowed = msg.partition("; generate has: ")
    assert head == f"generate.memberz: no such key ({path}, line {_line_of(text, 'memberz')})", msg
    shipped_keys = set(yaml.safe_load(SHIPPED.joinpath("generate", "default.yaml").read_text())) - {"defaults"}
    assert shipped_keys <= set(allowed.split(", ")) and "memberz" not in allowed, msg


def test_wrong_type_in_a_file_names_key_file_and_line(runs):
    msg, _ = _one_line(runs, "typed_in_file")
    path = runs.tmp / "cd" / "experiment" / "typed.yaml"
    assert msg.startswith("generate.members: Value 'ten' of type 'str' could not be converted to Integer"), msg
    assert msg.endswith(f"({path}, line {_line_of(TYPED, 'members')})"), msg


# ------------------------------------------------------------------------------------------- YAML syntax


@pytest.mark.parametrize("name", ["syntax_searchpath", "syntax_with_cfg"])  # without and with --config-dir
def test_yaml_syntax_error_names_file_line_and_column(runs, name):
    msg, _ = _one_line(runs, name)
    line = _line_of(SYNTAX, "2: 3")
    column = SYNTAX.splitlines()[line - 1].index("2: 3") + 2  # the second ':' (1-based)
    path = runs.tmp / "bad" / "experiment" / "mine.yaml"
    assert msg.startswith(f"{path} line {line}, column {column}: mapping values are not allowed here; quote"), msg


# ------------------------------------------------------------------------------------------- values with a space


@pytest.mark.parametrize("name, key, value", [("space_output", "output.path", "{tmp}/my dir/x.zarr"),
                                              ("space_glob", "dataset.path", "/data/my files/*.nc")])
def test_unquoted_value_with_a_space_says_to_quote_it(runs, name, key, value):
    msg, cwd = _one_line(runs, name)
    value = value.format(tmp=runs.tmp)
    assert msg.startswith(f"{key}={value}: a value with a space must be one argument"), msg
    fix = msg.rpartition("quote it: ")[2]
    words = shlex.split(fix)  # what the shell passes for the suggested fix: one word, that Hydra reads as VALUE
    assert len(words) == 1, fix
    override = OverridesParser.create().parse_override(words[0])
    assert (override.key_or_group, override.value()) == (key, value), fix
    assert not (runs.tmp / "my dir").exists()


# ------------------------------------------------------------------------------------------- flags


def test_config_dir_flags_are_prechecked(runs):
    msg, _ = _one_line(runs, "no_experiment_group")
    assert msg == ("experiment=mine: the generate config has no experiment to override; "
                   "add one with +experiment=mine"), msg
    msg, _ = _one_line(runs, "missing_config_dir")
    assert msg == f"--config-dir {runs.tmp / 'nope'}: no such directory", msg
    msg, _ = _one_line(runs, "cfg_misspelt")
    assert msg.startswith("sampler.stepz: no such key; sampler has: name, steps"), msg


def test_multirun_mistakes_are_one_line(runs):
    msg, cwd = _one_line(runs, "multirun_bad_value")
    assert msg.startswith("sampler=picardd: no such sampler; choose one of ") and "picard_sde" in msg, msg
    assert not (cwd / "ms_bad").exists()
    msg, _ = _one_line(runs, "multirun_with_cfg")
    assert msg == "--multirun and --cfg: give only one of --run, --multirun, --cfg", msg


def test_cfg_job_prints_the_config(runs):
    code, out, err, cwd = runs("cfg_job")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["generate"]["members"] == 3 and cfg["generate"]["batch_size"] == 3  # override and user experiment
    assert cfg["sampler"]["name"] and not (cwd / "runs").exists()


def test_multirun_still_runs_every_job(runs):
    code, out, err, cwd = runs("multirun")
    assert code == 0, err
    for job, steps in ((0, 2), (1, 3)):
        assert (cwd / "ms" / str(job) / "samples.zarr" / "zarr.json").exists() or \
            (cwd / "ms" / str(job) / "samples.zarr" / ".zgroup").exists(), os.listdir(cwd / "ms" / str(job))
        assert f"{steps} steps" in out, out


def test_help_and_version_are_sciencegens(runs):
    import sciencegen

    code, out, err, _ = runs("help")
    assert code == 0 and out.startswith("sciencegen-generate (sciencegen ") and "Config groups" in out, (out, err)
    assert "schema/" not in out and "Powered by Hydra" not in out, out
    code, out, err, _ = runs("version")
    assert code == 0 and out.strip() == f"sciencegen-generate (sciencegen {sciencegen.__version__})", (out, err)
