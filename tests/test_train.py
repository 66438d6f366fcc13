"""Tests of the training pipeline (:mod:`sciencegen.pipelines.train`, :mod:`sciencegen.training`).

Configs are composed with ``hydra.compose`` and shrunk (tiny U-Net, grf 16x16, 256 samples, a few steps);
``run_train`` runs in-process with ``run_dir`` in ``tmp_path``. The kill -9 and DDP tests run the real CLI in
subprocesses (DDP: two gloo ranks on the CPU, set up through the torchrun environment variables).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sciencegen import training as T
from sciencegen.config import config_dir
from sciencegen.models import build as B
from sciencegen.models.build import load_model
from sciencegen.models.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from sciencegen.pipelines.train import TrainError, run_train
from sciencegen.training import loop as L

SMALL = [
    "dataset=grf", "dataset.size=16", "dataset.samples=256", "dataset.chunk=32", "model=unet",
    "train.max_steps=6", "train.batch_size=8", "train.log_every=1", "train.val_every=0", "train.ckpt_every_steps=3",
    "train.ckpt_every_minutes=0", "train.figure_members=0", "train.progress=false", "train.threads=1",
    "train.tensorboard=false", "train.warmup_steps=2",
]
CLI = "from sciencegen.cli import train; train()"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def config(run_dir, data_root, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[*SMALL, f"run_dir={run_dir}", f"data_root={data_root}", *overrides])


def rows(run_dir) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def state(run_dir) -> dict:
    return load_checkpoint(run_dir)[1]["state"]


def assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


def env1() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


# ----------------------------------------------------------------------------------------------- configs


def test_configs_compose():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train")
        gpu = compose("train", overrides=["train=gpu", "model.preset=base"])
        oracle = compose("train", overrides=["model=oracle"])
    assert cfg.model._target_ == "sciencegen.models.build.edm_unet" and cfg.model.preset == "tiny"
    assert cfg.dataset.name == "grf" and cfg.train.max_minutes is None and cfg.train.max_steps > 0
    assert cfg.train.tensorboard is False  # an optional extra: off unless asked for
    assert gpu.train.batch_size == 256 and gpu.train.lr == cfg.train.lr / 2 and gpu.model.preset == "base"
    assert oracle.model.name == "oracle"


def test_pure_helpers():
    # warm-up then cosine to final_ratio; constant keeps the warm-up only
    assert T.lr_factor(1, 0.0, warmup_steps=4) == pytest.approx(0.25)
    assert T.lr_factor(4, 0.0, warmup_steps=4) == pytest.approx(1.0)
    assert T.lr_factor(10, 0.5, warmup_steps=4) == pytest.approx(0.5)
    assert T.lr_factor(10, 1.0, final_ratio=0.1) == pytest.approx(0.1)
    assert T.lr_factor(10, 0.7, schedule="constant") == 1.0
    # progress: whichever bound ends first
    assert T.schedule_progress(10, 5.0, max_steps=100, max_minutes=10.0) == pytest.approx(0.5)
    assert T.schedule_progress(80, 5.0, max_steps=100, max_minutes=10.0) == pytest.approx(0.8)
    assert T.schedule_progress(80, 5.0, max_steps=100, max_minutes=None, horizon_steps=160) == pytest.approx(0.5)
    # EMA: ramp-up starts from a copy; the half-life is respected
    assert T.ema_beta(64, 0, halflife_samples=1000, rampup=0.05) == 0.0
    assert T.ema_beta(100, 10**6, halflife_samples=1000, rampup=0.05) == pytest.approx(0.5 ** 0.1)
    assert T.ema_beta(100, 10**6, halflife_samples=1000, decay=0.99) == 0.99
    assert T.per_rank_batch(64, 4) == 16
    with pytest.raises(TrainError, match="divisible by the 3 ranks"):
        T.per_rank_batch(64, 3)
    # noise depends on the global sample position only: any split of a batch draws the same numbers
    s_all, n_all = T.train_noise(7, 3, range(0, 6), (1, 4, 4))
    s_hi, n_hi = T.train_noise(7, 3, range(3, 6), (1, 4, 4))
    assert torch.equal(s_all[3:], s_hi) and torch.equal(n_all[3:], n_hi)
    s_next, _ = T.train_noise(7, 4, range(0, 6), (1, 4, 4))
    assert not torch.equal(s_all, s_next)
    z = (s_all.log() + 1.2) / 1.2
    assert z.abs().max() < 6


def test_resolve_model_config(caplog):
    r = B.resolve_model_config({"_target_": "x", "name": "unet", "preset": "small", "in_channels": None,
                                "out_channels": None, "periodic": None, "checkpoint": "ignored"},
                               channels=2, field_dims=("y", "x"), field_shape=(8, 12), periodic={"y": True})
    assert r["in_channels"] == r["out_channels"] == 2 and r["periodic"] == [True, False]
    assert r["channel_mult"] == [1, 2, 2] and r["channels"] == 32 and "checkpoint" not in r
    caplog.set_level(logging.INFO, logger="sciencegen")  # any grid: padded inside the U-Net (issue 18), logged
    r = B.resolve_model_config({"preset": "small", "periodic": None}, channels=1, field_dims=("y", "x"),
                               field_shape=(8, 10), periodic=(True, False))
    assert r["channel_mult"] == [1, 2, 2] and "grid 8x10 padded to 8x12 inside the U-Net (replicate in x" in caplog.text
    with pytest.raises(TrainError, match="2-D U-Net but the data have 3 field dim"):
        B.resolve_model_config({"preset": "tiny"}, channels=1, field_dims=("z", "y", "x"), field_shape=(4, 4, 4),
                               periodic=(True, True, True))


# ----------------------------------------------------------------------------------------------- training


def test_train_resume_continues_exactly(tmp_path, data_root):
    """0→4, then resume 4→8, equals 0→8 bit for bit (model, EMA, optimizer, data position, RNG, schedule)."""
    common = ["train.horizon_steps=8", "train.val_every=4", "train.holdout=0.25", "train.val_batches=1"]
    a, b = tmp_path / "a", tmp_path / "b"
    first = run_train(config(a, data_root, "train.max_steps=4", *common))
    assert first["step"] == 4 and first["stopped"] == "max_steps" and first["resumed_from"] is None
    assert [int(r["step"]) for r in rows(a)] == [1, 2, 3, 4]
    second = run_train(config(a, data_root, "train.max_steps=8", *common))
    assert second["start_step"] == 4 and second["step"] == 8 and second["resumed_from"].endswith("step_000000004.pt")
    table = rows(a)
    assert [int(r["step"]) for r in table] == list(range(1, 9))  # one curve, no restart at step 1
    assert [r["val_loss"] != "" for r in table] == [False, False, False, True] * 2
    run_train(config(b, data_root, "train.max_steps=8", *common))
    sa, sb = state(a), state(b)
    assert_same(sa["model"], sb["model"], rtol=0, atol=0)
    assert_same(sa["ema"], sb["ema"], rtol=0, atol=0)
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True):
        assert_same(pa, pb, rtol=0, atol=0)
    assert [r["loss"] for r in table] == [r["loss"] for r in rows(b)]
    assert sa["samples"] == 64 and sa["step"] == 8

    # the EMA weights come back from load_model, with everything needed to rebuild the model
    model, meta = load_model(a)
    assert_same(model.state_dict(), sa["ema"], rtol=0, atol=0)
    assert meta["step"] == 8 and not model.training
    assert meta["model"]["in_channels"] == 1 and meta["model"]["periodic"] == [True, True]
    assert meta["data"]["variables"] == ["field"] and meta["data"]["field_dims"] == ["y", "x"]
    assert len(meta["data"]["mean"]) == 1 and Path(meta["data"]["store"]).exists()
    assert meta["dataset"]["size"] == 16 and meta["train"]["batch_size"] == 8 and "sciencegen" in meta["code"]
    x = torch.randn(2, 1, 16, 16)
    assert model(x, torch.tensor([0.5, 1.0])).shape == x.shape

    # the same bounds again: nothing to do
    again = run_train(config(a, data_root, "train.max_steps=8", *common))
    assert again["trained"] is False and again["stopped"] == "done" and again["step"] == 8


def test_figures_validation_and_summary(tmp_path, data_root, caplog):
    caplog.set_level(logging.INFO, logger="sciencegen")
    run = tmp_path / "run"
    out = run_train(config(run, data_root, "train.max_steps=3", "train.figure_members=4", "train.figure_steps=4",
                           "train.holdout=0.25", "train.val_every=3", "train.val_batches=2"))
    assert out["trained"] and out["figure"] and Path(out["figure"]).stat().st_size > 1000
    assert Path(out["checkpoint"]) == list_checkpoints(run)[-1] and out["parameters"] > 0
    last = rows(run)[-1]
    assert math.isfinite(float(last["val_loss"])) and math.isfinite(float(last["val_loss_raw"]))
    assert math.isfinite(float(last["spec_err"]))  # the grf law is exact: the figure's spectral error
    assert out["val_loss"] == pytest.approx(float(last["val_loss"]), rel=1e-5)
    text = caplog.text
    assert "3 steps this run" in text and "checkpoint" in text


def test_oracle_has_nothing_to_train(tmp_path, data_root, caplog):
    caplog.set_level(logging.INFO, logger="sciencegen")
    out = run_train(config(tmp_path, data_root, "model=oracle"))
    assert out["trained"] is False and out["stopped"] == "nothing to train"
    assert "nothing to train" in caplog.text
    model = B.build_model({"_target_": "sciencegen.pipelines.train.oracle_denoiser"},  # an old path still builds
                          {"_target_": "sciencegen.physics.datasets.GRFSource", "size": 8, "samples": 4})
    assert model(torch.zeros(1, 1, 8, 8), torch.ones(1)).shape == (1, 1, 8, 8)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, match", [
    (["model.in_channels=3"], r"model.in_channels=3 but the data have 1 channel"),
    (["model.out_channels=2"], r"model.out_channels=2 but a denoiser outputs the field"),
    (["train.max_steps=null"], r"set train.max_steps or train.max_minutes"),
    (["train.precision=bf16", "train.device=cpu"], r"bf16 needs a GPU"),
    (["+train.learning_rate=1"], r"unknown key\(s\) \['learning_rate'\]"),
    (["train.lr=-1"], r"train.lr must be a number > 0"),
    (["model.preset=huge"], r"model.preset=huge: unknown UNet preset"),
])
def test_bad_config(tmp_path, data_root, overrides, match):
    with pytest.raises(TrainError, match=match):
        run_train(config(tmp_path, data_root, *overrides))


def test_run_dir_required(data_root):
    with pytest.raises(TrainError, match="no run directory"):
        run_train(config("null", data_root))


def test_checkpoint_of_another_model_or_dataset(tmp_path, data_root):
    run_train(config(tmp_path, data_root, "train.max_steps=1", "train.ckpt_every_steps=1"))
    with pytest.raises(TrainError, match=r"was trained for model .*first difference: model.channels: 16 vs 8"):
        run_train(config(tmp_path, data_root, "train.max_steps=2", "model.channels=8"))
    with pytest.raises(TrainError, match=r"was trained for dataset .*dataset.seed: 0 vs 1"):
        run_train(config(tmp_path, data_root, "train.max_steps=2", "dataset.seed=1"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000001.pt"]


def test_damaged_checkpoints_are_skipped_or_refused(tmp_path, data_root):
    run_train(config(tmp_path, data_root, "train.max_steps=3"))
    newest = list_checkpoints(tmp_path)[-1]
    (newest.parent / "step_000000009.pt").write_bytes(b"garbage")  # e.g. a file copied half-way
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        out = run_train(config(tmp_path, data_root, "train.max_steps=5"))
    assert out["start_step"] == 3 and out["step"] == 5
    for p in list_checkpoints(tmp_path):
        p.write_bytes(b"garbage")
    with pytest.raises(TrainError, match="no valid checkpoint"), pytest.warns(UserWarning, match="skipping"):
        run_train(config(tmp_path, data_root, "train.max_steps=6"))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    real = L.denoising_loss
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        loss = real(*args, **kw)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(L, "denoising_loss", poisoned)
    with pytest.raises(TrainError, match=r"loss became nan at step 5 .*last good checkpoint is .*step_000000003\.pt"):
        run_train(config(tmp_path, data_root, "train.max_steps=10"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000003.pt"]
    good = state(tmp_path)
    assert all(torch.isfinite(v).all() for v in good["model"].values())
    assert rows(tmp_path)[-1]["loss"] == "nan"
    monkeypatch.setattr(L, "denoising_loss", real)  # the rerun resumes from the good checkpoint
    out = run_train(config(tmp_path, data_root, "train.max_steps=6"))
    assert out["start_step"] == 3 and [int(r["step"]) for r in rows(tmp_path)] == list(range(1, 7))


def test_huge_lr_is_caught(tmp_path, data_root):
    with pytest.raises(TrainError, match=r"loss became (nan|inf)"):
        run_train(config(tmp_path, data_root, "train.max_steps=40", "train.lr=1e12", "train.warmup_steps=0",
                         "train.grad_clip=0", "train.ckpt_every_steps=0"))
    assert list_checkpoints(tmp_path) == []


# ----------------------------------------------------------------------------------------------- processes


def test_kill9_then_rerun_resumes(tmp_path, data_root):
    """SIGKILL the CLI after a checkpoint exists; the rerun resumes from the newest valid one."""
    over = [*SMALL, f"data_root={data_root}", "train.max_steps=100000", "train.ckpt_every_steps=2"]
    run_train(config(tmp_path / "warm", data_root, "train.max_steps=1"))  # the store exists before the CLI starts
    proc = subprocess.Popen([sys.executable, "-c", CLI, *over, f"hydra.run.dir={tmp_path}"], env=env1(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(tmp_path):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        time.sleep(0.3)  # somewhere in the next steps (possibly inside a checkpoint write)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    newest = load_checkpoint(tmp_path)[0]
    saved = int(newest.stem.split("_")[1])
    out = run_train(config(tmp_path, data_root, f"train.max_steps={saved + 2}"))
    assert out["resumed_from"] == str(newest) and out["start_step"] == saved
    assert [int(r["step"]) for r in rows(tmp_path)] == list(range(1, saved + 3))
    for p in list_checkpoints(tmp_path):  # every final file is complete; no temporary file is left
        load_checkpoint(p)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_match_one_process(tmp_path, data_root):
    """2 gloo ranks x 4 samples == 1 process x 8 samples, step for step.

    The same samples per step: holdout 0 and no shuffle; chunks of 4 = the per-rank batch, so with two ranks
    rank r reads chunks r, r+2, r+4, ... and its k-th batch is chunk 2k + r: the two rank batches are the two
    halves of the single process's k-th batch (8 consecutive samples) in rank order. σ and noise are drawn per
    global sample position (rank x 4 + i), so both runs add the same noise; DDP averages the two half-batch
    gradients = the gradient of the full-batch mean. Dropout is 0 (tiny preset). Both runs start from the same
    weights (seeded; DDP also broadcasts rank 0's).
    """
    over = ["dataset.chunk=4", "train.holdout=0", "train.shuffle=false", "train.max_steps=4", "train.batch_size=8",
            "train.ckpt_every_steps=0", "train.lr=5e-3", "train.warmup_steps=0"]
    single = tmp_path / "single"
    run_train(config(single, data_root, *over))  # also prepares the store before the ranks start
    ddp = tmp_path / "ddp"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**env1(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", CLI, *SMALL, f"data_root={data_root}", *over,
                                       "train.device=cpu", f"hydra.run.dir={ddp}"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "on 2 rank(s)" in outs[0]
    s1, s2 = state(single), state(ddp)
    assert s2["world_size"] == 2 and s1["step"] == s2["step"] == 4
    # float tolerance: the two gradient sums differ by rounding; AdamW divides by sqrt(v), so a component
    # near zero can move by a small fraction of lr. Compare with the change training made (>= 1000x larger).
    torch.manual_seed(0)
    init = B.build_model(load_checkpoint(single)[1]["meta"]["model"]).state_dict()
    for key in ("model", "ema"):
        assert_same(s1[key], s2[key], rtol=1e-3, atol=2e-5)
        diff = max(float((s1[key][k] - s2[key][k]).abs().max()) for k in init)
        moved = max(float((s1[key][k] - init[k]).abs().max()) for k in init)
        assert diff < 1e-3 * moved, (key, diff, moved)
    for r1, r2 in zip(rows(single), rows(ddp), strict=True):
        assert float(r1["loss"]) == pytest.approx(float(r2["loss"]), rel=1e-5)
    assert not (ddp / "checkpoints" / "step_000000004.pt.tmp").exists()


def test_save_checkpoint_meta_roundtrip(tmp_path):
    """A hand-written checkpoint with the meta layout rebuilds through load_model (generation's path)."""
    meta_model = B.resolve_model_config({"_target_": "sciencegen.models.build.edm_unet", "name": "unet",
                                         "preset": "tiny", "in_channels": None, "periodic": None},
                                        channels=2, field_dims=("y", "x"), field_shape=(8, 8),
                                        periodic={"y": True, "x": True})
    net = B.build_model(meta_model)
    save_checkpoint(tmp_path, 7, {"model": net.state_dict(), "ema": net.state_dict()},
                    meta={"model": meta_model, "data": {"mean": [0.0, 1.0], "std": [1.0, 2.0]}})
    model, meta = load_model(tmp_path / "checkpoints" / "step_000000007.pt")
    assert meta["step"] == 7 and model.net.in_channels == 2
    with pytest.raises(TrainError, match="no checkpoint file or directory"):
        load_model(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------- moved code


def test_is_oracle_is_decided_one_way():
    assert B.is_oracle({"_target_": "sciencegen.models.build.oracle_denoiser"})
    assert B.is_oracle({"_target_": "sciencegen.pipelines.train.oracle_denoiser"})  # recorded by old checkpoints
    assert B.is_oracle({"name": "oracle", "_target_": "my.own.exact_law"})
    assert not B.is_oracle({"name": "unet", "_target_": "sciencegen.models.build.edm_unet"})
    assert not B.is_oracle({})


def test_checkpoints_with_the_old_target_path_load_and_resume(tmp_path, data_root):
    """Checkpoints written before the builders moved record ``sciencegen.pipelines.train.edm_unet``."""
    run_train(config(tmp_path, data_root, "train.max_steps=2", "train.ckpt_every_steps=2"))
    path, ckpt = load_checkpoint(tmp_path)
    assert ckpt["meta"]["model"]["_target_"] == "sciencegen.models.build.edm_unet"
    old = {**ckpt["meta"], "model": {**ckpt["meta"]["model"], "_target_": "sciencegen.pipelines.train.edm_unet"}}
    path.unlink()
    path.with_suffix(".json").unlink(missing_ok=True)
    save_checkpoint(tmp_path, 2, ckpt["state"], meta=old)
    model, meta = load_model(tmp_path)
    assert meta["model"]["_target_"] == "sciencegen.pipelines.train.edm_unet" and meta["step"] == 2
    assert_same(model.state_dict(), ckpt["state"]["ema"], rtol=0, atol=0)
    out = run_train(config(tmp_path, data_root, "train.max_steps=3"))  # resuming compares the model configs
    assert out["start_step"] == 2 and out["step"] == 3


def test_a_partial_train_config_is_refused(tmp_path):
    cfg = {"train": {"max_steps": 3}, "model": {}, "dataset": {}, "run_dir": str(tmp_path)}
    with pytest.raises(TrainError, match=r"train: missing key\(s\) \['max_minutes', 'batch_size'.*compose the shipped"):
        run_train(cfg)


def test_tensorboard_without_the_package_warns_once(tmp_path, data_root, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without tensorboard
    caplog.set_level(logging.INFO, logger="sciencegen")
    out = run_train(config(tmp_path, data_root, "train.max_steps=3", "train.tensorboard=true"))
    assert out["trained"] and out["step"] == 3 and len(rows(tmp_path)) == 3
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "tensorboard" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "not installed" in warned[0].getMessage() and "pip install 'sciencegen[tensorboard]'" in \
        warned[0].getMessage()
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_with_the_package_writes_event_files(tmp_path, data_root):
    pytest.importorskip("tensorboard")
    out = run_train(config(tmp_path, data_root, "train.max_steps=3", "train.tensorboard=true"))
    assert out["step"] == 3
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
