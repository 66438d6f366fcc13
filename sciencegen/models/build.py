"""Model construction from a config: the builders that ``conf/model/*.yaml`` name, and loading a trained model.

A model config is a Hydra ``_target_`` plus the builder's arguments (``conf/model/unet.yaml``,
``conf/model/oracle.yaml``):

* :func:`edm_unet` -- the EDM-preconditioned U-Net (``model=unet``);
* :func:`oracle_denoiser` -- the exact denoiser of an analytic dataset (``model=oracle``, nothing to train).

:func:`resolve_model_config` fills a config from the data (channels, periodicity, the preset expanded) into
what a checkpoint records, :func:`build_model` builds the network of such a config, :func:`load_model`
rebuilds a trained one (its EMA weights) from a checkpoint, and :func:`is_oracle` is the one place that
decides whether a config is the oracle.

Old ``_target_`` strings: checkpoints and configs written before the builders moved here record
``sciencegen.pipelines.train.edm_unet`` / ``...oracle_denoiser``. :data:`TARGET_ALIASES` maps them to the
builders here, so such checkpoints still load and resume (:func:`canonical_target`).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..config import plain
from ..data.fields import DataError
from ..errors import TrainError
from .checkpoint import CheckpointError, load_checkpoint
from .oracle import Oracle, exact_law
from .precond import EDMPrecond
from .unet import UNet, grid_padding, unet_preset

__all__ = [
    "TARGET_ALIASES",
    "UNET_KEYS",
    "USE_KEYS",
    "build_model",
    "builder",
    "canonical_target",
    "edm_unet",
    "is_oracle",
    "load_model",
    "oracle_denoiser",
    "resolve_model_config",
]

log = logging.getLogger(__name__)

#: keyword arguments of :class:`~sciencegen.models.UNet` that a model config may set (``null``: the preset's value)
UNET_KEYS = ("channels", "channel_mult", "blocks_per_level", "attention_levels", "dropout", "emb_dim",
             "padding_mode_nonperiodic")
#: keys of a model config that are about using a model, not about building it
USE_KEYS = ("checkpoint",)
#: old ``_target_`` strings (recorded by checkpoints written before the builders moved) -> the builder now
TARGET_ALIASES = {
    "sciencegen.pipelines.train.edm_unet": "sciencegen.models.build.edm_unet",
    "sciencegen.pipelines.train.oracle_denoiser": "sciencegen.models.build.oracle_denoiser",
}
#: keys of a U-Net config besides :data:`UNET_KEYS`
_UNET_OTHER_KEYS = ("_target_", "name", "preset", "sigma_data", "in_channels", "out_channels", "cond_channels",
                    "periodic")


def _plain(cfg: Any) -> Any:
    return plain(cfg, TrainError)


def canonical_target(target: Any) -> Any:
    """The ``_target_`` a model config means today: an old string of :data:`TARGET_ALIASES` mapped, else as is."""
    return TARGET_ALIASES.get(str(target), target) if target is not None else None


# ------------------------------------------------------------------------------------------- builders


def edm_unet(in_channels: int, out_channels: int | None = None, cond_channels: int = 0, preset: str = "tiny",
             sigma_data: float = 1.0, periodic: Sequence[bool] = (True, True), **overrides: Any) -> EDMPrecond:
    """EDM-preconditioned U-Net (the ``model=unet`` builder).

    Karras et al. 2022, Table 1 (preconditioning) around :class:`~sciencegen.models.UNet`.

    Parameters
    ----------
    in_channels, out_channels, cond_channels
        Channel counts (``out_channels`` defaults to ``in_channels``).
    preset
        Named size (:func:`~sciencegen.models.unet_preset`); ``overrides`` replace its entries.
    sigma_data
        EDM ``sigma_data`` (1.0 for normalised fields).
    periodic
        ``(y, x)``: circular padding where ``True``.
    **overrides
        Further :class:`~sciencegen.models.UNet` keyword arguments.

    Returns
    -------
    EDMPrecond
    """
    kw = unet_preset(preset, **{k: v for k, v in overrides.items() if v is not None})
    net = UNet(int(in_channels), out_channels, int(cond_channels), periodic=tuple(bool(p) for p in periodic), **kw)
    return EDMPrecond(net, sigma_data=float(sigma_data))


def oracle_denoiser(dataset: Mapping[str, Any] | None = None) -> Oracle:
    """Exact denoiser of an analytic dataset (the ``model=oracle`` builder); nothing to train.

    Parameters
    ----------
    dataset
        The dataset config (with ``_target_``) whose source has an analytic law (``dataset=grf``), with or
        without ``conditioning`` (the law is :func:`~sciencegen.models.oracle.exact_law`: the GRF, or its exact
        conditional law given block means, the AR(1) past state or static maps).

    Raises
    ------
    TrainError
        No dataset, or a dataset without an analytic law.
    """
    if dataset is None:
        raise TrainError("model=oracle needs the dataset config of an analytic dataset (e.g. dataset=grf)")
    conf = plain(dataset, DataError)
    target = exact_law(conf)
    if target is None:
        kinds = ", ".join(dict(conf.get("conditioning") or {})) or None
        given = f" with conditioning {kinds}" if kinds else ""
        raise TrainError(f"model=oracle needs a dataset with an exact law (dataset=grf, conditioning coarse, "
                         f"state with ar, or static); dataset {conf.get('name', '?')}{given} has none: train "
                         "model=unet instead")
    return Oracle(target)


def is_oracle(model_cfg: Mapping[str, Any] | Any) -> bool:
    """Whether a model config is the exact denoiser (``model=oracle``): the one place that decides it.

    True when its ``_target_`` ends in ``oracle_denoiser`` (:func:`oracle_denoiser`, or an old path of it)
    or its ``name`` is ``"oracle"``.
    """
    get = model_cfg.get if hasattr(model_cfg, "get") else lambda k, d=None: getattr(model_cfg, k, d)
    return get("name") == "oracle" or str(get("_target_", "") or "").endswith("oracle_denoiser")


def builder(model_cfg: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """The builder function a model config's ``_target_`` names (old paths mapped, :data:`TARGET_ALIASES`).

    Raises
    ------
    TrainError
        No ``_target_``, or one that cannot be imported.
    """
    from hydra.utils import get_object

    target = canonical_target(model_cfg.get("_target_"))
    if not target:
        raise TrainError("model config has no _target_ (pick one with model=unet|oracle)")
    try:
        return get_object(str(target))
    except Exception as exc:
        raise TrainError(f"model._target_ {model_cfg.get('_target_')}: cannot import it ({type(exc).__name__})") \
            from None


# ------------------------------------------------------------------------------------------- resolving a config


def resolve_model_config(model_cfg: Mapping[str, Any] | Any, *, channels: int, field_dims: Sequence[str],
                         field_shape: Sequence[int], periodic: Mapping[str, bool] | Sequence[bool],
                         cond_channels: int = 0) -> dict[str, Any]:
    """Fill a model config from the data and check it: the model part of a checkpoint's meta.

    ``in_channels`` and ``cond_channels`` come from the data (a different given value is an error),
    ``out_channels`` defaults to ``in_channels``, ``periodic`` comes from the data unless given, and a
    ``preset`` is expanded into explicit :class:`~sciencegen.models.UNet` arguments (so the checkpoint rebuilds
    without the preset table). An old
    ``_target_`` path is replaced by today's (:data:`TARGET_ALIASES`).

    Parameters
    ----------
    model_cfg
        The ``model`` config group (``_target_`` plus builder arguments; ``null`` = from the data/preset).
    channels
        Channels of the data (one per variable).
    field_dims, field_shape
        Names and sizes of the field dims.
    periodic
        Per field dim: periodic or not (mapping dim → bool, or a sequence in field-dim order).
    cond_channels
        Condition channels of a conditional dataset (its inputs and static fields; 0: unconditional).

    Returns
    -------
    dict
        The resolved config (without ``checkpoint``), JSON-able.

    Raises
    ------
    TrainError
        Channel mismatch, conditions the model cannot take, an unknown preset or U-Net argument, a field that is
        not 2-D for a 2-D model.  (Any grid size is fine: the U-Net pads it inside, which is logged.)
    """
    conf = {k: v for k, v in _plain(model_cfg).items() if k not in USE_KEYS}
    if "_target_" in conf:
        conf["_target_"] = canonical_target(conf["_target_"])
    field_dims, field_shape = list(field_dims), [int(n) for n in field_shape]
    _resolve_channels(conf, channels, int(cond_channels))
    if "periodic" in conf:
        if conf["periodic"] is None:
            flags = ([bool(periodic.get(d, False)) for d in field_dims] if isinstance(periodic, Mapping)
                     else [bool(p) for p in periodic])
        else:
            flags = [bool(p) for p in conf["periodic"]]
        conf["periodic"] = flags
    if "preset" in conf:  # a U-Net: expand the preset, check the grid
        _resolve_unet(conf, field_dims, field_shape)
    return conf


def _resolve_channels(conf: dict[str, Any], channels: int, cond_channels: int = 0) -> None:
    """``in_channels`` / ``out_channels`` / ``cond_channels`` from the data."""
    if "in_channels" in conf:
        given = conf["in_channels"]
        if given is not None and int(given) != channels:
            raise TrainError(f"model.in_channels={given} but the data have {channels} channel(s) (one per "
                             "variable): drop model.in_channels, it comes from the data")
        conf["in_channels"] = channels
    if "out_channels" in conf:
        out = conf["out_channels"]
        if out is not None and int(out) != conf.get("in_channels", channels):
            raise TrainError(f"model.out_channels={out} but a denoiser outputs the field itself "
                             f"({conf.get('in_channels', channels)} channel(s)): drop model.out_channels")
        conf["out_channels"] = conf.get("in_channels", channels)
    given = conf.get("cond_channels")
    if given is not None and int(given) not in (0, cond_channels):
        raise TrainError(f"model.cond_channels={given} but the data have {cond_channels} condition channel(s) "
                         "(dataset.conditioning): drop model.cond_channels, it comes from the data")
    if "cond_channels" in conf:
        conf["cond_channels"] = cond_channels
    elif cond_channels:
        raise TrainError(f"model={conf.get('name', 'model')} takes no conditions, but the data have "
                         f"{cond_channels} condition channel(s) (dataset.conditioning): use model=unet")


def _resolve_unet(conf: dict[str, Any], field_dims: list[str], field_shape: list[int]) -> None:
    """Expand a U-Net config's preset into explicit arguments; log how the grid is padded inside the network."""
    name = conf.get("name", "model")
    grid = "x".join(str(n) for n in field_shape)
    if len(field_shape) != 2:
        raise TrainError(f"model={name} is a 2-D U-Net but the data have {len(field_shape)} field dim(s) "
                         f"{field_dims} ({grid})")
    if "periodic" in conf and len(conf["periodic"]) != 2:
        raise TrainError(f"model.periodic needs one flag per field dim {field_dims}, got {conf['periodic']}")
    overrides = {k: conf[k] for k in UNET_KEYS if conf.get(k) is not None}
    extra = sorted(k for k in conf if k not in UNET_KEYS and k not in _UNET_OTHER_KEYS)
    if extra:
        raise TrainError(f"model: unknown key(s) {extra}; U-Net keys are {list(UNET_KEYS)}")
    try:
        kw = unet_preset(str(conf["preset"]), **overrides)
    except ValueError as exc:
        raise TrainError(f"model.preset={conf['preset']}: {exc}") from None
    params = inspect.signature(UNet.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k in UNET_KEYS}
    for k in UNET_KEYS:
        v = kw.get(k, defaults.get(k))
        conf[k] = list(v) if isinstance(v, tuple) else v
    _log_padding(field_dims, field_shape, 2 ** (len(conf["channel_mult"]) - 1), conf.get("periodic"))


def _log_padding(field_dims: list[str], field_shape: list[int], factor: int, periodic: Sequence[bool] | None) -> None:
    """Say once, when the model is resolved, that the grid is padded inside the U-Net (and how, and what it costs)."""
    pads = grid_padding(field_shape, factor)
    if not any(a or b for a, b in pads):
        return
    flags = [True] * len(field_dims) if periodic is None else [bool(p) for p in periodic]
    padded = [n + a + b for n, (a, b) in zip(field_shape, pads, strict=True)]
    how = ", ".join(f"{'circular' if per else 'replicate'} in {d}"
                    for d, per, (a, b) in zip(field_dims, flags, pads, strict=True) if a or b)
    extra = math.prod(padded) / math.prod(field_shape) - 1
    log.info("grid %s padded to %s inside the U-Net (%s; %d halving(s) need multiples of %d): %.0f%% more grid "
             "points per step", "x".join(map(str, field_shape)), "x".join(map(str, padded)), how,
             factor.bit_length() - 1, factor, 100 * extra)


# ------------------------------------------------------------------------------------------- building, loading


def build_model(model_cfg: Mapping[str, Any] | Any, dataset_cfg: Mapping[str, Any] | Any | None = None) -> nn.Module:
    """Build the denoiser of a (resolved) model config through its ``_target_``.

    Parameters
    ----------
    model_cfg
        A model config as resolved by :func:`resolve_model_config` (e.g. ``meta["model"]`` of a
        checkpoint): ``_target_`` plus the builder's arguments; ``name`` and ``checkpoint`` are ignored,
        ``null`` values are left to the builder's defaults.
    dataset_cfg
        The dataset config, for builders that take a ``dataset`` argument (``model=oracle``).

    Returns
    -------
    torch.nn.Module
        ``denoiser(x, sigma, cond=None)`` in normalised units, with fresh weights.

    Raises
    ------
    TrainError
        No or unknown ``_target_``, or arguments the builder refuses.
    """
    conf = _plain(model_cfg)
    build = builder(conf)
    kwargs = {k: v for k, v in conf.items() if k not in ("_target_", "name", *USE_KEYS) and v is not None}
    try:
        params = inspect.signature(build).parameters
    except (TypeError, ValueError):
        params = {}
    if "dataset" in params and kwargs.get("dataset") is None and dataset_cfg is not None:
        kwargs["dataset"] = _plain(dataset_cfg)
    if "periodic" in kwargs:
        kwargs["periodic"] = tuple(kwargs["periodic"])
    try:
        return build(**kwargs)
    except (TrainError, DataError):
        raise
    except (TypeError, ValueError) as exc:
        raise TrainError(f"model ({conf.get('name', conf['_target_'])}): {exc}") from None


def load_model(checkpoint: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained denoiser from a checkpoint file or a run directory (its newest valid checkpoint).

    Parameters
    ----------
    checkpoint
        A ``step_*.pt`` file, a run directory or its ``checkpoints/`` directory.
    map_location
        Where to load the tensors (``"cpu"`` by default).

    Returns
    -------
    model : torch.nn.Module
        The EMA weights, in eval mode, without gradients: ``model(x, sigma)`` in normalised units.
    meta : dict
        ``{"model", "dataset", "data": {"variables", "sample_dims", "field_dims", "field_shape",
        "periodic", "mean", "std", "store"}, "train", "code"}`` plus ``"step"`` and ``"path"`` of the file.

    Raises
    ------
    TrainError
        No valid checkpoint, or one without the model description.
    """
    try:
        path, ckpt = load_checkpoint(checkpoint, map_location=map_location)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    meta = dict(ckpt.get("meta") or {})
    if "model" not in meta:
        raise TrainError(f"checkpoint {path} has no model description in its meta (not written by sciencegen-train)")
    model = build_model(meta["model"], meta.get("dataset"))
    state = ckpt["state"]
    weights = state.get("ema") or state.get("model")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise TrainError(f"checkpoint {path}: weights do not fit its model ({str(exc).splitlines()[0]})") from None
    model.to(map_location if not isinstance(map_location, Mapping) else "cpu")
    model.eval().requires_grad_(False)
    meta["step"], meta["path"] = int(ckpt.get("step", 0)), str(path)
    return model, meta
