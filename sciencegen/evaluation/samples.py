"""The generated side: an ensemble store opened lazily, its complete members, their sampler cost.

The samples are the *complete* members of a store written by ``sciencegen-generate`` (dim ``member`` plus the
dataset's field dims, one float32 variable per physical variable, per-member ``complete``/``rounds``/``nfe``,
:mod:`sciencegen.data.ensemble`); incomplete members (a store still being written, or an unfinished shard)
are excluded and counted, never averaged in. :func:`open_ensemble` refuses, in one line, what is not such a
store (missing, not Zarr, corrupt metadata, no ``member`` dim); :mod:`sciencegen.evaluation.readable` then
finds the complete members that cannot be decoded.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..data.ensemble import FLAG_ARRAYS, completed_members, is_zarr, read_meta
from ..errors import SciencegenError
from .common import EvaluateError, Side, first_line, rechunk, runs, task_members

__all__ = ["Ensemble", "complete_members", "open_ensemble", "sample_cost", "samples_side", "select_variables"]

#: the JSON metadata files of a Zarr store (v3, then v2), at its root and in each array
_METADATA = ("zarr.json", ".zmetadata", ".zgroup", ".zattrs", ".zarray")


@dataclass
class Ensemble:
    """An ensemble store opened lazily with its completion flags.

    Attributes
    ----------
    path
        The store.
    ds
        The store opened lazily (Dask) with :func:`xarray.open_zarr`.
    complete
        Per member: flagged complete (unreadable flag chunks count as incomplete); over ``(condition, member)``
        for a conditional store.
    meta
        The store's ``sciencegen_ensemble`` description (``None``: not written by ``sciencegen-generate``).
    variables
        The field variables over ``(member, ...)``.
    """

    path: Path
    ds: xr.Dataset
    complete: np.ndarray
    meta: dict[str, Any] | None
    variables: tuple[str, ...]

    @property
    def identity(self) -> dict[str, Any]:
        """What the store was generated from (``meta["identity"]``: dataset, model, sampler, seed), or ``{}``."""
        return (self.meta or {}).get("identity", {}) if isinstance(self.meta, dict) else {}


def open_ensemble(path: str | os.PathLike, what: str = "samples.path") -> Ensemble:
    """Open an ensemble store (``sciencegen-generate``'s contract) lazily and read its ``complete`` flags.

    Parameters
    ----------
    path
        The store.
    what
        The config key naming it, for error messages.

    Raises
    ------
    EvaluateError
        Missing path, not a Zarr store, corrupt metadata, unreadable, no ``member`` dim, or no field variable.
    """
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise EvaluateError(f"{what} {p}: no such store (write one with sciencegen-generate ... output.path={p})")
    if not is_zarr(p):
        kind = "a file" if p.is_file() else "a directory without Zarr metadata"
        raise EvaluateError(f"{what} {p} is not a Zarr store ({kind})")
    _check_metadata(p, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(p, chunks={})
    except Exception as exc:
        raise EvaluateError(f"{what} {p}: cannot read the Zarr store: {first_line(exc)}") from None
    if "member" not in ds.dims:
        raise EvaluateError(f"{what} {p} is not an ensemble store: no member dim (dims {dict(ds.sizes)}); "
                            "ensembles are written by sciencegen-generate")
    variables = tuple(str(v) for v in ds.data_vars
                      if v not in FLAG_ARRAYS and "member" in ds[v].dims and ds[v].ndim >= 2)
    if not variables:
        raise EvaluateError(f"{what} {p} holds no field variable over (member, ...) (variables {list(ds.data_vars)})")
    n = int(ds.sizes["member"])
    shape = (int(ds.sizes["condition"]), n) if "condition" in ds.dims else n  # conditional: (condition, member)
    flags = np.ones(shape, dtype=bool)
    if "complete" in ds.data_vars and n:
        flags = completed_members(p, shape)  # unreadable chunks of the flags count as incomplete
    return Ensemble(p, ds, flags, _store_meta(p, what), variables)


def _check_metadata(p: Path, what: str) -> None:
    """Raise a one-line "is corrupt" error when a metadata file of the store (root or array) is not valid JSON."""
    redo = ("move it away (or delete it) and rerun the sciencegen-generate command that wrote it to regenerate "
            "the ensemble")
    for f in _METADATA:
        try:
            text = (p / f).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise EvaluateError(f"{what} {p}: cannot read its root metadata {f}: {exc.strerror or exc}") from None
        try:
            json.loads(text)
        except ValueError as exc:
            why = "it is empty" if not text.strip() else f"{first_line(exc)}, {len(text)} bytes"
            raise EvaluateError(f"{what} {p} is corrupt (its root metadata {f} cannot be read: {why}); "
                                f"{redo}") from None
    for sub in sorted(q for q in p.iterdir() if q.is_dir()):
        for f in _METADATA:
            q = sub / f
            if not q.is_file():
                continue
            try:
                json.loads(q.read_bytes())
            except (OSError, ValueError) as exc:
                raise EvaluateError(f"{what} {p} is corrupt (the metadata {sub.name}/{f} cannot be read: "
                                    f"{first_line(exc)}); {redo}") from None


def _store_meta(p: Path, what: str) -> dict[str, Any] | None:
    """The store's ``sciencegen_ensemble`` description (None: a Zarr store not written by sciencegen-generate)."""
    try:
        return read_meta(p)
    except SciencegenError as exc:  # the description exists but is garbled
        raise EvaluateError(f"{what} {exc}") from None


def complete_members(ds: xr.Dataset, flags: np.ndarray, variables: Sequence[str]) -> xr.Dataset:
    """The members ``flags`` of ``ds[variables]`` (contiguous runs of slices, concatenated lazily).

    Parameters
    ----------
    ds
        An ensemble store opened lazily.
    flags
        Per member: whether to keep it.
    variables
        The variables to keep.
    """
    sub = ds[list(variables)]
    found = runs(flags)
    if len(found) == 1:
        return sub.isel(member=slice(*found[0]))
    return xr.concat([sub.isel(member=slice(a, b)) for a, b in found], dim="member")


def select_variables(ens: Ensemble, want: Any, dataset_variables: Sequence[str], dataset_name: Any) -> list[str]:
    """The variables to evaluate (``samples.variables``; ``None``: the dataset's), checked against the store.

    Also checks that the store has at least 2 complete members (the ensemble statistics need them).

    Raises
    ------
    EvaluateError
        An empty list, a variable the store lacks, an empty store, or fewer than 2 complete members.
    """
    if want is None:
        variables = [str(v) for v in dataset_variables]
    else:
        variables = [want] if isinstance(want, str) else [str(v) for v in want]
        if not variables:
            raise EvaluateError("samples.variables is empty; give at least one variable or null for all")
    missing = [v for v in variables if v not in ens.variables]
    if missing:
        advice = "choose samples.variables" if want is not None else _conflict(ens, dataset_name)
        raise EvaluateError(f"samples.path {ens.path} has no variable {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(ens.variables)}); {advice}")
    members, n_complete = int(ens.complete.size), int(ens.complete.sum())
    if members == 0:
        raise EvaluateError(f"samples.path {ens.path} is empty: it holds 0 members")
    if n_complete == 0:
        raise EvaluateError(f"samples.path {ens.path}: none of its {members} members is complete (still being "
                            "written? rerun its sciencegen-generate command to finish it)")
    if n_complete < 2:
        raise EvaluateError(f"samples.path {ens.path}: only 1 of its {members} members is complete; the ensemble "
                            "statistics need at least 2")
    return variables


def _conflict(ens: Ensemble, dataset_name: Any) -> str:
    """The advice when the given dataset's variables are not in the store: the dataset the store records."""
    recorded = ens.identity.get("dataset")
    if not isinstance(recorded, Mapping) or not recorded:
        return f"is it an ensemble of dataset {dataset_name}?"
    names = recorded.get("variables")
    names = f" (variables {', '.join(map(str, [names] if isinstance(names, str) else names))})" if names else ""
    return (f"it was generated from dataset {recorded.get('name')}{names}, not {dataset_name}: drop the dataset "
            "options to evaluate it against the dataset it records")


def _model_label(attr: Any, identity: Any) -> str | None:
    """``oracle`` or ``unet (step 1200)`` from the store's ``model`` attribute (JSON) or identity."""
    model = identity
    if isinstance(attr, str):
        with contextlib.suppress(ValueError, TypeError):
            model = json.loads(attr)
    if not isinstance(model, Mapping):
        return None if model is None else str(model)
    name = str(model.get("name", "?"))
    return f"{name} (step {model['step']})" if "step" in model else name


def samples_side(ens: Ensemble, variables: Sequence[str], keep: np.ndarray, unread: dict[str, Any]
                 ) -> tuple[Side, list[str]]:
    """The generated side (the readable complete members ``keep``, lazily) and its warnings.

    Parameters
    ----------
    ens
        The store.
    variables
        The variables to evaluate.
    keep
        The members to evaluate (:func:`~sciencegen.evaluation.readable.readable_members`).
    unread
        What is unreadable, recorded in the side's ``info``.
    """
    identity = ens.identity
    members, n_complete, n_eval = int(ens.complete.size), int(ens.complete.sum()), int(keep.sum())
    sub = complete_members(ens.ds, keep, variables)
    field_dims = tuple(str(d) for d in sub[variables[0]].dims if d != "member")
    task = task_members(tuple(int(sub.sizes[d]) for d in field_dims))
    sdata = {v: rechunk(sub[v].transpose("member", *field_dims), "member", task) for v in variables}
    attrs = ens.ds.attrs
    sinfo: dict[str, Any] = {
        "path": str(ens.path), "members": members, "complete": n_complete, "incomplete": members - n_complete,
        **unread, "evaluated": n_eval,
        "model": _model_label(attrs.get("model"), identity.get("model")),
        "sampler": attrs.get("sampler", (identity.get("sampler") or {}).get("name")),
        "sampler_steps": attrs.get("sampler_steps", (identity.get("sampler") or {}).get("steps")),
        "seed": identity.get("seed", attrs.get("seed")), "dataset": identity.get("dataset"),
        "written_by_sciencegen": ens.meta is not None,
    }
    warn: list[str] = []
    if ens.meta is None:
        warn.append(f"{ens.path} was not written by sciencegen-generate (no sciencegen_ensemble attribute)")
    if members > n_complete:
        warn.append(f"{members - n_complete} of {members} members incomplete: excluded")
    return Side("samples", "generated", "member", sdata, field_dims, n_eval, sinfo), warn


def sample_cost(ens: Ensemble, keep: np.ndarray) -> tuple[dict[str, Any], list[str]]:
    """Mean ``rounds`` and ``nfe`` over the evaluated members (None, with a note, where they cannot be read)."""
    cost: dict[str, Any] = {"rounds_mean": None, "nfe_mean": None}
    notes: list[str] = []
    for key in ("rounds", "nfe"):
        if key not in ens.ds.data_vars:
            continue
        try:
            vals = np.asarray(ens.ds[key].values, dtype=np.float64)[keep]
        except Exception as exc:  # a corrupt chunk of the per-member costs: report, do not fail
            notes.append(f"the {key} array of {ens.path} cannot be read ({first_line(exc)}): its mean is not "
                         "reported")
            continue
        cost[f"{key}_mean"] = float(vals.mean())
    return cost, notes
