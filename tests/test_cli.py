"""The conventions of the commands: --help, --version, python -m sciencegen.cli, the job log, extras named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import sciencegen
from sciencegen.console.help import ABOUT, help_text

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sciencegen.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("prog", sorted(ABOUT))
def test_help_lists_the_groups_a_user_picks_and_every_key(prog):
    text = help_text(prog)
    assert text.startswith(f"{prog} (sciencegen {sciencegen.__version__}): ")
    groups = text.split("Config groups", 1)[1].split("Keys", 1)[0]
    assert "schema" not in groups and "hydra" not in groups and "dataset" in groups
    keys = text.split("Keys", 1)[1]
    assert "\n  dataset.name = " in keys and "\n  hydra." not in keys
    if prog in ("sciencegen-generate", "sciencegen"):  # a schema key's help and a primary-config key's comment
        assert "member i depends only on (seed, i)" in keys
    if prog == "sciencegen-generate":
        assert "also export the finished store to this netCDF file" in keys


def test_help_applies_the_overrides_given_with_it():
    text = _cli("generate", "sampler=heun", "sampler.steps=12", "--help").stdout
    groups = text.split("Config groups", 1)[1].split("Keys", 1)[0]
    assert "heun*" in groups and "picard_sde*" not in groups
    assert "sampler.steps = 12" in text


def test_help_with_a_bad_override_is_one_line():
    p = _cli("generate", "sampler.stepz=12", "--help")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "sampler.stepz" in p.stderr, p.stderr


def test_version_and_module_entry(tmp_path):
    p = _cli("train", "--version")
    assert p.returncode == 0 and p.stdout.strip() == f"sciencegen-train (sciencegen {sciencegen.__version__})"
    usage = _cli()
    assert usage.returncode == 0 and "generate" in usage.stdout and "evaluate" in usage.stdout
    bad = _cli("nope")
    assert bad.returncode == 2 and "usage: python -m sciencegen.cli" in bad.stderr
    run = tmp_path / "run"
    p = _cli("generate", "dataset=grf", "dataset.size=8", "model=oracle", "generate.members=2", "sampler.steps=4",
             "generate.progress=false", f"output.path={tmp_path / 's.zarr'}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    log = (run / "generate.log").read_text()  # the command's own job name, not "cli"
    assert "2/2 members complete" in log, log
    assert "2/2 members complete" in p.stdout


def test_missing_slurm_extra_is_named():
    code = ("import sys\n"
            "for m in ('', '.config', '.submitit_launcher'):\n"
            "    sys.modules['hydra_plugins.hydra_submitit_launcher' + m] = None\n"
            "from sciencegen.console.precheck import compose, one_line\n"
            "try:\n"
            "    compose('generate', ['hydra/launcher=slurm'])\n"
            "except Exception as exc:\n"
            "    print(one_line(exc, 'generate', ['hydra/launcher=slurm']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert "pip install 'sciencegen[slurm]'" in p.stdout, p.stdout + p.stderr
