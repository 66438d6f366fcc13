"""Kinds of conditioning: a dataset turned into (target, condition) pairs, and the layout a prepared store records.

A dataset config's key ``conditioning`` maps a name to a kind config (Hydra ``_target_``)::

    conditioning:
      state: {_target_: sciencegen.data.conditioning.State, lag: 1, dim: time}
      static: {_target_: sciencegen.data.conditioning.Static, coords: true}

Built-in kinds (each a :class:`ConditionKind`; a user adds one by subclassing it and naming it in a yaml):

* :class:`State` — forecast / emulation: the target is the field at ``t + lag`` (index steps along ``dim``), the
  input the field at ``t`` (within each trajectory: the other sample dims are kept apart);
* :class:`Coarse` — downscaling: the input is the target's mean over non-overlapping ``factor^ndim`` blocks,
  repeated back to the fine grid;
* :class:`Variables` — other variables of the dataset as inputs (the targets are the others);
* :class:`Static` — fields that do not depend on the sample: sin/cos of periodic coordinates, the plain
  coordinate scaled to [-1, 1] otherwise, user static variables (land-sea mask, orography).

:func:`build_inputs` applies the kinds to a dataset (the data stage, ``sciencegen-data``) or to a user's condition
file (generation); :func:`condition_layout` reads back what a prepared store holds and :func:`split_samples` the
samples of its train / validation split (the chunk split of :class:`~sciencegen.data.stream.FieldStream`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..config import instantiate, plain
from .fields import DataError, FieldSpec

__all__ = ["Coarse", "ConditionKind", "ConditionLayout", "Conditioned", "State", "Static", "Variables",
           "build_inputs", "condition_layout", "make_kinds", "needed_variables", "split_samples"]

#: what an input or static channel is made of: ``(lazy DataArray, JSON info recorded in the store)``
Made = dict[str, tuple[xr.DataArray, dict[str, Any]]]


class ConditionKind:
    """Base class of the conditioning kinds (override what your kind does; every method has a neutral default).

    A kind is built from its dataset-config entry by Hydra ``_target_``; :meth:`config` is what the store records.
    """

    def config(self) -> dict[str, Any]:
        """The plain config of this kind (``_target_`` and its arguments), recorded in the store."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **self.params()}

    def params(self) -> dict[str, Any]:
        """The constructor arguments (JSON values)."""
        return {}

    def needs(self) -> tuple[str, ...]:
        """Variables of the source this kind reads beyond the dataset's variables (kept when the source is opened)."""
        return ()

    def targets(self, variables: tuple[str, ...]) -> tuple[str, ...]:
        """The target variables given the dataset's variables (default: all of them)."""
        return variables

    def pair(self) -> tuple[str, int] | None:
        """``(dim, lag)`` when the kind pairs each target with the sample ``lag`` steps before it along ``dim``."""
        return None

    def inputs(self, key: str, sample: xr.Dataset, previous: xr.Dataset, targets: FieldSpec,
               grid: Mapping[str, int], label: str) -> Made:
        """Per-sample input channels ``input_*`` on the targets' dims.

        Parameters
        ----------
        key
            The kind's name in the ``conditioning`` mapping (recorded as ``kind`` in each input's info).
        sample
            The source at the target's sample (a condition file: the file).
        previous
            The source ``lag`` steps before (a condition file: the file; without a pairing kind: ``sample``).
        targets
            The targets' spec (variables, sample dims, field dims).
        grid
            The target's field sizes ``{dim: n}``.
        label
            Names the data in messages.
        """
        return {}

    def static(self, key: str, ds: xr.Dataset, spec: FieldSpec, label: str) -> Made:
        """Static channels ``static_*`` on the field dims only (default: none)."""
        return {}


class State(ConditionKind):
    """Forecast / emulation: target = field at ``t + lag``, input = field at ``t`` (index steps along ``dim``).

    Pairs never cross the other sample dims (a leading ``trajectory`` dim keeps trajectories apart). The sample
    coordinate of a pair is the input time ``t``. Inputs ``input_<var>`` for every target variable.

    Parameters
    ----------
    lag
        Index steps between input and target (>= 1, < the length of ``dim``).
    dim
        The sample dim to step along.
    """

    def __init__(self, lag: int = 1, dim: str = "time"):
        if int(lag) != lag or lag < 1:
            raise DataError(f"conditioning state: lag must be an integer >= 1, got {lag!r}")
        self.lag, self.dim = int(lag), str(dim)

    def params(self) -> dict[str, Any]:
        """``lag``, ``dim``."""
        return {"lag": self.lag, "dim": self.dim}

    def pair(self) -> tuple[str, int]:
        """``(dim, lag)``."""
        return self.dim, self.lag

    def inputs(self, key: str, sample: xr.Dataset, previous: xr.Dataset, targets: FieldSpec,
               grid: Mapping[str, int], label: str) -> Made:
        """``input_<var>``: each target variable at the input time."""
        out: Made = {}
        for v in targets.variables:
            if v not in previous.data_vars:
                raise DataError(f"{label}: conditioning {key} needs variable {v!r} (the state), which it lacks "
                                f"(has {', '.join(map(str, previous.data_vars)) or 'none'})")
            out[f"input_{v}"] = (previous[v], {"kind": key, "variable": v, "lag": self.lag, "dim": self.dim})
        return out


class Coarse(ConditionKind):
    """Downscaling: input = mean over non-overlapping ``factor`` blocks per field dim, repeated back to the grid.

    Parameters
    ----------
    factor
        Block size along every field dim (each field dim must be divisible by it).
    variables
        Variables to coarsen (default: the targets); inputs ``input_<var>_coarse``.
    """

    def __init__(self, factor: int = 4, variables: Sequence[str] | str | None = None):
        if int(factor) != factor or factor < 2:
            raise DataError(f"conditioning coarse: factor must be an integer >= 2, got {factor!r}")
        self.factor = int(factor)
        self.variables = None if variables is None else tuple([variables] if isinstance(variables, str)
                                                              else variables)

    def params(self) -> dict[str, Any]:
        """``factor``, ``variables``."""
        return {"factor": self.factor, "variables": None if self.variables is None else list(self.variables)}

    def needs(self) -> tuple[str, ...]:
        """The variables named (they may be other variables of the source)."""
        return self.variables or ()

    def inputs(self, key: str, sample: xr.Dataset, previous: xr.Dataset, targets: FieldSpec,
               grid: Mapping[str, int], label: str) -> Made:
        """``input_<var>_coarse``: block means of ``sample[var]``, or a coarse field repeated back to ``grid``."""
        out: Made = {}
        for v in self.variables or targets.variables:
            if v not in sample.data_vars:
                raise DataError(f"{label}: conditioning {key}: unknown variable {v!r} "
                                f"(has {', '.join(map(str, sample.data_vars)) or 'none'})")
            x = sample[v]
            fdims = [d for d in targets.field_dims if d in x.dims]
            if fdims != list(targets.field_dims):
                raise DataError(f"{label}: conditioning {key}: variable {v!r} has dims {list(x.dims)}, not the field "
                                f"dims {list(targets.field_dims)}")
            out[f"input_{v}_coarse"] = (self._coarse(x, grid, key, label),
                                        {"kind": key, "variable": v, "factor": self.factor})
        return out

    def _coarse(self, x: xr.DataArray, grid: Mapping[str, int], key: str, label: str) -> xr.DataArray:
        f, fine = self.factor, {d: int(grid[d]) for d in grid}
        for d, n in fine.items():
            if n % f:
                raise DataError(f"{label}: conditioning {key}: field dim {d!r} has {n} points, not divisible by "
                                f"factor {f}")
        have = {d: int(x.sizes[d]) for d in fine}
        if have == fine:  # a fine field: block means (in float64), then repeated back
            coarse = x.astype("float64").coarsen({d: f for d in fine}).mean().astype(x.dtype)
        elif have == {d: n // f for d, n in fine.items()}:  # the coarse field itself
            coarse = x
        else:
            raise DataError(f"{label}: conditioning {key}: variable {x.name!r} has grid {have}; expected the fine grid "
                            f"{fine} or the coarse grid {({d: n // f for d, n in fine.items()})}")
        back = coarse.drop_vars([d for d in fine if d in coarse.coords]).isel({d: np.arange(n) // f
                                                                              for d, n in fine.items()})
        keep = {d: x[d] for d in fine if d in x.coords and have == fine}
        return back.assign_coords(keep).assign_attrs(x.attrs)


class Variables(ConditionKind):
    """Other variables of the same dataset as inputs ``input_<name>``; the targets are the variables not named.

    Parameters
    ----------
    names
        The input variables (on the same dims as the targets).
    """

    def __init__(self, names: Sequence[str] | str = ()):
        self.names = tuple([names] if isinstance(names, str) else names)
        if not self.names:
            raise DataError("conditioning variables: names is empty (list the input variables)")

    def params(self) -> dict[str, Any]:
        """``names``."""
        return {"names": list(self.names)}

    def needs(self) -> tuple[str, ...]:
        """The input variables."""
        return self.names

    def targets(self, variables: tuple[str, ...]) -> tuple[str, ...]:
        """The dataset's variables without the inputs."""
        return tuple(v for v in variables if v not in self.names)

    def inputs(self, key: str, sample: xr.Dataset, previous: xr.Dataset, targets: FieldSpec,
               grid: Mapping[str, int], label: str) -> Made:
        """``input_<name>``: the named variables at the target's sample."""
        out: Made = {}
        for v in self.names:
            if v not in sample.data_vars:
                raise DataError(f"{label}: conditioning {key}: unknown variable {v!r} "
                                f"(has {', '.join(map(str, sample.data_vars)) or 'none'})")
            out[f"input_{v}"] = (sample[v], {"kind": key, "variable": v})
        return out


class Static(ConditionKind):
    """Fields that do not depend on the sample, on the field dims.

    Per coordinate dim ``d``: periodic → ``static_sin_d``, ``static_cos_d`` of ``2 pi (c - c0) / period`` (period
    = points × spacing), and with ``harmonics`` K > 1 also ``static_sin<k>_d``, ``static_cos<k>_d`` of ``k`` times
    that phase for k = 2..K (Fourier features of position); otherwise ``static_d``, the coordinate scaled to
    [-1, 1]. Each user variable ``name`` (field dims only) → ``static_<name>``.

    Parameters
    ----------
    coords
        ``True``: every field dim; a list: those dims; ``False``: none.
    variables
        Static variables of the dataset (no sample dims), e.g. ``[orography, land_mask]``.
    harmonics
        Fourier features per periodic dim (>= 1): a convolutional net sees ``sin(k y)`` directly instead of
        having to build it from ``sin y, cos y`` (e.g. up to the forcing wavenumber of Kolmogorov flow).
    """

    def __init__(self, coords: bool | Sequence[str] = True, variables: Sequence[str] | str = (),
                 harmonics: int = 1):
        self.coords = coords if isinstance(coords, bool) else tuple([coords] if isinstance(coords, str) else coords)
        self.variables = tuple([variables] if isinstance(variables, str) else variables or ())
        if int(harmonics) != harmonics or harmonics < 1:
            raise DataError(f"conditioning static: harmonics must be an integer >= 1, got {harmonics!r}")
        self.harmonics = int(harmonics)

    def params(self) -> dict[str, Any]:
        """``coords``, ``variables`` (and ``harmonics`` when more than one)."""
        out = {"coords": self.coords if isinstance(self.coords, bool) else list(self.coords),
               "variables": list(self.variables)}
        return {**out, "harmonics": self.harmonics} if self.harmonics > 1 else out

    def needs(self) -> tuple[str, ...]:
        """The static variables."""
        return self.variables

    def static(self, key: str, ds: xr.Dataset, spec: FieldSpec, label: str) -> Made:
        """The coordinate channels, then the static variables (numpy-backed, physical units)."""
        dims = spec.field_dims if self.coords is True else () if self.coords is False else self.coords
        shape = {d: int(ds.sizes[d]) for d in spec.field_dims}
        out: Made = {}
        for d in dims:
            if d not in shape:
                raise DataError(f"{label}: conditioning {key}: coords names {d!r}, not a field dim "
                                f"{list(spec.field_dims)}")
            c = np.asarray(ds[d].values, dtype=np.float64) if d in ds.coords else np.arange(shape[d], dtype=float)
            if shape[d] < 2:
                raise DataError(f"{label}: conditioning {key}: field dim {d!r} has one point; leave it out of coords")
            if spec.periodic.get(d):
                phase = 2 * np.pi * (c - c[0]) / (shape[d] * (c[1] - c[0]))
                for k in range(1, self.harmonics + 1):
                    for fn in ("sin", "cos"):
                        name = f"static_{fn}{k if k > 1 else ''}_{d}"
                        info = {"kind": key, "source": "coord", "dim": d, "fn": fn}
                        out[name] = (_spread(getattr(np, fn)(k * phase), d, ds, spec),
                                     {**info, "harmonic": k} if k > 1 else info)
            else:
                scaled = 2 * (c - c.min()) / (c.max() - c.min()) - 1
                out[f"static_{d}"] = (_spread(scaled, d, ds, spec), {"kind": key, "source": "coord", "dim": d,
                                                                      "fn": "scaled"})
        for v in self.variables:
            out[f"static_{v}"] = (_static_variable(ds, v, spec, key, label),
                                  {"kind": key, "source": "variable", "variable": v})
        return out


def _spread(values: np.ndarray, dim: str, ds: xr.Dataset, spec: FieldSpec) -> xr.DataArray:
    """A function of one field dim broadcast over all field dims (float32, the dims' coordinates)."""
    coords = {d: ds[d] for d in spec.field_dims if d in ds.coords}
    shape = [int(ds.sizes[d]) for d in spec.field_dims]
    index = [slice(None) if d == dim else None for d in spec.field_dims]
    arr = np.broadcast_to(values[tuple(index)], shape).astype(np.float32)
    return xr.DataArray(arr, dims=spec.field_dims, coords=coords, attrs={"units": "1"})


def _static_variable(ds: xr.Dataset, v: str, spec: FieldSpec, key: str, label: str) -> xr.DataArray:
    if v not in ds.data_vars:
        raise DataError(f"{label}: conditioning {key}: unknown static variable {v!r} "
                        f"(has {', '.join(map(str, ds.data_vars)) or 'none'})")
    x = ds[v]
    extra = [d for d in x.dims if d not in spec.field_dims]
    if extra:
        raise DataError(f"{label}: conditioning {key}: static variable {v!r} has dims {list(x.dims)}; a static "
                        f"variable has field dims {list(spec.field_dims)} only (not {extra})")
    template = xr.DataArray(np.zeros([int(ds.sizes[d]) for d in spec.field_dims], np.float32), dims=spec.field_dims)
    values = np.asarray(x.broadcast_like(template).transpose(*spec.field_dims).values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{label}: conditioning {key}: static variable {v!r} holds NaN/Inf values")
    coords = {d: ds[d] for d in spec.field_dims if d in ds.coords}
    return xr.DataArray(values, dims=spec.field_dims, coords=coords, attrs=dict(x.attrs))


def make_kinds(conditioning: Mapping[str, Any] | None) -> dict[str, ConditionKind]:
    """The kinds of a dataset's ``conditioning`` mapping (configs with ``_target_``, or kinds), by name.

    Raises
    ------
    DataError
        One line: not a mapping, a config without ``_target_``, or one that does not build a :class:`ConditionKind`.
    """
    conf = plain(conditioning, DataError) if conditioning is not None else None
    if not conf:
        return {}
    if not isinstance(conf, Mapping):
        raise DataError(f"dataset.conditioning must be a mapping name -> kind config, got {conf!r}")
    kinds: dict[str, ConditionKind] = {}
    for key, c in conf.items():
        if c is None:
            continue
        kind = c if isinstance(c, ConditionKind) else instantiate(c, f"dataset.conditioning.{key}", error=DataError)
        if not isinstance(kind, ConditionKind):
            raise DataError(f"dataset.conditioning.{key}: {c.get('_target_')} is not a sciencegen ConditionKind")
        kinds[str(key)] = kind
    return kinds


def needed_variables(conditioning: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Source variables the kinds read beyond the dataset's variables (in order, without repeats)."""
    names: list[str] = []
    for kind in make_kinds(conditioning).values():
        names += [v for v in kind.needs() if v not in names]
    return tuple(names)


@dataclass
class Conditioned:
    """What :func:`build_inputs` makes of a dataset.

    Attributes
    ----------
    targets
        The target variables on ``sample dims + field dims`` (a condition file: those of them it holds).
    spec
        The targets' spec.
    inputs
        ``input_*`` name → lazy DataArray on the targets' dims, physical units, in channel order.
    static
        ``static_*`` name → DataArray on the field dims (empty for a condition file: use
        :attr:`ConditionLayout.static_values`).
    meta
        The ``conditioning`` dict of the store metadata (``kinds``, ``inputs``, ``static``, ``state``).
    """

    targets: xr.Dataset
    spec: FieldSpec
    inputs: dict[str, xr.DataArray]
    static: dict[str, xr.DataArray]
    meta: dict[str, Any]


def _pairs(ds: xr.Dataset, spec: FieldSpec, kinds: Mapping[str, ConditionKind],
           label: str) -> tuple[xr.Dataset, xr.Dataset, dict[str, Any] | None]:
    """``(sample, previous, state)``: the source at the target's sample and ``lag`` steps before it."""
    pairing = [(k, kind.pair()) for k, kind in kinds.items() if kind.pair() is not None]
    if not pairing:
        return ds, ds, None
    if len(pairing) > 1:
        raise DataError(f"{label}: conditioning {pairing[0][0]} and {pairing[1][0]} both pair samples; keep one")
    key, (dim, lag) = pairing[0]
    if dim not in spec.sample_dims:
        raise DataError(f"{label}: conditioning {key}: dim {dim!r} is not a sample dim {list(spec.sample_dims)}")
    n = int(ds.sizes[dim])
    if lag >= n:
        raise DataError(f"{label}: conditioning {key}: lag {lag} >= length {n} of {dim!r}; no pair fits")
    previous = ds.isel({dim: slice(0, n - lag)})
    later = ds.isel({dim: slice(lag, None)})
    sample = previous.copy()
    for v in ds.data_vars:
        if dim in ds[v].dims:  # the target's data on the input's sample coordinate
            sample[v] = previous[v].copy(data=later[v].data)
    return sample, previous, {"dim": dim, "lag": lag}


def build_inputs(conditioning: Mapping[str, Any], ds: xr.Dataset, spec: FieldSpec, *, label: str = "dataset",
                 condition: bool = False, grid: Mapping[str, int] | None = None) -> Conditioned:  # long: one recipe
    """Apply the conditioning kinds to a dataset: targets, per-sample inputs, static fields, and their metadata.

    Two modes:

    * ``condition=False`` (the data stage): ``ds`` is the source (all its variables, the static ones too) and
      ``spec`` its spec. A pairing kind (:class:`State`) cuts the pairs: targets at ``t + lag``, the sample
      coordinate the input time ``t`` (``n - lag`` samples along its dim); every other kind reads the target's
      sample. Returns the targets, ``input_*`` on the same dims, ``static_*`` on the field dims.
    * ``condition=True`` (generation, a user's condition file): every sample of ``ds`` is one condition; a pairing
      kind takes its state from ``ds`` itself (the file holds the present state), :class:`Coarse` takes a fine
      field on ``grid`` (coarsened) or the coarse field itself on ``grid // factor`` (repeated back; its dims
      lose their coordinates), :class:`Variables` the named variables. ``spec`` gives the (training) target
      variables, sample dims (those of the file) and field dims; ``grid`` the training field sizes (default: the
      sizes in ``ds``). No static fields are computed (take :attr:`ConditionLayout.static_values`); ``targets``
      holds the file's own values of the target variables it has (possibly none; for a state: the present, not
      the truth at ``t + lag``).

    Parameters
    ----------
    conditioning
        Name → kind config (``_target_``) or :class:`ConditionKind` (the dataset's ``conditioning``, or
        :attr:`ConditionLayout.kinds`).
    ds
        The data (lazy).
    spec
        Its variables (the dataset's variables, before the kinds take inputs out), sample and field dims.
    label
        Names the data in the one-line errors.
    condition
        See above.
    grid
        Field sizes ``{dim: n}`` of the targets (default: from ``ds``).

    Raises
    ------
    DataError
        One line: a bad factor, an unknown variable, lag >= length, a static variable with sample dims, a wrong
        grid, two kinds making the same input, no target left.
    """
    kinds = make_kinds(conditioning)
    if not kinds:
        raise DataError(f"{label}: conditioning is empty")
    variables = tuple(spec.variables)
    for kind in kinds.values():
        variables = kind.targets(variables)
    if not variables:
        raise DataError(f"{label}: conditioning leaves no target variable (every variable is an input)")
    tspec = FieldSpec(variables, spec.sample_dims, spec.field_dims, spec.periodic)
    grid = dict(grid) if grid is not None else {d: int(ds.sizes[d]) for d in spec.field_dims}
    if condition:
        sample = previous = ds
        state = next(({"dim": p[0], "lag": p[1]} for p in (k.pair() for k in kinds.values()) if p), None)
    else:
        sample, previous, state = _pairs(ds, spec, kinds, label)
    made: Made = {}
    statics: Made = {}
    for key, kind in kinds.items():
        for name, item in kind.inputs(key, sample, previous, tspec, grid, label).items():
            if name in made:
                raise DataError(f"{label}: conditioning makes input {name!r} twice ({made[name][1]['kind']}, {key})")
            made[name] = item
        if not condition:
            statics.update(kind.static(key, ds, spec, label))
    dims = (*spec.sample_dims, *spec.field_dims)
    inputs = {}
    for name, (x, _) in made.items():
        if set(x.dims) != set(dims):
            raise DataError(f"{label}: input {name} has dims {list(x.dims)}, not the targets' dims {list(dims)}")
        inputs[name] = x.transpose(*dims).rename(name)
    if state is not None:
        fed = {n: info["variable"] for n, (_, info) in made.items() if info.get("lag") == state["lag"]
               and info.get("dim") == state["dim"] and info.get("variable") in variables}
        state["feeds"] = fed if len(fed) == len(made) else None
    meta = {"kinds": {k: kind.config() for k, kind in kinds.items()},
            "inputs": {n: info for n, (_, info) in made.items()},
            "static": {n: info for n, (_, info) in statics.items()}, "state": state}
    targets = sample[[v for v in variables if v in sample.data_vars]] if condition else sample[list(variables)]
    return Conditioned(targets, tspec, inputs, {n: x.rename(n) for n, (x, _) in statics.items()},
                       json.loads(json.dumps(meta)))


@dataclass
class ConditionLayout:
    """What a conditional prepared store holds for the model's condition channels (inputs, then statics).

    Attributes
    ----------
    variables
        The target variables (``meta["variables"]``).
    inputs, static
        Name → info, in channel order (the store's ``conditioning.inputs`` / ``.static``).
    state
        ``{"dim", "lag", "feeds"}`` for a pairing kind, else ``None``.
    kinds
        Name → plain kind config (pass to :func:`build_inputs` for a condition file).
    mean, std
        Per condition channel (inputs then statics), physical units.
    static_values
        ``(S, *field)`` the static fields in physical units.
    """

    variables: tuple[str, ...]
    inputs: dict[str, dict[str, Any]]
    static: dict[str, dict[str, Any]]
    state: dict[str, Any] | None
    kinds: dict[str, dict[str, Any]]
    mean: np.ndarray
    std: np.ndarray
    static_values: np.ndarray = field(repr=False)

    @property
    def channels(self) -> int:
        """Condition channels: ``len(inputs) + len(static)``."""
        return len(self.inputs) + len(self.static)

    @property
    def names(self) -> list[str]:
        """The condition channels' store variables, in order (inputs, then statics)."""
        return [*self.inputs, *self.static]


def _open_zarr(path: str, **kw: Any) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
        return xr.open_zarr(path, **kw)


def condition_layout(path: str | os.PathLike) -> ConditionLayout | None:
    """The condition channels of a prepared store, or ``None`` for an unconditional one.

    Raises
    ------
    DataError
        Not a prepared store, or its statistics lack a condition channel.
    """
    from .store import read_metadata

    path = os.fspath(path)
    meta = read_metadata(path)
    if meta is None:
        raise DataError(f"{path}: not a sciencegen dataset")
    cond = meta.get("conditioning")
    if not cond:
        return None
    stats = _open_zarr(path, group="statistics").load()
    names = [str(v) for v in stats.attrs.get("variables", [])]
    inputs, static = dict(cond.get("inputs") or {}), dict(cond.get("static") or {})
    missing = [n for n in [*inputs, *static] if n not in names]
    if missing:
        raise DataError(f"{path}: no statistics for condition channel(s) {missing}")
    pos = [names.index(n) for n in [*inputs, *static]]
    mean = np.asarray(stats["mean"].values, dtype=np.float64)[pos]
    std = np.asarray(stats["std"].values, dtype=np.float64)[pos]
    ds = _open_zarr(path)
    field_shape = tuple(int(ds.sizes[d]) for d in meta["field_dims"])
    values = (np.stack([np.asarray(ds[n].transpose(*meta["field_dims"]).values, np.float64) for n in static])
              if static else np.zeros((0, *field_shape)))
    return ConditionLayout(tuple(meta["variables"]), inputs, static, cond.get("state"), dict(cond.get("kinds") or {}),
                           mean, std, values)


def split_samples(path: str | os.PathLike, split: str, holdout: float) -> np.ndarray:
    """Flat C-order indices (over the sample dims) of the samples of a split, ascending.

    The same chunk-aligned split as :class:`~sciencegen.data.stream.FieldStream` (``"all"``, ``"train"``,
    ``"validation"``: the last ``ceil(holdout * n_chunks)`` chunks in store order).
    """
    from .store import read_metadata
    from .stream import FieldStream

    path = os.fspath(path)
    meta = read_metadata(path)
    if meta is None:
        raise DataError(f"{path}: not a sciencegen dataset")
    try:
        s = FieldStream(path, [meta["variables"][0]], list(meta["sample_dims"]), [0.0], [1.0], batch_size=1,
                        split=split, holdout=holdout, shuffle=False, rank=0, world_size=1)
    except ValueError as exc:
        raise DataError(str(exc).splitlines()[0]) from None
    parts = []
    for chunk in s.chunk_ids.tolist():
        idx = np.unravel_index(chunk, s.chunk_grid)
        ranges = [np.arange(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, s.chunk_shape, s.sample_shape,
                                                                           strict=True)]
        parts.append(np.ravel_multi_index(np.ix_(*ranges), s.sample_shape).reshape(-1))
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
