"""Dataset configs to prepared stores: instantiate a dataset's source, write or reuse its store, summarise it.

The functions here are what every command that needs data calls (``sciencegen-data``, train, generate,
evaluate, the whole pipeline): :func:`make_source` turns a ``dataset`` config into a
:class:`~sciencegen.data.sources.FieldSource`, :func:`prepare` makes sure the dataset exists as a prepared
store (:mod:`sciencegen.data.store`) and opens it, :func:`dataset_identity` is the part of the config that
names the data (its store's hash), and :func:`summary` is the human report of a prepared store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import xarray as xr

from ..config import instantiate, plain
from .conditioning import build_inputs, make_kinds, needed_variables
from .fields import DataError, human_bytes
from .masks import VALID_PREFIX, add_mask_channels, find_masks, mask_variables
from .sources import FieldSource
from .store import PreparedData, open_prepared, read_metadata, store_bytes, write_prepared

__all__ = ["NOT_DATA_KEYS", "dataset_config", "dataset_identity", "default_store_path", "human_bytes",
           "make_source", "prepare", "summary"]

#: dataset keys that do not change the data: left out of a store's identity (its name hash and recorded config)
NOT_DATA_KEYS = ("max_gb",)
#: keys added after stores were first prepared, left out of the identity at the value that means "as before"
#: (so those stores keep their names): ``conditioning: null`` (unconditional), ``ar: null`` (independent samples),
#: ``mask: null`` (no mask variable) except with ``nonfinite: mask`` (whose stores now carry the masks found)
NEUTRAL_KEYS = {"conditioning": None, "ar": None, "mask": None}
#: keys that matter only when another key is set: ``length`` (steps per trajectory) only with ``ar``
ONLY_WITH = {"length": "ar"}


def dataset_config(cfg_dataset: Any) -> dict[str, Any]:
    """Plain, resolved dict of a dataset config (DictConfig or mapping).

    Parameters
    ----------
    cfg_dataset
        The ``dataset`` config group, or a mapping.

    Raises
    ------
    DataError
        One line naming a mandatory (``???``) key left unset.
    """
    return dict(plain(cfg_dataset, DataError))


def dataset_identity(cfg_dataset: Any) -> dict[str, Any]:
    """The dataset config without the keys that do not change the data (:data:`NOT_DATA_KEYS`, :data:`NEUTRAL_KEYS`
    at their neutral value, :data:`ONLY_WITH` keys whose key is unset)."""
    conf = dataset_config(cfg_dataset)
    neutral = {k for k, v in NEUTRAL_KEYS.items() if k in conf and conf[k] == v
               and not (k == "mask" and conf.get("nonfinite") == "mask")}
    neutral |= {k for k, other in ONLY_WITH.items() if k in conf and conf.get(other) is None}
    return {k: v for k, v in conf.items() if k not in NOT_DATA_KEYS and k not in neutral}


def default_store_path(cfg_dataset: Any, data_root: str | os.PathLike) -> Path:
    """``DATA_ROOT/NAME-HASH.zarr``: one cached store per distinct dataset config."""
    conf = dataset_identity(cfg_dataset)
    digest = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(data_root) / f"{conf.get('name', 'dataset')}-{digest}.zarr"


def make_source(cfg_dataset: Any) -> FieldSource:
    """Instantiate the dataset config's ``_target_``; config mistakes become one-line :class:`DataError`.

    The ``conditioning`` and ``mask`` keys are not passed to the source (:func:`prepare` applies them to the
    source's data); the variables they read beyond ``dataset.variables`` are set as the source's
    :attr:`FieldSource.keep`.

    Parameters
    ----------
    cfg_dataset
        The ``dataset`` config group (with ``_target_``), or a mapping.
    """
    conf = dataset_config(cfg_dataset)
    conditioning = conf.pop("conditioning", None)
    mask = conf.pop("mask", None)
    if "_target_" not in conf:
        raise DataError("dataset config has no _target_ (pick one with dataset=grf|kolmogorov|netcdf|zarr)")
    name = conf.get("name")
    source = instantiate(conf, f"dataset ({name})" if name else "dataset", error=DataError)
    if not isinstance(source, FieldSource):
        raise DataError(f"dataset._target_ {conf['_target_']} is not a sciencegen FieldSource")
    source.keep = (*needed_variables(conditioning), *(v for v in mask_variables(mask)
                                                       if v not in needed_variables(conditioning)))
    return source


def prepare(cfg_dataset: Any, path: str | os.PathLike | None = None, *, data_root: str | os.PathLike = "data",
            overwrite: bool = False, dtype: str = "float32", chunk_mb: float = 8.0,
            progress: bool = False) -> PreparedData:
    """Make sure the dataset of ``cfg_dataset`` exists as a prepared store and open it.

    A store that already holds the same config is reused without writing. Static invalid points of the target
    variables (``dataset.nonfinite=mask``, ``dataset.mask``; :mod:`sciencegen.data.masks`) are written as NaN,
    with ``valid_<v>``, the static condition channel ``static_valid_<v>`` and ``meta["masks"]``.

    Parameters
    ----------
    cfg_dataset
        The ``dataset`` config group (with ``_target_``).
    path
        Output store; default :func:`default_store_path`.
    data_root
        Where default store paths live.
    overwrite, dtype, chunk_mb, progress
        See :func:`~sciencegen.data.store.write_prepared`.
    """
    import dask

    conf = dataset_config(cfg_dataset)
    source = make_source(conf)
    path = Path(path) if path else default_store_path(conf, data_root)
    ds, spec, label = source.open(progress=progress)
    kinds = make_kinds(conf.get("conditioning"))
    masks, nonfinite = None, source.nonfinite
    if not source.generated and (nonfinite == "mask" or conf.get("mask") is not None):
        reused = None if overwrite else _reusable(path, dataset_identity(conf))
        if reused is not None:  # before the pass over the input that finds the masks
            return reused
        targets = spec.variables
        for kind in kinds.values():
            targets = kind.targets(targets)
        ds, masks, nonfinite = find_masks(ds, spec, conf.get("mask"), nonfinite, label, targets, progress)
    cond = None
    if kinds:
        made = build_inputs(conf["conditioning"], ds, spec, label=label)
        ds = xr.merge([made.targets, *made.inputs.values(), *made.static.values()], combine_attrs="override")
        spec, cond = made.spec, made.meta
    if masks is not None:
        ds, cond = add_mask_channels(ds, spec, masks, cond)
    # generators run torch inside their tasks (threaded already): one task at a time
    scheduler = "synchronous" if source.generated else None
    with dask.config.set(scheduler=scheduler) if scheduler else contextlib.nullcontext():
        return write_prepared(ds, spec, path, name=source.name, config=dataset_identity(conf), label=label,
                              overwrite=overwrite, dtype=dtype, chunk_mb=chunk_mb, chunks=source.chunks(),
                              nonfinite=nonfinite, check_input=not source.generated, progress=progress,
                              extra_attrs=source.attrs(), max_gb=source.max_gb, conditioning=cond,
                              masks=None if masks is None else masks.meta)


def _reusable(path: Path, identity: dict[str, Any]) -> PreparedData | None:
    """The complete store at ``path`` when it holds this dataset (as :func:`write_prepared` would reuse it)."""
    meta = read_metadata(path) if path.exists() else None
    if not meta or not meta.get("complete"):
        return None
    same = json.dumps(meta.get("config", {}), sort_keys=True, default=str) == json.dumps(
        json.loads(json.dumps(identity, default=str)), sort_keys=True, default=str)
    if not same:
        return None
    prepared = open_prepared(path)
    prepared.reused = True
    return prepared


def summary(p: PreparedData, seconds: float | None = None) -> str:
    """Human summary: variables, dims, sizes, chunks, statistics, how to open the store.

    Parameters
    ----------
    p
        The prepared dataset (:func:`prepare`).
    seconds
        Time spent writing it, when it was written.
    """
    spec, ds = p.spec, p.ds
    lines = []
    how = "reused (same config)" if p.reused else f"written in {seconds:.1f} s" if seconds is not None else "written"
    lines.append(f"dataset {p.meta.get('name')} -> {p.path} ({human_bytes(store_bytes(p.path))} on disk, {how})")
    samples = " x ".join(f"{d}={ds.sizes[d]}" for d in spec.sample_dims)
    field = " x ".join(f"{d}={ds.sizes[d]}" for d in spec.field_dims)
    per = [d for d in spec.field_dims if spec.periodic.get(d)]
    lines.append(f"  samples: {p.samples} ({samples})   field: {field}   periodic: {', '.join(per) or 'none'}")
    cond = p.meta.get("conditioning")
    if cond:
        state = cond.get("state")
        pairs = f"   pairs: target = {state['dim']} + {state['lag']}" if state else ""
        lines.append(f"  targets: {', '.join(spec.variables)}   inputs: {', '.join(cond.get('inputs') or {}) or 'none'}"
                     f"   static: {', '.join(cond.get('static') or {}) or 'none'}{pairs}")
    for v, m in (p.meta.get("masks") or {}).items():
        lines.append(f"  mask of {v}: {m['valid']} of {m['points']} points valid ({m['source']}; NaN elsewhere, "
                     f"{VALID_PREFIX}{v} in the store, the model sees it as a static channel)")
    chunks = ds[spec.variables[0]].encoding.get("chunks") or ds[spec.variables[0]].data.chunksize
    lines.append("  chunks: " + ", ".join(f"{d}={c}" for d, c in zip(ds[spec.variables[0]].dims, chunks, strict=False)))
    header = f"  {'variable':<14}{'units':<12}{'dtype':<9}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}{'finite':>12}"
    lines.append(header)
    st = p.stats
    for i, v in enumerate(spec.variables):
        units = str(ds[v].attrs.get("units", "-"))
        lines.append(f"  {v:<14}{units:<12}{str(ds[v].dtype):<9}{st['mean'].values[i]:>12.5g}"
                     f"{st['std'].values[i]:>12.5g}{st['min'].values[i]:>12.5g}{st['max'].values[i]:>12.5g}"
                     f"{int(st['count'].values[i]):>12d}")
    lines.append(f"  open with: xarray.open_zarr({str(p.path)!r}); statistics: group='statistics'")
    return "\n".join(lines)
