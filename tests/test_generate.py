"""Tests of ``sciencegen-generate`` (:mod:`sciencegen.pipelines.generate`): the Zarr contract, determinism
across batch sizes, shards and kills, concurrent shards, two gloo ranks, a trained checkpoint, bad input.

Real stores on disk, real subprocesses (the console script), real ``kill -9``, a real Dask client and real
``torch.distributed`` (gloo) ranks. The truth is :func:`sciencegen.sample` itself: member ``i`` of a store
must be bitwise the member ``i`` that the sampler draws for ``(seed, i)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir

import sciencegen
from sciencegen.config import config_dir, register
from sciencegen.models import Oracle
from sciencegen.pipelines import generate as G
from sciencegen.pipelines.generate import GenerateError, completed_members, parse_shard, run_generate
from sciencegen.targets import GaussianRandomField

SMALL = ["dataset=grf", "dataset.size=16", "dataset.samples=64", "model=oracle", "sampler=picard_sde",
         "sampler.steps=48", "generate.members=12", "generate.batch_size=4", "generate.progress=false",
         "generate.threads=1"]
CLI = "from sciencegen.cli import generate; generate()"


def config(*overrides: str):
    register()
    base = SMALL
    if any(o.startswith("dataset=") for o in overrides):  # another dataset: drop the grf keys
        base = [o for o in SMALL if not o.startswith("dataset")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("generate", overrides=[*base, *overrides])


def env1() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_ARRAY_TASK_ID",
              "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        env.pop(k, None)
    return env


def cli(cwd: Path, *overrides: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *SMALL, *overrides], cwd=cwd, env=env1(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def field(path) -> np.ndarray:
    with xr.open_zarr(path) as ds:
        return ds["field"].values


def chunk_bytes(path: Path) -> dict[str, bytes]:
    """Every chunk file of the store (metadata aside: it holds the creation time)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    summary = run_generate(config(f"output.path={path}"))
    assert summary["done"] == 12 and summary["complete"] == 12
    return path


# ------------------------------------------------------------------------------------------- pure helpers


def test_parse_shard():
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    # --array=1-4: ids 1..4, relative to the minimum
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                              "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)
    assert parse_shard("1/2", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == (1, 2)
    for bad in ("3/2", "2/2", "-1/2", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(GenerateError, match="generate.shard"):
            parse_shard(bad, {})


@pytest.mark.parametrize("n_chunks", [1, 5, 7, 64])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_partition_the_chunks(n_chunks, count):
    owned = [list(G.shard_chunks(n_chunks, i, count)) for i in range(count)]
    flat = [c for o in owned for c in o]
    assert flat == list(range(n_chunks))  # contiguous, disjoint, complete
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    assert G.chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


# ------------------------------------------------------------------------------------------- the contract


def test_store_contract_and_truth(reference):
    # opens with plain xarray, without importing sciencegen
    code = ("import sys, json, xarray as xr; ds = xr.open_zarr(sys.argv[1]); "
            "assert 'sciencegen' not in sys.modules; "
            "print(json.dumps({'dims': dict(ds.sizes), 'vars': sorted(ds.data_vars), "
            "'dtype': str(ds.field.dtype), 'chunks': ds.field.encoding['chunks'], 'units': ds.field.attrs['units'],"
            " 'conv': ds.attrs['Conventions'], 'member': dict(ds.member.attrs)}))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(reference)], env=env1(),
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"dims": {"member": 12, "y": 16, "x": 16}, "vars": ["complete", "field", "nfe", "rounds"],
                   "dtype": "float32", "chunks": [4, 16, 16], "units": "1", "conv": "CF-1.10",
                   "member": {"standard_name": "realization",
                              "long_name": "ensemble member (depends only on seed, index)"}}
    ds = xr.open_zarr(reference)
    np.testing.assert_array_equal(ds["y"].values, np.arange(16) / 16)
    assert ds["field"].dims == ("member", "y", "x")
    assert bool(ds["complete"].all())
    assert (ds["rounds"].values > 0).all() and (ds["nfe"].values >= 48).all()
    meta = json.loads(ds.attrs[G.ATTR])
    assert meta["identity"]["sampler"] == {"name": "picard_sde", "steps": 48, "options": {}}
    assert meta["identity"]["seed"] == 0 and meta["chunk"] == 4
    assert ds.attrs["sampler"] == "picard_sde" and json.loads(ds.attrs["sampler_options"])["blocks"] == 4
    assert json.loads(ds.attrs["config"])["generate"]["members"] == 12
    # the truth: the sampler's own members (seed, i), cast to float32
    res = sciencegen.sample(Oracle(GaussianRandomField(16)), (1, 16, 16), 12, "picard_sde", 48, seed=0,
                            noise_stream="counter")  # a new store's noise stream
    np.testing.assert_array_equal(ds["field"].values, res.samples[:, 0].numpy().astype(np.float32))
    np.testing.assert_array_equal(ds["nfe"].values, res.stats["nfe_per_member"].numpy())


def test_batch_size_and_shards_are_bitwise_equal(reference, tmp_path):
    ref = field(reference)
    a = tmp_path / "a.zarr"
    run_generate(config(f"output.path={a}", "generate.batch_size=3", "output.chunk=6"))
    np.testing.assert_array_equal(field(a), ref)
    b = tmp_path / "b.zarr"
    s0 = run_generate(config(f"output.path={b}", "generate.shard=0/3"))
    flags = completed_members(b)
    assert s0["done"] == 4 and flags.tolist() == [True] * 4 + [False] * 8
    assert np.isnan(field(b)[4:]).all()  # members nobody wrote read as NaN, never as zeros
    for i in (2, 1):
        run_generate(config(f"output.path={b}", f"generate.shard={i}/3"))
    np.testing.assert_array_equal(field(b), ref)
    # a rerun skips everything; another batch size keeps the store's chunks
    s = run_generate(config(f"output.path={b}", "generate.batch_size=5"))
    assert s["done"] == 0 and s["skipped"] == 12 and s["complete"] == 12


def test_other_config_is_refused_or_overwritten(reference, tmp_path):
    p = tmp_path / "s.zarr"
    shutil.copytree(reference, p)
    for override, what in (("generate.seed=1", "seed"), ("sampler=sequential_sde", "sampler.name"),
                           ("dataset.slope=2.0", "dataset.slope"), ("generate.members=13", "members"),
                           ("sampler.tol=0.05", "sampler.options.tol")):
        with pytest.raises(GenerateError, match=rf"another config \({what}"):
            run_generate(config(f"output.path={p}", override))
    s = run_generate(config(f"output.path={p}", "generate.seed=1", "output.overwrite=true"))
    assert s["done"] == 12
    assert not np.array_equal(field(p), field(reference))


def test_netcdf_export(reference, tmp_path):
    p, nc = tmp_path / "s.zarr", tmp_path / "s.nc"
    shutil.copytree(reference, p)
    run_generate(config(f"output.path={p}", f"output.netcdf={nc}"))
    with xr.open_dataset(nc) as ds:
        np.testing.assert_array_equal(ds["field"].values, field(reference))
        assert ds.attrs["Conventions"] == "CF-1.10"
        assert ds["member"].attrs["standard_name"] == "realization" and "units" not in ds["member"].attrs


def test_writes_through_a_running_dask_client(reference, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster, get_worker

    log, real = tmp_path / "writes.log", G.write_chunk

    def spy(*args):  # tasks are serialised: report through a file
        with open(log, "a") as f:
            f.write(get_worker().address + "\n")  # raises outside a Dask worker
        return real(*args)

    monkeypatch.setattr(G, "write_chunk", spy)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc):
        p = tmp_path / "d.zarr"
        run_generate(config(f"output.path={p}"))
    assert len(log.read_text().split()) == 3  # one write per chunk, each on the cluster's worker
    np.testing.assert_array_equal(field(p), field(reference))


def test_failure_leaves_no_member_claiming_completion(reference, tmp_path, monkeypatch):
    calls = []
    real = sciencegen.samplers.api.sample

    def flaky(*args, **kw):
        calls.append(kw["first_member"])
        res = real(*args, **kw)
        if len(calls) == 2:
            res.samples[0, 0, 0, 0] = float("nan")
        return res

    monkeypatch.setattr(sciencegen.samplers.api, "sample", flaky)
    p = tmp_path / "f.zarr"
    with pytest.raises(GenerateError, match="members 4..7: 1 sample"):
        run_generate(config(f"output.path={p}"))
    assert completed_members(p).tolist() == [True] * 4 + [False] * 8
    monkeypatch.setattr(sciencegen.samplers.api, "sample", real)
    s = run_generate(config(f"output.path={p}"))
    assert s["done"] == 8
    np.testing.assert_array_equal(field(p), field(reference))


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, match", [
    (["generate.members=0"], "generate.members must be an integer >= 1"),
    (["generate.batch_size=0"], "generate.batch_size must be"),
    (["generate.shard=3/2"], "generate.shard=3/2"),
    (["sampler.name=picardd"], "unknown sampler 'picardd'"),
    (["sampler.window=0"], "window must be an integer >= 1"),
    (["sampler=sequential_sde", "sampler.tol=0.1"], "unknown option"),
    (["model=unet"], "model=unet needs model.checkpoint"),
    (["model=unet", "model.checkpoint=/nonexistent/run"], "no such file"),
    (["dataset=kolmogorov", "dataset.trajectories=1"], "model=oracle needs a dataset with an exact law"),
])
def test_bad_input(tmp_path, overrides, match):
    p = tmp_path / "x.zarr"
    with pytest.raises((GenerateError, ValueError), match=match):
        run_generate(config(f"output.path={p}", *overrides))
    assert not p.exists()


def test_bad_output_paths(tmp_path):
    f = tmp_path / "file.zarr"
    f.write_text("x")
    with pytest.raises(GenerateError, match="is a file"):
        run_generate(config(f"output.path={f}"))
    d = tmp_path / "dir"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(GenerateError, match="non-empty directory that is not a Zarr store"):
        run_generate(config(f"output.path={d}"))
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(foreign)
    for overwrite in ("false", "true"):
        with pytest.raises(GenerateError, match="not written by sciencegen-generate"):
            run_generate(config(f"output.path={foreign}", f"output.overwrite={overwrite}"))
    assert (d / "notes.txt").exists() and xr.open_zarr(foreign)["a"].values.tolist() == [0, 1, 2]
    with pytest.raises(GenerateError, match="cannot"):
        run_generate(config("output.path=/proc/sciencegen-test.zarr"))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(GenerateError, match="not writable|permission denied"):
            run_generate(config(f"output.path={ro / 's.zarr'}"))


def test_cli_errors_are_one_line(tmp_path):
    for args, match in ((["sampler=picardd"], "picardd"), (["sampler.stepz=10"], "stepz"),
                        (["sampler.steps=ten"], "steps"), (["generate.shard=3/2"], "generate.shard=3/2")):
        proc = cli(tmp_path, f"output.path={tmp_path / 'e.zarr'}", *args)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0, out
        assert match in out, out
        assert "Traceback" not in out, out
    assert not (tmp_path / "e.zarr").exists()


# ------------------------------------------------------------------------------------------- a trained model


def train_tiny(tmp_path: Path, steps: int) -> Path:
    """A tiny U-Net trained for ``steps`` steps on grf 16²; its run directory."""
    from sciencegen.pipelines.train import run_train

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        tcfg = compose("train", overrides=[
            "dataset=grf", "dataset.size=16", "dataset.samples=64", "dataset.chunk=32", "model=unet",
            f"train.max_steps={steps}", "train.batch_size=4", "train.val_every=0", "train.figure_members=0",
            "train.progress=false", "train.threads=1", "train.tensorboard=false", "train.warmup_steps=1",
            f"run_dir={tmp_path / 'run'}", f"data_root={tmp_path / 'data'}"])
    run_train(tcfg)
    return tmp_path / "run"


def test_trained_checkpoint(tmp_path):
    from sciencegen.models.build import load_model

    train_tiny(tmp_path, 2)
    p = tmp_path / "s.zarr"
    over = ["model=unet", f"model.checkpoint={tmp_path / 'run'}", "sampler=picard_dpm2m", "sampler.steps=8",
            "generate.members=3", "generate.batch_size=2", f"output.path={p}"]
    run_generate(config(*over))
    model, meta = load_model(tmp_path / "run")
    res = sciencegen.sample(model, (1, 16, 16), 3, "picard_dpm2m", 8, seed=0, batch_size=2, noise_stream="counter")
    mean, std = meta["data"]["mean"][0], meta["data"]["std"][0]
    want = (res.samples[:, 0].double().numpy() * std + mean).astype(np.float32)
    np.testing.assert_allclose(field(p), want, rtol=1e-6, atol=1e-6 * std)
    ident = json.loads(xr.open_zarr(p).attrs[G.ATTR])["identity"]["model"]
    assert ident["step"] == 2 and len(ident["sha256"]) == 16
    with pytest.raises(GenerateError, match=r"trained on grf with variables \['field'\] on \{'y': 16, 'x': 16\}"):
        run_generate(config(*over, "dataset.size=32", f"output.path={tmp_path / 't.zarr'}"))


# ------------------------------------------------------------------------------------------- real processes


def test_kill9_then_rerun_equals_uninterrupted(tmp_path):
    over = ["generate.members=24", "generate.batch_size=2", "sampler.steps=200", f"output.path={tmp_path / 'k.zarr'}"]
    ref = tmp_path / "ref.zarr"
    run_generate(config(*over[:-1], f"output.path={ref}"))
    k = random.Random(os.getpid()).randint(1, 9)  # kill after a random number of finished chunks
    proc = cli(tmp_path, *over)
    deadline = time.time() + 240
    while time.time() < deadline:
        p = tmp_path / "k.zarr"
        if p.exists():
            with _quiet():
                done = int(completed_members(p).sum())
            if done >= 2 * k:
                break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    before = int(completed_members(tmp_path / "k.zarr").sum())
    assert 0 < before < 24, before
    proc = cli(tmp_path, *over)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"{before} already written" in out
    assert completed_members(tmp_path / "k.zarr").all()
    np.testing.assert_array_equal(field(tmp_path / "k.zarr"), field(ref))
    assert not list(tmp_path.glob(".k.zarr.tmp-*"))


def test_four_concurrent_shards_make_the_same_bytes(reference, tmp_path):
    p = tmp_path / "c.zarr"
    procs = [cli(tmp_path, f"output.path={p}", f"generate.shard={i}/4", "output.chunk=3") for i in range(4)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    one = tmp_path / "one.zarr"
    run_generate(config(f"output.path={one}", "output.chunk=3"))
    assert chunk_bytes(p) == chunk_bytes(one)
    np.testing.assert_array_equal(field(p), field(reference))


def test_two_gloo_ranks_equal_one_process(reference, tmp_path):
    p = tmp_path / "t.zarr"
    script = shutil.which("sciencegen-generate")
    if script is None:
        pytest.skip("the console script is not installed")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *SMALL,
           "generate.device=cpu", f"output.path={p}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env1(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    np.testing.assert_allclose(field(p), field(reference), rtol=0, atol=1e-5)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_split_denoiser_slices():
    from sciencegen.samplers.distributed import split_slices

    assert split_slices(5, 2) == [(0, 3), (3, 6)]
    assert split_slices(1, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_every_sampler_has_a_config_and_back():

    from hydra.utils import instantiate

    from sciencegen.config import sampler_options
    from sciencegen.samplers import SAMPLERS, Sampler

    names = {p.name[:-5] for p in config_dir().joinpath("sampler").iterdir() if p.name.endswith(".yaml")}
    assert names == set(SAMPLERS)
    for name in SAMPLERS:
        cfg = config(f"sampler={name}")
        assert cfg.sampler.name == name and sampler_options(cfg.sampler) == {}
        sampler = instantiate(cfg.sampler)
        assert isinstance(sampler, Sampler) and sampler.name == name and sampler.options == {}
    custom = instantiate(config("sampler=picard_sde", "sampler.tol=0.01", "sampler.steps=10").sampler)
    assert custom.options == {"tol": 0.01} and custom.resolved["blocks"] == 4 and custom.steps == 10
    res = custom(Oracle(GaussianRandomField(8)), (1, 8, 8), 2, seed=3)
    ref = sciencegen.sample(Oracle(GaussianRandomField(8)), (1, 8, 8), 2, "picard_sde", 10, seed=3, tol=0.01)
    assert torch.equal(res.samples, ref.samples)


def test_sde_noise_range_reaches_the_sampler(reference, tmp_path):
    p = tmp_path / "s.zarr"
    run_generate(config(f"output.path={p}", "sde.sigma_max=40.0"))
    meta = json.loads(xr.open_zarr(p).attrs[G.ATTR])
    assert meta["identity"]["sampler"]["options"] == {"sigma_max": 40.0}
    res = sciencegen.sample(Oracle(GaussianRandomField(16)), (1, 16, 16), 12, "picard_sde", 48, seed=0,
                            sigma_max=40.0, noise_stream="counter")
    np.testing.assert_array_equal(field(p), res.samples[:, 0].numpy().astype(np.float32))
    with pytest.raises(GenerateError, match="another config"):  # the default range is another ensemble
        run_generate(config(f"output.path={p}"))
