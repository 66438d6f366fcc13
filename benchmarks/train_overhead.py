"""Overhead of ``sciencegen-train`` against a bare PyTorch loop: the same model, batch, optimizer and loss.

Framework: :func:`sciencegen.pipelines.train.run_train` on a prepared grf store (streaming loader, per-sample
seeded noise, EMA, gradient clipping, schedule, CSV rows, progress bar, finiteness checks); the time per step
is read from its ``metrics.csv`` (``minutes`` column: wall time of the training loop) between a warm-up step
and the last step, so start-up, data preparation and the final checkpoint are excluded.

Bare loop: the same fields held in memory as one tensor, ``torch.randn`` noise, log-normal σ, EDM loss
(:func:`sciencegen.models.denoising_loss`), backward, AdamW step -- nothing else.

Both run alternately ``--repeats`` times; the table shows the median seconds per step and their ratio
(target <= 1.15)::

    OMP_NUM_THREADS=1 python benchmarks/train_overhead.py --size 32 --batch 32 --steps 40 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def framework(size: int, batch: int, steps: int, warm: int, preset: str, data_root: str, run_dir: str) -> float:
    """Seconds per step of ``run_train`` between step ``warm`` and ``warm + steps``."""
    from hydra import compose, initialize_config_dir

    from sciencegen.config import config_dir
    from sciencegen.pipelines.train import run_train

    over = [f"dataset.size={size}", "dataset.samples=2048", f"model.preset={preset}", f"train.batch_size={batch}",
            f"train.max_steps={warm + steps}", "train.log_every=1", "train.val_every=0", "train.ckpt_every_steps=0",
            "train.ckpt_every_minutes=0", "train.figure_members=0", "train.tensorboard=false",
            f"data_root={data_root}", f"run_dir={run_dir}", "train.progress=false"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=over)
    run_train(cfg)
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        minutes = {int(r["step"]): float(r["minutes"]) for r in csv.DictReader(f)}
    return (minutes[warm + steps] - minutes[warm]) * 60.0 / steps


def bare(size: int, batch: int, steps: int, warm: int, preset: str, data: torch.Tensor) -> float:
    """Seconds per step of a plain loop with the same model, batch, optimizer and loss."""
    from sciencegen.models import denoising_loss
    from sciencegen.models.build import edm_unet

    torch.manual_seed(0)
    model = edm_unet(1, preset=preset)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.0)
    n = data.shape[0]
    t0 = 0.0
    for step in range(warm + steps):
        if step == warm:
            t0 = time.perf_counter()
        i = (step * batch) % (n - batch)
        x0 = data[i : i + batch]
        sigma = (-1.2 + 1.2 * torch.randn(batch)).exp()
        loss = denoising_loss(model, x0, sigma, torch.randn_like(x0)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warm", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from sciencegen.targets import GaussianRandomField

    data = GaussianRandomField(a.size).sample(2048, torch.Generator().manual_seed(0), dtype=torch.float32)
    fw, bl = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            bl.append(bare(a.size, a.batch, a.steps, a.warm, a.preset, data))
            fw.append(framework(a.size, a.batch, a.steps, a.warm, a.preset, f"{tmp}/data", f"{tmp}/run{r}"))
            print(f"repeat {r}: bare {bl[-1]:.4f} s/step, sciencegen-train {fw[-1]:.4f} s/step", flush=True)
    mb, mf = statistics.median(bl), statistics.median(fw)
    print(f"\ngrf {a.size}x{a.size}, {a.preset} U-Net, batch {a.batch}, {a.threads} thread(s), median of {a.repeats}")
    print(f"{'loop':<18}{'s/step':>10}{'samples/s':>12}")
    print(f"{'bare PyTorch':<18}{mb:>10.4f}{a.batch / mb:>12.1f}")
    print(f"{'sciencegen-train':<18}{mf:>10.4f}{a.batch / mf:>12.1f}")
    print(f"overhead ratio {mf / mb:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
