"""Kolmogorov flow at its default configuration: cost, steady state, spectra, decorrelation; writes a figure.

Run from the repository root (one thread, as measured in ``datasets/kolmogorov.md``)::

    OMP_NUM_THREADS=1 python benchmarks/kolmogorov_spectrum.py [--trajectories 8] [--reference-size 128]

It generates ``--trajectories`` trajectories with ``KolmogorovFlow().simulate`` (timed: the dataset's own code path),
integrates the same initial conditions again with the solver to record energy and enstrophy from t = 0 and the
vorticity at a fine interval for its autocorrelation, prints the measured numbers and writes
``docs/figures/kolmogorov_spectrum.png``: time-mean energy and enstrophy spectra over the stored snapshots, one
vorticity snapshot, energy and enstrophy against time (spin-up and steady state) and the vorticity autocorrelation.
It first checks the solver against the exact Taylor–Green decay at the configuration's grid and time step; with
``--reference-size`` it also runs the same configuration on a finer grid and compares the enstrophy spectra;
``--set KEY=VALUE`` changes a parameter of the configuration (e.g. to scan the viscosity).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from sciencegen.physics.kolmogorov import (
    KolmogorovFlow,
    SpectralSolver,
    energy,
    energy_spectrum,
    enstrophy,
    enstrophy_spectrum,
    max_dealiased_wavenumber,
    taylor_green,
)


def slope(k: np.ndarray, spectrum: np.ndarray, lo: float, hi: float) -> float:
    """Least-squares slope of ``log spectrum`` against ``log k`` over ``lo <= k <= hi``."""
    sel = (k >= lo) & (k <= hi)
    return float(np.polyfit(np.log(k[sel]), np.log(spectrum[sel]), 1)[0])


def autocorrelation(series: np.ndarray, lags: int) -> np.ndarray:
    """Correlation ``<a(t) a(t + lag)> / sqrt(<a(t)^2><a(t + lag)^2>)`` over time, trajectories and the grid.

    ``series`` is ``(time, trajectory, y, x)``; ``a`` is the vorticity minus its mean over time, trajectories and x
    (the mean shear profile, which depends on y only).
    """
    anomaly = series - series.mean(axis=(0, 1, 3), keepdims=True)
    out = []
    for lag in range(lags + 1):
        a, b = anomaly[: len(anomaly) - lag], anomaly[lag:]
        out.append(float((a * b).sum() / math.sqrt(float((a * a).sum()) * float((b * b).sum()))))
    return np.asarray(out)


def taylor_green_errors(flow: KolmogorovFlow, t: float = 1.0) -> list[dict]:
    """Relative L2 errors of the solver against the exact Taylor–Green decay at the configuration's grid and dt."""
    rows = []
    for k in (1, 4, 8):
        for drag in (0.0, flow.drag):
            solver = SpectralSolver(flow.size, flow.viscosity, drag, flow.forcing_wavenumber, 0.0, flow.dt)
            omega0, _, _ = taylor_green(flow.size, 0.0, k=k)
            w_hat = solver.advance(solver.to_spectral(omega0[None]), round(t / flow.dt))
            omega, u, v = solver.to_physical(w_hat)[0], *(c[0] for c in solver.velocity(w_hat))
            exact = taylor_green(flow.size, t, viscosity=flow.viscosity, drag=drag, k=k)
            errors = [float((a - b).norm() / b.norm()) for a, b in zip((omega, u, v), exact, strict=True)]
            rows.append({"k": k, "drag": drag, "t": t, "vorticity": errors[0], "velocity": max(errors[1:])})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trajectories", type=int, default=4, help="trajectories to generate (default 4)")
    parser.add_argument("--figure", default="docs/figures/kolmogorov_spectrum.png", help="output figure")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--fine", type=float, default=0.1, help="interval of the energy/enstrophy record (0.1)")
    parser.add_argument("--acf-interval", type=float, default=0.25, help="interval of the autocorrelation record")
    parser.add_argument(
        "--reference-size",
        type=int,
        default=0,
        help="also simulate the same configuration on this finer grid (e.g. 128) and compare the spectra",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a KolmogorovFlow parameter (repeatable), e.g. --set viscosity=0.01 --set dt=0.01",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in KolmogorovFlow.__dataclass_fields__ or not value:
            parser.error(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {list(KolmogorovFlow.__dataclass_fields__)}"
            )
        overrides[key] = float(value)
    flow = KolmogorovFlow(**overrides)
    trajectories = range(args.trajectories)
    print("configuration:", json.dumps(asdict(flow)))

    # 0. exact Taylor-Green decay (unforced), at this grid and time step
    tg = taylor_green_errors(flow)
    for row in tg:
        print(
            f"Taylor-Green k={row['k']} drag={row['drag']:g} t={row['t']:g}: relative L2 error "
            f"vorticity {row['vorticity']:.1e}, velocity {row['velocity']:.1e}"
        )

    # 1. the dataset's code path, timed
    start, cpu_start = time.perf_counter(), time.process_time()
    ds = flow.simulate(trajectories)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    per_trajectory = cpu / args.trajectories
    per_snapshot, per_step = 1e3 * per_trajectory / flow.snapshots, 1e3 * per_trajectory / flow.total_steps
    print(
        f"simulate: {args.trajectories} trajectories x {flow.snapshots} snapshots, {flow.total_steps} steps each, "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU with {torch.get_num_threads()} thread(s) (wall > CPU: shared cores). "
        f"CPU per trajectory {per_trajectory:.2f} s, per trajectory-snapshot {per_snapshot:.1f} ms, "
        f"per trajectory-step {per_step:.3f} ms; max CFL {ds.attrs['max_cfl']:.3f}"
    )

    # 2. the same initial conditions again, recorded from t = 0
    solver = flow.solver()
    w_hat = solver.to_spectral(flow.initial_condition(trajectories))
    fine_steps = round(args.fine / flow.dt)
    acf_steps = round(args.acf_interval / flow.dt)
    horizon = flow.total_steps
    times, energies, enstrophies, acf_series, at_snapshots = [], [], [], [], []
    for step in range(0, horizon + 1, math.gcd(fine_steps, acf_steps)):
        if step:
            w_hat = solver.advance(w_hat, math.gcd(fine_steps, acf_steps))
        omega = solver.to_physical(w_hat)
        if step % fine_steps == 0:
            times.append(step * flow.dt)
            energies.append(energy(omega).numpy())
            enstrophies.append(enstrophy(omega).numpy())
        recording = step - flow.spinup_steps
        if recording >= 0 and recording % acf_steps == 0:
            acf_series.append(omega.float().numpy())
        if recording >= 0 and recording % flow.steps_per_snapshot == 0:
            at_snapshots.append(omega.float().numpy())
    times, energies, enstrophies = np.asarray(times), np.asarray(energies), np.asarray(enstrophies)
    same = np.abs(np.stack(at_snapshots, axis=1) - ds.vorticity.values).max()
    print(f"re-integration matches the dataset to {same:.2e} (max abs vorticity difference)")

    # steady state: the recorded window (after the spin-up)
    steady = times >= flow.spinup - 1e-9
    e_steady, z_steady = energies[steady], enstrophies[steady]
    half = len(e_steady) // 2
    omega_ds = torch.from_numpy(ds.vorticity.values).double()
    k, e_k = energy_spectrum(omega_ds)
    _, z_k = enstrophy_spectrum(omega_ds)
    k, e_k, z_k = k.numpy(), e_k.mean((0, 1)).numpy(), z_k.mean((0, 1)).numpy()
    kmax = max_dealiased_wavenumber(flow.size)
    kf = flow.forcing_wavenumber
    beta = 2 * flow.viscosity * float((k**2 * z_k).sum())  # enstrophy dissipation by viscosity, 2ν<|∇ω|²>/2
    eta = (flow.viscosity**3 / beta) ** (1 / 6) if flow.viscosity > 0 else float("nan")
    lags = min(int(round(10.0 / args.acf_interval)), len(acf_series) - 1)
    acf = autocorrelation(np.stack(acf_series), lags)
    tau = np.arange(lags + 1) * args.acf_interval
    below = np.nonzero(acf < 1 / math.e)[0]
    tau_e = float("nan")
    if len(below):
        i = int(below[0])
        tau_e = float(tau[i - 1] + (acf[i - 1] - 1 / math.e) / (acf[i - 1] - acf[i]) * (tau[i] - tau[i - 1]))
    at_interval = float(np.interp(flow.snapshot_interval, tau, acf))
    laminar = float(energy(flow.laminar_vorticity()))
    numbers = {
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_per_trajectory_s": per_trajectory,
        "ms_per_trajectory_snapshot": per_snapshot,
        "ms_per_trajectory_step": per_step,
        "threads": torch.get_num_threads(),
        "trajectories": args.trajectories,
        "max_cfl": float(ds.attrs["max_cfl"]),
        "energy_mean": float(e_steady.mean()),
        "energy_std": float(e_steady.std()),
        "energy_first_half": float(e_steady[:half].mean()),
        "energy_second_half": float(e_steady[half:].mean()),
        "laminar_energy": laminar,
        "enstrophy_mean": float(z_steady.mean()),
        "enstrophy_std": float(z_steady.std()),
        "vorticity_rms": float(math.sqrt(2 * z_steady.mean())),
        "energy_slope_k5_10": slope(k, e_k, kf + 1, 10),
        "energy_slope_k10_20": slope(k, e_k, 10, 20),
        "enstrophy_slope_k5_10": slope(k, z_k, kf + 1, 10),
        "enstrophy_at_cutoff_over_peak": float(z_k[kmax] / z_k.max()),
        "kmax_eta": kmax * eta,
        "decorrelation_time_1_over_e": tau_e,
        "autocorrelation_at_snapshot_interval": at_interval,
    }
    for key, value in numbers.items():
        print(f"  {key:40s} {value:.4g}" if isinstance(value, float) else f"  {key:40s} {value}")

    if args.reference_size:
        fine = replace(flow, size=args.reference_size)
        start = time.process_time()
        omega_fine = torch.from_numpy(fine.simulate(trajectories).vorticity.values).double()
        cpu_fine = time.process_time() - start
        _, z_fine = enstrophy_spectrum(omega_fine)
        z_fine = z_fine.mean((0, 1)).numpy()[: len(z_k)]
        ratio = z_k[: kmax + 1] / z_fine[: kmax + 1]
        numbers["reference_size"] = args.reference_size
        numbers["reference_cpu_per_trajectory_s"] = cpu_fine / args.trajectories
        numbers["reference_energy_mean"] = float(energy(omega_fine).mean())
        numbers["reference_enstrophy_mean"] = float(enstrophy(omega_fine).mean())
        numbers["spectrum_ratio_to_reference"] = {int(q): float(ratio[q]) for q in range(1, kmax + 1)}
        print(
            f"reference {args.reference_size}^2 ({cpu_fine / args.trajectories:.1f} s CPU per trajectory): "
            f"energy {numbers['reference_energy_mean']:.4g}, enstrophy {numbers['reference_enstrophy_mean']:.4g} "
            f"(over the stored snapshots; {flow.size}^2: {float(energy(omega_ds).mean()):.4g}, "
            f"{float(enstrophy(omega_ds).mean()):.4g})"
        )
        print(
            f"  Z_{flow.size}(k) / Z_{args.reference_size}(k):",
            " ".join(f"{q}:{ratio[q]:.3f}" for q in range(1, kmax + 1)),
        )
    if args.json:
        record = {"configuration": asdict(flow), "taylor_green": tg, **numbers}
        Path(args.json).write_text(json.dumps(record, indent=2))
    figure(args.figure, flow, ds, times, energies, enstrophies, k, e_k, z_k, tau, acf, numbers)
    print(f"figure: {args.figure}")
    return numbers


def figure(path, flow, ds, times, energies, enstrophies, k, e_k, z_k, tau, acf, numbers) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kmax = max_dealiased_wavenumber(flow.size)
    kf = flow.forcing_wavenumber
    fig, axes = plt.subplots(2, 2, figsize=(11, 9), constrained_layout=True)

    ax = axes[0, 0]
    # complete shells only: beyond k_max the de-aliased square holds just its corners (and float32 round-off)
    sel = (k >= 1) & (k <= kmax)
    ax.loglog(k[sel], e_k[sel], "o-", ms=3, label="energy $E(k)$")
    ax.loglog(k[sel], z_k[sel], "s-", ms=3, label=r"enstrophy $Z(k) = k^2 E(k)$")
    ref = np.array([kf + 1.0, kmax])
    anchor = 3 * e_k[kf + 1]
    ax.loglog(ref, anchor * (ref / ref[0]) ** -3, "k--", lw=1, label="$k^{-3}$")
    ax.loglog(ref, anchor * (ref / ref[0]) ** -5, "k:", lw=1, label="$k^{-5}$")
    ax.axvline(kf, color="grey", lw=0.8)
    ax.axvline(kmax, color="grey", lw=0.8, ls="--")
    ax.text(kf, ax.get_ylim()[0] * 3, r" $k_f$", color="grey")
    ax.text(kmax, ax.get_ylim()[1] / 10, r"$k_{max}$ (2/3 rule) ", color="grey", ha="right")
    ax.set_xlabel("wavenumber $k$ (shell $|k|$, nondimensional; domain $2\\pi$)")
    ax.set_ylabel("spectral density (nondimensional)")
    ax.set_title(
        f"time-mean spectra, steady state ({ds.sizes['trajectory']} traj. x {ds.sizes['time']} snapshots)\n"
        f"slope over k = {kf + 1}..10: E {numbers['energy_slope_k5_10']:.2f}, "
        f"Z {numbers['enstrophy_slope_k5_10']:.2f}",
        fontsize=10,
    )
    ax.legend(fontsize=9)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[0, 1]
    snap = ds.vorticity.isel(trajectory=0, time=-1)
    lim = float(np.abs(snap.values).max())
    im = ax.imshow(snap.values, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=(0, 2 * np.pi, 0, 2 * np.pi))
    fig.colorbar(im, ax=ax, label=r"vorticity $\omega$ (nondimensional)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"vorticity, trajectory 0, t = {float(snap.time):g} after spin-up ({flow.size}$^2$)", fontsize=10)

    ax = axes[1, 0]
    labels = (r"energy $\frac{1}{2}\langle|u|^2\rangle$", r"enstrophy $\frac{1}{2}\langle\omega^2\rangle$")
    for i in range(energies.shape[1]):
        ax.plot(times, energies[:, i], color="C0", lw=0.7, alpha=0.8, label=None if i else labels[0])
        ax.plot(times, enstrophies[:, i], color="C1", lw=0.7, alpha=0.8, label=None if i else labels[1])
    ax.axvspan(0, flow.spinup, color="grey", alpha=0.15, label=f"spin-up (discarded, t < {flow.spinup:g})")
    ax.axhline(numbers["laminar_energy"], color="C0", ls=":", lw=1, label="laminar energy")
    ax.set_yscale("log")
    ax.set_xlabel("model time t (nondimensional)")
    ax.set_ylabel("domain mean (nondimensional)")
    ax.set_title(
        f"spin-up and steady state: E = {numbers['energy_mean']:.3f} ± {numbers['energy_std']:.3f}, "
        f"Z = {numbers['enstrophy_mean']:.2f} ± {numbers['enstrophy_std']:.2f}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1, 1]
    ax.plot(tau, acf, "o-", ms=3)
    ax.axhline(1 / math.e, color="grey", lw=0.8, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(flow.snapshot_interval, color="C3", lw=1, label=f"snapshot interval {flow.snapshot_interval:g}")
    ax.set_xlabel("lag (model time)")
    ax.set_ylabel("vorticity autocorrelation (anomaly about mean shear)")
    ax.set_title(f"decorrelation: 1/e time {numbers['decorrelation_time_1_over_e']:.2f}", fontsize=10)
    ax.legend(fontsize=9)

    fig.suptitle(
        f"Kolmogorov flow, {flow.size}$^2$, $\\nu$ = {flow.viscosity:g}, $\\alpha$ = {flow.drag:g}, "
        f"$k_f$ = {kf}, A = {flow.forcing_amplitude:g}, dt = {flow.dt:g}"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
