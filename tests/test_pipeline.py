"""Tests of the one-command pipeline (``sciencegen``, :mod:`sciencegen.pipelines.run`): all four stages on
a tiny config, then a rerun that reuses every stage's output; the oracle path; ``python -m sciencegen``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir

from sciencegen.config import config_dir, register
from sciencegen.data.ensemble import completed_members
from sciencegen.pipelines.run import PipelineError, run_pipeline

TINY = ["dataset.size=16", "dataset.samples=128", "dataset.chunk=32", "train.max_steps=3", "train.batch_size=4",
        "train.val_every=0", "train.figure_members=0", "train.progress=false", "train.threads=1",
        "train.tensorboard=false", "train.warmup_steps=1", "sampler.steps=8", "generate.members=8",
        "generate.batch_size=4", "generate.progress=false", "generate.threads=1", "evaluate.figures=false",
        "progress=false"]


def config(tmp_path, *overrides):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("sciencegen", overrides=[*TINY, f"run_dir={tmp_path / 'run'}",
                                                f"data_root={tmp_path / 'data'}", *overrides])


def test_four_stages_then_a_cheap_rerun(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sciencegen")
    first = run_pipeline(config(tmp_path))
    run = tmp_path / "run"
    assert first["train"]["step"] == 3 and first["train"]["trained"]
    assert first["generate"]["done"] == 8
    assert completed_members(run / "samples.zarr").all()
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert (run / "evaluation" / "report.md").exists()
    head = first["headline"]
    assert head["sequential_rounds"] == 8 and 0 < head["rounds_per_batch"] <= 8
    assert head["spectral_error"] > 0
    out = caplog.text
    caplog.clear()
    assert "ensemble store:" in out and "spectral error vs reference" in out and "sequential rounds per batch" in out

    before = xr.open_zarr(run / "samples.zarr")["field"].values
    second = run_pipeline(config(tmp_path))
    assert second["data"]["reused"]
    assert not second["train"]["trained"]  # reached train.max_steps: nothing to do
    assert second["generate"]["done"] == 0 and second["generate"]["skipped"] == 8
    assert "evaluation unchanged" in caplog.text
    assert json.loads((run / "evaluation" / "metrics.json").read_text()) == metrics
    np.testing.assert_array_equal(xr.open_zarr(run / "samples.zarr")["field"].values, before)

    # more training -> a new checkpoint -> the ensemble and the evaluation are redone
    third = run_pipeline(config(tmp_path, "train.max_steps=4"))
    assert third["train"]["step"] == 4 and third["generate"]["done"] == 8
    assert not np.array_equal(xr.open_zarr(run / "samples.zarr")["field"].values, before)


def test_oracle_stages(tmp_path):
    res = run_pipeline(config(tmp_path, "model=oracle", "stages=[generate,evaluate]"))
    assert "train" not in res and res["generate"]["done"] == 8
    assert res["headline"]["spectral_error"] > 0
    with pytest.raises(PipelineError, match="stages: unknown"):
        run_pipeline(config(tmp_path, "stages=[train,sample]"))


def test_python_dash_m_reports_config_errors_in_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "sciencegen", "sampler=picardd"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "sampler=picardd: no such sampler" in out.stderr
