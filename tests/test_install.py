"""Every command works the same from a source checkout, an editable install and a wheel in a fresh venv.

Each mode runs ``sciencegen-generate dataset=grf dataset.size=32 model=oracle generate.members=4`` from a
directory outside the checkout; the configs come from the top-level ``conf/`` (checkout, editable) or from
inside the installed package (wheel), and the three stores are the same ensemble, bitwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
JOB = ["dataset=grf", "dataset.size=32", "model=oracle", "generate.members=4", "sampler.steps=8",
       "generate.progress=false", "generate.threads=1"]
WHERE = "import sciencegen.config as c; print(c.__file__); print(c.config_dir())"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _generate(cmd: list[str], tmp: Path, name: str, env: dict[str, str]) -> Path:
    away = tmp / f"{name}-cwd"
    away.mkdir()
    store = tmp / f"{name}.zarr"
    out = _run([*cmd, *JOB, f"output.path={store}", f"hydra.run.dir={tmp / (name + '-run')}"], away, env)
    assert "4/4 members complete" in out, out
    assert (tmp / f"{name}-run" / "generate.log").is_file(), "the job log is named after the command"
    return store


def _assert_same(a: Path, b: Path) -> None:
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    assert bool(x["complete"].all()) and bool(y["complete"].all())
    np.testing.assert_array_equal(x["field"].values, y["field"].values)


@pytest.fixture(scope="module")
def editable_store(tmp_path_factory) -> Path:
    import sciencegen

    if not Path(sciencegen.__file__).resolve().is_relative_to(ROOT):
        pytest.skip("sciencegen is not installed from this checkout (pip install -e .)")
    exe = shutil.which("sciencegen-generate")
    assert exe, "the editable install puts sciencegen-generate on PATH"
    tmp = tmp_path_factory.mktemp("editable")
    where = _run([sys.executable, "-c", WHERE], tmp, _env()).split()
    assert where[1] == str(ROOT / "conf"), where
    return _generate([exe], tmp, "editable", _env())


def test_source_checkout(tmp_path, editable_store):
    """A copy of the checkout on PYTHONPATH (nothing installed from it): ``python -m sciencegen.cli``."""
    src = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("sciencegen", "conf"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    env = _env(PYTHONPATH=str(src))
    where = _run([sys.executable, "-c", WHERE], tmp_path, env).split()
    assert where == [str(src / "sciencegen" / "config.py"), str(src / "conf")], where
    store = _generate([sys.executable, "-m", "sciencegen.cli", "generate"], tmp_path, "source", env)
    _assert_same(store, editable_store)


def test_wheel_in_a_fresh_venv(tmp_path, editable_store):
    """``pip wheel .``, installed into a fresh venv (the dependencies seen through a .pth file, not
    reinstalled): the configs are inside the installed package and the console script runs from elsewhere."""
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], tmp_path, _env())
    (wheel,) = wheels.glob("sciencegen-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, _env())
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     _env()).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp_path,
         _env())
    where = _run([str(python), "-c", WHERE], tmp_path, _env()).split()
    assert where == [str(site / "sciencegen" / "config.py"), str(site / "sciencegen" / "conf")], where
    assert (site / "sciencegen" / "conf" / "hydra" / "job_logging" / "sciencegen.yaml").is_file()
    assert (site / "sciencegen" / "py.typed").is_file()
    help_text = _run([str(venv / "bin" / "sciencegen-generate"), "--help"], tmp_path, _env())
    assert "Config groups" in help_text and "schema" not in help_text
    store = _generate([str(venv / "bin" / "sciencegen-generate")], tmp_path, "wheel", _env())
    _assert_same(store, editable_store)
