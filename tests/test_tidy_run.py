"""A quiet, tidy run (issue 18): every command, run in an empty folder, writes its Hydra run directory under
``runs/`` only (failed runs too; never ``./outputs/DATE/TIME`` or ``./multirun``), and a normal run emits no
library warnings (Python's warnings shown with ``PYTHONWARNINGS=default``, other libraries' WARNING log records
in the job log).

Real subprocesses of the console commands, each in its own empty working directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["train.max_steps=3", "train.batch_size=4", "train.val_every=2", "train.figure_members=2",
              "train.progress=false", "train.threads=1", "train.tensorboard=false", "train.warmup_steps=1"]
TINY_JOB = [*TINY_TRAIN, "sampler.steps=8", "generate.members=8", "generate.batch_size=4", "generate.progress=false",
            "generate.threads=1", "progress=false"]
GRF = ["dataset=grf", "dataset.size=8", "dataset.samples=32", "dataset.chunk=8"]
#: what each command may leave in its working directory: the run directories and the default data root
ALLOWED = {"runs", "data"}
#: a Python warning as the warnings module prints it ("file:line: SomethingWarning: message")
WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ", re.MULTILINE)
#: a deprecation inside a library's own code (matplotlib calling an old pyparsing name on the lowest versions):
#: between that library and its dependency, hidden by Python's default filters on a normal run; one that our
#: call triggers is reported at our line, not here, and still counts
INTERNAL_DEPRECATION = re.compile(r"^\S*[/\\](site|dist)-packages[/\\]\S*:\d+: \w*DeprecationWarning: ")


def _env(**extra: str) -> dict[str, str]:
    # a user's filters, plus every deprecation shown wherever it is raised: a filter naming its category (not a
    # bare "default") leaves libraries as a user runs them (pyparsing turns on its own diagnostics for a bare one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONWARNINGS": "default::DeprecationWarning,default::PendingDeprecationWarning", **extra}
    for k in ("SCIENCEGEN_DATA_ROOT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID",
              "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        env.pop(k, None)
    return env


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "sciencegen.cli", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _left(cwd: Path) -> set[str]:
    return {p.name for p in cwd.iterdir()}


def _library_warnings(p: subprocess.CompletedProcess, logs: list[Path]) -> list[str]:
    """Python warnings on stderr/stdout (but a library's internal deprecations) and WARNING records of loggers
    other than sciencegen's in the job logs."""
    found = [line for line in (p.stderr + "\n" + p.stdout).splitlines()
             if WARNING_LINE.match(line) and not INTERNAL_DEPRECATION.match(line)]
    for log in logs:
        found += [line for line in log.read_text().splitlines()
                  if "][WARNING]" in line and "][sciencegen" not in line]
    return found


#: every command, run in an empty folder: name -> (arguments, expected exit status)
COMMANDS: dict[str, tuple[list[str], int]] = {
    "data": (["data", *GRF, "progress=false"], 0),
    "data_fails_in_the_job": (["data", "dataset=grf", "dataset.size=-3"], 2),
    "data_bad_key": (["data", "dataset.sizze=8"], 2),
    "train_fails_in_the_job": (["train", *GRF, "train.max_steps=-1"], 2),
    "generate": (["generate", "dataset=grf", "dataset.size=8", "model=oracle", "generate.members=2",
                  "sampler.steps=4", "generate.progress=false"], 0),
    "evaluate_fails_in_the_job": (["evaluate", "samples.path=missing.zarr"], 2),
    "run_fails_in_the_job": (["run", *GRF, "stages=[data,sample]"], 2),
    "bench": (["bench", "--size", "8", "--steps", "4", "--members", "2", "--repeats", "1", "--samplers", "dpm2m"],
              0),
}


def test_no_command_leaves_outputs_behind(tmp_path):
    """Each command in an empty folder, succeeding or failing: nothing but ``runs/`` (and the default data root)
    appears; a sweep's directory is under ``runs/`` too."""
    names = sorted(COMMANDS)
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(names, pool.map(lambda n: _cli(tmp_path / n, *COMMANDS[n][0]), names), strict=True))
    for name, p in done.items():
        assert p.returncode == COMMANDS[name][1], f"{name}: {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        left = _left(tmp_path / name)
        assert left <= ALLOWED, f"{name} left {sorted(left - ALLOWED)} in its working directory"
    assert (tmp_path / "data" / "runs" / "data" / "grf" / "data.log").is_file()  # where the data command logs
    assert not (tmp_path / "bench").joinpath("runs").exists()  # not a Hydra app: writes only what it is asked


def test_a_sweep_stays_under_runs(tmp_path):
    cwd = tmp_path / "sweep"
    p = _cli(cwd, "generate", "--multirun", "dataset=grf", "dataset.size=8", "model=oracle", "generate.members=2",
             "sampler.steps=2,3", "generate.progress=false")
    assert p.returncode == 0, p.stderr[-2000:]
    assert _left(cwd) == {"runs"}
    sweeps = list((cwd / "runs").glob("generate-multirun/*"))
    assert len(sweeps) == 1 and sorted(q.name for q in sweeps[0].iterdir() if q.is_dir()) == ["0", "1"]


def _geo_files(folder: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_geo_samples", ROOT / "datasets/make_geo_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_all(folder)


def test_a_normal_run_emits_no_library_warnings(tmp_path):
    """The whole job on the default dataset, and the data stage on two netCDF files of one grid (combined by
    coordinates): no Python warning, no WARNING record of another library."""
    geo = _geo_files(tmp_path / "geo")
    runs = {
        "job": (["run", *GRF, *TINY_JOB, "name=tidy"], ["runs/tidy/sciencegen.log"]),
        "two_files": (["data", "dataset=netcdf", f"dataset.path=[{geo['uwnd']},{geo['vwnd']}]",
                       "dataset.variables=[uwnd,vwnd]", "dataset.sample_dims=[time]", "progress=false"],
                      ["runs/data/netcdf/data.log"]),
    }
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(runs, pool.map(lambda n: _cli(tmp_path / n, *runs[n][0]), runs), strict=True))
    for name, p in done.items():
        assert p.returncode == 0, f"{name}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        warned = _library_warnings(p, [tmp_path / name / log for log in runs[name][1]])
        assert not warned, f"{name}: " + "\n".join(warned[:10])
    assert _left(tmp_path / "job") <= ALLOWED


@pytest.mark.slow
def test_the_masked_sst_job_emits_no_library_warnings(tmp_path):
    """The whole job on a masked lat-lon field (NaN over land, ``dataset.nonfinite=mask``): no warnings."""
    geo = _geo_files(tmp_path / "geo")
    cwd = tmp_path / "sst"
    p = _cli(cwd, "run", "dataset=netcdf", f"dataset.path={geo['sst']}", "dataset.variables=[sst]",
             "dataset.sample_dims=[time]", "dataset.nonfinite=mask", *TINY_JOB, "generate.members=4", "name=sst")
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    warned = _library_warnings(p, [cwd / "runs/sst/sciencegen.log"])
    assert not warned, "\n".join(warned[:10])
    assert _left(cwd) <= ALLOWED
