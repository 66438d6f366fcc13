"""Training stops cleanly: SIGTERM / SIGINT at a safe point with a checkpoint, disk faults as one line.

The real ``sciencegen-train`` console script runs in subprocesses and gets real signals (to its whole process
group, as a terminal's Ctrl-C and SLURM do); disk faults are real (a tiny tmpfs, a read-only bind mount, see
``fsfaults.py``). Configs are the tiny ones of ``test_train.py`` (tiny U-Net, grf 16x16, batch 8).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fsfaults import fill, read_only, small_fs
from hydra import compose, initialize_config_dir

from sciencegen.analysis.figures import plot_samples
from sciencegen.config import config_dir
from sciencegen.models.checkpoint import list_checkpoints, load_checkpoint
from sciencegen.pipelines.train import TrainError, run_train

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and mounts")

SMALL = [
    "dataset=grf", "dataset.size=16", "dataset.samples=256", "dataset.chunk=32", "model=unet",
    "train.batch_size=8", "train.log_every=1", "train.val_every=0", "train.ckpt_every_minutes=0",
    "train.figure_members=0", "train.progress=false", "train.threads=1", "train.tensorboard=false",
    "train.warmup_steps=2", "train.horizon_steps=40",  # the lr schedule does not depend on max_steps
]
CLI = "from sciencegen.cli import train; train()"
PROG = "sciencegen-train"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    run_train(config(tmp_path_factory.mktemp("warm"), root, "train.max_steps=1"))  # the store exists before the CLI
    return root


def config(run_dir, data_root, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[*SMALL, f"run_dir={run_dir}", f"data_root={data_root}", *overrides])


def env1() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_stray_processes():
    """A failed test kills the processes it started (a hung DDP rank would otherwise outlive it)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def start(run_dir, data_root, *overrides, env=None) -> subprocess.Popen:
    """The CLI in its own session (process group), as a shell job or a SLURM step runs it."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *SMALL, f"data_root={data_root}", *overrides,
                             f"hydra.run.dir={run_dir}"], env=env or env1(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    _STARTED.append(proc)
    return proc


def metric_steps(run_dir) -> list[int]:
    try:
        with open(Path(run_dir) / "metrics.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("step", "").isdigit()]
    except FileNotFoundError:
        return []


def wait_for_rows(proc: subprocess.Popen, run_dir, n: int, timeout: float = 60.0) -> None:
    """Until ``metrics.csv`` has ``n`` rows: training is under way."""
    deadline = time.monotonic() + timeout
    while len(metric_steps(run_dir)) < n:
        if proc.poll() is not None:
            pytest.fail(f"exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"fewer than {n} metrics rows after {timeout} s"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"did not stop within {timeout} s: {err.decode()[-2000:]}")
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_temp_files(run_dir) -> None:
    d = Path(run_dir) / "checkpoints"
    assert not [p.name for p in d.iterdir() if ".tmp" in p.name], list(d.iterdir())


def states_equal(a: dict, b: dict) -> None:
    """Model, EMA and optimizer state bit for bit (resume is exact: see test_train_resume_continues_exactly)."""
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), ("optimizer", k)
    assert a["step"] == b["step"] and a["samples"] == b["samples"] and a["epoch"] == b["epoch"]


def interrupted_step(line: str, signame: str, run_dir) -> int:
    """The step N of "interrupted (SIG); checkpoint step N written to PATH, rerun ..."; checks the rest of it."""
    head = f"{PROG}: interrupted ({signame}); checkpoint step "
    assert line.startswith(head) and line.endswith(", rerun the same command to resume"), line
    n = int(line[len(head):].split()[0])
    assert f"written to {Path(run_dir) / 'checkpoints' / f'step_{n:09d}.pt'}," in line, line
    return n


def check_resume_matches_uninterrupted(run_dir, data_root, tmp_path, n: int) -> None:
    """The checkpoint of step n loads; a rerun resumes from it and equals a run that was never stopped."""
    path, ckpt = load_checkpoint(run_dir)
    assert path.name == f"step_{n:09d}.pt" and ckpt["step"] == n == ckpt["state"]["step"]
    total = n + 3
    out = run_train(config(run_dir, data_root, f"train.max_steps={total}"))
    assert out["start_step"] == n and out["step"] == total and out["resumed_from"] == str(path)
    assert metric_steps(run_dir) == list(range(1, total + 1))  # one curve, no gap or repeat
    ref = tmp_path / "reference"
    run_train(config(ref, data_root, f"train.max_steps={total}"))
    states_equal(load_checkpoint(run_dir)[1]["state"], load_checkpoint(ref)[1]["state"])


# ----------------------------------------------------------------------------------------------- signals


def test_sigterm_writes_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, data_root):
    """What SLURM sends at a time limit, to every process of the step (loader workers included: they must not
    die before the main process). No periodic checkpoints: the only one is the interruption's."""
    run = tmp_path / "run"
    proc = start(run, data_root, "train.max_steps=100000", "train.ckpt_every_steps=0", "train.num_workers=1")
    wait_for_rows(proc, run, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out, err = finish(proc)
    assert rc == 130, err
    n = interrupted_step(one_line(err), "SIGTERM", run)
    assert n >= 2 and metric_steps(run)[-1] == n  # stopped after the step in flight, its row written
    assert [p.name for p in list_checkpoints(run)] == [f"step_{n:09d}.pt"]
    no_temp_files(run)
    assert f"SIGTERM at step {n}: checkpoint written to" in out  # logged as well (Hydra's log: stdout)
    check_resume_matches_uninterrupted(run, data_root, tmp_path, n)


def test_ctrl_c_stops_cleanly_and_resumes_exactly(tmp_path, data_root):
    """Ctrl-C in a terminal signals the whole foreground process group."""
    run = tmp_path / "run"
    proc = start(run, data_root, "train.max_steps=100000", "train.ckpt_every_steps=0")
    wait_for_rows(proc, run, 2)
    os.killpg(proc.pid, signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc == 130, err
    n = interrupted_step(one_line(err), "SIGINT", run)
    no_temp_files(run)
    check_resume_matches_uninterrupted(run, data_root, tmp_path, n)


def test_second_ctrl_c_leaves_only_complete_checkpoints(tmp_path, data_root):
    """A second Ctrl-C stops at once, wherever it lands (maybe inside a checkpoint write): one line, exit 130,
    every checkpoint file complete, no temp file, and the run resumes."""
    run = tmp_path / "run"
    proc = start(run, data_root, "train.max_steps=100000", "train.ckpt_every_steps=1")
    wait_for_rows(proc, run, 3)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc == 130, err
    line = one_line(err)
    assert line.startswith(f"{PROG}: interrupted"), line
    no_temp_files(run)
    finals = list_checkpoints(run)
    assert finals
    for p in finals:
        assert load_checkpoint(p)[1]["step"] == int(p.stem.split("_")[1])
    newest = finals[-1]
    out = run_train(config(run, data_root, f"train.max_steps={load_checkpoint(newest)[1]['step'] + 1}"))
    assert out["resumed_from"] == str(newest)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_stop_together_when_one_rank_is_signalled(tmp_path, data_root):
    """SIGTERM to rank 1 only: both ranks stop at the same step (no rank hangs in a collective); rank 0 writes."""
    run = tmp_path / "ddp"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**env1(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(start(run, data_root, "train.max_steps=100000", "train.ckpt_every_steps=0",
                           "train.device=cpu", env=env))
    wait_for_rows(procs[0], run, 2, timeout=120)
    os.killpg(procs[1].pid, signal.SIGTERM)
    results = [finish(p, timeout=60) for p in procs]
    assert [r[0] for r in results] == [130, 130], [r[2] for r in results]
    n = interrupted_step(one_line(results[0][2]), "SIGTERM", run)
    assert one_line(results[1][2]) == (f"{PROG}: interrupted (SIGTERM); checkpoint step {n} written to {run} by "
                                       "rank 0, rerun the same command to resume")
    ckpt = load_checkpoint(run)[1]
    assert ckpt["step"] == n and ckpt["state"]["world_size"] == 2 and len(ckpt["state"]["rng"]) == 2
    no_temp_files(run)


# ----------------------------------------------------------------------------------------------- disk faults


def test_disk_full_at_a_checkpoint_keeps_the_last_one(tmp_path, data_root):
    """A checkpoint is ~2.9 MB: on a 4 MB disk the first fits, the second (next to it) does not."""
    run = tmp_path / "run"
    with small_fs(run, "4m"):
        proc = start(run, data_root, "train.max_steps=30", "train.ckpt_every_steps=3")
        rc, _, err = finish(proc)
        assert rc == 1, err
        line = one_line(err)
        first = run / "checkpoints" / "step_000000003.pt"
        assert line == (f"{PROG}: error: cannot write {run / 'checkpoints' / 'step_000000006.pt'}: the disk is "
                        f"full; training stopped at step 6; the last complete checkpoint, step 3 ({first}), stays "
                        "usable: rerun the same command once there is room to resume")
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000000003.json",
                                                                          "step_000000003.pt"]
        path, ckpt = load_checkpoint(run)
        assert path == first and ckpt["step"] == 3
        subprocess.run(["mount", "-o", "remount,size=16m", str(run)], check=True)  # the user frees space
        out = run_train(config(run, data_root, "train.max_steps=6", "train.ckpt_every_steps=3"))
        assert out["start_step"] == 3 and out["step"] == 6
        assert metric_steps(run) == list(range(1, 7))


def test_disk_full_in_the_metrics_file_names_it(tmp_path, data_root):
    """Resume a run whose disk then fills up: the metrics row that cannot be written stops training."""
    run = tmp_path / "run"
    with small_fs(run, "8m"):
        run_train(config(run, data_root, "train.max_steps=3", "train.ckpt_every_steps=3"))
        proc = start(run, data_root, "train.max_steps=100000", "train.ckpt_every_steps=0")
        wait_for_rows(proc, run, 5)
        fill(run)
        rc, _, err = finish(proc)
        assert rc == 1, err
        line = one_line(err)
        assert line.startswith(f"{PROG}: error: cannot write {run / 'metrics.csv'}: the disk is full; training "
                               "stopped at step "), line
        assert line.endswith(f"; the last complete checkpoint, step 3 ({run / 'checkpoints' / 'step_000000003.pt'})"
                             ", stays usable: rerun the same command once there is room to resume"), line
        assert load_checkpoint(run)[1]["step"] == 3
        no_temp_files(run)
        (run / ".filler").unlink()  # the user frees space; the rerun drops the rows past the checkpoint
        out = run_train(config(run, data_root, "train.max_steps=5", "train.ckpt_every_steps=0"))
        assert out["start_step"] == 3 and metric_steps(run) == [1, 2, 3, 4, 5]


def test_disk_full_figure_leaves_no_partial_file(tmp_path):
    fig = tmp_path / "fs" / "figures" / "step_000000001.png"
    with small_fs(tmp_path / "fs", "64k"):
        with pytest.raises(OSError) as info:
            plot_samples(torch.randn(4, 1, 64, 64), fig, data=torch.randn(4, 1, 64, 64))
        assert info.value.filename == str(fig) and info.value.strerror
        assert list(fig.parent.iterdir()) == []


def test_read_only_run_directory_fails_before_any_work(tmp_path):
    """Checked first: not even the dataset is prepared (its data root stays absent)."""
    run, data_root = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with read_only(run), pytest.raises(TrainError) as info:
        run_train(config(run, data_root, "train.max_steps=3", "train.ckpt_every_steps=1"))
    msg = str(info.value)
    assert msg.startswith(f"cannot write {run}: the filesystem is read-only; nothing was trained"), msg
    assert "\n" not in msg and info.value.exit_code == 1
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and not data_root.exists()
