"""Kolmogorov-flow solver: exact solutions, invariants, forcing, determinism and the dataset it returns."""

import math

import numpy as np
import pytest
import torch

from sciencegen.physics.kolmogorov import (
    KolmogorovFlow,
    SpectralSolver,
    curl,
    dealias_mask,
    divergence,
    energy,
    energy_spectrum,
    enstrophy,
    enstrophy_spectrum,
    max_dealiased_wavenumber,
    taylor_green,
    velocity_from_vorticity,
    wavenumbers,
)

# a short, cheap configuration for the dataset tests
SMALL = dict(size=32, dt=0.02, spinup=0.4, snapshot_interval=0.2, snapshots=3)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- exact solutions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("drag", [0.0, 0.3])
def test_taylor_green_decays_exactly(k, drag):
    nu, t = 0.02, 1.0
    solver = SpectralSolver(64, nu, drag, 4, 0.0, 0.01)
    omega0, _, _ = taylor_green(64, 0.0, viscosity=nu, drag=drag, k=k)
    omega = solver.run(omega0[None], t)[0]
    exact, u_exact, v_exact = taylor_green(64, t, viscosity=nu, drag=drag, k=k)
    # decay factor exp(-(2 nu k^2 + alpha) t) is visible (not a trivially small change)
    assert float(exact.abs().max()) < 0.99 * float(omega0.abs().max())
    assert rel(omega, exact) < 1e-12
    u, v = solver.velocity(solver.to_spectral(omega[None]))
    assert rel(u[0], u_exact) < 1e-12 and rel(v[0], v_exact) < 1e-12
    u, v = velocity_from_vorticity(omega)
    assert rel(u, u_exact) < 1e-12 and rel(v, v_exact) < 1e-12


def test_taylor_green_through_the_dataclass_solver():
    flow = KolmogorovFlow(viscosity=0.05, drag=0.1, forcing_amplitude=0.0, dt=0.02)
    omega0, _, _ = taylor_green(64, 0.0, k=3)
    omega = flow.solver().run(omega0[None], 2.0)[0]
    exact, _, _ = taylor_green(64, 2.0, viscosity=0.05, drag=0.1, k=3)
    assert rel(omega, exact) < 1e-12


def test_taylor_green_conventions():
    omega, u, v = taylor_green(32, k=2)
    assert rel(curl(u, v), omega) < 1e-13
    assert float(divergence(u, v).abs().max()) < 1e-13


def test_laminar_state_is_a_fixed_point():
    flow = KolmogorovFlow(size=32, viscosity=0.05, drag=0.1, dt=0.02)
    lam = flow.laminar_vorticity()
    assert rel(flow.solver().run(lam[None], 1.0)[0], lam) < 1e-13
    u, v = velocity_from_vorticity(lam)
    y = 2 * math.pi * torch.arange(32, dtype=torch.float64).reshape(-1, 1) / 32
    u_lam = torch.sin(4 * y) / (0.05 * 16 + 0.1)  # A sin(k_f y) / (nu k_f^2 + alpha)
    assert rel(u, u_lam.expand(32, 32)) < 1e-13 and float(v.abs().max()) < 1e-13


def test_forcing_sign_and_shape():
    """From rest, the flow is the shear ω = f(y)(1 − e^{−λt})/λ ≈ t·f(y): the forcing is −A k_f cos(k_f y)."""
    amp, kf, nu, drag = 0.7, 3, 0.01, 0.1
    solver = SpectralSolver(32, nu, drag, kf, amp, 1e-3)
    y = 2 * math.pi * torch.arange(32, dtype=torch.float64).reshape(-1, 1) / 32
    f = (-amp * kf * torch.cos(kf * y)).expand(32, 32)
    assert rel(solver.forcing, f) < 1e-15
    t = 0.01
    omega = solver.run(torch.zeros(1, 32, 32, dtype=torch.float64), t)[0]
    lam = nu * kf * kf + drag
    assert rel(omega, f * (1 - math.exp(-lam * t)) / lam) < 1e-12
    assert rel(omega, t * f) < lam * t  # leading order t·f(y)
    u, _ = velocity_from_vorticity(omega)
    assert rel(u, (t * amp * torch.sin(kf * y)).expand(32, 32)) < lam * t  # u grows like t·A sin(k_f y)


# --- kinematics, spectra, invariants --------------------------------------------------------------------------------


def test_velocity_is_divergence_free_and_its_curl_is_the_vorticity():
    flow = KolmogorovFlow(size=32)
    omega = flow.initial_condition(range(3))
    u, v = velocity_from_vorticity(omega)
    assert float(divergence(u, v).abs().max()) < 1e-12 * float(u.abs().max())
    assert rel(curl(u, v), omega) < 1e-13
    solver = flow.solver()
    w_hat = solver.advance(solver.to_spectral(omega), 5)
    u, v = solver.velocity(w_hat)
    omega = solver.to_physical(w_hat)
    assert float(divergence(u, v).abs().max()) < 1e-12 * float(u.abs().max())
    assert rel(curl(u, v), omega) < 1e-13


def test_spectra_satisfy_parseval():
    omega = KolmogorovFlow(size=32).initial_condition([0, 1])
    k, e = energy_spectrum(omega)
    k2, z = enstrophy_spectrum(omega)
    assert e.shape == z.shape == (2, k.numel()) and torch.equal(k, k2)
    assert torch.allclose(e.sum(-1), energy(omega), rtol=1e-12)
    assert torch.allclose(z.sum(-1), enstrophy(omega), rtol=1e-12)
    # a single Taylor-Green mode (|k| = sqrt(2) k) sits in one shell with Z = |k|^2 E
    omega, _, _ = taylor_green(32, k=3)
    k, e = energy_spectrum(omega)
    _, z = enstrophy_spectrum(omega)
    shell = round(math.sqrt(2) * 3)
    assert float(e[shell]) == pytest.approx(float(e.sum()), rel=1e-12)
    assert float(z[shell]) == pytest.approx(18 * float(e[shell]), rel=1e-12)
    assert float(e.sum()) == pytest.approx(0.25, rel=1e-12)  # ½⟨u² + v²⟩ = ½ · (¼ + ¼)


def test_inviscid_unforced_flow_conserves_energy_and_enstrophy():
    """The de-aliased Galerkin system conserves both; what is left is the ETDRK4 (here RK4) truncation error."""
    flow = KolmogorovFlow(size=32, viscosity=0.0, drag=0.0, forcing_amplitude=0.0, dt=0.005, initial_rms=1.0)
    solver = flow.solver()
    omega0 = flow.initial_condition([0, 1])
    omega = solver.run(omega0, 1.0)
    assert rel(omega, omega0) > 0.05  # the flow did evolve
    e0, z0, e1, z1 = energy(omega0), enstrophy(omega0), energy(omega), enstrophy(omega)
    assert float(((e1 - e0) / e0).abs().max()) < 1e-8
    assert float(((z1 - z0) / z0).abs().max()) < 1e-8


def test_dealiasing_mask_and_wavenumbers():
    kx, ky = wavenumbers(64)
    assert kx.shape == (1, 33) and ky.shape == (64, 1)
    assert float(kx.max()) == 32 and float(ky.min()) == -32
    mask = dealias_mask(64)
    assert max_dealiased_wavenumber(64) == 21
    assert int(mask.sum()) == 43 * 22  # |ky| <= 21 (43 rows) and 0 <= kx <= 21 (22 columns)


# --- the dataset ----------------------------------------------------------------------------------------------------


def test_initial_condition_is_band_limited_and_independent_of_grouping():
    flow = KolmogorovFlow(size=32, initial_rms=2.5, seed=3)
    both = flow.initial_condition([4, 7])
    assert both.shape == (2, 32, 32) and both.dtype == torch.float64
    assert torch.equal(both[1], flow.initial_condition([7])[0])
    assert torch.allclose(both.pow(2).mean((-2, -1)).sqrt(), torch.full((2,), 2.5, dtype=torch.float64))
    assert float(both.mean((-2, -1)).abs().max()) < 1e-12
    k, z = enstrophy_spectrum(both)
    assert float(z[:, 9:].sum()) < 1e-20 * float(z.sum())  # 1 <= |k| <= 2 k_f = 8
    assert not torch.equal(both[0], both[1])
    assert not torch.equal(flow.initial_condition([4]), KolmogorovFlow(size=32, seed=4).initial_condition([4]))
    low = flow.initial_condition([7], dtype=torch.float32)
    assert low.dtype == torch.float32 and torch.allclose(low[0].double(), both[1], atol=1e-5)


def test_simulate_returns_a_described_dataset():
    flow = KolmogorovFlow(**SMALL, seed=1)
    ds = flow.simulate(range(2, 4))
    assert dict(ds.sizes) == {"trajectory": 2, "time": 3, "y": 32, "x": 32}
    for name in ("vorticity", "u", "v"):
        assert ds[name].dims == ("trajectory", "time", "y", "x")
        assert ds[name].dtype == np.float32
        assert ds[name].attrs["units"] == "1" and ds[name].attrs["long_name"]
        assert np.isfinite(ds[name].values).all()
    assert ds.trajectory.values.tolist() == [2, 3]
    np.testing.assert_allclose(ds.time.values, [0.0, 0.2, 0.4], atol=1e-12)
    np.testing.assert_allclose(ds.x.values, 2 * np.pi * np.arange(32) / 32)
    np.testing.assert_allclose(ds.y.values, ds.x.values)
    assert ds.x.attrs["axis"] == "X" and ds.y.attrs["axis"] == "Y" and ds.time.attrs["units"] == "1"
    assert ds.attrs["source"] == "sciencegen kolmogorov solver" and ds.attrs["title"]
    for key in (
        "size",
        "viscosity",
        "drag",
        "forcing_wavenumber",
        "forcing_amplitude",
        "dt",
        "snapshot_interval",
        "snapshots",
        "spinup",
        "initial_rms",
        "seed",
    ):
        assert ds.attrs[key] == getattr(flow, key)
    assert 0 < ds.attrs["max_cfl"] < 1
    # the stored velocity belongs to the stored vorticity, and the first snapshot follows the spin-up
    omega = torch.from_numpy(ds.vorticity.values).double()
    u, v = velocity_from_vorticity(omega)
    assert rel(u, torch.from_numpy(ds.u.values).double()) < 1e-6
    assert rel(v, torch.from_numpy(ds.v.values).double()) < 1e-6
    solver = flow.solver()
    first = solver.run(flow.initial_condition([2, 3]), flow.spinup)
    assert rel(omega[:, 0], first) < 1e-6


def test_simulate_is_independent_of_grouping():
    flow = KolmogorovFlow(**SMALL)
    together = flow.simulate([0, 1, 2])
    apart = [flow.simulate([2]), flow.simulate([0, 1])]
    for name in ("vorticity", "u", "v"):
        a = together[name].values
        np.testing.assert_allclose(apart[0][name].values[0], a[2], rtol=0, atol=1e-10 * np.abs(a).max())
        np.testing.assert_allclose(apart[1][name].values, a[:2], rtol=0, atol=1e-10 * np.abs(a).max())


def test_float32_follows_float64():
    flow = KolmogorovFlow(**SMALL)
    ds64 = flow.simulate([0])
    ds32 = flow.simulate([0], dtype=torch.float32)
    assert ds32.attrs["solver_dtype"] == "float32" and ds64.attrs["solver_dtype"] == "float64"
    a, b = ds64.vorticity.values, ds32.vorticity.values
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()


def test_progress_bar_counts_every_step(capsys):
    flow = KolmogorovFlow(**SMALL)
    flow.simulate([0], progress=True)
    assert f"{flow.total_steps}/{flow.total_steps}" in capsys.readouterr().err
    assert flow.total_steps == 20 + 2 * 10


def test_blow_up_raises_with_time_and_advice():
    flow = KolmogorovFlow(size=32, dt=2.0, spinup=200.0, snapshot_interval=2.0, snapshots=2, initial_rms=10.0)
    with pytest.raises(FloatingPointError, match=r"non-finite vorticity between model time .*Reduce dt"):
        flow.simulate([0])


@pytest.mark.parametrize(
    "bad",
    [
        dict(size=30 + 1),
        dict(size=4),
        dict(forcing_wavenumber=22),
        dict(forcing_wavenumber=0),
        dict(dt=0.0),
        dict(viscosity=-1.0),
        dict(snapshot_interval=0.015),
        dict(spinup=0.123),
        dict(snapshots=0),
        dict(snapshots=2.5),
        dict(seed=True),
    ],
)
def test_bad_configurations_are_refused(bad):
    with pytest.raises(ValueError):
        KolmogorovFlow(**bad)


def test_configuration_values_are_stored_in_their_declared_types():
    flow = KolmogorovFlow(size=32.0, snapshots=3.0, spinup=1, dt=1, snapshot_interval=2, viscosity=0)
    assert type(flow.size) is int and type(flow.snapshots) is int
    assert type(flow.spinup) is float and type(flow.dt) is float and type(flow.viscosity) is float
    assert flow == KolmogorovFlow(size=32, snapshots=3, spinup=1.0, dt=1.0, snapshot_interval=2.0, viscosity=0.0)


def test_bad_trajectories_are_refused():
    flow = KolmogorovFlow(**SMALL)
    for bad in ([1, 1], [0.5]):
        with pytest.raises(ValueError):
            flow.initial_condition(bad)
        with pytest.raises(ValueError):
            flow.simulate(bad)


def test_no_trajectories_gives_a_template_at_no_cost():
    flow = KolmogorovFlow()  # the default configuration: a real run would take seconds
    assert flow.initial_condition([]).shape == (0, 64, 64)
    template = flow.simulate(range(0))
    assert dict(template.sizes) == {"trajectory": 0, "time": flow.snapshots, "y": 64, "x": 64}
    full = KolmogorovFlow(**SMALL).simulate([0])
    assert set(template.vorticity.attrs) == set(full.vorticity.attrs)
    assert set(full.attrs) - set(template.attrs) == {"max_cfl"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    flow = KolmogorovFlow(**SMALL)
    cpu = flow.simulate([0, 1])
    gpu = flow.simulate([0, 1], device="cuda")
    assert np.abs(cpu.vorticity.values - gpu.vorticity.values).max() < 1e-6 * np.abs(cpu.vorticity.values).max()


# --- the default configuration --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_configuration_is_turbulent_and_statistically_steady():
    flow = KolmogorovFlow()
    ds = flow.simulate([0, 1])
    omega = torch.from_numpy(ds.vorticity.values).double()  # (trajectory, time, y, x)
    e = energy(omega)
    half = flow.snapshots // 2
    first, second = e[:, :half].mean(), e[:, half:].mean()
    assert abs(float(first - second)) < 0.15 * float(e.mean())  # no drift after the spin-up
    laminar = energy(flow.laminar_vorticity())
    assert float(e.max()) < 0.5 * float(laminar)  # far from the laminar shear flow
    assert float(omega.std(dim=-1).mean()) > 0.3 * float(omega.std())  # varies along x: not a shear flow
    assert ds.attrs["max_cfl"] < 1.0  # advective CFL, with a factor 2 to the measured stability limit
    # resolved: the enstrophy spectrum falls by many decades from its peak to the de-aliasing cutoff
    _, z = enstrophy_spectrum(omega)
    z = z.mean((0, 1))
    assert float(z[max_dealiased_wavenumber(flow.size)] / z.max()) < 1e-3  # measured 1.1e-4 over 8 trajectories
    assert 0.45 < float(e.mean()) < 0.65  # measured 0.546 ± 0.074 over 8 trajectories (datasets/kolmogorov.md)
