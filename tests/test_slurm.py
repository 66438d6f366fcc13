"""The SLURM workflows of ``workflows/`` against a real SLURM (docs/hpc.md).

Needs a running cluster: ``workflows/slurm/local_slurm.sh install && workflows/slurm/local_slurm.sh start``
gives a single-node one on this machine (slurmctld, slurmd, slurmdbd + MariaDB, munge); run with
``pytest -m slurm tests/test_slurm.py``. Without a cluster (``sinfo`` missing or not answering) every test is
skipped with the reason.

* the generation job array (``workflows/generate_array.sbatch``, tasks 1-4 so that SLURM_ARRAY_TASK_MIN
  matters) fills one store, compared member by member, bitwise, with a local run of the same command;
* a Hydra multirun through the submitit launcher (four sweep points, four stores), each store compared with
  the same sweep run locally by Hydra's basic launcher;
* the dependency chain of ``workflows/submit_chain.sh``: train -> generate array -> evaluate (Dask), every job
  COMPLETED in ``sacct`` and the outputs there.

Every job asks for 1 CPU and 1-2 GB, so two run side by side on a two-core machine; ``sacct`` is polled
until every job and array task has a final state (its rows arrive a little after the jobs end).
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
STATE = Path(os.environ.get("SCIENCEGEN_SLURM_STATE", "/tmp/sciencegen-slurm"))
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}
JOB_TIMEOUT = 420  # seconds for the jobs of one test (they normally need well under two minutes)
# sbatch options for every job of the tests: small, so that two run at once on two cores
SMALL_JOB = ["--cpus-per-task=1", "--mem=1G", "--time=10"]
TINY = ["dataset=grf", "dataset.size=16", "model=oracle", "sampler=dpm2m", "sampler.steps=8", "generate.members=16",
        "generate.batch_size=2", "generate.progress=false"]


# ------------------------------------------------------------------------------------------------ helpers


def _env(tmp: Path | None = None) -> dict[str, str]:
    """This environment for the jobs and local runs: no SLURM job variables of an enclosing job, one thread,
    the console scripts of this Python first on PATH (sbatch exports the environment to the jobs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
           or k == "SLURM_CONF"}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if "SLURM_CONF" not in env and not Path("/etc/slurm/slurm.conf").exists() and (STATE / "etc/slurm.conf").exists():
        env["SLURM_CONF"] = str(STATE / "etc/slurm.conf")
    if tmp is not None:
        env["SCIENCEGEN_DATA_ROOT"] = str(tmp / "data")
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> str:
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _sbatch(args: list[str], env: dict[str, str], cwd: Path) -> str:
    out = _run(["sbatch", "--parsable", *args], env, cwd)
    return out.strip().split(";")[0]


def _sacct(job_ids: list[str], env: dict[str, str], fields: str = "State") -> dict[str, str]:
    """``{job id (array tasks as ID_TASK): "STATE|..."}`` of the allocations (no steps); ``fields`` after JobID."""
    p = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", f"JobID,{fields}"], env=env,
                       capture_output=True, text=True, timeout=60)
    rows = {}
    for line in p.stdout.splitlines():
        if "|" in line:
            job, rest = line.split("|", 1)
            rows[job.strip()] = re.sub(r"^(\S+) by \d+", r"\1", rest)   # "CANCELLED by 0" -> CANCELLED
    return rows


def _wait(job_ids: list[str], expected: int, env: dict[str, str], logs: Path, timeout: float = JOB_TIMEOUT,
          ) -> dict[str, str]:
    """Poll ``sacct`` until ``expected`` rows (jobs + array tasks) all have a final state, or one failed and
    none is still pending/running; on timeout, cancel the jobs and fail with their logs."""
    t0 = time.monotonic()
    rows: dict[str, str] = {}
    while time.monotonic() - t0 < timeout:
        rows = _sacct(job_ids, env)
        final = rows and all(s in FINAL for s in rows.values())
        if final and (len(rows) >= expected or any(s != "COMPLETED" for s in rows.values())):
            return rows
        time.sleep(1)
    subprocess.run(["scancel", *job_ids], env=env, capture_output=True, timeout=60)
    pytest.fail(f"jobs {job_ids} not final after {timeout:.0f} s: {rows}\n{_logs(logs)}")


def _logs(folder: Path, limit: int = 6000) -> str:
    parts = []
    for f in sorted(folder.rglob("*.out")) + sorted(folder.rglob("*.err")):
        if f.is_file():
            parts.append(f"---- {f.relative_to(folder)}\n{f.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)[-limit:]


def _assert_completed(rows: dict[str, str], expected: int, logs: Path) -> None:
    bad = {j: s for j, s in rows.items() if s != "COMPLETED"}
    assert not bad and len(rows) == expected, f"sacct: {rows} (expected {expected} COMPLETED)\n{_logs(logs)}"


def _assert_same_ensemble(got: Path, want: Path) -> None:
    """Both stores complete and equal member by member, bitwise (fields, rounds, nfe)."""
    a, b = xr.open_zarr(got), xr.open_zarr(want)
    n = b.sizes["member"]
    assert a.sizes["member"] == n
    assert bool(b["complete"].all()), f"{want}: the reference store is not complete"
    done = a["complete"].values
    assert done.all(), f"{got}: members {np.flatnonzero(~done).tolist()} of {n} are not complete"
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for v in sorted(b.data_vars):
        x, y = a[v].values, b[v].values
        for m in range(n):
            np.testing.assert_array_equal(x[m], y[m], err_msg=f"{got}: {v}, member {m} differs from {want}")


# ------------------------------------------------------------------------------------------------ the cluster


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """The environment to talk to a running SLURM; skips the module when there is none."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (no sinfo/sbatch); see workflows/slurm/local_slurm.sh install")
    env = _env()
    if env.get("SLURM_CONF") == str(STATE / "etc/slurm.conf") and not (STATE / "pids/slurmctld.pid").exists():
        pytest.skip(f"SLURM is not running (no slurmctld of {STATE}); start it: workflows/slurm/local_slurm.sh start")
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %c %m"], env=env, capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM is not running (sinfo does not answer); start it: workflows/slurm/local_slurm.sh start")
    if p.returncode != 0:
        pytest.skip(f"SLURM is not running (sinfo: {p.stderr.strip()[:200]}); start it: "
                    "workflows/slurm/local_slurm.sh start")
    nodes = [line.split() for line in p.stdout.splitlines() if line.strip()]
    usable = [n for n in nodes if re.match(r"(idle|mixed|allocated|completing)", n[1])]
    assert usable, f"SLURM answers but no node is usable: {p.stdout.strip()!r}"
    acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert acct.returncode == 0, f"sacct does not work (slurmdbd down?): {acct.stderr.strip()}"
    return env


# ------------------------------------------------------------------------------------------------ the tests


def test_generate_array_fills_one_store(cluster, tmp_path):
    """Four array tasks (1-4: shard = task - SLURM_ARRAY_TASK_MIN) fill one store; it equals one local run."""
    env = _env(tmp_path)
    store, local = tmp_path / "array.zarr", tmp_path / "local.zarr"
    logs = tmp_path / "logs"
    logs.mkdir()
    # the local reference runs while the array is queued
    ref = subprocess.Popen(["sciencegen-generate", *TINY, f"output.path={local}",
                            f"hydra.run.dir={tmp_path / 'local-run'}"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = _sbatch(["--array=1-4", *SMALL_JOB, f"--output={logs}/%x-%A_%a.out", f"--export=ALL,STORE={store}",
                   str(WORKFLOWS / "generate_array.sbatch"), *TINY], env, tmp_path)
    rows = _wait([job], 4, env, logs)
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    _assert_completed(rows, 4, logs)
    assert sorted(rows) == [f"{job}_{t}" for t in (1, 2, 3, 4)]
    # each task owned its own quarter: task t is shard t-1 of 4, four members (two chunks) each
    for t in (1, 2, 3, 4):
        text = (logs / f"sciencegen-generate-{job}_{t}.out").read_text()
        assert f"shard {t - 1}/4, 4 to do" in text, text
    _assert_same_ensemble(store, local)


def _launcher() -> list[str]:
    """The package's launcher config (hydra/launcher=slurm) once it ships, else the plugin's with overrides."""
    shipped = importlib.resources.files("sciencegen") / "conf" / "hydra" / "launcher" / "slurm.yaml"
    name = "slurm" if shipped.is_file() else "submitit_slurm"
    return [f"hydra/launcher={name}", "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=10"]


def _array_is_a_sweep() -> bool:
    """Whether sciencegen-generate knows that a submitit job array is a sweep, not shards of one store."""
    from sciencegen.pipelines.generate import parse_shard

    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
           "SUBMITIT_EXECUTOR": "slurm"}
    return parse_shard(None, env) == (0, 1)


def test_multirun_through_submitit(cluster, tmp_path):
    """``--multirun hydra/launcher=submitit_slurm``: four sweep points as SLURM jobs, four complete stores,
    each equal to the same sweep point run locally."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)")
    env = _env(tmp_path)
    sweep = ["sampler=dpm2m,sequential_ode", "sampler.steps=4,8"]
    common = [o for o in TINY if not o.startswith(("sampler", "generate.members"))] + ["generate.members=8"]
    store = "${sampler.name}-${sampler.steps}.zarr"   # interpolated per sweep point: four stores
    # submitit runs a sweep as ONE job array: each job sees SLURM_ARRAY_TASK_ID/COUNT and, unless
    # sciencegen-generate knows better, would take itself for one shard of its store (a quarter of the members)
    shard = [] if _array_is_a_sweep() else ["generate.shard=0/1"]
    remote = subprocess.Popen(["sciencegen-generate", "--multirun", *_launcher(), *sweep, *common, *shard,
                               f"hydra.sweep.dir={tmp_path / 'sweep-slurm'}",
                               f"output.path={tmp_path / 'slurm' / store}"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    local = subprocess.run(["sciencegen-generate", "--multirun", *sweep, *common,
                            f"hydra.sweep.dir={tmp_path / 'sweep-local'}", f"output.path={tmp_path / 'local' / store}"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert local.returncode == 0, local.stdout + local.stderr
    try:
        out, _ = remote.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        remote.kill()
        out, _ = remote.communicate()
        pytest.fail(f"the submitit sweep did not finish in {JOB_TIMEOUT} s:\n{out[-4000:]}\n"
                    f"{_logs(tmp_path / 'sweep-slurm')}")
    assert remote.returncode == 0, f"{out[-4000:]}\n{_logs(tmp_path / 'sweep-slurm')}"
    # Hydra's multirun layout: one numbered directory per sweep point; submitit's folder per SLURM job
    sweep_dir = tmp_path / "sweep-slurm"
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    assert (sweep_dir / "multirun.yaml").is_file()
    jobs = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(jobs) == 4, jobs
    rows = _wait(sorted({j.split("_")[0] for j in jobs}), 4, env, sweep_dir)
    _assert_completed(rows, 4, sweep_dir)
    for name in ("dpm2m-4", "dpm2m-8", "sequential_ode-4", "sequential_ode-8"):
        _assert_same_ensemble(tmp_path / "slurm" / f"{name}.zarr", tmp_path / "local" / f"{name}.zarr")


def _installed(script: str, env: dict[str, str]) -> bool:
    """A console script of an installed distribution on PATH (a pyenv shim alone does not count)."""
    from importlib.metadata import entry_points

    return (any(ep.name == script for ep in entry_points(group="console_scripts"))
            and shutil.which(script, path=env["PATH"]) is not None)


def test_dependency_chain(cluster, tmp_path):
    """``submit_chain.sh``: train -> generate array -> evaluate, each after the previous one COMPLETED."""
    env = _env(tmp_path)
    evaluate = _installed("sciencegen-evaluate", env)
    run = tmp_path / "run"
    cmd = [str(WORKFLOWS / "submit_chain.sh"),
           "--dataset", "dataset=grf dataset.size=16 dataset.samples=64 dataset.chunk=16",
           "--run-dir", str(run), "--members", "8", "--tasks", "2",
           "--train", "train.max_steps=4 train.batch_size=4 train.progress=false train.figure_members=0 "
                      "train.tensorboard=false",
           "--generate", "sampler=dpm2m sampler.steps=4 generate.batch_size=2 generate.progress=false",
           "--sbatch", "--cpus-per-task=1 --time=10",
           "--train-sbatch", "--gpus-per-node=0 --mem=2G",            # the template asks for GPUs
           "--generate-sbatch", "--mem=1G",
           "--evaluate-sbatch", "--ntasks=2 --mem-per-cpu=1G"]        # two Dask workers of one thread
    if not evaluate:
        cmd.append("--no-evaluate")
    out = _run(cmd, env, tmp_path)
    ids = dict(line.split() for line in out.splitlines() if re.fullmatch(r"(train|generate|evaluate) \d+", line))
    assert list(ids) == (["train", "generate", "evaluate"] if evaluate else ["train", "generate"]), out
    rows = _wait(list(ids.values()), 1 + 2 + evaluate, env, run)
    _assert_completed(rows, 1 + 2 + evaluate, run)
    # afterok: each stage started only after the one before it ended
    times = {j: v.split("|") for j, v in _sacct(list(ids.values()), env, "Start,End").items()}
    train_end = times[ids["train"]][1]
    gen = [t for j, t in times.items() if j.startswith(f"{ids['generate']}_")]
    assert len(gen) == 2 and all(start >= train_end for start, _ in gen), times
    if evaluate:
        assert times[ids["evaluate"]][0] >= max(end for _, end in gen), times
    assert any((run / "checkpoints").glob("*.pt")), list(run.rglob("*"))
    samples = xr.open_zarr(run / "samples.zarr")
    assert samples.sizes["member"] == 8 and bool(samples["complete"].all())
    if not evaluate:
        pytest.skip(f"train -> generate chain COMPLETED (jobs {ids['train']}, {ids['generate']}); the evaluate "
                    "step was not run: sciencegen-evaluate is not installed")
    assert (run / "evaluate" / "metrics.json").is_file(), f"{list((run / 'evaluate').rglob('*'))}\n{_logs(run)}"
