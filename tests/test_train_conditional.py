"""Training on conditional datasets (issue 15): the model takes the condition channels, the checkpoint records
how to normalise conditions, the loss uses them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sciencegen.config import config_dir
from sciencegen.data.conditioning import condition_layout
from sciencegen.data.loader import from_store
from sciencegen.errors import TrainError
from sciencegen.models.build import load_model, resolve_model_config
from sciencegen.pipelines.train import run_train

SMALL = [
    "dataset=grf", "dataset.size=16", "dataset.samples=256", "dataset.chunk=32", "model=unet",
    "train.max_steps=4", "train.batch_size=8", "train.log_every=1", "train.val_every=0", "train.ckpt_every_steps=4",
    "train.ckpt_every_minutes=0", "train.figure_members=0", "train.progress=false", "train.threads=1",
    "train.tensorboard=false", "train.warmup_steps=2",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def config(run_dir, data_root, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[*SMALL, f"run_dir={run_dir}", f"data_root={data_root}", *overrides])


def test_a_conditional_model_takes_the_condition_channels_and_records_their_normalisation(tmp_path, data_root):
    run = tmp_path / "run"
    out = run_train(config(run, data_root, "+conditioning=[coarse,static]", "dataset.conditioning.coarse.factor=4",
                           "train.figure_members=3", "train.figure_steps=4", "train.holdout=0.25",
                           "train.val_every=4", "train.val_batches=1"))
    assert out["trained"] and Path(out["figure"]).stat().st_size > 1000
    net, meta = load_model(out["checkpoint"])
    cond = meta["data"]["conditioning"]
    layout = condition_layout(meta["data"]["store"])
    # one coarse input and sin/cos of both periodic dims: 5 condition channels, normalised as the store says
    assert list(cond["inputs"]) == ["input_field_coarse"] and len(cond["static"]) == 4
    assert meta["model"]["cond_channels"] == 5 == layout.channels
    assert cond["mean"] == pytest.approx(list(layout.mean)) and cond["std"] == pytest.approx(list(layout.std))
    assert math.isfinite(out["val_loss"])
    # the model's output depends on the condition it is given
    x, c = next(iter(from_store(meta["data"]["store"], batch_size=2, split="validation", holdout=0.25)))
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():
        a, b = net(x, sigma, c), net(x, sigma, c.flip(0))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="cond_channels=5"):
        net(x, sigma)


def test_cond_channels_come_from_the_data():
    conf = {"preset": "tiny", "name": "unet", "cond_channels": None}
    r = resolve_model_config(conf, channels=1, field_dims=("y", "x"), field_shape=(16, 16), periodic=(True, True),
                             cond_channels=3)
    assert r["cond_channels"] == 3
    with pytest.raises(TrainError, match="model.cond_channels=2 but the data have 3 condition channel"):
        resolve_model_config({**conf, "cond_channels": 2}, channels=1, field_dims=("y", "x"), field_shape=(16, 16),
                             periodic=(True, True), cond_channels=3)
    with pytest.raises(TrainError, match="takes no conditions"):
        resolve_model_config({"name": "mine"}, channels=1, field_dims=("y", "x"), field_shape=(16, 16),
                             periodic=(True, True), cond_channels=3)
