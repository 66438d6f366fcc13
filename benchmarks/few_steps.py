"""Accuracy per sequential round and per NFE: every sampler at several step counts on the exact GRF.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/few_steps.py --size 64 --members 256 \
        --json docs/figures/few_steps.json --figure docs/figures/few_steps.png

Each sampler runs beside its sequential twin (same grid, seeds, denoiser), so the
spectral error against the exact law, rounds, NFE and distance to the sequential
trajectory come from one run. Prints a markdown table (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from sciencegen.pipelines.bench import run_bench
from sciencegen.targets import GaussianRandomField, spectral_error

#: (sampler, step counts): first order where it is accurate (many steps), second order where it is (few)
SWEEP = {
    "heun": (16, 32, 48, 64, 128),
    "dpm2m": (16, 32, 48, 64, 128),
    "dpm2m_sde": (32, 64, 128),
    "picard_heun": (32, 48, 64),
    "picard_dpm2m": (32, 48, 64, 128),
    "picard_dpm2m_sde": (64, 128),
    "sequential_sde": (64, 256, 1000),
    "sequential_ode": (64, 256, 1000),
    "picard_sde": (256, 1000),
    "picard_ode": (256,),
    "picard_wave": (256,),
    "paradigms": (256,),
    "piadm_sde": (256,),
    "piadm_ode": (256,),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--members", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", default=None, help="comma-separated subset of the sweep")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    dtype = getattr(torch, a.dtype)
    names = a.samplers.split(",") if a.samplers else list(SWEEP)
    target = GaussianRandomField(a.size)
    floor = spectral_error(target.sample(a.members, torch.Generator().manual_seed(a.seed), dtype=dtype), target)
    print(f"GRF {a.size}^2, {a.members} members; exact samples score {floor:.4f}", flush=True)
    rows = []
    for name in names:
        for steps in SWEEP[name]:
            (r,) = run_bench(a.size, steps, a.members, [name], a.seed, 1, dtype, log=None)
            row = {"sampler": name, "steps": steps, "rounds": r.rounds, "nfe": r.nfe, "wall_s": r.wall_s,
                   "spectral_error": r.spectral_error, "dist_to_sequential": r.dist_to_sequential,
                   "fallbacks": r.fallbacks}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"size": a.size, "members": a.members, "floor": floor, "rows": rows}, f, indent=1)
    print()
    print("| sampler | steps | rounds | NFE/member | spectral error | dist. to sequential | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['rounds']} | {r['nfe']:.0f} | {r['spectral_error']:.4f} | "
              f"{r['dist_to_sequential']:.1e} | {r['wall_s']:.1f} |")
    if a.figure:
        plot(rows, floor, a.figure, f"GRF {a.size}², {a.members} members")
        print(f"\nfigure: {a.figure}")


def plot(rows: list[dict], floor: float, path: str, title: str) -> None:
    """Spectral error against sequential rounds and against NFE, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        rr = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["steps"])
        style = "-o" if name.startswith(("picard", "paradigms", "piadm")) else "--s"
        for ax, key in zip(axes, ("rounds", "nfe"), strict=True):
            ax.plot([r[key] for r in rr], [r["spectral_error"] for r in rr], style, color=cmap(i % 20), label=name,
                    ms=5)
    labels = ("sequential rounds (batched denoiser calls in sequence)", "denoiser evaluations per member")
    for ax, lab in zip(axes, labels, strict=True):
        ax.axhline(floor, color="k", lw=0.8, ls=":", label="exact samples (Monte Carlo floor)")
        ax.axhline(0.02, color="grey", lw=0.8, ls="-.")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(lab)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("spectral error (mean |log| variance ratio)")
    axes[0].set_title(f"{title}: accuracy per sequential round")
    axes[1].set_title("accuracy per network evaluation")
    axes[1].legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
