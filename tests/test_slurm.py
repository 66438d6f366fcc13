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
  COMPLETED in ``sacct`` and the outputs there;
* a job that can never be scheduled (more CPUs than the cluster has) fails the wait within seconds, naming
  the job, SLURM's reason and the node;
* SIGTERM to the batch script (``scancel --batch --signal=TERM``, what ``--signal=B:TERM@300`` does at the time
  limit) of ``train_ddp.sbatch`` / a ``generate_array.sbatch`` task: a checkpoint / the complete chunks are
  written, the job requeues itself, and its rerun resumes and COMPLETES (the store equal to a local run).

Every job asks for 1 CPU and 1-2 GB, so two run side by side on a two-core machine; ``sacct`` is polled
until every job and array task has a final state (its rows arrive a little after the jobs end). Every wait
goes through :func:`_wait_for`, which fails fast when a job can never start.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import xarray as xr

T = TypeVar("T")
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
STATE = Path(os.environ.get("SCIENCEGEN_SLURM_STATE", "/tmp/sciencegen-slurm"))
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}
JOB_TIMEOUT = 420  # seconds for the jobs of one test (they normally need well under two minutes)
# squeue reasons of a pending job that waiting does not cure: the request exceeds the partition or nodes, the
# job is held, its dependency failed, its account/QOS is invalid, or the nodes it needs are down
NEVER = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "DependencyNeverSatisfied",
         "InvalidAccount", "InvalidQOS", "JobHeldAdmin", "JobHeldUser", "ReqNodeNotAvail", "NodeDown", "PartitionDown",
         "PartitionInactive", "launch failed requeued held"}
STUCK_AFTER = 3.0  # seconds a job shows such a reason (or a request larger than the nodes) before a wait fails
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


def _nodes(env: dict[str, str]) -> list[tuple[str, str, int, int]]:
    """``(name, state, CPUs, memory MB)`` of every node, from ``sinfo``."""
    p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %c %m"], env=env, capture_output=True, text=True,
                       timeout=60)
    rows = [line.split() for line in p.stdout.splitlines()]
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows if len(r) == 4 and r[2].isdigit() and r[3].isdigit()]


def _megabytes(text: str) -> int:
    """``"1500M"``, ``"2G"``, ``"1T"`` (SLURM's memory notation) in MB."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", text)
    if not m:
        return 0
    return int(float(m[1]) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m[2]])


def _too_big(job: str, env: dict[str, str], nodes: list[tuple[str, str, int, int]]) -> str | None:
    """Why pending ``job`` can never fit the usable nodes (more nodes, CPUs or memory per node than they
    have), from its requested TRES in ``scontrol show job``; None when it fits."""
    p = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True, timeout=60)
    m = re.search(r"\b(?:Req)?TRES=(\S+)", p.stdout)   # 22.05: TRES=cpu=4,mem=4G,node=1; later: ReqTRES=
    tres = dict(kv.split("=", 1) for kv in m[1].split(",") if "=" in kv) if m else {}
    usable = [n for n in nodes if re.match(r"(idle|mixed|allocated|completing)", n[1])]
    n_nodes, cpus = int(tres.get("node", 1)), int(tres.get("cpu", 1))
    mem = _megabytes(tres.get("mem", "0")) // max(n_nodes, 1)
    if n_nodes > len(usable):
        return f"{n_nodes} nodes asked, {len(usable)} usable"
    if cpus > sum(n[2] for n in usable):
        return f"{cpus} CPUs asked, {sum(n[2] for n in usable)} on the usable nodes"
    if usable and mem > max(n[3] for n in usable):
        return f"{mem} MB per node asked, at most {max(n[3] for n in usable)} MB on a usable node"
    return None


def _never_starts(job_ids: list[str], env: dict[str, str], stuck: dict[str, float]) -> str | None:
    """A line naming each job of ``job_ids`` that has been pending for ``STUCK_AFTER`` s with a reason that
    waiting does not cure (``NEVER``, or a request larger than the nodes), its request and the nodes; None if
    there is none. ``stuck`` keeps when each job was first seen so (kept across calls)."""
    p = subprocess.run(["squeue", "-h", "-t", "PD", "-j", ",".join(job_ids), "-o", "%i|%j|%r"], env=env,
                       capture_output=True, text=True, timeout=60)
    nodes: list[tuple[str, str, int, int]] | None = None
    now, bad, seen, asked = time.monotonic(), [], set(), []
    for line in p.stdout.splitlines():
        job, name, reason = (line.split("|", 2) + ["", ""])[:3]
        why = reason if reason.split(",")[0].strip() in NEVER else None
        if why is None and reason in ("Resources", "Priority"):
            nodes = _nodes(env) if nodes is None else nodes
            too_big = _too_big(job.split("_")[0], env, nodes)
            why = f"{reason}, but {too_big}" if too_big else None
        if why is None:
            continue
        seen.add(job)
        if now - stuck.setdefault(job, now) >= STUCK_AFTER:
            bad.append(f"job {job} ({name}) can never start: {why}")
            row = subprocess.run(["scontrol", "show", "job", "-o", job.split("_")[0]], env=env, capture_output=True,
                                 text=True, timeout=60).stdout.splitlines()[:1]
            asked += [" ".join(re.findall(r"\b(?:JobId|NumNodes|NumCPUs|MinMemory\w+|(?:Req)?TRES|Partition)=\S+",
                                          r)) for r in row]
    for job in set(stuck) - seen:
        del stuck[job]
    if not bad:
        return None
    nodes = _nodes(env) if nodes is None else nodes
    have = ", ".join(f"{n} {st} {c} CPUs {m} MB" for n, st, c, m in nodes) or "no node"
    return f"{'; '.join(bad)}. Asked: {'; '.join(asked)}. Nodes: {have}"


def _wait_for(what: str, done: Callable[[], T | None], jobs: Callable[[], list[str]], env: dict[str, str],
              logs: Path, timeout: float = JOB_TIMEOUT) -> T:
    """Poll ``done()`` every second until it returns something other than None, and return that. Meanwhile a
    job of ``jobs()`` that can never be scheduled (:func:`_never_starts`) fails the test within seconds,
    naming the job, its reason, its request and the nodes; so does ``timeout``. Either way the jobs are
    cancelled and their logs (under ``logs``) shown. Every wait for SLURM jobs in this file goes through here."""
    t0 = time.monotonic()
    stuck: dict[str, float] = {}
    while True:
        result = done()
        if result is not None:
            return result
        ids = jobs()
        problem = _never_starts(ids, env, stuck) if ids else None
        late = time.monotonic() - t0 > timeout
        if problem or late:
            queue = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %j %T %r"], env=env,
                                   capture_output=True, text=True, timeout=60).stdout.strip() if ids else ""
            if ids:
                subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=60)
            why = problem or f"not done after {timeout:.0f} s; queue: {queue or 'empty'}"
            pytest.fail(f"{what}: {why} (cancelled {ids})\n{_logs(logs)}")
        time.sleep(1)


def _controller_states(job_ids: list[str], env: dict[str, str]) -> list[str]:
    """The states slurmctld holds for the jobs and array tasks of ``job_ids`` (empty once it has forgotten
    them). ``sacct`` lags behind it: a requeued job's first run reads FAILED there until the record of its
    next run reaches slurmdbd, so a wait that trusts ``sacct`` alone can end one run early."""
    states = []
    for job in job_ids:
        info = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                              timeout=60).stdout
        states += re.findall(r"\bJobState=(\S+)", info)
    return states


#: after a self-requeue, how long a FAILED read must hold before a wait believes it (longer than the hold of a
#: requeued job, about two minutes, should releasing it at once not take)
REQUEUE_SETTLE = 150.0


def _wait(job_ids: list[str], expected: int, env: dict[str, str], logs: Path, timeout: float = JOB_TIMEOUT,
          settle: float = 20.0) -> dict[str, str]:
    """Poll ``sacct`` until ``expected`` rows (jobs + array tasks) all have a final state, or one failed and
    none is still pending/running (:func:`_wait_for`: fails fast on a job that can never start).

    A state other than COMPLETED must hold for ``settle`` seconds, in ``sacct`` and in slurmctld alike: a job
    that requeues itself from its batch script reads FAILED in both for a moment before it is pending again."""
    seen: dict[str, float] = {}

    def final() -> dict[str, str] | None:
        rows = _sacct(job_ids, env)
        done = rows and all(s in FINAL for s in rows.values())
        ctl = _controller_states(job_ids, env) if done else []
        done = done and (not ctl or sorted(ctl) == sorted(rows.values()))   # sacct caught up with slurmctld
        done = done and (len(rows) >= expected or any(s != "COMPLETED" for s in rows.values()))
        if not done:
            seen.clear()
            return None
        key = repr(sorted(rows.items()))
        first = seen.setdefault(key, time.monotonic())
        if all(s == "COMPLETED" for s in rows.values()) or time.monotonic() - first >= settle:
            return rows
        return None

    return _wait_for(f"jobs {job_ids}", final, lambda: job_ids, env, logs, timeout)


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
    sweep_dir = tmp_path / "sweep-slurm"
    remote_log = tmp_path / "multirun-slurm.out"
    with remote_log.open("w") as log:
        remote = subprocess.Popen(["sciencegen-generate", "--multirun", *_launcher(), *sweep, *common, *shard,
                                   f"hydra.sweep.dir={sweep_dir}", f"output.path={tmp_path / 'slurm' / store}"],
                                  env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True)
    local = subprocess.run(["sciencegen-generate", "--multirun", *sweep, *common,
                            f"hydra.sweep.dir={tmp_path / 'sweep-local'}", f"output.path={tmp_path / 'local' / store}"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert local.returncode == 0, local.stdout + local.stderr


    def submitted() -> list[str]:   # submitit's folder per job: .submitit/ARRAYID_TASK
        folder = sweep_dir / ".submitit"
        return sorted({p.name.split("_")[0] for p in folder.glob("*_*") if re.fullmatch(r"\d+_\d+", p.name)})

    try:
        _wait_for("the submitit sweep", remote.poll, submitted, env, sweep_dir)
    finally:
        if remote.poll() is None:
            remote.kill()
            remote.wait()
    out = remote_log.read_text()
    assert remote.returncode == 0, f"{out[-4000:]}\n{_logs(sweep_dir)}"
    # Hydra's multirun layout: one numbered directory per sweep point; submitit's folder per SLURM job
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


def test_unschedulable_job_fails_fast(cluster, tmp_path):
    """A job asking for more CPUs than the cluster has never starts (PartitionConfig): the wait fails within
    seconds, naming the job, SLURM's reason and the node's CPUs, and cancels the job, instead of waiting
    ``JOB_TIMEOUT``."""
    env = _env(tmp_path)
    nodes = _nodes(env)
    cpus = sum(n[2] for n in nodes)
    try:
        job = _sbatch([f"--cpus-per-task={cpus + 1}", "--mem=100M", "--time=1", f"--output={tmp_path}/%j.out",
                       "--wrap=true"], env, tmp_path)
    except AssertionError as exc:   # some configurations refuse such a job at submission: nothing to wait for
        pytest.skip(f"sbatch refuses a job larger than the cluster here: {exc}")
    # SLURM's own reason, read independently of the helper
    reason = ""
    for _ in range(20):
        reason = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], env=env, capture_output=True, text=True,
                                timeout=60).stdout.strip()
        if reason and reason != "None":
            break
        time.sleep(0.5)
    assert reason not in ("", "None"), f"job {job}: no pending reason from squeue"
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        _wait([job], 1, env, tmp_path)
    took = time.monotonic() - t0
    message = str(failed.value)
    assert took < 20, f"the wait took {took:.0f} s to give up: {message}"
    assert f"job {job} (wrap) can never start: {reason}" in message, message
    assert f"{nodes[0][0]} " in message and f" {nodes[0][2]} CPUs " in message, message
    assert "JobTimeout" not in message and f"NumCPUs={cpus + 1}" in message, message
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True,
                           timeout=60).stdout.strip()
    assert state in ("", "CANCELLED", "COMPLETING"), f"job {job} was not cancelled: {state}"


def _sigterm_and_requeue(job: str, env: dict[str, str], logs: Path, started: Callable[[], bool]) -> None:
    """Once ``started()``, send SIGTERM to the batch shell of ``job`` only (what ``--signal=B:TERM@...`` does
    at the time limit), wait until the job has requeued itself and its first run has ended, and let it start
    again 3 s later (a requeued job is otherwise held for about two minutes: BeginTime)."""
    def ready() -> str | None:
        if started():
            return "started"
        state = _sacct([job], env).get(job)
        return state if state in FINAL else None

    assert _wait_for(f"job {job} to start its work", ready, lambda: [job], env, logs) == "started", _logs(logs)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=env, check=True, timeout=60)

    def requeued() -> str | None:
        info = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                              timeout=60).stdout
        restarts = re.search(r"\bRestarts=(\d+)", info)
        if restarts and int(restarts[1]) >= 1:
            return "requeued"
        state = _sacct([job], env).get(job)
        return state if state in FINAL else None

    assert _wait_for(f"job {job} to requeue itself", requeued, lambda: [job], env, logs) == "requeued", \
        f"job {job} was not requeued after SIGTERM:\n{_logs(logs)}"

    def settled() -> str | None:   # the first run has ended on the node (no longer COMPLETING)
        info = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                              timeout=60).stdout
        state = re.search(r"\bJobState=(\S+)", info)
        return "pending" if state and state[1] == "PENDING" and "COMPLETING" not in info else None

    _wait_for(f"job {job} to end its first run", settled, lambda: [job], env, logs)
    # slurmd refuses a credential issued in the same second as the revocation of the first run's ("Job
    # credential revoked": the task would end FAILED); SLURM's own hold avoids it, a start 3 s on does too
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now+3"], env=env, capture_output=True,
                   timeout=60)


def test_train_sigterm_checkpoints_and_requeues(cluster, tmp_path):
    """``train_ddp.sbatch`` and SIGTERM to its batch shell (as at the time limit): the training writes a
    checkpoint and stops, the job requeues itself, and its second run resumes from that checkpoint and ends
    COMPLETED (one log, appended)."""
    env = _env(tmp_path)
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    # only the SIGTERM path writes a checkpoint before the end (no periodic ones); 0.25 training minutes in all
    train = ["dataset=grf", "dataset.size=16", "dataset.samples=64", "dataset.chunk=16", "train.max_steps=1000000",
             "train.max_minutes=0.25", "train.batch_size=4", "train.progress=false", "train.figure_members=0",
             "train.tensorboard=false", "train.log_every=5", "train.val_every=0", "train.ckpt_every_steps=0",
             "train.ckpt_every_minutes=0"]
    job = _sbatch(["--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G", "--time=10", f"--output={logs}/train-%j.out",
                   f"--export=ALL,RUN_DIR={run}", str(WORKFLOWS / "train_ddp.sbatch"), *train], env, tmp_path)
    metrics = run / "metrics.csv"
    _sigterm_and_requeue(job, env, logs, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) > 1)
    rows = _wait([job], 1, env, logs, settle=REQUEUE_SETTLE)
    _assert_completed(rows, 1, logs)
    log = (logs / f"train-{job}.out").read_text()
    first, _, second = log.partition(f"sciencegen-train: job {job} requeued (restart 1)")
    assert second, f"the job did not requeue itself:\n{log}"
    interrupted = re.search(r"interrupted \(SIGTERM\); checkpoint step (\d+) written", first)
    assert interrupted, f"no 'interrupted (SIGTERM); checkpoint step N written' line before the requeue:\n{log}"
    step = int(interrupted[1])
    sidecar = run / "checkpoints" / f"step_{step:09d}.json"   # written next to the checkpoint, with its step
    assert sidecar.is_file(), f"{sorted(p.name for p in (run / 'checkpoints').glob('*'))}\n{log}"
    assert json.loads(sidecar.read_text())["step"] == step
    assert re.search(rf"resumed from \S+step_{step:09d}\.pt \(step {step},", second), \
        f"the requeued run did not resume from step {step}:\n{log}"
    assert "stopped by max_minutes" in second, log
    history = _sacct_all(job, env)
    assert history[:1] == ["REQUEUED"] and history[-1:] == ["COMPLETED"], history


def _sacct_all(job: str, env: dict[str, str]) -> list[str]:
    """Every run of ``job`` in ``sacct -D`` (requeues included), oldest first: their states."""
    p = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "JobID,State"], env=env,
                       capture_output=True, text=True, timeout=60)
    return [line.split("|")[1].split()[0] for line in p.stdout.splitlines() if "|" in line]


def test_generate_sigterm_requeues_and_completes(cluster, tmp_path):
    """``generate_array.sbatch`` and SIGTERM to a task's batch shell mid-run: sciencegen-generate stops after
    the chunk in flight, the task requeues itself and fills the rest; the store equals a local run."""
    env = _env(tmp_path)
    store, local, logs = tmp_path / "array.zarr", tmp_path / "local.zarr", tmp_path / "logs"
    logs.mkdir()
    members = 192   # 96 chunks of 2, about 12 s of sampling on one core
    slow = [o for o in TINY if not o.startswith(("sampler.steps", "generate.members"))] + [
        "sampler.steps=256", f"generate.members={members}"]
    job = _sbatch(["--array=0", *SMALL_JOB, f"--output={logs}/gen-%A_%a.out", f"--export=ALL,STORE={store}",
                   str(WORKFLOWS / "generate_array.sbatch"), *slow], env, tmp_path)
    task = f"{job}_0"
    out = logs / f"gen-{job}_0.out"
    # the local reference runs meanwhile
    ref = subprocess.Popen(["sciencegen-generate", *slow, f"output.path={local}",
                            f"hydra.run.dir={tmp_path / 'local-run'}"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # SIGTERM once a chunk is complete (its flags are on disk: zarr v3 complete/c/N, v2 complete/N)
    flags = store / "complete"
    _sigterm_and_requeue(task, env, logs, lambda: any(flags.glob("c/*")) or any(flags.glob("[0-9]*")))
    rows = _wait([job], 1, env, logs, settle=REQUEUE_SETTLE)
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out
    _assert_completed(rows, 1, logs)
    log = out.read_text()
    parts = re.split(r"task 0 \(job \d+\) requeued \(restart 1\)", log)   # the task's own job id
    assert len(parts) == 2, f"the task did not requeue itself (once):\n{log}"
    first, second = parts
    assert re.search(r"interrupted \(SIGTERM\)", first), f"no 'interrupted (SIGTERM)' line before the requeue:\n{log}"
    done = re.search(r"(\d+) already written", second)
    assert done and 0 < int(done[1]) < members, f"the second run did not resume from the first one's chunks:\n{log}"
    _assert_same_ensemble(store, local)
