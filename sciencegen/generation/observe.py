"""Observation-conditioned ensembles: the ``observe`` options, each case's observations and its guided denoiser.

Rozet & Louppe, NeurIPS 2023 (score-based data assimilation); Chung et al., ICLR 2023 (DPS): the observations
enter at sampling time through :class:`sciencegen.samplers.guidance.Guided`, so an unconditional model serves
every observing network.

``sciencegen-generate ... observe.fraction=0.05 observe.noise=0.1`` (docs/generate.md, "Observations (data
assimilation)") makes a conditional-layout store whose cases are held-out samples of the prepared dataset (the
truth is known, :func:`sciencegen.generation.conditions.heldout_cases`), each observed through ``H`` (a random
mask of a fraction of the points, a regular ``stride`` grid, or block means over ``factor^ndim`` blocks) with
noise; ``observe.path`` takes a user's observations instead (:mod:`sciencegen.data.observations`; truth unknown).

**Reproducibility.** The observations of case ``c`` depend only on ``(seed, c)`` and the options: one
``torch.Generator`` seeded with ``stream_key(seed, c, 0, tag=OBSERVE)`` (:func:`observation_generator`) draws
first the mask (``fraction``: ``random_mask``, one ``randperm`` per observed variable in channel order), then
the noise ``eps`` (one standard normal per observation, in the operator's row order). Members of case ``c`` are
drawn with ``seed=condition_seed(seed, c)`` by the guided denoiser of that case's observations (in the model's
units: normalised with the checkpoint's mean/std; physical for the oracle).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..data.conditioning import ConditionLayout
from ..data.ensemble import ConditionAxis
from ..data.fields import DataError
from ..data.observations import OBSERVATION_ATTR, ObservationFile, read_observation_file
from ..samplers.guidance import (
    LIKELIHOODS,
    Guided,
    Observations,
    block_operator,
    draw_observations,
    gridded_observations,
    mask_operator,
    point_operator,
    random_mask,
)
from ..samplers.noise import stream_key
from .conditions import Cases, file_cases, heldout_cases
from .plan import GenerateError

__all__ = ["FORMS", "OBSERVE", "VARIABLES_ATTR", "ObserveOptions", "ObservedCases", "empty_layout",
           "extend_template", "observation_generator", "observed_cases", "parse_observe"]

#: the noise stream tag of observation draws (beside the sampler's INIT, STEP, CORRECTOR, DATA, CONDITION = 0..4)
OBSERVE = 5
#: root attribute: JSON list of the generated variables in channel order (the ``V`` axis of ``obs_index``)
VARIABLES_ATTR = "sciencegen_variables"
#: the ways of observing a case: exactly one is set
FORMS = ("fraction", "stride", "factor", "path")
#: the store's ``kind`` of each form
_KIND = {"fraction": "mask", "stride": "stride", "factor": "blocks", "path": "file"}


def observation_generator(seed: int, case: int) -> torch.Generator:
    """The generator of case ``case``'s observations (mask, then noise): seeded by ``(seed, case)`` only."""
    return torch.Generator().manual_seed(stream_key(seed, case, 0, tag=OBSERVE))


@dataclass(frozen=True)
class ObserveOptions:
    """The checked ``observe`` section (one of ``fraction``/``stride``/``factor``/``path`` set)."""

    form: str
    value: Any
    noise: float | dict[str, float]
    variables: tuple[str, ...] | None
    likelihood: str
    cg_iters: int
    cg_tol: float
    step_size: float
    #: ``"auto"``, ``None`` (the network's Jacobian at every noise level) or a noise level (model units)
    jacobian_max_sigma: float | str | None = "auto"

    @property
    def kind(self) -> str:
        """``mask``, ``stride``, ``blocks`` or ``file``."""
        return _KIND[self.form]

    def noise_of(self, variables: Sequence[str], label: str = "observe.noise") -> dict[str, float]:
        """The noise std of each observed variable (physical units).

        Raises
        ------
        GenerateError
            A ``{var: std}`` that misses an observed variable or names another.
        """
        if not isinstance(self.noise, dict):
            return {v: float(self.noise) for v in variables}
        extra = [v for v in self.noise if v not in variables]
        missing = [v for v in variables if v not in self.noise]
        if extra or missing:
            why = f"missing {missing}" if missing else f"not observed {extra}"
            raise GenerateError(f"{label}={json.dumps(self.noise)} must give the noise of each observed variable "
                                f"{list(variables)}: {why}")
        return {v: float(self.noise[v]) for v in variables}


def _number(section: Mapping[str, Any], key: str, positive: bool = True) -> float:
    v = section.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise GenerateError(f"observe.{key} must be a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def _integer(section: Mapping[str, Any], key: str, minimum: int) -> int:
    v = section.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < minimum:
        raise GenerateError(f"observe.{key} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def parse_observe(section: Mapping[str, Any] | None) -> ObserveOptions | None:
    """Check the ``observe`` section (``None``: every form unset, observations off); nothing is read yet.

    Raises
    ------
    GenerateError
        Not exactly one form set, or a value out of range (one line naming the key).
    """
    section = dict(section or {})
    known = [*FORMS, "noise", "variables", "likelihood", "cg_iters", "cg_tol", "step_size", "jacobian_max_sigma"]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise GenerateError(f"observe.{unknown[0]} is not an observe option; the options are {known}")
    chosen = [k for k in FORMS if section.get(k) is not None]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise GenerateError(f"observe.{' and observe.'.join(chosen)} are all set: set exactly one of observe."
                            f"{'/'.join(FORMS)}")
    form = chosen[0]
    if form == "fraction":
        value: Any = _number(section, "fraction")
        if value > 1:
            raise GenerateError(f"observe.fraction must be in (0, 1], got {value!r}")
    elif form == "path":
        value = str(section["path"])
    else:
        value = _integer(section, form, 1)
    noise = section.get("noise", 0.1)
    if isinstance(noise, Mapping):
        noise = {str(k): _number(noise, k) for k in noise}
    else:
        noise = _number({"noise": noise}, "noise")
    variables = section.get("variables")
    if variables is not None:
        variables = (str(variables),) if isinstance(variables, str) else tuple(str(v) for v in variables)
    likelihood = str(section.get("likelihood") or "gaussian")
    if likelihood not in LIKELIHOODS:
        raise GenerateError(f"observe.likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    return ObserveOptions(form, value, noise, variables or None, likelihood,
                          _integer({"cg_iters": section.get("cg_iters", 8)}, "cg_iters", 0),
                          _number({"cg_tol": section.get("cg_tol", 1e-3)}, "cg_tol", positive=False),
                          _number({"step_size": section.get("step_size", 10.0)}, "step_size"),
                          _jacobian_option(section.get("jacobian_max_sigma", "auto")))


def _jacobian_option(value: Any) -> float | str | None:
    """``observe.jacobian_max_sigma``: ``auto``, ``null`` or a positive noise level."""
    if value is None or value == "auto":
        return value
    return _number({"jacobian_max_sigma": value}, "jacobian_max_sigma")


def jacobian_max_sigma(option: float | str | None, train_sigma: tuple[float, float] | None) -> float | None:
    """The noise level above which guidance does not use the network's Jacobian (``None``: it always does).

    ``auto``: ``exp(p_mean + 2.5 p_std)`` of the checkpoint's training noise levels ``ln sigma ~ N(p_mean,
    p_std²)`` (about 0.6 % of the training draws lie above it; 18 at the defaults), and ``None`` for a model
    that was not trained (the exact ``oracle``, whose Jacobian is exact everywhere).
    """
    if option != "auto":
        return None if option is None else float(option)
    if train_sigma is None:
        return None
    return float(math.exp(train_sigma[0] + 2.5 * train_sigma[1]))


def empty_layout(variables: Sequence[str], field_shape: Sequence[int]) -> ConditionLayout:
    """The condition layout of an unconditional dataset: no inputs, no static maps (the cases are observations)."""
    return ConditionLayout(tuple(variables), {}, {}, None, {}, np.zeros(0), np.zeros(0),
                           np.zeros((0, *field_shape)))


@dataclass
class ObservedCases(Cases):
    """:class:`~sciencegen.generation.conditions.Cases` observed: each case's observations and guided denoiser.

    Attributes
    ----------
    options
        The ``observe`` options.
    grid
        The field shape (without variables).
    seed
        The run's seed (observations of case ``c`` from :func:`observation_generator`).
    channels
        Indices of the observed variables among the generated ones.
    noise
        Per generated variable the noise std (physical; NaN for unobserved variables).
    file
        ``observe.path`` read (``None``: drawn from the held-out truth).
    counts, support
        Observations per case and the most support points per observation (``J``).
    periodic
        Per field dim whether it wraps (point observations).
    mean, std
        Per variable the model's normalisation (``None``: the model is physical).
    jacobian_sigma
        The noise level above which guidance does not use the network's Jacobian (:func:`jacobian_max_sigma`).
    """

    options: ObserveOptions | None = None
    grid: tuple[int, ...] = ()
    seed: int = 0
    channels: tuple[int, ...] = ()
    noise: np.ndarray | None = None
    file: ObservationFile | None = None
    counts: list[int] = field(default_factory=list)
    support: int = 1
    periodic: tuple[bool, ...] = ()
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    jacobian_sigma: float | None = None
    _made: dict[int, Observations] = field(default_factory=dict, repr=False, compare=False)

    @property
    def observed(self) -> tuple[str, ...]:
        """The observed variables."""
        return tuple(self.layout.variables[k] for k in self.channels)

    @property
    def shape(self) -> tuple[int, ...]:
        """The field shape ``(V, *grid)`` the operators act on."""
        return (len(self.layout.variables), *self.grid)

    @property
    def gridded(self) -> bool:
        """Whether each observation is one grid point (``obs_<var>`` fields are stored)."""
        return self.options.form in ("fraction", "stride") or (self.file is not None and self.file.form == "gridded")

    def physical_inputs(self, c: int) -> dict[str, np.ndarray]:
        """Condition ``c``'s per-sample inputs (none for an unconditional dataset)."""
        return super().physical_inputs(c) if self.layout.inputs else {}

    def truth_field(self, c: int) -> np.ndarray:
        """``[V, *grid]`` float64: case ``c``'s held-out truth."""
        row = self.truth_rows[c][0]
        return np.stack([np.asarray(self.truth[v].isel(row).transpose(*self.field_dims).values, dtype=np.float64)
                         for v in self.layout.variables])

    def observations(self, c: int) -> Observations:
        """Case ``c``'s observations, physical units (drawn or read once, kept for the next call)."""
        if c not in self._made:
            if len(self._made) > 1:
                self._made.clear()
            self._made[c] = self._file_case(c) if self.file is not None else self._draw(c)
        return self._made[c]

    def _operator(self, gen: torch.Generator) -> Any:
        shape, form, value = self.shape, self.options.form, self.options.value
        if form == "factor":
            return block_operator(shape, value, channels=self.channels)
        mask = torch.zeros(shape, dtype=torch.bool)
        if form == "fraction":
            mask[list(self.channels)] = random_mask((len(self.channels), *shape[1:]), value, gen)
        else:
            on = torch.ones(shape[1:], dtype=torch.bool)
            for d, n in enumerate(shape[1:]):
                keep = torch.arange(n) % value == 0
                on &= keep.reshape((-1,) + (1,) * (len(shape) - 2 - d))
            mask[list(self.channels)] = on
        return mask_operator(mask)

    def _draw(self, c: int) -> Observations:
        gen = observation_generator(self.seed, c)
        op = self._operator(gen)
        s = torch.as_tensor(self.noise, dtype=torch.float64)[op.channel()]
        return draw_observations(torch.as_tensor(self.truth_field(c)), op, s, gen)

    def _file_case(self, c: int) -> Observations:
        f, default = self.file, torch.as_tensor(self.noise, dtype=torch.float64)
        if f.form == "gridded":
            values = torch.as_tensor(f.values[c])
            s = default.reshape((-1,) + (1,) * (values.ndim - 1)).expand(values.shape)
            if f.noise is not None:
                fn = torch.as_tensor(f.noise[c])
                s = torch.where(torch.isfinite(fn), fn, s)
            return gridded_observations(values, s)
        pc = f.points[c]
        channel = torch.as_tensor(pc.channel, dtype=torch.long)
        op = point_operator(torch.as_tensor(pc.position), self.shape, channel, self.periodic)
        s = torch.as_tensor(pc.noise)
        return Observations(op, torch.as_tensor(pc.value), torch.where(torch.isfinite(s), s, default[channel]))

    def guide(self, denoiser: Any, c: int) -> Guided:
        """The denoiser of case ``c`` guided by its observations (in the model's units)."""
        mean = np.zeros(self.shape[0]) if self.mean is None else self.mean
        std = np.ones(self.shape[0]) if self.std is None else self.std
        o = self.options
        return Guided(denoiser, self.observations(c).normalised(mean.tolist(), std.tolist()), likelihood=o.likelihood,
                      cg_iters=o.cg_iters, cg_tol=o.cg_tol, step_size=o.step_size,
                      jacobian_max_sigma=self.jacobian_sigma)

    def observation_arrays(self, c: int) -> dict[str, np.ndarray]:
        """The store's ``obs_*`` of case ``c`` (physical units; padded to the store's observation dim)."""
        obs = self.observations(c)
        m, j = obs.operator.count, int(obs.operator.index.shape[1])
        big, sup = max(self.counts), self.support
        out = {"obs_value": np.full(big, np.nan), "obs_noise": np.full(big, np.nan),
               "obs_index": np.full((big, sup), -1, dtype=np.int64), "obs_weight": np.zeros((big, sup))}
        out["obs_value"][:m] = obs.value.double().numpy()
        out["obs_noise"][:m] = obs.noise.double().numpy()
        out["obs_index"][:m, :j] = obs.operator.index.numpy()
        out["obs_weight"][:m, :j] = obs.operator.weight.double().numpy()
        if self.gridded:
            grid = obs.gridded().numpy()
            for k in self.channels:
                out[f"obs_{self.layout.variables[k]}"] = grid[k].astype(np.float32)
        return out

    def case_arrays(self, c: int) -> dict[str, np.ndarray]:
        """What the store records for case ``c``: ``input_*``, ``truth_*`` (where known) and ``obs_*``."""
        return {**super().case_arrays(c), **self.observation_arrays(c)}

    def observation_identity(self) -> dict[str, Any]:
        """What of the observations decides the members (part of the store's identity)."""
        o = self.options
        return {"kind": o.kind, o.form: o.value, "digest": self.file.digest if self.file else None,
                "variables": list(self.observed), "noise": self.noise_dict(), "likelihood": o.likelihood,
                "cg_iters": o.cg_iters, "cg_tol": o.cg_tol, "step_size": o.step_size, "rule": "observe/1",
                "jacobian_max_sigma": self.jacobian_sigma}

    def noise_dict(self) -> dict[str, float]:
        """``{var: std}`` of the observed variables (physical units; a file's own noise wins)."""
        return {self.layout.variables[k]: float(self.noise[k]) for k in self.channels}

    def identity(self) -> dict[str, Any]:
        """The cases' identity plus the observations'."""
        return {**super().identity(), "observations": self.observation_identity()}

    def observation_description(self) -> dict[str, Any]:
        """The root attribute :data:`~sciencegen.data.observations.OBSERVATION_ATTR` (JSON)."""
        o = self.options
        return {"kind": o.kind, "fraction": o.value if o.form == "fraction" else None,
                "stride": o.value if o.form == "stride" else None, "factor": o.value if o.form == "factor" else None,
                "path": self.file.path if self.file else None, "form": self.file.form if self.file else None,
                "noise": self.noise_dict(), "noise_from_file": bool(self.file and self.file.has_noise),
                "variables": list(self.observed), "likelihood": o.likelihood, "cg_iters": o.cg_iters,
                "cg_tol": o.cg_tol, "step_size": o.step_size, "jacobian_max_sigma": self.jacobian_sigma,
                "source": self.file.path if self.file else "heldout",
                "seed": self.seed, "counts": list(self.counts), "support": self.support,
                "operator": "mask" if self.gridded else ("points" if self.file else "blocks"),
                "draw": f"torch.Generator().manual_seed(stream_key(seed, c, 0, tag={OBSERVE})): mask, then noise"}

    def axis(self, lead_attrs: Mapping[str, Any] | None = None) -> ConditionAxis:
        """The condition axis; ``truth_<var>`` always (NaN where unknown: a user's observations)."""
        axis = super().axis(lead_attrs)
        if not axis.truth:
            axis.truth = {f"truth_{v}": {**self.var_attrs.get(v, {}), "long_name": f"the true {v} of the case "
                                         "(unknown: NaN)"} for v in self.layout.variables}
        return axis

    def extend(self, template: xr.Dataset) -> xr.Dataset:
        """The store's template plus the ``obs_*`` arrays (zeros, lazily) and the observations' root attribute."""
        return extend_template(self, template)

    def summary(self) -> str:
        """One line: the kind, the observations per case, the noise and the likelihood."""
        o = self.options
        what = (f"{o.value:g} of the points" if o.form == "fraction" else f"every {o.value} points"
                if o.form == "stride" else f"means over blocks of {o.value}" if o.form == "factor"
                else f"{self.file.form} {self.file.path}")
        per = f"{self.counts[0]}" if len(set(self.counts)) == 1 else f"{min(self.counts)}..{max(self.counts)}"
        how = f"CG <= {o.cg_iters} iterations" if o.likelihood == "gaussian" else f"step {o.step_size:g}"
        if o.likelihood == "gaussian" and self.jacobian_sigma is not None:
            how += f"; the network's Jacobian up to sigma {self.jacobian_sigma:.3g}, isotropic above"
        return (f"observations {o.kind} ({what}) of {', '.join(self.observed)}: {per} per case, noise "
                f"{self.noise_dict()}{' (or the file’s)' if self.file and self.file.has_noise else ''}, "
                f"{o.likelihood} likelihood ({how})")


def extend_template(cases: ObservedCases, template: xr.Dataset) -> xr.Dataset:
    """Add the ``obs_*`` arrays (lazy zeros, one case per chunk), :data:`OBSERVATION_ATTR` and
    :data:`VARIABLES_ATTR` to a store's template."""
    import dask.array as da
    import zarr

    n, big, sup = cases.count, max(cases.counts), cases.support
    zstd = [zarr.codecs.ZstdCodec(level=0, checksum=True)]
    pad = {"long_name": "padding past a case's count: NaN / -1 / 0"}
    specs = {
        "obs_value": (("observation",), (big,), "f8", {"_FillValue": np.float64("nan")},
                      {"long_name": "observed values y = H x + noise (physical units)"}),
        "obs_noise": (("observation",), (big,), "f8", {"_FillValue": np.float64("nan")},
                      {"long_name": "observation noise standard deviation (physical units)"}),
        "obs_index": (("observation", "support"), (big, sup), "i8", {"fill_value": -1},
                      {"long_name": "flat C-order positions in a field (variable, *field dims) each observation reads",
                       "variables": json.dumps(list(cases.layout.variables))}),
        "obs_weight": (("observation", "support"), (big, sup), "f8", {"fill_value": 0.0},
                       {"long_name": "weights of those positions (each row sums to 1)"}),
    }
    out = template.copy()
    for name, (dims, shape, dtype, enc, attrs) in specs.items():
        out[name] = (("condition", *dims), da.zeros((n, *shape), chunks=(1, *shape), dtype=dtype),
                     {**attrs, "padding": pad["long_name"]})
        out[name].encoding = {**enc, "compressors": zstd}
    if cases.gridded:
        grid = cases.shape[1:]
        for k in cases.channels:
            v = cases.layout.variables[k]
            attrs = {**{a: b for a, b in cases.var_attrs.get(v, {}).items() if a == "units"},
                     "long_name": f"observations of {v} (NaN where unobserved)",
                     "noise": "obs_noise" if cases.file and cases.file.has_noise else float(cases.noise[k])}
            out[f"obs_{v}"] = (("condition", *cases.field_dims),
                               da.zeros((n, *grid), chunks=(1, *grid), dtype="f4"), attrs)
            out[f"obs_{v}"].encoding = {"_FillValue": np.float32("nan"), "compressors": zstd}
    out.attrs[OBSERVATION_ATTR] = json.dumps(cases.observation_description(), default=str)
    out.attrs[VARIABLES_ATTR] = json.dumps(list(cases.layout.variables))  # the V axis of obs_index
    return out


def _counts(cases: ObservedCases) -> tuple[list[int], int]:
    """Observations per case and the support ``J`` of the store's ``obs_index``."""
    o, shape, nv = cases.options, cases.shape, len(cases.channels)
    grid = shape[1:]
    if cases.file is not None:
        return cases.file.counts(), (1 if cases.file.form == "gridded" else 2 ** len(grid))
    if o.form == "fraction":
        per = int(round(o.value * math.prod(grid)))
        if per < 1:
            raise GenerateError(f"observe.fraction={o.value} observes no point of a {math.prod(grid)}-point grid")
        return [per * nv] * cases.count, 1
    if o.form == "stride":
        return [math.prod(len(range(0, n, o.value)) for n in grid) * nv] * cases.count, 1
    if any(n % o.value for n in grid):
        raise GenerateError(f"observe.factor={o.value} does not divide the field grid {list(grid)}")
    return [math.prod(n // o.value for n in grid) * nv] * cases.count, o.value ** len(grid)


def _checked_variables(options: ObserveOptions, generated: Sequence[str]) -> None:
    if options.variables:
        unknown = [v for v in options.variables if v not in generated]
        if unknown:
            raise GenerateError(f"observe.variables names {unknown}, but the model generates {list(generated)}")


def observed_cases(options: ObserveOptions, prepared: Any, layout: ConditionLayout | None, info: Any, *, seed: int,
                   conditions: int, holdout: float, condition: Mapping[str, Any] | None = None) -> ObservedCases:
    """The cases of an observation-conditioned ensemble with their observations (checked before any sampling).

    Parameters
    ----------
    options
        :func:`parse_observe`'s result.
    prepared
        The prepared dataset (held-out truth, grid, coordinates).
    layout
        Its condition layout (``None``: unconditional).
    info
        The model (:class:`~sciencegen.generation.model.ModelInfo`: variables, normalisation).
    seed, conditions, holdout
        The run's seed, ``generate.conditions`` (held-out cases) and the held-out fraction.
    condition
        The ``condition`` section (a conditional dataset's inputs from a file: ``path``, ``select``).

    Raises
    ------
    GenerateError
        A combination that is not supported or a bad observation file (one line).
    """
    spec, shape = prepared.spec, tuple(prepared.field_shape)
    generated = tuple(info.variables)
    _checked_variables(options, generated)
    condition = dict(condition or {})
    base, file = _base_cases(options, prepared, layout, generated, spec, shape, condition, conditions, holdout)
    observed = file.variables if file is not None else (options.variables or generated)
    channels = tuple(k for k, v in enumerate(generated) if v in observed)
    per = options.noise_of([generated[k] for k in channels])
    noise = np.full(len(generated), np.nan)
    for k in channels:
        noise[k] = per[generated[k]]
    made = ObservedCases(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Cases)}, options=options,
                         grid=shape, seed=int(seed), channels=channels, noise=noise, file=file,
                         periodic=tuple(bool(spec.periodic.get(d, False)) for d in spec.field_dims),
                         mean=None if info.std is None else np.asarray(info.mean, np.float64),
                         std=None if info.std is None else np.asarray(info.std, np.float64),
                         jacobian_sigma=jacobian_max_sigma(options.jacobian_max_sigma, info.train_sigma))
    made.counts, made.support = _counts(made)
    return made


def _base_cases(options: ObserveOptions, prepared: Any, layout: ConditionLayout | None, generated: tuple[str, ...],
                spec: Any, shape: tuple[int, ...], condition: dict[str, Any], conditions: int, holdout: float
                ) -> tuple[Cases, ObservationFile | None]:
    """The cases before observation: held-out samples, a condition file's cases, or one per observed case."""
    inputs = layout is not None and bool(layout.inputs)
    cpath, name = condition.get("path"), (getattr(prepared, "meta", None) or {}).get("name") or "?"
    if cpath and not inputs:
        raise GenerateError(f"condition.path is set, but dataset {name} has no per-sample conditioning: give your "
                            "observations with observe.path")
    if cpath and options.form != "path":
        raise GenerateError(f"observe.{options.form} draws observations from the held-out truth, unknown for the "
                            f"cases of condition.path {cpath}: give their observations with observe.path")
    if inputs and options.form == "path" and not cpath:
        raise GenerateError(f"observe.path on dataset {name}, which has per-sample inputs: give the cases' inputs "
                            "with condition.path (case c of each file is condition c)")
    file = None
    if options.form == "path":
        ds = prepared.ds
        coords = {d: (np.asarray(ds[d].values) if d in ds.coords else None) for d in spec.field_dims}
        try:
            file = read_observation_file(options.value, generated=generated, field_dims=spec.field_dims,
                                         field_shape=shape, coords=coords, periodic=spec.periodic,
                                         variables=options.variables)
        except DataError as exc:
            raise GenerateError(str(exc)) from None
    layout = layout or empty_layout(generated, shape)
    if inputs:
        base = (file_cases(cpath, condition.get("select"), layout, spec, shape, None) if cpath else
                heldout_cases(prepared, layout, holdout, conditions, None))
        if file is not None and file.cases != base.count:
            raise GenerateError(f"observe.path {file.path} holds {file.cases} case(s), condition.path {cpath} "
                                f"{base.count}: they must hold the same cases in the same order")
        return base, file
    if file is None:
        return heldout_cases(prepared, layout, holdout, conditions, None), None
    attrs = {v: {k: a for k, a in prepared.ds[v].attrs.items() if isinstance(a, (str, int, float))}
             for v in generated}
    return Cases(layout, file.path, None, None, None, xr.Dataset(), [{} for _ in range(file.cases)], file.coords,
                 tuple(spec.field_dims), None, [], attrs), file
