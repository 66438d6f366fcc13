"""Kolmogorov 64² quick start: train a small denoiser on the vorticity for a bounded time, sample, compare.

Run from the repository root on one core (as measured in ``docs/kolmogorov_quickstart.md``)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/kolmogorov_quickstart.py --minutes 20 \\
        --members 256 --samplers dpm2m,picard_dpm2m:16 --json /tmp/kolmogorov_quickstart.json

(the default ``--samplers picard_dpm2m,dpm2m`` draws 256 members with both; on a loaded CPU Picard costs about 5x
the network evaluations of ``dpm2m``, hence ``picard_dpm2m:16`` above, a check that it reproduces ``dpm2m``).

1. Prepares (or reuses) the ``dataset=kolmogorov dataset.variables=[vorticity]`` store under ``--data-root``
   (16 trajectories x 50 snapshots at 64², about 6.5 CPU-s per trajectory).
2. Trains ``model=unet`` (the default tiny preset unless ``--set model.preset=...``) with
   :func:`sciencegen.pipelines.train.run_train` for ``--minutes`` minutes of training loop in ``--run-dir``;
   rerunning continues the run (``--minutes`` counts over resumes), ``--skip-train`` only evaluates.
3. Loads the EMA weights (:func:`~sciencegen.models.build.load_model`) and draws ``--members`` members with
   each of ``--samplers`` (64 steps, seed 0), de-normalised with the store's mean/std.
4. Compares them with the held-out split -- the same chunks the trainer held out (``train.holdout`` of the
   run, read through the trainer's own loader with ``split="validation"``; checked disjoint from the training
   split, also field by field): the enstrophy spectrum ``Z(k)`` (shell sums of ``½|ω̂|²``, averaged over
   fields; reported as the mean ``|ln(Z_gen / Z_ref)|`` over shells 1..21 = the 2/3 cutoff and over 1..8, and
   the largest low-k ratio), the vorticity value distribution (exact 1-D Wasserstein distance W1 of the pooled
   values, also divided by the reference std; std and kurtosis) and the ensemble-mean forcing-scale shear
   (amplitude of the ``k = (0, k_f)`` mode of the mean field). The noise floor is the same numbers for
   held-out-sized groups of *training* snapshots (whole chunks of trajectories, like the held-out split)
   against the held-out ones: what a perfect model scores at this sample size.
5. Prints a table, writes ``--figure`` (generated and held-out fields on a shared colour scale, the spectra,
   the histograms) and, with ``--json``, the numbers.

Samples are cached in the run directory (``quickstart_samples_<sampler>_<members>_step<N>.pt``), so a rerun at the
same checkpoint only redoes the comparison and the figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

LOW_K = 8


def compose_config(a: argparse.Namespace):
    """The ``sciencegen-train`` config of this benchmark (Hydra compose of the package's configs)."""
    from hydra import compose, initialize_config_dir

    from sciencegen.config import config_dir

    over = ["dataset=kolmogorov", "dataset.variables=[vorticity]", "model=unet", f"train.max_minutes={a.minutes}",
            f"train.threads={a.threads}", f"train.progress={str(sys.stderr.isatty()).lower()}",
            f"data_root={a.data_root}", f"run_dir={a.run_dir}", *a.set]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=over)


def read_split(store: str, split: str, holdout: float) -> tuple[torch.Tensor, object]:
    """All fields of a split in store order, in physical units (float64 ``[n, ny, nx]``), and the stream."""
    from sciencegen.data.loader import from_store

    stream = from_store(store, batch_size=256, split=split, holdout=holdout, shuffle=False, mean=[0.0], std=[1.0],
                        rank=0, world_size=1, dtype=torch.float64)
    return torch.cat([(x[0] if isinstance(x, (tuple, list)) else x)[:, 0] for x in stream]), stream


def chunk_trajectories(stream, chunks) -> list[int]:
    """Leading-sample-dim indices (trajectories) covered by store chunks ``chunks`` of ``stream``."""
    grid, cshape, n0 = stream.chunk_grid, stream.chunk_shape, stream.sample_shape[0]
    inner = int(np.prod(grid[1:])) if len(grid) > 1 else 1
    out: set[int] = set()
    for c in chunks:
        t = int(c) // inner
        out.update(range(t * cshape[0], min((t + 1) * cshape[0], n0)))
    return sorted(out)


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W1 between the empirical distributions of ``a`` and ``b`` (any sizes): ``∫|F_a − F_b| dt``."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    t = np.concatenate([a, b])
    t.sort()
    fa = np.searchsorted(a, t[:-1], side="right") / a.size
    fb = np.searchsorted(b, t[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * np.diff(t)))


def spectrum(omega: torch.Tensor) -> np.ndarray:
    """Mean shell-summed enstrophy spectrum ``Z(k)``, ``k = 0, 1, …`` (``ΣZ = ½⟨ω²⟩``, domain mean)."""
    from sciencegen.physics.kolmogorov import enstrophy_spectrum

    return enstrophy_spectrum(omega)[1].mean(0).numpy()


def shear_amplitude(omega: torch.Tensor, kf: int) -> float:
    """Amplitude of the ``(k_x, k_y) = (0, k_f)`` mode of the ensemble-mean field (the mean forced shear)."""
    mean = omega.mean(0)
    return float(2 * torch.fft.rfft2(mean)[kf, 0].abs() / mean.numel())


def beyond_cutoff(omega: torch.Tensor) -> float:
    """Fraction of the enstrophy in modes the 2/3 rule removes (``max(|k_x|, |k_y|) > 21`` at 64²)."""
    from sciencegen.physics.kolmogorov import dealias_mask

    n = omega.shape[-1]
    power = torch.fft.rfft2(omega).abs().pow(2).mean(0)
    power[:, 1 : n // 2] *= 2  # the rfft half spectrum: these columns stand for their conjugates too
    return float(power[~dealias_mask(n)].sum() / power.sum())


def compare(x: torch.Tensor, ref: torch.Tensor, kmax: int, kf: int) -> dict:
    """Spectrum, histogram and moment numbers of fields ``x`` against ``ref`` (both ``[n, ny, nx]``)."""
    zx, zr = spectrum(x), spectrum(ref)
    lr = np.log(zx[1 : kmax + 1] / zr[1 : kmax + 1])
    xv, rv = x.numpy().ravel(), ref.numpy().ravel()
    w1 = wasserstein1(xv, rv)

    def kurt(v: np.ndarray) -> float:
        d = v - v.mean()
        return float(np.mean(d**4) / np.mean(d**2) ** 2)

    return {
        "n": int(x.shape[0]),
        "spec_logratio_1_kmax": float(np.mean(np.abs(lr))),
        "spec_logratio_1_8": float(np.mean(np.abs(lr[:LOW_K]))),
        "spec_max_ratio_1_8": float(np.exp(np.max(np.abs(lr[:LOW_K])))),
        "spec_max_ratio_1_kmax": float(np.exp(np.max(np.abs(lr)))),
        "w1": w1, "w1_over_std": w1 / float(rv.std()),
        "std": float(xv.std()), "kurtosis": kurt(xv), "mean": float(xv.mean()),
        "shear_amp": shear_amplitude(x, kf), "beyond_cutoff": beyond_cutoff(x),
        "shear_profile_err": float(np.linalg.norm(shear_profile(x) - shear_profile(ref))
                                   / np.linalg.norm(shear_profile(ref))),
        "Z": zx.tolist(),
    }


def static_condition(meta: dict) -> torch.Tensor | None:
    """The normalised static channels of a model trained with ``+conditioning=[static]`` (``None`` without)."""
    from sciencegen.data.conditioning import condition_layout

    cond = meta["data"].get("conditioning")
    if not cond:
        return None
    if cond["inputs"]:
        raise SystemExit("this benchmark samples unconditionally: a model with per-sample inputs needs conditions")
    layout = condition_layout(meta["data"]["store"])
    values = torch.as_tensor(layout.static_values, dtype=torch.float64)
    mean = torch.tensor(cond["mean"], dtype=torch.float64).reshape(-1, *([1] * (values.ndim - 1)))
    std = torch.tensor(cond["std"], dtype=torch.float64).reshape(-1, *([1] * (values.ndim - 1)))
    return ((values - mean) / std).float()


def shear_profile(omega: torch.Tensor) -> np.ndarray:
    """The mean shear: the x-mean of ``u`` as a function of ``y``, averaged over fields (``[ny]``)."""
    from sciencegen.physics.spectral import velocity_from_vorticity

    u, _ = velocity_from_vorticity(omega)
    return u.mean(dim=(0, -1)).numpy()


def draw(model, meta: dict, sampler: str, members: int, steps: int, batch: int, run_dir: Path) -> tuple[torch.Tensor,
                                                                                                         dict]:
    """``members`` de-normalised samples ``[members, ny, nx]`` (float64) and sampler stats; cached in ``run_dir``."""
    import sciencegen

    cache = run_dir / f"quickstart_samples_{sampler}_{members}_step{meta['step']}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=False)
        return saved["samples"], saved["stats"]
    shape = (len(meta["data"]["variables"]), *meta["data"]["field_shape"])
    opts = {"max_batch": 8 * batch} if sampler.startswith("picard") else {}
    t0 = time.perf_counter()
    res = sciencegen.sample(model, shape, members, sampler, steps, seed=0, batch_size=batch,
                            cond=static_condition(meta), **opts)
    wall = time.perf_counter() - t0
    std = torch.tensor(meta["data"]["std"], dtype=torch.float64).reshape(1, -1, 1, 1)
    mean = torch.tensor(meta["data"]["mean"], dtype=torch.float64).reshape(1, -1, 1, 1)
    x = (res.samples.double() * std + mean)[:, 0]
    stats = {"rounds": res.stats.get("rounds"), "nfe": res.stats.get("nfe"), "wall_s": wall, "steps": steps,
             "fallbacks": res.stats.get("fallbacks")}
    torch.save({"samples": x, "stats": stats}, cache)
    return x, stats


def figure(path: str, samples: dict[str, torch.Tensor], ref: torch.Tensor, floor: torch.Tensor, kmax: int,
           title: str) -> None:
    """Fields (generated / held-out, shared colour bar), enstrophy spectra and vorticity histograms."""
    from matplotlib.figure import Figure

    first = next(iter(samples))
    fig = Figure(figsize=(15.5, 5.4), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.55, 1.0])
    axes = left.subplots(2, 4)
    lim = float(np.percentile(np.abs(ref.numpy()), 99.5))
    im = None
    picks = [(samples[first], [0, 1, 2, 3], f"generated\n({first})"),
             (ref, [i * ref.shape[0] // 4 for i in range(4)], "held-out data\n(4 trajectories)")]
    for r, (fields, idx, label) in enumerate(picks):
        for j, i in enumerate(idx):
            ax = axes[r, j]
            im = ax.imshow(fields[i].numpy(), origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                           extent=(0, 2 * math.pi, 0, 2 * math.pi))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
    left.colorbar(im, ax=axes, shrink=0.85, label="vorticity ω (nondimensional)")
    left.suptitle("vorticity fields, 64², domain [0, 2π)² (y up)", fontsize=10)
    ax_s, ax_h = right.subplots(2, 1)
    k = np.arange(1, kmax + 1)
    zr = spectrum(ref)
    ax_s.loglog(k, zr[1 : kmax + 1], "k-", lw=2, label=f"held-out ({ref.shape[0]})")
    ax_s.loglog(k, spectrum(floor)[1 : kmax + 1], color="0.6", ls="--", label=f"training snapshots ({floor.shape[0]})")
    for i, (name, x) in enumerate(samples.items()):
        ax_s.loglog(k, spectrum(x)[1 : kmax + 1], color=f"C{i}", ls=["-", ":"][i % 2], marker=".x"[i % 2],
                    label=f"generated {name} ({x.shape[0]})")
    ax_s.set_xlabel("wavenumber shell k")
    ax_s.set_ylabel("enstrophy spectrum Z(k)")
    ax_s.set_title(f"enstrophy spectrum (shells 1..{kmax}, the 2/3 cutoff)", fontsize=9)
    ax_s.legend(fontsize=8)
    bins = np.linspace(-lim * 1.6, lim * 1.6, 81)
    ax_h.hist(ref.numpy().ravel(), bins=bins, density=True, histtype="step", color="k", lw=2, label="held-out")
    ax_h.hist(floor.numpy().ravel(), bins=bins, density=True, histtype="step", color="0.6", ls="--",
              label="training snapshots")
    for i, (name, x) in enumerate(samples.items()):
        ax_h.hist(x.numpy().ravel(), bins=bins, density=True, histtype="step", color=f"C{i}", ls=["-", ":"][i % 2],
                  label=f"generated {name}")
    ax_h.set_yscale("log")
    ax_h.set_xlabel("vorticity ω")
    ax_h.set_ylabel("probability density")
    ax_h.set_title("vorticity values (all grid points)", fontsize=9)
    ax_h.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="training-loop minutes (over resumes); default 20")
    p.add_argument("--members", type=int, default=256, help="generated members per sampler; default 256")
    p.add_argument("--run-dir", default="runs/kolmogorov64-quickstart")
    p.add_argument("--data-root", default=os.environ.get("SCIENCEGEN_DATA_ROOT", "data"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (training and sampling); default 1")
    p.add_argument("--skip-train", action="store_true", help="only sample and compare (the run must exist)")
    p.add_argument("--samplers", default="picard_dpm2m,dpm2m",
                   help="comma-separated NAME[:MEMBERS] (default members: --members); the first one is drawn")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="members sampled together")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sciencegen-train override, e.g. --set train.p_mean=-1.2 (repeatable)")
    p.add_argument("--figure", default="docs/figures/kolmogorov_quickstart.png")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from sciencegen.models.build import load_model
    from sciencegen.physics.kolmogorov import max_dealiased_wavenumber
    from sciencegen.pipelines.train import run_train

    run_dir = Path(a.run_dir)
    train_summary = None
    if not a.skip_train:
        cfg = compose_config(a)
        t0 = time.perf_counter()
        train_summary = run_train(cfg)
        train_summary["wall_s"] = time.perf_counter() - t0
    model, meta = load_model(run_dir)
    store, holdout = meta["data"]["store"], float(meta["train"]["holdout"])
    n = int(meta["data"]["field_shape"][-1])
    kmax = max_dealiased_wavenumber(n)
    kf = int(meta["dataset"].get("forcing_wavenumber", 4))

    # the held-out split exactly as the trainer drew it, and the training split, in store order
    ref, ref_stream = read_split(store, "validation", holdout)
    train, train_stream = read_split(store, "train", holdout)
    overlap = set(ref_stream.chunk_ids.tolist()) & set(train_stream.chunk_ids.tolist())
    digest = {hashlib.sha1(f.numpy().tobytes()).hexdigest() for f in train.float()}
    same = sum(hashlib.sha1(f.numpy().tobytes()).hexdigest() in digest for f in ref.float())
    if overlap or same:
        raise SystemExit(f"held-out split overlaps the training split: chunks {sorted(overlap)}, {same} equal fields")
    ref_traj = chunk_trajectories(ref_stream, ref_stream.chunk_ids)
    m = ref.shape[0]
    groups = [train[i : i + m] for i in range(0, train.shape[0] - m + 1, m)]
    print(f"data {store}: held-out chunks {ref_stream.chunk_ids.tolist()} = trajectories {ref_traj[0]}..{ref_traj[-1]}"
          f" ({m} snapshots); training split {train.shape[0]} snapshots; no shared chunk, no equal field; "
          f"noise floor from {len(groups)} training group(s) of {m}", flush=True)

    samples, stats = {}, {}
    for item in [s for s in a.samplers.split(",") if s]:
        name, _, count = item.partition(":")
        samples[name], stats[name] = draw(model, meta, name, int(count or a.members), a.steps, a.batch_size, run_dir)
        print(f"sampled {name}: {stats[name]}", flush=True)
    first = next(iter(samples))
    for name, x in list(samples.items())[1:]:  # same seed, same members: the samplers should agree
        c = min(x.shape[0], samples[first].shape[0])
        diff = float((x[:c] - samples[first][:c]).abs().max() / ref.std())
        stats[name][f"max_abs_diff_vs_{first}_over_ref_std"] = diff
        print(f"{name} vs {first}, members 0..{c - 1}: max |difference| = {diff:.2e} x the held-out std", flush=True)

    rows = {name: compare(x, ref, kmax, kf) for name, x in samples.items()}
    floors = [compare(g, ref, kmax, kf) for g in groups]
    keys = ["spec_logratio_1_8", "spec_logratio_1_kmax", "spec_max_ratio_1_8", "spec_max_ratio_1_kmax", "w1",
            "w1_over_std", "std", "kurtosis", "shear_amp", "beyond_cutoff", "shear_profile_err"]
    floor = {k: float(np.mean([f[k] for f in floors])) for k in keys}
    floor_range = {k: [float(min(f[k] for f in floors)), float(max(f[k] for f in floors))] for k in keys}
    refrow = compare(ref, ref, kmax, kf)

    step, minutes = meta["step"], None
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        import csv

        with open(metrics, newline="") as f:  # the row of the checkpoint's step (written at every checkpoint)
            at = [r for r in csv.DictReader(f) if r["step"] == str(step)]
        minutes = float(at[-1]["minutes"]) if at else None
    print(f"\nkolmogorov 64² vorticity, {meta['model'].get('channels')}-channel U-Net "
          f"(channel_mult {meta['model'].get('channel_mult')}), step {step}, {minutes or 0:.1f} training minutes; "
          f"{a.steps} sampler steps, vs {m} held-out snapshots")
    head = (f"{'set':<26}{'|lnZ| 1-8':>10}{'|lnZ| 1-' + str(kmax):>11}{'max Z 1-8':>10}{'W1':>8}{'W1/std':>8}"
            f"{'std':>7}{'kurt':>7}{'shear':>7}{'>2/3':>9}{'u(y) err':>9}")
    print(head)

    def line(label: str, r: dict) -> None:
        print(f"{label:<26}{r['spec_logratio_1_8']:>10.3f}{r['spec_logratio_1_kmax']:>11.3f}"
              f"{r['spec_max_ratio_1_8']:>10.2f}{r['w1']:>8.3f}{r['w1_over_std']:>8.3f}{r['std']:>7.3f}"
              f"{r['kurtosis']:>7.2f}{r['shear_amp']:>7.3f}{r['beyond_cutoff']:>9.1e}{r['shear_profile_err']:>9.3f}")

    for name, r in rows.items():
        line(f"{name} ({r['n']})", r)
    line(f"floor: train groups ({m})", floor)
    print(f"{'held-out reference':<26}{'':>10}{'':>11}{'':>10}{'':>8}{'':>8}{refrow['std']:>7.3f}"
          f"{refrow['kurtosis']:>7.2f}{refrow['shear_amp']:>7.3f}{refrow['beyond_cutoff']:>9.1e}")
    print("(|lnZ|: mean |ln(Z_gen/Z_ref)| over the shells; max Z: largest ratio (either way) over shells 1-8;\n"
          " W1 in vorticity units; shear: amplitude of the k=(0, k_f) mode of the ensemble-mean field;\n"
          " >2/3: enstrophy fraction in the modes beyond the 2/3 cutoff; u(y) err: relative L2 error of the mean\n"
          " shear profile, the x-mean of u over y averaged over fields, against the held-out one)")

    title = (f"Kolmogorov 64² vorticity: tiny-budget U-Net ({step} steps, {minutes or 0:.0f} min on one CPU core) "
             f"vs held-out trajectories {ref_traj[0]}-{ref_traj[-1]}")
    figure(a.figure, samples, ref, groups[0], kmax, title)
    print(f"figure {a.figure}")
    if a.json:
        record = {
            "command": " ".join(sys.argv), "run_dir": str(run_dir), "step": step, "minutes": minutes,
            "model": meta["model"], "train_options": meta["train"], "store": store, "holdout": holdout,
            "heldout_chunks": ref_stream.chunk_ids.tolist(), "heldout_trajectories": ref_traj, "heldout_n": m,
            "train_n": int(train.shape[0]), "kmax": kmax, "members": a.members, "sampler_stats": stats,
            "generated": rows, "floor_mean": floor, "floor_range": floor_range,
            "floor_groups": [{k: f[k] for k in keys} for f in floors], "reference": refrow,
            "train_summary": train_summary,
        }
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(record, indent=1, default=str))
        print(f"numbers {a.json}")


if __name__ == "__main__":
    main()
