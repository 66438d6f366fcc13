"""Tests of crash-safe checkpoints (:mod:`sciencegen.models.checkpoint`): roundtrip, pruning, corrupt files,
a writer killed with SIGKILL in the middle of a save, compatibility messages, code provenance."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

import sciencegen
from sciencegen.models import checkpoint as ck
from sciencegen.models.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    check_compatible,
    code_version,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from sciencegen.owners import host_tag


def small_state(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).square().sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),  # holds an ndarray: needs weights_only=False
        "python_rng": random.getstate(),
        "epoch": 2,
    }
    return model, opt, state


def names(paths) -> list[str]:
    return [p.name for p in paths]


def test_roundtrip_meta_and_sidecar(tmp_path):
    model, opt, state = small_state()
    meta = {"model": {"width": 8, "levels": (1, 2)}, "stats": {"mean": np.float32(1.5), "std": np.ones(2)},
            "code": code_version()}
    path = save_checkpoint(tmp_path / "run", 7, state, meta=meta)
    assert path == tmp_path / "run" / "checkpoints" / "step_000000007.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_000000007.json", "step_000000007.pt"]

    for source in (path, tmp_path / "run", tmp_path / "run" / "checkpoints"):
        got_path, ckpt = load_checkpoint(source)
        assert got_path == path
        assert ckpt["step"] == 7 and ckpt["format_version"] == ck.FORMAT_VERSION
        for k, v in state["model"].items():
            assert torch.equal(ckpt["state"]["model"][k], v)
        assert torch.equal(ckpt["state"]["torch_rng"], state["torch_rng"])
        assert ckpt["state"]["python_rng"] == state["python_rng"]
        assert ckpt["state"]["epoch"] == 2

    # the optimizer state restores into a fresh optimizer
    model2, _, _ = small_state(seed=1)
    model2.load_state_dict(ckpt["state"]["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["state"]["optimizer"])
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])

    # meta: JSON round trip, identical in the file and the sidecar
    expected_meta = {"model": {"width": 8, "levels": [1, 2]}, "stats": {"mean": 1.5, "std": [1.0, 1.0]},
                     "code": code_version()}
    assert ckpt["meta"] == expected_meta
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["meta"] == expected_meta
    assert sidecar["step"] == 7 and sidecar["file"] == path.name and sidecar["saved_at"] == ckpt["saved_at"]


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path, 1, {}, meta={"f": object()})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, {}, keep=0)
    with pytest.raises(ValueError, match="non-negative"):
        save_checkpoint(tmp_path, -1, {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, True, {})
    assert not (tmp_path / "checkpoints").exists() or list_checkpoints(tmp_path) == []


def test_keep_last_k_and_list_order(tmp_path):
    run = tmp_path / "run"
    assert list_checkpoints(run) == []
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(run, step, {"x": torch.tensor(step)}, keep=3)
    assert names(list_checkpoints(run)) == ["step_000000003.pt", "step_000000004.pt", "step_000000005.pt"]
    d = run / "checkpoints"
    assert sorted(p.name for p in d.glob("*.json")) == [f"step_00000000{s}.json" for s in (3, 4, 5)]

    # numeric, not lexical, order past 9 digits
    save_checkpoint(run, 10**9, {"x": torch.tensor(0)}, keep=3)
    save_checkpoint(run, 999_999_999, {"x": torch.tensor(1)}, keep=3)
    assert names(list_checkpoints(run)) == ["step_000000005.pt", "step_999999999.pt", "step_1000000000.pt"]
    assert load_checkpoint(run)[1]["step"] == 10**9

    # keep=None keeps everything; an orphan sidecar is removed at the next pruning save
    save_checkpoint(run, 10**9 + 1, {}, keep=None)
    assert len(list_checkpoints(run)) == 4
    (d / "step_000000002.json").write_text("{}")
    save_checkpoint(run, 10**9 + 2, {}, keep=2)
    assert names(list_checkpoints(run)) == ["step_1000000001.pt", "step_1000000002.pt"]
    assert sorted(p.name for p in d.iterdir()) == ["step_1000000001.json", "step_1000000001.pt",
                                                  "step_1000000002.json", "step_1000000002.pt"]


def test_save_older_step_is_never_pruned_away(tmp_path):
    for step in (10, 20):
        save_checkpoint(tmp_path, step, {}, keep=1)
    path = save_checkpoint(tmp_path, 15, {}, keep=1)  # a run restarted from an older checkpoint
    assert path.exists()
    assert names(list_checkpoints(tmp_path)) == ["step_000000015.pt", "step_000000020.pt"]


def test_corrupt_checkpoints_are_skipped(tmp_path):
    run = tmp_path / "run"
    paths = [save_checkpoint(run, s, {"w": torch.full((1000,), float(s))}, keep=5) for s in (1, 2, 3)]
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(CheckpointWarning, match="step_000000003.pt") as rec:
        path, ckpt = load_checkpoint(run)
    assert len(rec) == 1
    assert path == paths[1] and ckpt["step"] == 2 and torch.equal(ckpt["state"]["w"], torch.full((1000,), 2.0))

    paths[1].write_bytes(b"this is not a checkpoint" * 10)  # garbage
    with pytest.warns(CheckpointWarning) as rec:
        path, _ = load_checkpoint(run)
    assert path == paths[0]
    assert ["step_000000003.pt" in str(w.message) for w in rec] == [True, False]
    assert "step_000000002.pt" in str(rec[1].message)

    paths[0].write_bytes(b"")  # empty
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no valid checkpoint in .*checkpoints"):
        load_checkpoint(run)

    # a file given directly: one-line error naming it
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*step_000000003.pt") as err:
        load_checkpoint(paths[2])
    assert "\n" not in str(err.value)


def test_corrupt_newer_file_does_not_count_for_pruning(tmp_path):
    paths = [save_checkpoint(tmp_path, s, {}, keep=2) for s in (1, 2, 3)]
    paths[2].write_bytes(paths[2].read_bytes()[:100])
    save_checkpoint(tmp_path, 4, {}, keep=2)
    # kept: 4 and 2 (valid); the corrupt 3 is left in place between them, 1 is pruned
    assert names(list_checkpoints(tmp_path)) == ["step_000000002.pt", "step_000000003.pt", "step_000000004.pt"]


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file or directory"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no valid checkpoint in .*no step_"):
        load_checkpoint(tmp_path)

    d = tmp_path / "checkpoints"
    save_checkpoint(tmp_path, 1, {"a": 1})
    torch.save({"a": 1}, d / "step_000000002.pt")  # not a sciencegen checkpoint: skipped
    with pytest.warns(CheckpointWarning, match="not a sciencegen checkpoint"):
        assert load_checkpoint(tmp_path)[1]["step"] == 1

    payload = torch.load(d / "step_000000001.pt", weights_only=False)
    payload["format_version"] = ck.FORMAT_VERSION + 1
    torch.save(payload, d / "step_000000003.pt")  # too new: an error, not a silent fallback
    with pytest.raises(CheckpointError, match="newer than this sciencegen reads"):
        load_checkpoint(tmp_path)


def test_weights_only_load(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(3), "n": 4}, meta={"model": {"a": [1, 2]}})
    _, ckpt = load_checkpoint(path, weights_only=True)
    assert torch.equal(ckpt["state"]["w"], torch.ones(3)) and ckpt["meta"]["model"] == {"a": [1, 2]}
    _, _, state = small_state()
    path = save_checkpoint(tmp_path, 2, state)  # numpy RNG state: refused by the restricted unpickler
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path, weights_only=True)
    assert load_checkpoint(path)[1]["step"] == 2


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_are_removed(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    host = host_tag()
    stale = [d / f"step_000000001.pt.tmp-{host}-{dead_pid()}", d / f"step_000000001.json.tmp-{host}-{dead_pid()}"]
    alive = [d / f"step_000000002.pt.tmp-{host}-{os.getppid()}",  # a live process: maybe a concurrent writer
             d / f"step_000000002.pt.tmp-{host}-{os.getpid()}",  # this process
             d / f"step_000000002.pt.tmp-otherhost-{dead_pid()}"]  # another host: cannot tell
    for p in stale + alive:
        p.write_bytes(b"partial")
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 3, {})
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in alive)
    assert names(list_checkpoints(tmp_path)) == ["step_000000003.pt"]


# ----------------------------------------------------------------------------------- kill -9 mid-save

N_TENSORS, TENSOR_NUMEL = 64, 256 * 1024  # 64 tensors of 1 MiB: 64 MiB, written incrementally
CHILD = textwrap.dedent(f"""
    import sys
    import torch
    from sciencegen.models.checkpoint import save_checkpoint

    run_dir = sys.argv[1]
    big = [torch.empty({TENSOR_NUMEL}) for _ in range({N_TENSORS})]
    step = 0
    while True:
        step += 1
        for t in big:
            t.fill_(float(step))
        save_checkpoint(run_dir, step, {{"big": big, "step": step}}, keep=2, meta={{"step": step}})
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.timeout(180)
def test_kill_during_save_leaves_only_complete_files(tmp_path):
    run = tmp_path / "run"
    d = run / "checkpoints"
    total = N_TENSORS * TENSOR_NUMEL * 4
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    with open(tmp_path / "child.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    tmp_pattern = re.compile(rf"^step_\d+\.pt\.tmp-.+-{proc.pid}$")
    deadline = time.monotonic() + 120
    try:
        # Kill once a final file exists and the next one is mid-write: its temp file holds at least 1 MiB
        # and at most half the tensors, so the remaining writes + fsync + rename cannot finish in between.
        while True:
            assert proc.poll() is None, f"writer exited: {(tmp_path / 'child.err').read_text()}"
            assert time.monotonic() < deadline, "writer did not reach a second save in time"
            if d.is_dir() and list_checkpoints(run):
                sizes = []
                for p in d.iterdir():
                    if tmp_pattern.match(p.name):
                        try:
                            sizes.append(p.stat().st_size)
                        except FileNotFoundError:
                            pass
                if any(2**20 <= s <= total // 2 for s in sizes):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    finals = list_checkpoints(run)
    assert finals and set(names(finals)) == {p.name for p in d.glob("step_*.pt")}
    for p in finals:  # every final file is complete
        _, ckpt = load_checkpoint(p)
        step = ckpt["step"]
        assert p.name == f"step_{step:09d}.pt" and ckpt["meta"] == {"step": step}
        big = ckpt["state"]["big"]
        assert len(big) == N_TENSORS and all(bool((t == step).all()) for t in big)
    leftovers = [p for p in d.iterdir() if tmp_pattern.match(p.name)]
    assert leftovers, "the kill should have interrupted a write"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # temp files are not even looked at
        path, ckpt = load_checkpoint(run)
    assert path == finals[-1]
    del ckpt

    # the next save from this process removes the dead writer's temp files
    new = save_checkpoint(run, 10**6, {"x": torch.zeros(1)}, keep=2)
    assert not any(p.exists() for p in leftovers)
    assert not any(".tmp-" in p.name for p in d.iterdir())
    assert list_checkpoints(run) == [finals[-1], new]
    for p in d.iterdir():  # pytest keeps the last temp dirs: do not leave 64 MiB files behind
        p.unlink()


# ------------------------------------------------------------------------------------- compatibility


def test_check_compatible():
    meta = {"model": {"width": 64, "levels": [1, 2, 2]}, "data": {"mean": 0.0}}
    check_compatible(meta, {"model": {"width": 64, "levels": (1, 2, 2)}})  # tuples equal stored lists
    check_compatible(meta, {"data": {"mean": 1.0}})  # 'data' is not among the keys checked
    check_compatible(meta, {})

    with pytest.raises(CheckpointError) as err:
        check_compatible(meta, {"model": {"width": 128, "levels": [1, 2, 2]}}, where="runs/x/step_000000010.pt")
    msg = str(err.value)
    assert msg.startswith("checkpoint runs/x/step_000000010.pt was trained for model {")
    assert '"width": 64' in msg and '"width": 128' in msg and "but the config asks for" in msg
    assert "first difference: model.width: 64 vs 128" in msg

    with pytest.raises(CheckpointError, match=r"for data \{.*\(first difference: data.mean: 0.0 vs 1.0\)"):
        check_compatible(meta, {"model": meta["model"], "data": {"mean": 1.0}}, keys=("model", "data"))
    with pytest.raises(CheckpointError, match=r"model.levels\[2\]: 2 vs 3"):
        check_compatible(meta, {"model": {"width": 64, "levels": [1, 2, 3]}})
    with pytest.raises(CheckpointError, match="records no 'grid'"):
        check_compatible(meta, {"grid": 64}, keys=("grid",))


# ---------------------------------------------------------------------------------------- provenance


def test_code_version(tmp_path, monkeypatch):
    v = code_version()
    assert set(v) == {"sciencegen", "git", "torch"}
    assert v["sciencegen"] == sciencegen.__version__ and v["torch"] == torch.__version__
    assert v["git"] is None or re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", v["git"])
    from sciencegen.models.meta import git_describe

    assert git_describe(tmp_path) is None  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # git missing
    assert code_version()["git"] is None
