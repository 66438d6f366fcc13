"""Kolmogorov flow: forced 2-D incompressible Navier–Stokes on the periodic square, pseudo-spectral, in torch.

Kolmogorov flow as in Chandler & Kerswell 2013 (J. Fluid Mech. 722, 554) and Kochkov et al. 2021 (PNAS 118,
e2101784118); time stepping by ETDRK4 (Cox & Matthews 2002, J. Comput. Phys. 176, 430) with the contour-integral
coefficients of Kassam & Trefethen 2005 (SIAM J. Sci. Comput. 26, 1214).

Equations (nondimensional; domain ``[0, 2π)²``; ``x`` along the last array axis, ``y`` along the one before)::

    ∂ω/∂t + u·∇ω = ν ∇²ω − α ω + f(y),        f(y) = −A k_f cos(k_f y)
    ∇²ψ = −ω,    u = ∂ψ/∂y,    v = −∂ψ/∂x,     hence  ω = ∂v/∂x − ∂u/∂y  and  ∂u/∂x + ∂v/∂y = 0.

``f`` is the curl of the body force ``F = A sin(k_f y) x̂`` in the momentum equation
``∂u/∂t + (u·∇)u = −∇p + ν∇²u − αu + F``; its laminar fixed point is the shear flow
``u = A sin(k_f y) / (ν k_f² + α)``, ``v = 0``.

Discretisation: ``rfft2`` of ω on an ``n × n`` grid of points ``2π j / n``; the advection term in flux form
``∂(uω)/∂x + ∂(vω)/∂y`` with products formed in physical space from fields truncated by the 2/3 rule
(``|k_x|, |k_y| ≤ (n − 1) // 3``), so the retained modes are free of aliasing and the truncated system conserves
energy and enstrophy when ``ν = α = A = 0``. The linear part ``−ν|k|² − α`` is diagonal and integrated exactly
(ETDRK4); the forcing is constant in time and ETDRK4 integrates it exactly too. Everything is batched over a leading
dimension of trajectories and runs on any torch device and float dtype.

This module holds the solver (:class:`SpectralSolver`) and the trajectory generator (:class:`KolmogorovFlow`); the
spectral operators and diagnostics they use live in :mod:`sciencegen.physics.spectral` and are re-exported here
(``curl``, ``energy_spectrum``, ``taylor_green``, ...).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .spectral import (
    COMPLEX_DTYPES,
    check_dtype,
    check_size,
    curl,
    dealias_mask,
    derivative_wavenumbers,
    divergence,
    energy,
    energy_spectrum,
    enstrophy,
    enstrophy_spectrum,
    grid_points,
    max_dealiased_wavenumber,
    taylor_green,
    velocity_from_vorticity,
    wavenumbers,
)

if TYPE_CHECKING:
    import xarray

__all__ = [
    "KolmogorovFlow",
    "SpectralSolver",
    "curl",
    "dealias_mask",
    "divergence",
    "energy",
    "energy_spectrum",
    "enstrophy",
    "enstrophy_spectrum",
    "max_dealiased_wavenumber",
    "taylor_green",
    "velocity_from_vorticity",
    "wavenumbers",
]

_VARIABLES = ("vorticity", "u", "v")


def _etdrk4_coefficients(linear: torch.Tensor, dt: float, points: int = 64) -> tuple[torch.Tensor, ...]:
    """ETDRK4 coefficients ``E, E½, Q, f1, f2, f3`` for a real diagonal operator, by contour integrals.

    Evaluated once per distinct eigenvalue in float64/complex128 on a circle of radius 1 around ``dt·L``
    (Kassam & Trefethen 2005), which avoids the cancellation of the closed forms near ``L = 0``.
    """
    values, inverse = torch.unique(linear.to(torch.float64), return_inverse=True)
    hl = (dt * values).to(torch.complex128).unsqueeze(-1)
    j = torch.arange(1, points + 1, dtype=torch.float64, device=values.device)
    z = hl + torch.exp(1j * math.pi * (j - 0.5) / points)
    ez = torch.exp(z)
    q = dt * ((torch.exp(z / 2) - 1) / z).mean(-1).real
    f1 = dt * ((-4 - z + ez * (4 - 3 * z + z * z)) / z**3).mean(-1).real
    f2 = dt * ((2 + z + ez * (z - 2)) / z**3).mean(-1).real
    f3 = dt * ((-4 - 3 * z - z * z + ez * (4 - z)) / z**3).mean(-1).real
    e = torch.exp(dt * values)
    e2 = torch.exp(dt * values / 2)
    return tuple(c[inverse] for c in (e, e2, q, f1, f2, f3))


class SpectralSolver:
    """Pseudo-spectral ETDRK4 integrator of the forced vorticity equation (module docstring) on an ``n × n`` grid.

    The state is the de-aliased half spectrum ``ω̂ = rfft2(ω)`` of shape ``(B, n, n // 2 + 1)``.

    Parameters
    ----------
    size
        Grid points per side (even, ≥ 8).
    viscosity, drag
        ``ν ≥ 0`` and ``α ≥ 0``.
    forcing_wavenumber, forcing_amplitude
        ``k_f`` (``1 ≤ k_f ≤ (size − 1) // 3``) and ``A`` of the body force ``A sin(k_f y) x̂``.
    dt
        Time step.
    device, dtype
        Where and in which real dtype (float32/float64) to integrate; ETDRK4 coefficients are computed in float64.
    """

    def __init__(
        self,
        size: int,
        viscosity: float,
        drag: float,
        forcing_wavenumber: int,
        forcing_amplitude: float,
        dt: float,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        n = self.size = check_size(size)
        self.dtype = check_dtype(dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dt = float(dt)
        if not self.dt > 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        if viscosity < 0 or drag < 0:
            raise ValueError(f"viscosity and drag must be >= 0, got {viscosity!r}, {drag!r}")
        self.kmax = max_dealiased_wavenumber(n)
        kf, amp = int(forcing_wavenumber), float(forcing_amplitude)
        if kf != forcing_wavenumber or not 1 <= kf <= self.kmax:
            raise ValueError(f"forcing_wavenumber must be an integer in [1, {self.kmax}] at size {n}, got {kf!r}")
        # built in float64 on the CPU, then cast and moved: identical operators on every device
        kx, ky = wavenumbers(n)
        k2 = kx**2 + ky**2
        mask = dealias_mask(n)
        linear = -float(viscosity) * k2 - float(drag)
        inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
        dkx, dky = derivative_wavenumbers(n, None, torch.float64)
        y = grid_points(n, None, torch.float64).reshape(-1, 1)
        forcing = (-amp * kf * torch.cos(kf * y)).expand(n, n)
        cdtype = COMPLEX_DTYPES[dtype]

        def put(t: torch.Tensor, to: torch.dtype = dtype) -> torch.Tensor:
            return t.to(to).to(self.device)

        self.mask = put(mask.double())
        self._coefficients = [put(c) for c in _etdrk4_coefficients(linear, self.dt)]
        # i k / |k|² maps ω̂ to û, v̂; i k maps fluxes to their divergence; masked so retained modes stay retained
        self._to_u = put(1j * dky * inv_k2 * mask, cdtype)
        self._to_v = put(-1j * dkx * inv_k2 * mask, cdtype)
        self._ikx = put(1j * dkx * mask, cdtype)
        self._iky = put(1j * dky * mask, cdtype)
        self.forcing = put(forcing)
        self._forcing_hat = put(torch.fft.rfft2(forcing) * mask, cdtype)

    def to_spectral(self, omega: torch.Tensor) -> torch.Tensor:
        """De-aliased half spectrum of vorticity ``(..., n, n)`` (moved to the solver's device and dtype)."""
        omega = omega.to(device=self.device, dtype=self.dtype)
        return torch.fft.rfft2(omega) * self.mask

    def to_physical(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Vorticity on the grid from its half spectrum."""
        return torch.fft.irfft2(w_hat, s=(self.size, self.size))

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity ``(u, v)`` on the grid from the vorticity half spectrum."""
        uv = torch.fft.irfft2(torch.stack((self._to_u * w_hat, self._to_v * w_hat), dim=-3), s=(self.size,) * 2)
        return uv[..., 0, :, :], uv[..., 1, :, :]

    def tendency(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Non-stiff part of ``∂ω̂/∂t``: ``−(∂(uω)/∂x + ∂(vω)/∂y)`` de-aliased, plus the forcing."""
        n = self.size
        fields = torch.fft.irfft2(torch.stack((self._to_u * w_hat, self._to_v * w_hat, w_hat), dim=-3), s=(n, n))
        omega = fields[..., 2:3, :, :]
        flux = torch.fft.rfft2(fields[..., :2, :, :] * omega)
        return self._forcing_hat - self._ikx * flux[..., 0, :, :] - self._iky * flux[..., 1, :, :]

    def step(self, w_hat: torch.Tensor) -> torch.Tensor:
        """One ETDRK4 step of length ``dt`` (Cox & Matthews 2002) of the half spectrum ``w_hat``."""
        e, e2, q, f1, f2, f3 = self._coefficients
        nv = self.tendency(w_hat)
        a = e2 * w_hat + q * nv
        na = self.tendency(a)
        b = e2 * w_hat + q * na
        nb = self.tendency(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = self.tendency(c)
        return e * w_hat + f1 * nv + 2 * f2 * (na + nb) + f3 * nc

    def advance(self, w_hat: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` ETDRK4 steps of the half spectrum (no finiteness checks)."""
        for _ in range(int(steps)):
            w_hat = self.step(w_hat)
        return w_hat

    def run(self, omega: torch.Tensor, duration: float) -> torch.Tensor:
        """Integrate vorticity ``(..., n, n)`` on the grid for ``duration`` (a whole number of steps)."""
        return self.to_physical(self.advance(self.to_spectral(omega), _whole_steps(duration, self.dt, "duration")))

    def cfl(self, w_hat: torch.Tensor) -> float:
        """Advective CFL number ``dt · max(|u| + |v|) / Δx`` over the batch, ``Δx = 2π / n``."""
        u, v = self.velocity(w_hat)
        return float((u.abs() + v.abs()).max()) * self.dt * self.size / (2 * math.pi)


def _whole_steps(duration: float, dt: float, name: str) -> int:
    steps = round(duration / dt)
    if steps < 0 or abs(steps * dt - duration) > 1e-9 * max(1.0, abs(duration)):
        raise ValueError(f"{name} = {duration!r} must be a non-negative whole multiple of dt = {dt!r}")
    return int(steps)


def _trajectory_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"sciencegen.kolmogorov/{int(seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class KolmogorovFlow:
    """Kolmogorov-flow trajectories of the forced 2-D vorticity equation (module docstring), all nondimensional.

    Parameters
    ----------
    size
        Grid points per side of the ``[0, 2π)²`` square.
    viscosity
        Kinematic viscosity ``ν`` (``Re = 1/ν`` in the units of Chandler & Kerswell 2013 with ``A = 1``).
    drag
        Linear (Rayleigh) drag ``α``.
    forcing_wavenumber
        ``k_f`` of the body force ``A sin(k_f y) x̂``.
    forcing_amplitude
        ``A``.
    dt
        Solver time step (ETDRK4; the viscous and drag terms are exact, the limit is advective).
    snapshot_interval
        Model time between stored snapshots (a whole number of ``dt``).
    snapshots
        Snapshots stored per trajectory; the first is taken at the end of the spin-up.
    spinup
        Model time integrated and discarded before the first snapshot (a whole number of ``dt``).
    initial_rms
        Root-mean-square vorticity of the random initial condition.
    seed
        Trajectory ``i`` starts from a random field drawn from a generator seeded by ``(seed, i)`` only.

    Notes
    -----
    The defaults are chaotic and resolved at 64² (the enstrophy spectrum falls four decades from its peak to the
    2/3 cutoff and matches a 128² run within 3 % up to k = 19); ``dt`` keeps the advective CFL number below 1 with
    a factor 2 to spare; ``snapshot_interval`` is about 1.5 vorticity decorrelation times. Measurements and
    commands: ``datasets/kolmogorov.md``.
    """

    size: int = 64
    viscosity: float = 0.015
    drag: float = 0.1
    forcing_wavenumber: int = 4
    forcing_amplitude: float = 1.0
    dt: float = 0.02
    snapshot_interval: float = 3.0
    snapshots: int = 50
    spinup: float = 50.0
    initial_rms: float = 3.5
    seed: int = 0

    def __post_init__(self) -> None:
        # configuration files give 64.0 or 50 as easily as 64 or 50.0: store each field in its declared type
        for name, kind in (("size", int), ("forcing_wavenumber", int), ("snapshots", int), ("seed", int)):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, kind(value))
        for name in ("viscosity", "drag", "forcing_amplitude", "dt", "snapshot_interval", "spinup", "initial_rms"):
            object.__setattr__(self, name, float(getattr(self, name)))
        check_size(self.size)
        if self.viscosity < 0 or self.drag < 0:
            raise ValueError(f"viscosity and drag must be >= 0, got {self.viscosity!r}, {self.drag!r}")
        if not self.dt > 0:
            raise ValueError(f"dt must be positive, got {self.dt!r}")
        kmax = max_dealiased_wavenumber(self.size)
        if not 1 <= self.forcing_wavenumber <= kmax:
            raise ValueError(f"forcing_wavenumber must be an integer in [1, {kmax}], got {self.forcing_wavenumber!r}")
        if self.snapshots < 1:
            raise ValueError(f"snapshots must be a positive integer, got {self.snapshots!r}")
        if self.initial_rms < 0:
            raise ValueError(f"initial_rms must be >= 0, got {self.initial_rms!r}")
        if self.steps_per_snapshot < 1:
            raise ValueError(f"snapshot_interval must be at least dt, got {self.snapshot_interval!r}")
        _ = self.spinup_steps

    @property
    def steps_per_snapshot(self) -> int:
        """Solver steps between stored snapshots."""
        return _whole_steps(self.snapshot_interval, self.dt, "snapshot_interval")

    @property
    def spinup_steps(self) -> int:
        """Solver steps discarded before the first snapshot."""
        return _whole_steps(self.spinup, self.dt, "spinup")

    @property
    def total_steps(self) -> int:
        """Solver steps per trajectory: spin-up plus recording."""
        return self.spinup_steps + (self.snapshots - 1) * self.steps_per_snapshot

    def solver(self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> SpectralSolver:
        """The :class:`SpectralSolver` of this configuration on ``device`` in ``dtype``."""
        return SpectralSolver(
            self.size,
            self.viscosity,
            self.drag,
            self.forcing_wavenumber,
            self.forcing_amplitude,
            self.dt,
            device=device,
            dtype=dtype,
        )

    def laminar_vorticity(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """Laminar fixed point ``ω = −A k_f cos(k_f y) / (ν k_f² + α)`` on the grid, shape ``(size, size)``."""
        kf = self.forcing_wavenumber
        y = grid_points(self.size, device, dtype).reshape(-1, 1)
        rate = self.viscosity * kf * kf + self.drag
        if rate == 0:
            raise ValueError("no laminar fixed point without viscosity or drag")
        return (-self.forcing_amplitude * kf * torch.cos(kf * y) / rate).expand(self.size, self.size).clone()

    def initial_condition(
        self,
        trajectories: Sequence[int] | range,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """Random initial vorticity, shape ``(len(trajectories), size, size)``.

        Trajectory ``i`` is a band-limited Gaussian random field (white noise restricted to ``1 ≤ |k| ≤ 2 k_f``
        and to the de-aliased modes, zero mean) scaled to rms ``initial_rms``. It is drawn in float64 on the CPU
        from a ``torch.Generator`` seeded by a hash of ``(seed, i)`` and then moved to ``device``/``dtype``, so it
        does not depend on the grouping of trajectories, nor on the device.
        """
        indices = _indices(trajectories)
        n = self.size
        kx, ky = wavenumbers(n)
        kk = torch.sqrt(kx**2 + ky**2)
        band = (kk >= 1) & (kk <= min(2 * self.forcing_wavenumber, max_dealiased_wavenumber(n))) & dealias_mask(n)
        fields = []
        for index in indices:
            generator = torch.Generator().manual_seed(_trajectory_seed(self.seed, index))
            noise = torch.randn(n, n, generator=generator, dtype=torch.float64)
            field = torch.fft.irfft2(torch.fft.rfft2(noise) * band, s=(n, n))
            rms = field.pow(2).mean().sqrt()
            fields.append(field * (self.initial_rms / rms) if rms > 0 else field)
        stacked = torch.stack(fields) if fields else torch.zeros(0, n, n, dtype=torch.float64)
        return stacked.to(device=device, dtype=check_dtype(dtype))

    def simulate(
        self,
        trajectories: Sequence[int] | range,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        progress: bool = False,
    ) -> xarray.Dataset:
        """Spin up and record trajectories.

        Parameters
        ----------
        trajectories
            Distinct integer trajectory indices, integrated together as one batch (on a CPU, batches of about 4
            are the most efficient per trajectory at 64²). Empty: a template with the coordinates and attributes,
            no integration.
        device, dtype
            Where and in which precision to solve (results are stored as float32).
        progress
            Show a tqdm bar over solver steps (spin-up plus recording).

        Returns
        -------
        xarray.Dataset
            ``vorticity``, ``u``, ``v`` (float32, dims ``trajectory, time, y, x``) with coordinates ``trajectory``
            (the indices passed), ``time`` (model time since the end of the spin-up), ``y`` and ``x``
            (``2π j / size``); the parameters in the attributes, plus ``max_cfl``, the largest advective CFL
            number ``dt · max(|u| + |v|) / Δx`` met at the stored snapshots (absent from an empty template).

        Raises
        ------
        FloatingPointError
            If the vorticity stops being finite (the time step is too large for the flow).
        """
        import xarray as xr
        from tqdm.auto import tqdm

        indices = _indices(trajectories)
        solver = self.solver(device=device, dtype=dtype)
        if not indices:  # a template: coordinates and attributes at no cost
            empty = {name: np.empty((0, self.snapshots, self.size, self.size), np.float32) for name in _VARIABLES}
            return self._dataset(xr, indices, empty, None, solver.dtype)
        w_hat = solver.to_spectral(self.initial_condition(indices, device=solver.device, dtype=dtype))
        count, n, steps_per_snapshot = len(indices), self.size, self.steps_per_snapshot
        out = {name: np.empty((count, self.snapshots, n, n), dtype=np.float32) for name in _VARIABLES}
        max_cfl = 0.0
        done = 0
        with tqdm(total=self.total_steps, disable=not progress, desc="kolmogorov", unit="step") as bar:

            def advance(w_hat: torch.Tensor, steps: int) -> torch.Tensor:
                nonlocal done
                chunk = max(1, min(steps_per_snapshot, 200))
                while steps > 0:
                    now = min(chunk, steps)
                    w_hat = solver.advance(w_hat, now)
                    steps -= now
                    done += now
                    bar.update(now)
                    if not bool(torch.isfinite(torch.view_as_real(w_hat)).all()):
                        t0, t1 = (done - now) * self.dt, done * self.dt
                        phase = "spin-up" if t1 <= self.spinup + 1e-12 else "recording"
                        raise FloatingPointError(
                            f"Kolmogorov solver blew up: non-finite vorticity between model time {t0:.6g} and "
                            f"{t1:.6g} since the initial condition ({phase}; spin-up ends at {self.spinup:g}), "
                            f"after {done} steps of dt = {self.dt:g}. Reduce dt (advective CFL "
                            f"dt·max(|u|+|v|)/Δx should stay below about 1; see the max_cfl attribute of a "
                            f"successful run) or raise the viscosity."
                        )
                return w_hat

            w_hat = advance(w_hat, self.spinup_steps)
            for s in range(self.snapshots):
                if s:
                    w_hat = advance(w_hat, steps_per_snapshot)
                u, v = solver.velocity(w_hat)
                out["vorticity"][:, s] = solver.to_physical(w_hat).to(device="cpu", dtype=torch.float32).numpy()
                out["u"][:, s] = u.to(device="cpu", dtype=torch.float32).numpy()
                out["v"][:, s] = v.to(device="cpu", dtype=torch.float32).numpy()
                max_cfl = max(max_cfl, float((u.abs() + v.abs()).max()) * self.dt * n / (2 * math.pi))
        return self._dataset(xr, indices, out, max_cfl, solver.dtype)

    def _dataset(self, xr, indices: list[int], out: dict, max_cfl: float | None, dtype: torch.dtype) -> xarray.Dataset:
        n = self.size
        grid = (2 * np.pi * np.arange(n) / n).astype(np.float64)
        time = np.arange(self.snapshots, dtype=np.float64) * self.steps_per_snapshot * self.dt
        dims = ("trajectory", "time", "y", "x")
        variables = {
            "vorticity": {"units": "1", "long_name": "relative vorticity dv/dx - du/dy (nondimensional)"},
            "u": {"units": "1", "long_name": "x-component of velocity (nondimensional)"},
            "v": {"units": "1", "long_name": "y-component of velocity (nondimensional)"},
        }
        data_vars = {name: (dims, out[name], attrs) for name, attrs in variables.items()}
        position = "position on the periodic [0, 2pi) square"
        coords = {
            "trajectory": ("trajectory", np.asarray(indices, dtype=np.int64), {"long_name": "trajectory index"}),
            "time": ("time", time, {"units": "1", "long_name": "model time since the end of the spin-up"}),
            "y": ("y", grid, {"units": "1", "long_name": f"y {position}", "axis": "Y"}),
            "x": ("x", grid.copy(), {"units": "1", "long_name": f"x {position}", "axis": "X"}),
        }
        params = {key: float(value) if isinstance(value, float) else int(value) for key, value in asdict(self).items()}
        attrs = {
            "title": "Kolmogorov flow: forced 2-D incompressible Navier-Stokes on the periodic square",
            "source": "sciencegen kolmogorov solver",
            "Conventions": "CF-1.10",
            "equations": (
                "dw/dt + u.grad(w) = viscosity*lap(w) - drag*w - forcing_amplitude*forcing_wavenumber*"
                "cos(forcing_wavenumber*y); lap(psi) = -w, u = dpsi/dy, v = -dpsi/dx"
            ),
            "method": "pseudo-spectral, 2/3-rule de-aliasing, ETDRK4 (Cox & Matthews 2002, Kassam & Trefethen 2005)",
            "solver_dtype": str(dtype).replace("torch.", ""),
            **params,
        }
        if max_cfl is not None:
            attrs["max_cfl"] = max_cfl
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _indices(trajectories: Sequence[int] | range) -> list[int]:
    indices = [int(i) for i in trajectories]
    if any(int(i) != i for i in trajectories):
        raise ValueError(f"trajectory indices must be integers, got {trajectories!r}")
    if len(set(indices)) != len(indices):
        raise ValueError("trajectory indices must be distinct")
    return indices
