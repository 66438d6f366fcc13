"""Few samples (issue 18, item 4): the data stage warns, training adapts its batch (or says what to set) and
reports the validation/training loss gap.

A 40-month NCEP-style z500 file (``datasets/make_geo_samples.py``, cropped to 16 x 16) is prepared and trained
on with the shipped batch of 32; the expected split is counted from the store's chunks, the expected batch by a
loop over powers of two, both written from their definitions.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir

from sciencegen.config import config_dir
from sciencegen.data.split_size import FEW_SAMPLES, few_samples_line, train_split_size
from sciencegen.errors import TrainError
from sciencegen.pipelines.data import run_data
from sciencegen.pipelines.train import run_train
from sciencegen.training.metrics import CSV_COLUMNS, MetricsWriter, gap_line, loss_ratio
from sciencegen.training.options import fit_batch

ROOT = Path(__file__).resolve().parents[1]
CROP = "dataset.select={lat: {start: 60.0, stop: 37.5}, lon: {start: 200.0, stop: 222.5}}"


def _geo_module():
    spec = importlib.util.spec_from_file_location("make_geo_samples", ROOT / "datasets/make_geo_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def months40(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 40-sample netCDF file and the dataset overrides that read it."""
    geo = _geo_module()
    path = geo.write(geo.z500(times=40), tmp_path_factory.mktemp("few") / "z500_40.nc")
    return path, ["dataset=netcdf", f"dataset.path={path}", "dataset.variables=[hgt]", "dataset.sample_dims=[time]",
                  "dataset.name=z500m", CROP]


def expected_train(store: Path, holdout: float) -> int:
    """Training samples from the definition: the last ceil(holdout * chunks) chunks along time are held out."""
    ds = xr.open_zarr(store)
    c, n = ds.hgt.encoding["chunks"][0], ds.sizes["time"]
    starts = list(range(0, n, c))
    held = math.ceil(holdout * len(starts))
    return starts[len(starts) - held] if held else n


def expected_batch(batch: int, n: int, world: int) -> int:
    """The batch from the definition: kept when each rank gets 2 batches, else the largest power of two that does."""
    per_rank = n // world
    if 2 * (batch // world) <= per_rank:
        return batch
    b = 1
    while 2 * (2 * b) <= per_rank:
        b *= 2
    return world * b


# ---------------------------------------------------------------------------------------------- the rules alone


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 31, 32, 36, 52, 63, 64, 65, 100, 4000])
@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("batch", [4, 32, 64])
def test_fit_batch_is_the_largest_power_of_two_with_two_steps(batch, world, n):
    opts = {"batch_size": batch, "adapt_batch": True, "holdout": 0.1}
    if n // world < 1:
        with pytest.raises(TrainError, match="fewer than the ranks"):
            fit_batch(opts, n, world, "d", log_it=False)
        return
    got = fit_batch(opts, n, world, "d", log_it=False)
    assert got == expected_batch(batch, n, world)
    assert got % world == 0 and (got == batch or 2 * (got // world) <= n // world or got == world)


def test_fit_batch_without_adapting_says_what_to_set(caplog):
    opts = {"batch_size": 64, "adapt_batch": False, "holdout": 0.1}
    with pytest.raises(TrainError, match=r"^train.batch_size=64 > the 36 training samples of dataset sst "
                                         r"\(train.holdout=0.1 held out\): set train.batch_size=16 "):
        fit_batch(opts, 36, 1, "sst")
    caplog.set_level(logging.WARNING, logger="sciencegen")
    assert fit_batch({**opts, "batch_size": 32}, 36, 1, "sst") == 32  # fits once: kept, with a warning
    assert any("one step per epoch" in r.getMessage() for r in caplog.records)
    assert fit_batch({**opts, "batch_size": 8}, 36, 1, "sst") == 8


def test_few_samples_line_and_the_loss_gap():
    assert few_samples_line("grf", 4096, 3840, 0.1, 32) is None
    line = few_samples_line("sst", 40, 36, 0.1, 32)
    assert line.startswith("dataset sst: 36 training samples (40 in all, 4 held out by train.holdout=0.1)")
    assert "expect over-fitting" in line and "train.batch_size=16" in line and "\n" not in line
    assert "batch_size" not in few_samples_line("m", 250, 200, 0.1, 32)  # few, but the batch fits
    assert FEW_SAMPLES == 300
    assert gap_line(0.76, 0.15, 40) == "validation loss 0.76 vs training 0.15 (x5.07): over-fitting (few samples: 40)"
    assert gap_line(0.2, 0.19, 5000) == "validation loss 0.2 vs training 0.19 (x1.05): no sign of over-fitting"
    assert gap_line(None, 0.2) is None and loss_ratio(0.3, 0.0) is None and loss_ratio(0.3, 0.2) == 0.3 / 0.2


def test_metrics_csv_of_an_earlier_version_gets_the_new_column(tmp_path):
    old = CSV_COLUMNS[:-1]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        w.writerows([[str(s)] + ["1"] * (len(old) - 1) for s in (1, 2, 3)])
    MetricsWriter(tmp_path, 2, tensorboard=False).close()  # resumes from step 2
    rows = list(csv.reader(open(tmp_path / "metrics.csv", newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS and [r[0] for r in rows[1:]] == ["1", "2"]
    assert all(len(r) == len(CSV_COLUMNS) and r[-1] == "" for r in rows[1:])


# ------------------------------------------------------------------------------------ the data stage and training


def test_data_stage_warns_about_few_samples(months40, tmp_path, caplog):
    _, dataset = months40
    caplog.set_level(logging.WARNING, logger="sciencegen")
    out = tmp_path / "p.zarr"
    run_data(compose_cfg("data", [*dataset, f"output.path={out}", f"data_root={tmp_path}", "progress=false"]))
    n = expected_train(out, 0.1)
    assert n == train_split_size(out, 0.1) and n < 40
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    want = f"dataset z500m: {n} training samples (40 in all, {40 - n} held out by train.holdout=0.1)"
    assert any(line.startswith(want) and "train.batch_size=16" in line for line in lines), lines


def test_train_adapts_the_batch_and_reports_the_gap(months40, tmp_path, caplog):
    _, dataset = months40
    caplog.set_level(logging.INFO, logger="sciencegen")
    cfg = compose_cfg("train", [*dataset, "model=unet", "train.max_steps=4", "train.log_every=2",
                                "train.val_every=2", "train.figure_members=0", "train.progress=false",
                                "train.threads=1", "train.warmup_steps=1", f"run_dir={tmp_path / 'run'}",
                                f"data_root={tmp_path / 'data'}"])
    assert cfg.train.batch_size == 32  # the shipped batch
    out = run_train(cfg)
    store = next((tmp_path / "data").glob("z500m-*.zarr"))
    n = expected_train(store, 0.1)
    fit = expected_batch(32, n, 1)
    assert fit == 16 and out["step"] == 4 and out["samples"] == 4 * fit
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"train.batch_size=32 is more than half of the {n} training samples of dataset z500m")
               and f"using train.batch_size={fit}" in m for m in msgs), msgs
    ckpt = torch.load(out["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["meta"]["train"]["batch_size"] == fit
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv", newline="")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:  # the column is the raw model's validation loss over the training loss of its row
        assert float(r["val_ratio"]) == pytest.approx(float(r["val_loss_raw"]) / float(r["loss"]), rel=1e-4)
    assert out["val_ratio"] == pytest.approx(out["val_loss_raw"] / out["loss"])
    assert out["gap"].startswith(f"validation loss {out['val_loss_raw']:.3g} vs training {out['loss']:.3g}")
    assert out["gap"].endswith(f"(few samples: {n})")
    assert any(m == f"sciencegen-train: {out['gap']}" for m in msgs)


def test_train_without_adapting_refuses_a_batch_larger_than_the_split(months40, tmp_path):
    _, dataset = months40
    cfg = compose_cfg("train", [*dataset, "model=unet", "train.max_steps=2", "train.batch_size=64",
                                "train.adapt_batch=false", "train.progress=false", f"run_dir={tmp_path / 'run'}",
                                f"data_root={tmp_path / 'data'}"])
    with pytest.raises(TrainError, match=r"^train.batch_size=64 > the \d+ training samples of dataset z500m .*"
                                         r"set train.batch_size=16") as err:
        run_train(cfg)
    assert "\n" not in str(err.value)
