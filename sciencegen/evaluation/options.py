"""The options of one evaluation, read from the composed ``conf/evaluate.yaml`` and checked before any work.

:func:`read_options` turns the config (a Hydra ``DictConfig`` or plain mappings) into :class:`Options`; every
mistake is a one-line :class:`~sciencegen.evaluation.common.EvaluateError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import EvaluateError

__all__ = ["Options", "dataset_given", "evaluation_dataset", "get_key", "read_options", "shipped_dataset"]


_ABSENT = object()


def get_key(cfg: Any, dotted: str, default: Any = _ABSENT) -> Any:
    """``cfg.a.b`` as plain containers, with a one-line error for a missing mandatory value (``???``).

    The defaults live only in ``conf/evaluate.yaml``: a key absent from ``cfg`` is an error (the config was
    not composed from the shipped one) unless the caller gives a ``default``.

    Parameters
    ----------
    cfg
        A ``DictConfig`` or nested mappings.
    dotted
        The key, e.g. ``samples.path``.
    default
        What a missing key reads as (none given: a missing key raises :class:`EvaluateError`).
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(cfg, DictConfig):
        try:
            value = OmegaConf.select(cfg, dotted, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            raise EvaluateError(f"{dotted} is required (set it on the command line, e.g. {dotted}=...)") from None
        if value is _ABSENT:
            return _absent(dotted, default)
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _absent(dotted, default)
        node = node[key]
    if node == "???":
        raise EvaluateError(f"{dotted} is required (set it on the command line, e.g. {dotted}=...)")
    return node


def _absent(dotted: str, default: Any) -> Any:
    if default is _ABSENT:
        raise EvaluateError(f"{dotted}: missing from the config; compose it from the shipped conf/evaluate.yaml "
                            "(sciencegen-evaluate does; from Python: hydra.compose('evaluate', overrides=[...]))")
    return default


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    try:
        n = int(value)
        if n != value and not (isinstance(value, str) and str(n) == value.strip()):
            raise ValueError
    except (TypeError, ValueError):
        raise EvaluateError(f"{key} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise EvaluateError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return n


def _output_dir(d: Any) -> Path:
    """``output.dir``, else the Hydra run directory."""
    if d:
        return Path(str(d)).expanduser()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        raise EvaluateError("output.dir is required (e.g. output.dir=runs/evaluate/grf64)") from None


@dataclass
class Options:
    """The checked options of one evaluation.

    Attributes
    ----------
    store
        ``samples.path``: the ensemble store.
    want
        ``samples.variables`` (``None``: every variable of the dataset).
    source
        ``reference.source``: a registered reference name or a store path.
    cap
        ``reference.members``.
    holdout
        ``reference.holdout``.
    bins, max_lag, panel, figures, dask, threads
        The ``evaluate`` group.
    data_root
        Where prepared dataset stores live.
    out_dir, overwrite
        ``output.dir`` (resolved) and ``output.overwrite``.
    """

    store: str
    want: Any
    source: str
    cap: int | None
    holdout: float
    bins: int
    max_lag: int | None
    panel: int
    figures: bool
    data_root: str
    out_dir: Path
    overwrite: bool
    dask: Any
    threads: Any


def read_options(cfg: Any) -> Options:
    """Read and check the options (one-line errors); nothing is read or written yet.

    Raises
    ------
    EvaluateError
        A missing ``samples.path`` or ``output.dir``, or a malformed number.
    """
    store_path = get_key(cfg, "samples.path")
    if not store_path:
        raise EvaluateError("samples.path is required (e.g. samples.path=runs/generate/grf.zarr)")
    cap = get_key(cfg, "reference.members")
    max_lag = get_key(cfg, "evaluate.max_lag")
    return Options(
        store=str(store_path), want=get_key(cfg, "samples.variables"),
        source=str(get_key(cfg, "reference.source") or "auto"),
        cap=None if cap is None else _positive_int(cap, "reference.members"),
        holdout=float(get_key(cfg, "reference.holdout")),
        bins=_positive_int(get_key(cfg, "evaluate.bins"), "evaluate.bins"),
        max_lag=None if max_lag is None else _positive_int(max_lag, "evaluate.max_lag", 0),
        panel=_positive_int(get_key(cfg, "evaluate.panel"), "evaluate.panel"),
        figures=bool(get_key(cfg, "evaluate.figures")), data_root=str(get_key(cfg, "data_root")),
        out_dir=_output_dir(get_key(cfg, "output.dir")), overwrite=bool(get_key(cfg, "output.overwrite")),
        dask=get_key(cfg, "evaluate.dask"), threads=get_key(cfg, "evaluate.threads"))


# ------------------------------------------------------------------------------------ the dataset of the store


def shipped_dataset(config_name: str = "evaluate") -> dict[str, Any]:
    """The dataset config ``conf/<config_name>.yaml`` selects by default (its ``defaults`` list), as composed.

    Raises
    ------
    EvaluateError
        The shipped configs cannot be read (a broken installation).
    """
    from omegaconf import OmegaConf

    from ..config import SCHEMAS, config_dir, plain

    root = config_dir()
    try:
        defaults = OmegaConf.to_container(OmegaConf.load(root / f"{config_name}.yaml")).get("defaults") or []
        name = next(d["dataset"] for d in defaults if isinstance(d, dict) and "dataset" in d)
        node = OmegaConf.load(root / "dataset" / f"{name}.yaml")
        node.pop("defaults", None)
        schema = SCHEMAS.get(("dataset", str(name)))
        merged = OmegaConf.merge(OmegaConf.structured(schema), node) if schema else node
    except (OSError, StopIteration, ValueError) as exc:
        raise EvaluateError(f"{root}: cannot read the shipped dataset config of {config_name}.yaml: {exc}") from None
    return dict(plain(merged, EvaluateError))


def dataset_given(cfg: Any, recorded: Mapping[str, Any] | None = None) -> bool:
    """Whether the user chose the dataset of an evaluation (else the store's recorded one is used).

    A ``dataset`` config that is not the shipped default of ``conf/evaluate.yaml`` was chosen. One equal to it was
    chosen when the command line names it (``dataset=...``, ``dataset.KEY=...``: Hydra's overrides); composed
    without Hydra's runtime (from Python), when it is of the same kind (``_target_``) as the ``recorded`` one, so a
    default that may have been meant keeps its meaning.

    Parameters
    ----------
    cfg
        The composed ``conf/evaluate.yaml`` config.
    recorded
        The dataset config the ensemble store records (``None``: none).
    """
    from ..data.prepare import dataset_identity

    conf = get_key(cfg, "dataset", None)
    if not conf:
        return False
    if dataset_identity(conf) != dataset_identity(shipped_dataset()):
        return True
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        task = [str(o).lstrip("+~") for o in HydraConfig.get().overrides.task]
        return any(o.split("=", 1)[0].split(".", 1)[0].split("@", 1)[0] == "dataset" for o in task)
    return bool(recorded) and recorded.get("_target_") == conf.get("_target_")


def evaluation_dataset(cfg: Any, recorded: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The dataset config of an evaluation: the user's when given, else the one the store records.

    Parameters
    ----------
    cfg
        The composed ``conf/evaluate.yaml`` config.
    recorded
        The dataset config the ensemble store records (its identity's ``dataset``; ``None``: none).

    Returns
    -------
    dataset, origin
        The plain dataset config and where it came from: ``"given"`` (the user's), ``"store"`` (the store's) or
        ``"default"`` (the shipped default: the store records none).
    """
    from ..data.prepare import dataset_config

    given = dataset_given(cfg, recorded)
    if recorded and not given:
        return dataset_config(dict(recorded)), "store"
    conf = get_key(cfg, "dataset", None)
    if not conf:
        raise EvaluateError("dataset: the store records no dataset config; give one (e.g. dataset=netcdf "
                            "dataset.path=FILE dataset.variables=[...] dataset.sample_dims=[time])")
    return dataset_config(conf), "given" if given else "default"
