"""Tests of conditional ensembles from ``sciencegen-generate`` (issue 15): the store of docs/generate.md
("Conditional ensembles"), held-out conditions with their truth, a user's condition file, forecast rollouts,
trained and exact models, and the determinism guarantees (kill -9, shards, batch) of unconditional stores.

Real prepared datasets, real stores, real subprocesses and a real ``kill -9``. The truths are independent of the
generation code: the held-out samples are computed from the chunk split by hand, the inputs from the truth
(block means written here), the members from :func:`sciencegen.sample` called directly with the seed
``condition_seed(seed, c, lead)`` and the condition the member should have seen.
"""

from __future__ import annotations

import json
import os
import random
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
from sciencegen.data.ensemble import completed_members, read_conditioning
from sciencegen.data.prepare import dataset_config, default_store_path
from sciencegen.generation.conditions import evenly_spread
from sciencegen.generation.plan import Plan, shard_chunks
from sciencegen.models.build import oracle_denoiser
from sciencegen.pipelines.generate import GenerateError, run_generate
from sciencegen.samplers.noise import condition_seed

GRF = ["dataset=grf", "dataset.size=16", "dataset.samples=64", "dataset.chunk=8", "sampler=picard_sde",
       "sampler.steps=24", "generate.progress=false", "generate.threads=1"]
COARSE = [*GRF, "+conditioning=coarse", "model=oracle", "generate.members=4", "generate.batch_size=2",
          "generate.conditions=3"]
# AR(1) trajectories: 8 of 4 steps -> 3 (input, target) pairs each; 2 trajectories per chunk, the last chunk held out
STATE = ["dataset=grf", "dataset.size=16", "dataset.samples=8", "dataset.ar=0.8", "dataset.length=4",
         "dataset.chunk=8", "+conditioning=[state,static]", "model=oracle", "sampler=picard_sde", "sampler.steps=24",
         "generate.members=2", "generate.batch_size=2", "generate.conditions=6", "generate.lead_times=3",
         "generate.progress=false", "generate.threads=1"]
CLI = "from sciencegen.cli import generate; generate()"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def config(base: list[str], root: Path, *overrides: str):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("generate", overrides=[*base, f"data_root={root}", *overrides])


def prepared(cfg) -> xr.Dataset:
    return xr.open_zarr(default_store_path(cfg.dataset, cfg.data_root))


def env1() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        env.pop(k, None)
    return env


def chunk_bytes(path: Path) -> dict[str, bytes]:
    """Every chunk file of the store (metadata aside: it holds the creation time)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def block_means(x: np.ndarray, f: int) -> np.ndarray:
    """Mean over non-overlapping f x f blocks of the last two axes, repeated back to the grid (the definition)."""
    *lead, ny, nx = x.shape
    m = x.astype(np.float64).reshape(*lead, ny // f, f, nx // f, f).mean(axis=(-3, -1))
    return np.repeat(np.repeat(m, f, axis=-2), f, axis=-1)


@pytest.fixture(scope="module")
def coarse(root, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("coarse") / "c.zarr"
    s = run_generate(config(COARSE, root, f"output.path={path}"))
    assert (s["conditions"], s["members"], s["total"], s["complete"]) == (3, 4, 12, 12)
    return path


# ------------------------------------------------------------------------------------------- pure helpers


def test_evenly_spread_prefixes_are_stable_and_spread():
    for n in range(1, 70):
        full = evenly_spread(n, n)
        assert sorted(full.tolist()) == list(range(n))
        for count in range(1, n):
            assert evenly_spread(n, count).tolist() == full[:count].tolist()
    assert evenly_spread(8, 8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    assert evenly_spread(16, 4).tolist() == [0, 8, 4, 12]


def test_units_are_condition_major_and_shards_split_them():
    p = Plan(None, 5, 2, [(0, 2), (2, 4), (4, 5)], [], [], conditions=2)
    assert p.units == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 4), (1, 4, 5)]
    assert [list(shard_chunks(len(p.units), i, 2)) for i in range(2)] == [[0, 1, 2], [3, 4, 5]]
    assert (p.shape, p.total) == ((2, 5), 10)
    flags = np.zeros((2, 5), bool)
    flags[1, 2:4] = True
    assert [bool(p.flags(flags, k).all()) for k in range(6)] == [False] * 4 + [True, False]


# ------------------------------------------------------------------------------------------- the store


def test_layout_inputs_truth_and_members(coarse, root):
    cfg = config(COARSE, root)
    code = ("import sys, xarray as xr; ds = xr.open_zarr(sys.argv[1]); assert 'sciencegen' not in sys.modules; "
            "print(dict(ds.sizes), sorted(ds.data_vars))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(coarse)], env=env1(), capture_output=True,
                         text=True, check=True)
    assert out.stdout.split("}")[0] + "}" == "{'condition': 3, 'member': 4, 'y': 16, 'x': 16}"
    ds = xr.open_zarr(coarse)
    assert sorted(ds.data_vars) == ["complete", "field", "input_field_coarse", "nfe", "rounds", "truth_field"]
    assert ds["field"].dims == ("condition", "member", "y", "x") and ds["field"].dtype == np.float32
    assert ds["truth_field"].dims == ds["input_field_coarse"].dims == ("condition", "y", "x")
    assert ds["complete"].dims == ds["rounds"].dims == ("condition", "member")
    assert ds["field"].encoding["chunks"] == (1, 2, 16, 16) and ds["truth_field"].encoding["chunks"] == (1, 16, 16)
    assert "condition" in ds.indexes and "sample" not in ds.indexes
    np.testing.assert_array_equal(ds["condition"].values, [0, 1, 2])
    # held out: the last ceil(0.1 * 8) chunk of 8 samples = 56..63; van der Corput order 0, 4, 2 of them
    assert ds["sample"].dims == ("condition",)
    np.testing.assert_array_equal(ds["sample"].values, [56, 60, 58])
    assert completed_members(coarse).shape == (3, 4) and completed_members(coarse).all()
    desc = read_conditioning(coarse)
    assert desc == json.loads(ds.attrs["sciencegen_conditioning"])
    assert (desc["source"], desc["holdout"], desc["lead_times"], desc["state"]) == ("heldout", 0.1, None, None)
    assert list(desc["inputs"]) == ["input_field_coarse"] and desc["kinds"]["coarse"]["factor"] == 4
    # truth = the held-out targets; inputs = their 4 x 4 block means, as the prepared store holds them
    src = prepared(cfg)
    truth = src["field"].isel(sample=[56, 60, 58]).values
    np.testing.assert_array_equal(ds["truth_field"].values, truth)
    np.testing.assert_array_equal(ds["input_field_coarse"].values, src["input_field_coarse"].isel(sample=[56, 60, 58]))
    np.testing.assert_allclose(ds["input_field_coarse"].values, block_means(truth, 4), rtol=0, atol=1e-6)
    # members: the sampler's own members (seed, c, i) given the physical condition (the exact oracle)
    oracle = oracle_denoiser(dataset_config(cfg.dataset))
    for c in range(3):
        cond = torch.from_numpy(ds["input_field_coarse"].values[c][None].astype(np.float64))
        res = sciencegen.sample(oracle, (1, 16, 16), 4, "picard_sde", 24, seed=condition_seed(0, c), batch_size=2,
                                cond=cond, noise_stream="counter")
        np.testing.assert_array_equal(ds["field"].values[c], res.samples[:, 0].numpy().astype(np.float32))
        np.testing.assert_array_equal(ds["nfe"].values[c], res.stats["nfe_per_member"].numpy())
    # the posterior respects the condition: every member has the input's block means (to sampling accuracy)
    resid = block_means(ds["field"].values, 4) - ds["input_field_coarse"].values[:, None]
    assert np.abs(resid).max() < 0.05 * float(ds["truth_field"].std())


def test_member_depends_only_on_seed_condition_and_index(coarse, root, tmp_path):
    ref = xr.open_zarr(coarse)["field"].values
    other = tmp_path / "o.zarr"
    run_generate(config(COARSE, root, "generate.conditions=2", "generate.members=6", f"output.path={other}"))
    ds = xr.open_zarr(other)
    np.testing.assert_array_equal(ds["sample"].values, [56, 60])
    np.testing.assert_array_equal(ds["field"].values[:, :4], ref[:2])  # same batch: bitwise
    batch = tmp_path / "b.zarr"
    run_generate(config(COARSE, root, "generate.batch_size=4", f"output.path={batch}"))
    np.testing.assert_allclose(xr.open_zarr(batch)["field"].values, ref, rtol=1e-5, atol=1e-5)
    seed = tmp_path / "s.zarr"
    run_generate(config(COARSE, root, "generate.seed=1", f"output.path={seed}"))
    assert not np.allclose(xr.open_zarr(seed)["field"].values, ref, atol=1e-2)
    assert not np.allclose(ref[0], ref[1], atol=1e-2)


def test_shards_over_conditions_fill_one_store(coarse, root, tmp_path):
    p = tmp_path / "sh.zarr"
    run_generate(config(COARSE, root, "generate.shard=0/3", f"output.path={p}"))
    flags = completed_members(p)
    assert flags[0].all() and not flags[1:].any()  # condition-major: shard 0 of 6 units owns condition 0
    for i in (2, 1):
        run_generate(config(COARSE, root, f"generate.shard={i}/3", f"output.path={p}"))
    assert chunk_bytes(p) == chunk_bytes(coarse)
    with pytest.raises(GenerateError, match=r"another config \(conditioning.conditions: 3 in the store, 2 now\)"):
        run_generate(config(COARSE, root, "generate.conditions=2", f"output.path={p}"))


def test_kill9_then_rerun_equals_uninterrupted(root, tmp_path):
    over = [*COARSE, "sampler.steps=100", "generate.conditions=4"]
    ref = tmp_path / "ref.zarr"
    run_generate(config(over, root, f"output.path={ref}"))  # also prepares the data first
    k = random.Random(os.getpid()).randint(1, 5)  # kill after a random number of finished chunks
    path = tmp_path / "k.zarr"
    cmd = [sys.executable, "-c", CLI, *over, f"data_root={root}", f"output.path={path}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (path / "zarr.json").exists():
            try:
                if int(completed_members(path, (4, 4)).sum()) >= 2 * k:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    before = int(completed_members(path).sum())
    assert 0 < before < 16, before
    out = subprocess.run(cmd, cwd=tmp_path, env=env1(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{before} already written" in out.stdout + out.stderr
    assert "4 conditions × 4 members" in out.stdout + out.stderr
    assert chunk_bytes(path) == chunk_bytes(ref)


def test_netcdf_export_and_verify_regenerates_a_lost_chunk(coarse, root, tmp_path):
    p, nc = tmp_path / "v.zarr", tmp_path / "v.nc"
    run_generate(config(COARSE, root, f"output.path={p}", f"output.netcdf={nc}"))
    with xr.open_dataset(nc) as ds:
        assert ds["field"].dims == ("condition", "member", "y", "x") and ds["sample"].dims == ("condition",)
        np.testing.assert_array_equal(ds["truth_field"].values, xr.open_zarr(coarse)["truth_field"].values)
        assert json.loads(ds.attrs["sciencegen_conditioning"])["source"] == "heldout"
    for name in ("field/c/1/1/0/0", "input_field_coarse/c/2/0/0"):
        (p / name).unlink()  # read back as NaN: no longer complete
    run_generate(config(COARSE, root, f"output.path={p}"))
    assert (p / "input_field_coarse/c/2/0/0").exists() is False  # trusted on a plain rerun
    run_generate(config(COARSE, root, f"output.path={p}", "generate.verify=true"))
    assert chunk_bytes(p) == chunk_bytes(coarse)


# ------------------------------------------------------------------------------------------- rollouts


def test_rollout_feeds_each_member_its_own_output(root, tmp_path):
    p = tmp_path / "r.zarr"
    cfg = config(STATE, root, f"output.path={p}")
    s = run_generate(cfg)
    assert (s["conditions"], s["lead_times"], s["complete"]) == (6, 3, 12)
    ds = xr.open_zarr(p)
    assert dict(ds.sizes) == {"condition": 6, "member": 2, "lead_time": 3, "y": 16, "x": 16}
    assert ds["field"].dims == ("condition", "member", "lead_time", "y", "x")
    assert ds["truth_field"].dims == ("condition", "lead_time", "y", "x")
    np.testing.assert_array_equal(ds["lead_time"].values, [1, 2, 3])
    assert ds["lead_time"].attrs["units"] == "steps of time" and ds["lead_time"].attrs["lag"] == 1
    src = prepared(cfg)
    assert dict(src.sizes)["time"] == 3
    # the 6 held-out pairs: trajectories 6, 7 x input times 0..2, in van der Corput order of their flat index
    flat = 18 + np.array([0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(ds["trajectory"].values, flat // 3)
    np.testing.assert_array_equal(ds["time"].values, flat % 3)
    nan = 0
    for c in range(6):
        tr, t = int(ds["trajectory"][c]), int(ds["time"][c])
        np.testing.assert_array_equal(ds["input_field"].values[c], src["input_field"].sel(trajectory=tr).values[t])
        for lead in (1, 2, 3):  # the field lead steps after t: the target of the pair (t + lead - 1), if any
            got = ds["truth_field"].values[c, lead - 1]
            if t + lead - 1 < 3:
                np.testing.assert_array_equal(got, src["field"].sel(trajectory=tr).values[t + lead - 1])
            else:
                assert np.isnan(got).all()
                nan += 1
    assert nan == 6  # per trajectory: t = 1 at lead 3, t = 2 at leads 2 and 3
    statics = list(read_conditioning(p)["static"])  # in channel order
    assert statics == ["static_sin_y", "static_cos_y", "static_sin_x", "static_cos_x"]
    static = np.stack([ds[f"input_{n}"].values for n in statics]).astype(np.float64)
    for n in statics:
        assert ds[f"input_{n}"].dims == ("y", "x")
        np.testing.assert_array_equal(ds[f"input_{n}"].values, src[n].values)
    oracle = oracle_denoiser(dataset_config(cfg.dataset))
    c = 0
    cond = np.concatenate([ds["input_field"].values[c][None].astype(np.float64), static])
    for lead in (1, 2, 3):
        res = sciencegen.sample(oracle, (1, 16, 16), 2, "picard_sde", 24, seed=condition_seed(0, c, lead),
                                batch_size=2, cond=torch.from_numpy(cond), noise_stream="counter")
        np.testing.assert_array_equal(ds["field"].values[c, :, lead - 1], res.samples[:, 0].numpy().astype(np.float32))
        # the next lead: each member's own output (as stored) in place of the state input, statics kept
        own = ds["field"].values[c, :, lead - 1].astype(np.float64)[:, None]
        cond = np.concatenate([own, np.broadcast_to(static, (2, *static.shape))], axis=1)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(root, tmp_path):
    one = tmp_path / "one.zarr"
    run_generate(config(STATE, root, f"output.path={one}"))
    script = tmp_path / "gen.py"
    script.write_text(CLI + "\n")
    p = tmp_path / "two.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *STATE,
           "generate.device=cpu", f"data_root={root}", f"output.path={p}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env1(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = xr.open_zarr(p), xr.open_zarr(one)
    np.testing.assert_allclose(a["field"].values, b["field"].values, rtol=0, atol=1e-5)
    for name in ("truth_field", "input_field", "input_static_sin_x"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_rollouts_are_refused_where_nothing_feeds_the_inputs(root, tmp_path):
    with pytest.raises(GenerateError, match="generate.lead_times=2: dataset grf cannot be rolled out") as e:
        run_generate(config(COARSE, root, "generate.lead_times=2", f"output.path={tmp_path / 'x.zarr'}"))
    assert "\n" not in str(e.value)
    with pytest.raises(GenerateError, match="generate.lead_times is set, but dataset grf has no conditioning"):
        run_generate(config(GRF, root, "model=oracle", "generate.lead_times=2", f"output.path={tmp_path / 'y.zarr'}"))
    with pytest.raises(GenerateError, match=r"generate.conditions=9, but the held-out split .* has 8 samples"):
        run_generate(config(COARSE, root, "generate.conditions=9", f"output.path={tmp_path / 'z.zarr'}"))


# ------------------------------------------------------------------------------------------- a user's file


def _write(path: Path, name: str, n: int, times: int = 2, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((times, n, n)).astype(np.float32)
    days = np.array(["2024-01-01", "2024-01-02", "2024-01-03"][:times], dtype="datetime64[ns]")
    ds = xr.Dataset({name: (("time", "y", "x"), values, {"units": "1"})},
                    coords={"time": days, "y": np.arange(n) / n, "x": np.arange(n) / n})
    ds.to_netcdf(path)
    return values


def test_condition_file_gives_the_inputs(coarse, root, tmp_path):
    f = tmp_path / "today.nc"
    fine = _write(f, "field", 16, times=3)
    p = tmp_path / "f.zarr"
    s = run_generate(config(COARSE, root, f"condition.path={f}", f"output.path={p}"))
    assert s["conditions"] == 3 and s["complete"] == 12
    ds = xr.open_zarr(p)
    assert not [v for v in ds.data_vars if str(v).startswith("truth_")]  # truth unknown
    np.testing.assert_array_equal(ds["time"].values, xr.open_dataset(f)["time"].values)
    np.testing.assert_allclose(ds["input_field_coarse"].values, block_means(fine, 4), rtol=0, atol=1e-6)
    desc = read_conditioning(p)
    assert desc["source"] == str(f.resolve()) and desc["holdout"] is None
    # members as the sampler draws them given the file's inputs
    oracle = oracle_denoiser(dataset_config(config(COARSE, root).dataset))
    cond = torch.from_numpy(ds["input_field_coarse"].values[2][None].astype(np.float64))
    res = sciencegen.sample(oracle, (1, 16, 16), 4, "picard_sde", 24, seed=condition_seed(0, 2), batch_size=2,
                            cond=cond, noise_stream="counter")
    np.testing.assert_array_equal(ds["field"].values[2], res.samples[:, 0].numpy().astype(np.float32))
    # one case selected by its label keeps its time coordinate; another selection is another store
    one = tmp_path / "one.zarr"
    run_generate(config(COARSE, root, f"condition.path={f}", "condition.select={time: '2024-01-02'}",
                        f"output.path={one}"))
    d1 = xr.open_zarr(one)
    assert d1.sizes["condition"] == 1 and str(d1["time"].values[0])[:10] == "2024-01-02"
    np.testing.assert_array_equal(d1["input_field_coarse"].values[0], ds["input_field_coarse"].values[1])
    # the coarse field itself (4 x 4) is repeated back to the grid
    c4 = tmp_path / "coarse4.nc"
    small = _write(c4, "field", 4, times=1)
    run_generate(config(COARSE, root, f"condition.path={c4}", f"output.path={tmp_path / 'c4.zarr'}"))
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "c4.zarr")["input_field_coarse"].values[0],
                                  np.repeat(np.repeat(small[0], 4, axis=0), 4, axis=1))


@pytest.mark.parametrize("name, size, words", [
    ("field", 32, ["condition.path", "grid", "{'y': 32, 'x': 32}", "16"]),
    ("temperature", 16, ["condition.path", "'field'", "temperature"]),
])
def test_condition_file_of_the_wrong_grid_or_variables_is_one_line(root, tmp_path, name, size, words):
    f = tmp_path / "bad.nc"
    _write(f, name, size)
    with pytest.raises(GenerateError) as e:
        run_generate(config(COARSE, root, f"condition.path={f}", f"output.path={tmp_path / 'b.zarr'}"))
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg, msg
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "b.zarr").exists()


def test_state_condition_file_rolls_out_and_another_grid_is_one_line(root, tmp_path):
    today = tmp_path / "state16.nc"
    state = _write(today, "field", 16, times=1)
    p = tmp_path / "fr.zarr"
    run_generate(config(STATE, root, f"condition.path={today}", "generate.lead_times=2", f"output.path={p}"))
    ds = xr.open_zarr(p)
    assert dict(ds.sizes) == {"condition": 1, "member": 2, "lead_time": 2, "y": 16, "x": 16}
    assert not [v for v in ds.data_vars if str(v).startswith("truth_")]
    np.testing.assert_array_equal(ds["input_field"].values[0], state[0])
    assert completed_members(p).all() and np.isfinite(ds["field"].values).all()
    f = tmp_path / "state32.nc"
    _write(f, "field", 32)
    with pytest.raises(GenerateError) as e:
        run_generate(config(STATE, root, f"condition.path={f}", f"output.path={tmp_path / 's.zarr'}"))
    assert str(e.value) == (f"condition.path {f}: input_field has the grid {{'y': 32, 'x': 32}}, but the model "
                            "needs {'y': 16, 'x': 16}")


def test_cli_error_is_one_line(root, tmp_path):
    f = tmp_path / "bad.nc"
    _write(f, "field", 32)
    out = subprocess.run([sys.executable, "-c", CLI, *COARSE, f"data_root={root}", f"condition.path={f}",
                          f"output.path={tmp_path / 'b.zarr'}"], cwd=tmp_path, env=env1(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert "condition.path" in lines[0] and "{'y': 32, 'x': 32}" in lines[0], out.stderr


# ------------------------------------------------------------------------------------------- trained models


def _train(tmp_path: Path, root: Path, *extra: str) -> Path:
    from sciencegen.pipelines.train import run_train

    run = tmp_path / ("run" + "".join(e[1:5] for e in extra))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        tcfg = compose("train", overrides=[
            "dataset=grf", "dataset.size=16", "dataset.samples=64", "dataset.chunk=8", *extra, "model=unet",
            "train.max_steps=2", "train.batch_size=4", "train.val_every=0", "train.figure_members=0",
            "train.progress=false", "train.threads=1", "train.tensorboard=false", "train.warmup_steps=1",
            f"run_dir={run}", f"data_root={root}"])
    run_train(tcfg)
    return run


def test_trained_conditional_model_and_mismatched_checkpoints(root, tmp_path):
    from sciencegen.models.build import load_model

    run = _train(tmp_path, root, "+conditioning=coarse")
    p = tmp_path / "t.zarr"
    over = ["model=unet", f"model.checkpoint={run}", "sampler=picard_dpm2m", "sampler.steps=8",
            "generate.conditions=2", "generate.members=2"]
    run_generate(config([*COARSE, *over], root, f"output.path={p}"))
    ds = xr.open_zarr(p)
    model, meta = load_model(run)
    cm = meta["data"]["conditioning"]
    mean, std = meta["data"]["mean"][0], meta["data"]["std"][0]
    for c in range(2):  # the condition normalised with the checkpoint's statistics
        cond = (ds["input_field_coarse"].values[c][None].astype(np.float64) - cm["mean"][0]) / cm["std"][0]
        res = sciencegen.sample(model, (1, 16, 16), 2, "picard_dpm2m", 8, seed=condition_seed(0, c), batch_size=2,
                                cond=torch.from_numpy(cond), noise_stream="counter")
        want = (res.samples[:, 0].double().numpy() * std + mean).astype(np.float32)
        np.testing.assert_allclose(ds["field"].values[c], want, rtol=1e-6, atol=1e-6 * std)
    with pytest.raises(GenerateError, match=r"trained with conditioning coarse .* but the dataset has no "):
        run_generate(config([*GRF, *over], root, f"output.path={tmp_path / 'u.zarr'}"))
    plain = _train(tmp_path, root)
    with pytest.raises(GenerateError, match=r"trained with no conditioning, but the dataset has conditioning coarse"):
        run_generate(config([*COARSE, *over], root, f"model.checkpoint={plain}", f"output.path={tmp_path / 'v.zarr'}"))


def test_static_maps_only_keep_the_unconditional_layout_and_give_every_member_the_maps(tmp_path, root):
    """A dataset conditioned on static maps alone has one law for every member: no condition dim; member i
    depends only on (seed, i) and is drawn given the maps (the exact StaticGRF law takes them)."""
    cfg = config([*GRF, "+conditioning=static", "model=oracle", "generate.members=3", "generate.batch_size=3"],
                 root, f"output.path={tmp_path / 's.zarr'}")
    run_generate(cfg)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert "condition" not in ds.dims and ds.sizes["member"] == 3 and bool(ds.complete.values.all())
    from sciencegen.data.conditioning import condition_layout

    layout = condition_layout(default_store_path(cfg.dataset, cfg.data_root))
    static = torch.as_tensor(np.asarray(layout.static_values, dtype=np.float32))
    assert static.shape[0] == 4  # sin and cos of both periodic dims
    seen = []
    oracle = oracle_denoiser(dataset_config(cfg.dataset))

    def den(x, s, c):
        seen.append(c)
        return oracle(x, s, c)

    ref = sciencegen.sample(den, (1, 16, 16), 3, "picard_sde", 24, seed=0, cond=static, noise_stream="counter").samples
    assert np.array_equal(ds.field.values, ref[:, 0].numpy())
    assert all(torch.equal(c[0], static) for c in seen)
