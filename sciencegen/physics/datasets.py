"""Built-in generated datasets as lazy Dask graphs: one task per chunk of samples.

Each sample depends only on ``(seed, index)``, so any chunking or worker count
gives the same data. See ``datasets/grf.md`` and ``datasets/kolmogorov.md``.
"""

from __future__ import annotations

import operator
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr

from ..data.fields import DataError, FieldSpec
from ..data.sources import FieldSource
from ..samplers import noise
from ..targets import GaussianRandomField

__all__ = ["GRFSource", "KolmogorovSource", "grf_samples", "grf_trajectories"]

_AXES = ("z", "y", "x")


def grf_samples(target: GaussianRandomField, seed: int, start: int, stop: int) -> np.ndarray:
    """Exact samples ``start..stop-1`` of a GRF; sample ``i`` depends only on ``(seed, i)``.

    Returns
    -------
    numpy.ndarray
        ``[stop - start, channels, n, ...]`` float64.
    """
    white = noise.normal(seed, range(start, stop), 0, target.shape, tag=noise.DATA, dtype=torch.float64)
    return target.colour(white).numpy()


def grf_trajectories(target: GaussianRandomField, seed: int, start: int, stop: int, length: int,
                     ar: float) -> np.ndarray:
    """Exact AR(1) trajectories ``start..stop-1`` of a GRF: ``x_0 = colour(w_0)``, ``x_{t+1} = ar x_t + sqrt(1 - ar^2)
    colour(w_{t+1})`` (stationary: every ``x_t`` is the GRF, lag-k correlation ``ar^k``).

    The white noise ``w_t`` of trajectory ``i`` is :func:`~sciencegen.samplers.noise.normal` with member ``i``,
    step ``t`` and tag ``noise.DATA``: trajectory ``i`` depends only on ``(seed, i)`` (a longer ``length`` extends
    it), and its ``x_0`` is sample ``i`` of :func:`grf_samples`.

    Returns
    -------
    numpy.ndarray
        ``[stop - start, length, channels, n, ...]`` float64.
    """
    members = range(start, stop)
    x = target.colour(noise.normal(seed, members, 0, target.shape, tag=noise.DATA, dtype=torch.float64))
    out = [x]
    keep = float(np.sqrt(1.0 - ar * ar))
    for t in range(1, length):
        white = noise.normal(seed, members, t, target.shape, tag=noise.DATA, dtype=torch.float64)
        x = ar * x + keep * target.colour(white)
        out.append(x)
    return torch.stack(out, dim=1).numpy()


class GRFSource(FieldSource):
    """Periodic Gaussian random fields with a power-law spectrum, sampled exactly (``dataset=grf``).

    Parameters
    ----------
    size
        Grid points per side.
    samples
        Number of samples.
    slope, k0
        Spectral slope and roll-over wavenumber (see :class:`~sciencegen.targets.GaussianRandomField`).
    channels
        Independent channels (variables ``field`` or ``field0..``).
    ndim
        1, 2 or 3 spatial dims (``x``; ``y, x``; ``z, y, x``).
    seed
        Sample ``i`` depends only on ``(seed, i)``.
    chunk
        Samples per chunk (one generation task each); with ``ar``, ``max(1, chunk // length)`` trajectories.
    ar
        ``None`` (default): independent samples on dim ``sample``. A number in ``(-1, 1)``: ``samples`` AR(1)
        trajectories of ``length`` steps on dims ``(trajectory, time)`` (:func:`grf_trajectories`).
    length
        Time steps per trajectory (with ``ar``).
    name, nonfinite
        See :class:`~sciencegen.data.sources.FieldSource`.
    """

    generated = True

    def __init__(self, size: int = 32, samples: int = 4096, slope: float = 3.0, k0: float = 4.0, channels: int = 1,
                 ndim: int = 2, seed: int = 0, chunk: int = 256, name: str = "grf", nonfinite: str = "error",
                 ar: float | None = None, length: int = 16):
        super().__init__(name, nonfinite)
        if ar is not None and not -1.0 < float(ar) < 1.0:
            raise DataError(f"dataset.ar must be in (-1, 1) or null (independent samples), got {ar!r}")
        if int(length) != length or length < 1:
            raise DataError(f"dataset.length must be an integer >= 1, got {length!r}")
        self.ar, self.length = (None if ar is None else float(ar)), int(length)
        checks = (("size", size, 2), ("samples", samples, 1), ("channels", channels, 1), ("chunk", chunk, 1))
        for key, val, lo in checks:
            if int(val) != val or val < lo:
                raise DataError(f"dataset.{key} must be an integer >= {lo}, got {val!r}")
        try:
            self._target = GaussianRandomField(int(size), slope=slope, k0=k0, channels=int(channels), ndim=int(ndim))
        except ValueError as exc:
            raise DataError(f"dataset: {exc}") from None
        self.size, self.samples, self.seed, self.chunk = int(size), int(samples), int(seed), int(chunk)
        self.slope, self.k0, self.channels, self.ndim = float(slope), float(k0), int(channels), int(ndim)

    def target(self) -> GaussianRandomField:
        """The exact law (its denoiser is the ``oracle`` model)."""
        return self._target

    def variables(self) -> tuple[str, ...]:
        """Variable names, one per channel."""
        return ("field",) if self.channels == 1 else tuple(f"field{c}" for c in range(self.channels))

    def attrs(self) -> dict[str, Any]:
        """Generator parameters for the store attributes."""
        if self.ar is not None:
            return {**self._attrs(), "grf_ar": self.ar, "grf_length": self.length,
                    "title": f"AR(1) Gaussian random fields {self.size}^{self.ndim}"}
        return self._attrs()

    def _attrs(self) -> dict[str, Any]:
        return {"title": f"Gaussian random fields {self.size}^{self.ndim}", "source": "sciencegen grf generator",
                "grf_slope": self.slope, "grf_k0": self.k0, "grf_seed": self.seed,
                "comment": "per-mode variance (1 + |k|^2/k0^2)^(-slope/2) in the orthonormal DFT basis, "
                "normalised to mean per-pixel variance 1; periodic unit domain"}

    def chunks(self) -> dict[str, int]:
        """One chunk per generation task."""
        if self.ar is not None:
            return {"trajectory": self._per_task(), "time": self.length}
        return {"sample": min(self.chunk, self.samples)}

    def _per_task(self) -> int:
        return min(max(1, self.chunk // self.length), self.samples)

    def open(self, progress: bool = False) -> tuple[xr.Dataset, FieldSpec, str]:
        """Lazy dataset: one Dask task per chunk of samples (of trajectories, with ``ar``)."""
        if self.ar is not None:
            return self._open_ar()
        n, shape = self.size, self._target.shape
        fdims = _AXES[-self.ndim:]
        chunk = min(self.chunk, self.samples)
        blocks = []
        for start in range(0, self.samples, chunk):
            stop = min(start + chunk, self.samples)
            task = dask.delayed(grf_samples, pure=True)(self._target, self.seed, start, stop)
            blocks.append(da.from_delayed(task, (stop - start, *shape), dtype=np.float64))
        arr = da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
        coords = {d: (d, (np.arange(n) / n), {"units": "1", "long_name": f"{d} position (unit periodic domain)",
                                               "axis": d.upper()}) for d in fdims}
        coords["sample"] = ("sample", np.arange(self.samples), {"long_name": "sample index"})
        data = {}
        for c, v in enumerate(self.variables()):
            name = "Gaussian random field" + (f" channel {c}" if self.channels > 1 else "")
            data[v] = (("sample", *fdims), arr[:, c].astype(np.float32), {"units": "1", "long_name": name})
        ds = xr.Dataset(data, coords=coords)
        spec = FieldSpec(self.variables(), ("sample",), fdims, {d: True for d in fdims})
        return ds, spec, f"grf (size {n}, {self.samples} samples)"

    def _open_ar(self) -> tuple[xr.Dataset, FieldSpec, str]:
        n, shape, fdims, per = self.size, self._target.shape, _AXES[-self.ndim:], self._per_task()
        blocks = []
        for start in range(0, self.samples, per):
            stop = min(start + per, self.samples)
            task = dask.delayed(grf_trajectories, pure=True)(self._target, self.seed, start, stop, self.length,
                                                             self.ar)
            blocks.append(da.from_delayed(task, (stop - start, self.length, *shape), dtype=np.float64))
        arr = da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
        coords = {d: (d, (np.arange(n) / n), {"units": "1", "long_name": f"{d} position (unit periodic domain)",
                                               "axis": d.upper()}) for d in fdims}
        coords["trajectory"] = ("trajectory", np.arange(self.samples), {"long_name": "trajectory index"})
        coords["time"] = ("time", np.arange(self.length), {"units": "steps", "long_name": "AR(1) time step"})
        data = {}
        for c, v in enumerate(self.variables()):
            name = "AR(1) Gaussian random field" + (f" channel {c}" if self.channels > 1 else "")
            data[v] = (("trajectory", "time", *fdims), arr[:, :, c].astype(np.float32),
                       {"units": "1", "long_name": name})
        spec = FieldSpec(self.variables(), ("trajectory", "time"), fdims, {d: True for d in fdims})
        return (xr.Dataset(data, coords=coords), spec,
                f"grf (size {n}, {self.samples} AR(1) trajectories x {self.length} steps, ar {self.ar:g})")


class KolmogorovSource(FieldSource):
    """2-D Kolmogorov flow snapshots from the package's pseudo-spectral solver (``dataset=kolmogorov``).

    Parameters
    ----------
    trajectories
        Independent trajectories (random initial conditions).
    chunk
        Trajectories simulated together per task (batched on the device).
    device
        Torch device for the solver (``cpu``, ``cuda``).
    variables
        Variables to keep, from ``vorticity``, ``u``, ``v`` (default all three).
    name, nonfinite
        See :class:`~sciencegen.data.sources.FieldSource`.
    **flow
        Parameters of :class:`~sciencegen.physics.kolmogorov.KolmogorovFlow` (size, viscosity, drag, ...).
    """

    generated = True

    def __init__(self, trajectories: int = 16, chunk: int = 4, device: str = "cpu",
                 variables: Any = ("vorticity", "u", "v"), name: str = "kolmogorov", nonfinite: str = "error",
                 **flow: Any):
        from .kolmogorov import KolmogorovFlow

        super().__init__(name, nonfinite)
        for key, val in (("trajectories", trajectories), ("chunk", chunk)):
            if int(val) != val or val < 1:
                raise DataError(f"dataset.{key} must be an integer >= 1, got {val!r}")
        try:
            self.flow = KolmogorovFlow(**flow)
        except TypeError as exc:
            raise DataError(f"dataset: {exc}") from None
        self.trajectories, self.chunk, self.device = int(trajectories), int(chunk), str(device)
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise DataError(f"dataset.device={self.device} but CUDA is not available here (use dataset.device=cpu)")
        self.vars = (variables,) if isinstance(variables, str) else tuple(variables)
        unknown = [v for v in self.vars if v not in ("vorticity", "u", "v")]
        if unknown or not self.vars:
            raise DataError(f"dataset.variables: choose from vorticity, u, v; got {list(self.vars)}")

    def chunks(self) -> dict[str, int]:
        """One chunk per simulation task (all snapshots of ``chunk`` trajectories)."""
        return {"trajectory": min(self.chunk, self.trajectories), "time": self.flow.snapshots}

    def open(self, progress: bool = False) -> tuple[xr.Dataset, FieldSpec, str]:
        """Lazy dataset: one Dask task per chunk of trajectories; coordinates from an empty simulation."""
        template = self.flow.simulate(range(0, 0), device="cpu")
        n, t = self.flow.size, self.flow.snapshots
        chunk = min(self.chunk, self.trajectories)
        sims, data = [], {}
        for start in range(0, self.trajectories, chunk):
            stop = min(start + chunk, self.trajectories)
            sims.append((start, stop, dask.delayed(_simulate, pure=True)(self.flow, start, stop, self.device,
                                                                        self.vars, progress)))
        for i, v in enumerate(self.vars):
            blocks = [da.from_delayed(_pick(s, i), (b - a, t, n, n), dtype=np.float32)
                      for a, b, s in sims]
            arr = da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
            data[v] = (("trajectory", "time", "y", "x"), arr, dict(template[v].attrs))
        coords = _flow_coords(self.trajectories, template)
        # the solver's own attributes (equations, method, parameters); max_cfl differs per chunk: not kept
        attrs = {k: v for k, v in template.attrs.items() if k != "max_cfl"}
        ds = xr.Dataset(data, coords=coords, attrs=attrs)
        spec = FieldSpec(self.vars, ("trajectory", "time"), ("y", "x"), {"y": True, "x": True})
        return ds, spec, f"kolmogorov ({n}^2, {self.trajectories} trajectories x {t} snapshots)"


def _pick(task: Any, i: int) -> Any:
    # operator.getitem, not a lambda: pure=True keys come from tokenizing the function and its arguments
    return dask.delayed(operator.getitem, pure=True)(task, i)


def _simulate(flow: Any, start: int, stop: int, device: str, variables: tuple[str, ...], progress: bool):
    ds = flow.simulate(range(start, stop), device=device, progress=progress)
    return [np.asarray(ds[v].transpose("trajectory", "time", "y", "x").values, dtype=np.float32) for v in variables]


def _flow_coords(trajectories: int, template: xr.Dataset) -> dict[str, Any]:
    # the template (simulate over no trajectories) has the solver's coordinates and attributes
    coords: dict[str, Any] = {"trajectory": ("trajectory", np.arange(trajectories),
                                             dict(template["trajectory"].attrs) or {"long_name": "trajectory index"})}
    for d in ("time", "y", "x"):
        coords[d] = (d, np.asarray(template[d].values), dict(template[d].attrs))
    return coords
