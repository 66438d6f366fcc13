"""What the samples are compared with: a registry of references, chosen by ``reference.source``.

``reference.source`` names a registered reference, or else is the path of a store:

* ``exact`` (analytic datasets such as ``grf``): the exact per-mode variance of the law radially averaged in
  the same shells as the sample spectrum, plus exact reference samples for the histograms, the correlation and
  the panel. They are drawn by the dataset's own generator at sample indices *past* the training set
  (``dataset.samples`` onwards, rounded up to a chunk), so they are never data a model was trained on;
* ``heldout``: the held-out split of the prepared dataset (:func:`sciencegen.data.prepare.prepare`, which
  reuses the cached store): the last ``ceil(holdout * n_chunks)`` chunks in store order, exactly the
  validation split of :class:`~sciencegen.data.loader.FieldStream` (never trained on), flattened over the
  sample dims;
* ``auto``: ``exact`` where the dataset has an exact law, else ``heldout``;
* a path: another ensemble store (its complete members) or a prepared dataset (all of it).

Adding a reference
------------------
A reference is one function ``build(request: ReferenceRequest) -> Side`` registered under a name::

    from sciencegen.evaluation.references import ReferenceRequest, register_reference
    from sciencegen.evaluation.common import Side

    @register_reference("climatology")
    def climatology(request: ReferenceRequest) -> Side:
        data = {v: ... for v in request.variables}   # lazy DataArrays over ("sample", *field_dims)
        return Side("climatology", "climatology", "sample", data, field_dims, count,
                    {"source": "climatology", "samples": count, "description": "..."})

after which ``reference.source=climatology`` selects it (the module that registers it must be imported before
:func:`~sciencegen.pipelines.evaluate.run_evaluate` runs; a built-in one lives in this module). The returned
side may carry ``law_spectrum`` / ``law_moments`` when the reference is an analytic law; the pipeline checks
the grids and computes every metric the same way for every reference.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..data.fields import DataError
from ..data.prepare import make_source, prepare
from .common import EvaluateError, Side, dims_text, first_line, rechunk, task_members
from .readable import readable_members
from .samples import complete_members, open_ensemble

__all__ = ["EXACT_VALUES", "REFERENCES", "ReferenceRequest", "build_reference", "check_grid", "dataset_hint",
           "exact_moments", "exact_spectrum", "register_reference"]

#: default cap on the exact reference samples, in values: 2^26 (256 MiB of float32; 1024 fields of 256², 16384 of 64²)
EXACT_VALUES = 1 << 26

log = logging.getLogger(__name__)


@dataclass
class ReferenceRequest:
    """What a reference builder is given: the dataset, the samples it is compared with, the options.

    Attributes
    ----------
    dataset
        The plain ``dataset`` config.
    source
        Its :class:`~sciencegen.data.sources.FieldSource`.
    spec
        The dataset's field spec (``variables``, ``sample_dims``, ``field_dims``).
    dataset_label
        The dataset's label, for messages.
    variables
        The variables to evaluate.
    samples
        The generated side.
    members
        ``reference.members``: cap on the reference samples (``None``: the reference's own default).
    holdout
        ``reference.holdout``: the held-out fraction of the prepared dataset's chunks.
    data_root
        Where prepared dataset stores live.
    hint
        What to add to a grid-mismatch message (the store's dataset options), or ``""``.
    """

    dataset: dict[str, Any]
    source: Any
    spec: Any
    dataset_label: str
    variables: list[str]
    samples: Side
    members: int | None = None
    holdout: float = 0.1
    data_root: str = "data"
    hint: str = ""

    @functools.cached_property
    def target(self) -> Any:
        """The dataset's analytic law (``None`` where it has none)."""
        return self.source.target()


#: ``name -> build(request) -> Side``: the references ``reference.source`` can name
REFERENCES: dict[str, Callable[[ReferenceRequest], Side]] = {}


def register_reference(name: str) -> Callable[[Callable[[ReferenceRequest], Side]], Callable[[ReferenceRequest], Side]]:
    """Decorator: register ``build(request) -> Side`` as the reference ``reference.source=NAME``."""
    def deco(build: Callable[[ReferenceRequest], Side]) -> Callable[[ReferenceRequest], Side]:
        REFERENCES[name] = build
        return build
    return deco


def build_reference(source: str, request: ReferenceRequest) -> Side:
    """The reference ``source`` names (a registered name, else the path of a store), with at least 2 samples.

    Raises
    ------
    EvaluateError
        The reference cannot be built, or has fewer than 2 samples.
    """
    build = REFERENCES.get(source)
    ref = build(request) if build is not None else store_reference(source, request)
    if ref.count < 2:
        raise EvaluateError(f"the reference ({ref.label}) has {ref.count} sample(s); need at least 2")
    ref.request = request  # where the training data are (the memorisation check)
    return ref


# --------------------------------------------------------------------------------------------- the exact law


def exact_spectrum(target: Any, shape: Sequence[int]) -> np.ndarray:
    """Exact isotropic spectrum of an analytic law: its per-mode variance averaged in the shells ``round(|k|)``.

    The shells are those of :func:`~sciencegen.analysis.isotropic_spectrum` (all of them, ``0..max``), so the two
    are directly comparable; an empty shell is NaN.

    Parameters
    ----------
    target
        A law with a full-grid per-mode ``variance`` tensor (e.g. :class:`~sciencegen.targets.GaussianRandomField`).
    shape
        Field shape (must be the law's grid).
    """
    from ..analysis.spectra import radial_shells, shell_counts, shell_reduce

    v = np.asarray(target.variance.detach().cpu().numpy(), dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if v.shape != shape:
        raise EvaluateError(f"the exact law is defined on a {v.shape} grid, the fields are {shape}")
    shells = radial_shells(shape)
    nshell = int(shells.max()) + 1
    sums = shell_reduce(v, shells, nshell, len(shape))
    counts = shell_counts(shells, nshell)
    return sums / np.where(counts > 0, counts, np.nan)


def exact_moments(target: Any) -> dict[str, float] | None:
    """Exact one-point moments of a stationary Gaussian law with mean zero (GRF): N(0, mean per-mode variance).

    ``None`` for any other law.
    """
    from ..targets import GaussianRandomField

    if not isinstance(target, GaussianRandomField):
        return None
    return {"mean": 0.0, "std": float(target.variance.double().mean().sqrt()), "skewness": 0.0, "kurtosis": 0.0}


def _exact_samples(dataset: dict[str, Any], variables: Sequence[str], field_dims: tuple[str, ...],
                   field_shape: tuple[int, ...], count: int) -> tuple[dict[str, xr.DataArray], int]:
    """``count`` exact samples past the training set, drawn lazily by the dataset's own generator, and the first
    generator index."""
    if "samples" not in dataset:
        raise EvaluateError(f"dataset {dataset.get('name')}: its generator takes no samples option; "
                            "use reference.source=heldout")
    task = task_members(field_shape)
    conf = dict(dataset)
    first = int(math.ceil(int(dataset["samples"]) / task) * task)
    conf["samples"] = first + count
    if "chunk" in conf:
        conf["chunk"] = task
    ds, spec, _ = make_source(conf).open()
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise EvaluateError(f"the exact law of dataset {dataset.get('name')} has no variable(s) {missing} "
                            f"(it has {list(spec.variables)})")
    sample = spec.sample_dims[0]
    data = {v: rechunk(ds[v].isel({sample: slice(first, first + count)}).rename({sample: "sample"}), "sample", task)
            .transpose("sample", *field_dims) for v in variables}
    return data, first


@register_reference("exact")
def exact_reference(request: ReferenceRequest) -> Side:
    """The exact law: its exact spectrum and moments, and exact samples past the training set."""
    target, samples, spec, dataset = request.target, request.samples, request.spec, request.dataset
    if target is None:
        raise EvaluateError(f"dataset {dataset.get('name')} has no exact law; use reference.source=heldout (or auto)")
    field_dims = samples.field_dims
    sizes = samples.data[request.variables[0]].sizes
    rshape = tuple(int(n) for n in target.variance.shape)
    if rshape != tuple(int(sizes[d]) for d in field_dims) or set(field_dims) != set(spec.field_dims):
        law = dict(zip(spec.field_dims, rshape, strict=False))
        raise EvaluateError(f"mismatched grids: samples {samples.info['path']} have {request.variables[0]} on "
                            f"({dims_text(field_dims, sizes)}) but the reference (exact law of "
                            f"{request.dataset_label}) has ({dims_text(spec.field_dims, law)}){request.hint}")
    cap = request.members
    count = min(samples.count, cap if cap is not None else max(2, EXACT_VALUES // int(np.prod(rshape))))
    ref_dims = tuple(spec.field_dims)
    data, first = _exact_samples(dataset, request.variables, ref_dims, rshape, count)
    info = {"source": "exact", "law": type(target).__name__, "samples": count,
            "sample_indices": [first, first + count],
            "description": f"exact law of {dataset.get('name')}: exact per-mode variance for the spectrum; "
                           f"{count} exact samples (generator indices {first}..{first + count - 1}, past the "
                           f"{dataset['samples']} training samples) for moments, histograms, correlation, panel"}
    spectrum = exact_spectrum(target, tuple(data[request.variables[0]].sizes[d] for d in ref_dims))
    return Side("exact", "exact law", "sample", data, ref_dims, count, info,
                law_spectrum={v: spectrum for v in request.variables}, law_moments=exact_moments(target))


@register_reference("auto")
def auto_reference(request: ReferenceRequest) -> Side:
    """``exact`` where the dataset has an exact law, else ``heldout``."""
    return REFERENCES["exact" if request.target is not None else "heldout"](request)


# --------------------------------------------------------------------------------------------- data


def _flatten_samples(ds: xr.Dataset, var: str, sample_dims: Sequence[str], field_dims: Sequence[str],
                     blocks: Sequence[Mapping[str, slice]]) -> xr.DataArray:
    """``ds[var]`` restricted to ``blocks`` (one selection per chunk), flattened over the sample dims."""
    import dask.array as dsa

    da = ds[var].transpose(*sample_dims, *field_dims)
    shape = tuple(int(da.sizes[d]) for d in field_dims)
    parts = []
    for sel in blocks:
        part = da.isel(dict(sel)).data
        if not isinstance(part, dsa.Array):
            part = dsa.from_array(part)
        parts.append(part.reshape((-1, *shape)))
    data = dsa.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    coords = {d: ds[d] for d in field_dims if d in ds.coords}
    return xr.DataArray(data, dims=("sample", *field_dims), coords=coords, attrs=dict(ds[var].attrs), name=var)


def _heldout_info(prepared: Any, stream: Any, holdout: float, count: int) -> dict[str, Any]:
    """What ``metrics.json`` records about the held-out reference (a warning when it is the whole dataset)."""
    spec = prepared.spec
    n_chunks = int(np.prod(stream.chunk_grid))
    info = {"source": "heldout", "store": str(prepared.path), "holdout": holdout, "chunks": len(stream.chunk_ids),
            "store_chunks": n_chunks, "samples": count, "sample_dims": list(spec.sample_dims),
            "periodic": {str(k): bool(x) for k, x in spec.periodic.items()},
            "description": f"held-out split of {prepared.path}: the last {len(stream.chunk_ids)} of {n_chunks} "
                           f"chunks (holdout {holdout}, as the training loader's validation split), "
                           f"{count} samples flattened over {list(spec.sample_dims)}"}
    if len(stream.chunk_ids) == n_chunks:
        info["warning"] = (f"the held-out split is the whole dataset ({n_chunks} chunk): a model trained on it has "
                           "seen this reference")
    return info


@register_reference("heldout")
def heldout_reference(request: ReferenceRequest) -> Side:
    """The validation split of the prepared dataset (the loader's split), flattened over the sample dims."""
    from ..data.loader import FieldStream

    dataset, holdout, variables = request.dataset, request.holdout, request.variables
    if not 0.0 < holdout < 1.0:
        raise EvaluateError(f"reference.holdout must be in (0, 1), got {holdout!r}")
    log.info("sciencegen-evaluate: preparing the reference dataset %s under %s (reused when cached)",
             dataset.get("name"), request.data_root)
    prepared = prepare(dataset, data_root=request.data_root)
    spec = prepared.spec
    missing = [v for v in variables if v not in spec.variables]
    if missing:
        raise EvaluateError(f"dataset {dataset.get('name')} has no variable(s) {missing} (it has "
                            f"{list(spec.variables)}); choose samples.variables")
    try:
        stream = FieldStream(prepared.path, list(spec.variables), list(spec.sample_dims), prepared.mean,
                             prepared.std, batch_size=1, split="validation", holdout=holdout)
    except (ValueError, FileNotFoundError) as exc:
        raise EvaluateError(f"reference.holdout={holdout}: {first_line(exc)}") from None
    blocks = []
    for cid in stream.chunk_ids:
        idx = np.unravel_index(int(cid), stream.chunk_grid)
        blocks.append({d: slice(int(i) * c, min((int(i) + 1) * c, n)) for d, i, c, n in
                       zip(spec.sample_dims, idx, stream.chunk_shape, stream.sample_shape, strict=True)})
    field_dims = tuple(spec.field_dims)
    task = task_members(prepared.field_shape)
    data = {}
    for v in variables:
        da = _flatten_samples(prepared.ds, v, spec.sample_dims, field_dims, blocks)
        if request.members is not None:
            da = da.isel(sample=slice(0, request.members))
        data[v] = rechunk(da, "sample", task)
    count = int(next(iter(data.values())).sizes["sample"])
    return Side("heldout", "held-out data", "sample", data, field_dims, count,
                _heldout_info(prepared, stream, holdout, count))


def _prepared_data(p: Path, variables: Sequence[str]) -> tuple[dict[str, xr.DataArray], tuple[str, ...], str]:
    """All samples of a prepared dataset store, flattened over its sample dims; its field dims; a description."""
    from ..data.store import open_prepared

    try:
        prepared = open_prepared(p)
    except DataError as exc:
        raise EvaluateError(f"reference.source {p}: {exc}") from None
    spec = prepared.spec
    missing = [v for v in variables if v not in spec.variables]
    if missing:
        raise EvaluateError(f"reference.source {p} has no variable(s) {missing} (it has {list(spec.variables)})")
    blocks = [{d: slice(None) for d in spec.sample_dims}]
    data = {v: _flatten_samples(prepared.ds, v, spec.sample_dims, spec.field_dims, blocks) for v in variables}
    return data, tuple(spec.field_dims), f"prepared dataset {p} (all {prepared.samples} samples)"


def _ensemble_data(p: Path, variables: Sequence[str]
                   ) -> tuple[dict[str, xr.DataArray], tuple[str, ...], str, str | None]:
    """The readable complete members of another ensemble store; field dims; a description; a warning."""
    ens = open_ensemble(p, "reference.source")
    missing = [v for v in variables if v not in ens.variables]
    if missing:
        raise EvaluateError(f"reference.source {p} has no variable(s) {missing} (it has {list(ens.variables)})")
    if not ens.complete.any():
        raise EvaluateError(f"reference.source {p}: none of its {ens.complete.size} members is complete")
    keep, _, line = readable_members(ens, variables, "reference.source")
    if line:
        log.warning(line)
    sub = complete_members(ens.ds, keep, variables).rename({"member": "sample"})
    field_dims = tuple(str(d) for d in sub[variables[0]].dims if d != "sample")
    data = {v: sub[v].transpose("sample", *field_dims) for v in variables}
    return data, field_dims, f"ensemble store {p} ({int(keep.sum())} readable complete members)", line


def store_reference(path: str, request: ReferenceRequest) -> Side:
    """Another ensemble store (its readable complete members) or a prepared dataset (all samples) as reference."""
    from ..data.store import read_metadata

    p = Path(path).expanduser()
    warning = None
    if p.exists() and read_metadata(p) is not None:
        data, field_dims, desc = _prepared_data(p, request.variables)
    else:
        data, field_dims, desc, warning = _ensemble_data(p, request.variables)
    shape = tuple(int(next(iter(data.values())).sizes[d]) for d in field_dims)
    task = task_members(shape)
    cap = request.members
    data = {v: rechunk(da.isel(sample=slice(0, cap)) if cap is not None else da, "sample", task)
            for v, da in data.items()}
    count = int(next(iter(data.values())).sizes["sample"])
    info = {"source": "store", "store": str(p), "samples": count, "description": desc}
    if warning:
        info["warning"] = warning
    return Side("store", "reference store", "sample", data, field_dims, count, info)


# --------------------------------------------------------------------------------------------- both sides


def check_grid(samples: Side, ref: Side, hint: str) -> Side:
    """Same field dims and sizes (and coordinates) on both sides; the samples transposed to the reference's order.

    Raises
    ------
    EvaluateError
        The grids differ (``hint`` is appended to the message).
    """
    for v in samples.data:
        s, r = samples.data[v], ref.data[v]
        sd = tuple(d for d in s.dims if d != samples.dim)
        rd = tuple(d for d in r.dims if d != ref.dim)
        if set(sd) != set(rd) or any(s.sizes[d] != r.sizes[d] for d in sd):
            raise EvaluateError(f"mismatched grids: samples {samples.info['path']} have {v} on "
                                f"({dims_text(sd, s.sizes)}) but the reference ({ref.label}) has "
                                f"({dims_text(rd, r.sizes)}){hint}")
        for d in rd:
            if d in s.coords and d in r.coords and np.issubdtype(s[d].dtype, np.number) and \
                    np.issubdtype(r[d].dtype, np.number) and not np.allclose(s[d].values, r[d].values):
                raise EvaluateError(f"mismatched grids: the {d} coordinates of the samples {samples.info['path']} "
                                    f"and of the reference ({ref.label}) differ{hint}")
        samples.data[v] = s.transpose(samples.dim, *rd)
    samples.field_dims = ref.field_dims
    return samples


def dataset_hint(store_dataset: Mapping[str, Any] | None, dataset: Mapping[str, Any]) -> tuple[str, str | None]:
    """Differences between the dataset config a store was generated with and the one given now.

    Returns
    -------
    hint, note
        What to append to a grid-mismatch message (the options to pass, or ``""``), and the note for the report
        (``None`` when the configs agree or the store records none).
    """
    if not store_dataset:
        return "", None
    from ..data.prepare import dataset_identity

    # compared as identities: keys that do not change the data (a null `conditioning`, `length` without `ar`,
    # `max_gb`) are left out of the one a store records
    store_dataset, dataset = dataset_identity(store_dataset), dataset_identity(dataset)
    keys = [k for k in sorted(set(store_dataset) | set(dataset)) if store_dataset.get(k) != dataset.get(k)]
    diffs = [f"dataset.{k}={json.dumps(store_dataset.get(k))} (now {json.dumps(dataset.get(k))})" for k in keys]
    if not diffs:
        return "", None
    shown = [f"dataset.{k}={json.dumps(store_dataset.get(k))}" for k in keys if k not in ("samples", "chunk", "seed")]
    hint = f" (the store was generated with {', '.join(shown)}: pass those options)" if shown else ""
    note = ("the store was generated from another dataset config: " + "; ".join(diffs[:4])
            + (" ..." if len(diffs) > 4 else ""))
    return hint, note
