"""The model of a generation run: the denoiser of a ``model`` config, checked against the dataset it samples.

:func:`resolve_denoiser` builds the exact ``oracle`` or loads a trained checkpoint (through
:mod:`sciencegen.models.build`), refuses a checkpoint trained on other variables or another grid, and warns
(:func:`dataset_differences`) when the checkpoint's training data had another law. Used by
:func:`sciencegen.pipelines.generate.run_generate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import plain
from ..data.fields import DataError
from ..errors import TrainError
from ..models.build import build_model, is_oracle, load_model
from ..models.meta import normalise
from .masks import mask_only, with_masks
from .plan import GenerateError

__all__ = ["CONDITIONING_KEYS", "ModelInfo", "dataset_differences", "resolve_denoiser"]

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """A denoiser ready to sample and what the ensemble must look like."""

    denoiser: Callable[..., torch.Tensor]
    variables: tuple[str, ...]
    field_dims: tuple[str, ...]
    field_shape: tuple[int, ...]
    mean: np.ndarray | None  # per variable: physical = normalised * std + mean (None: the model is physical)
    std: np.ndarray | None
    identity: dict[str, Any]
    label: str
    #: a conditional model: its conditioning (``kinds``, ``inputs``, ``static``, ``state``) and the per-channel
    #: mean/std that normalise its conditions (``None``: the oracle takes physical conditions)
    conditioning: dict[str, Any] | None = None
    cond_mean: np.ndarray | None = None
    cond_std: np.ndarray | None = None
    #: ``train.holdout`` of the training run (``None``: not trained)
    holdout: float | None = None
    #: ``(p_mean, p_std)`` of the training noise levels ``ln sigma ~ N(p_mean, p_std²)`` (``None``: not trained)
    train_sigma: tuple[float, float] | None = None
    #: the checkpoint's masks ``{variable: (valid points, {"source", "valid", "points"})}`` (``None``: no masks;
    #: :mod:`sciencegen.generation.masks`): members are NaN at the invalid points
    masks: dict[str, tuple[np.ndarray, dict[str, Any]]] | None = None


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def resolve_denoiser(model_cfg: Any, dataset_cfg: Any, spec: Any, field_shape: tuple[int, ...],
                     device: torch.device, conditioning: Mapping[str, Any] | None = None) -> ModelInfo:
    """Build the denoiser of ``model_cfg`` for the dataset and check that they fit each other.

    Parameters
    ----------
    model_cfg
        ``model`` config: ``oracle`` (the exact denoiser of an analytic dataset) or a trained model with
        ``checkpoint`` (a ``step_*.pt`` file or a training run directory: its newest valid checkpoint).
    dataset_cfg
        ``dataset`` config.
    spec, field_shape
        The dataset's :class:`~sciencegen.data.fields.FieldSpec` and field shape.
    device
        Where to run the model.
    conditioning
        The prepared dataset's conditioning (``kinds``, ``inputs``, ``static``, ``state``; ``None``:
        unconditional data); a trained model must have been trained with the same.

    Raises
    ------
    GenerateError
        No checkpoint for a trained model, or a checkpoint trained on other data (other variables, grid or
        conditioning).
    """
    model = plain(model_cfg, GenerateError)
    name = str(model.get("name", model.get("_target_", "model")))
    if is_oracle(model):
        try:
            oracle = build_model(model, dataset_cfg)
        except (TrainError, DataError) as exc:
            raise GenerateError(str(exc)) from None
        shape = getattr(oracle, "shape", None)
        if shape is not None and tuple(shape) != (len(spec.variables), *field_shape):
            raise GenerateError(f"model=oracle has sample shape {tuple(shape)} but the dataset has "
                                f"{len(spec.variables)} variables on {field_shape}")
        return ModelInfo(oracle.to(device), tuple(spec.variables), tuple(spec.field_dims), field_shape, None, None,
                         {"name": "oracle"}, "oracle (exact denoiser)",
                         None if conditioning is None else dict(conditioning))
    ckpt = model.get("checkpoint")
    if not ckpt:
        raise GenerateError(f"model={name} needs model.checkpoint=RUN_DIR or a step_*.pt file "
                            f"(train one with sciencegen-train ... model={name})")
    if not Path(str(ckpt)).exists():
        raise GenerateError(f"model.checkpoint {ckpt}: no such file or directory")
    try:
        net, meta = load_model(str(ckpt), map_location=device)
    except TrainError as exc:
        raise GenerateError(str(exc)) from None
    have = str((meta.get("model") or {}).get("name", "?"))
    if have != name:
        raise GenerateError(f"checkpoint {meta['path']} holds a {have} model, not model={name}")
    data = meta.get("data") or {}
    trained = (tuple(data.get("variables", ())), tuple(data.get("field_dims", ())),
               tuple(int(v) for v in data.get("field_shape", ())))
    asked = (tuple(spec.variables), tuple(spec.field_dims), tuple(field_shape))
    if trained != asked:
        def show(t: tuple) -> str:
            return f"variables {list(t[0])} on {dict(zip(t[1], t[2], strict=False))}"

        ds_name = (meta.get("dataset") or {}).get("name", "?")
        raise GenerateError(f"checkpoint {meta['path']} was trained on {ds_name} with {show(trained)}, but the "
                            f"dataset has {show(asked)}: pick the matching dataset options or another checkpoint")
    trained_cond = _check_conditioning(meta, conditioning)
    _warn_other_dataset(meta, dataset_cfg)
    identity = {"name": name, "checkpoint": str(Path(meta["path"]).resolve()), "step": int(meta["step"]),
                "sha256": _file_digest(meta["path"])}
    info = ModelInfo(net, asked[0], asked[1], asked[2], np.asarray(data["mean"], dtype=np.float64),
                     np.asarray(data["std"], dtype=np.float64), identity,
                     f"{name} {meta['path']} (step {meta['step']})")
    train = meta.get("train") or {}
    info.holdout = train.get("holdout")
    if train.get("p_mean") is not None and train.get("p_std") is not None:
        info.train_sigma = (float(train["p_mean"]), float(train["p_std"]))
    if trained_cond is not None and (conditioning is not None or not mask_only(trained_cond)):
        info.conditioning = {k: trained_cond.get(k) for k in CONDITIONING_KEYS}
        info.cond_mean = np.asarray(trained_cond["mean"], dtype=np.float64)
        info.cond_std = np.asarray(trained_cond["std"], dtype=np.float64)
    return with_masks(info, data, trained_cond, given=conditioning is not None)


#: the keys of a conditioning that decide what the model's condition channels are
CONDITIONING_KEYS = ("kinds", "inputs", "static", "state")


def _describe(cond: Mapping[str, Any] | None) -> str:
    if not cond:
        return "no conditioning"
    return (f"conditioning {', '.join(cond.get('kinds') or {}) or '-'} (inputs {list(cond.get('inputs') or {})}, "
            f"static {list(cond.get('static') or {})})")


def _check_conditioning(meta: Mapping[str, Any], conditioning: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint's conditioning (C4), refused unless it is the dataset's (both ways: one of them none)."""
    trained = (meta.get("data") or {}).get("conditioning")
    if conditioning is None and mask_only(trained):  # the mask channels the data stage added: the model's own
        return dict(trained)
    # compared as JSON text in order: the order of the inputs and statics is the order of the channels
    a = json.dumps(normalise({k: trained.get(k) for k in CONDITIONING_KEYS})) if trained else None
    b = json.dumps(normalise({k: conditioning.get(k) for k in CONDITIONING_KEYS})) if conditioning else None
    if a != b:
        raise GenerateError(f"checkpoint {meta['path']} was trained with {_describe(trained)}, but the dataset has "
                            f"{_describe(conditioning)}: set dataset.conditioning as in training, or use another "
                            "checkpoint")
    return dict(trained) if trained else None


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _warn_other_dataset(meta: Mapping[str, Any], dataset_cfg: Any) -> None:
    differences = dataset_differences(meta.get("dataset") or {}, plain(dataset_cfg, GenerateError))
    if differences:
        log.warning("checkpoint %s was trained on another dataset configuration (%s): its samples follow the "
                    "training data, not this configuration", meta["path"], "; ".join(differences))


def dataset_differences(trained: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """``"key: trained -> now"`` for every dataset option whose value differs between a checkpoint's training
    data and the dataset asked for now (grid and variables are checked separately and must agree)."""
    a, b = _flat(normalise(trained)), _flat(normalise(asked))
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in _NOT_THE_LAW)
    return [f"dataset.{k}: {json.dumps(a.get(k, '<unset>'))} in training, {json.dumps(b.get(k, '<unset>'))} now"
            for k in keys if a.get(k) != b.get(k)]


#: dataset keys that change how data are stored or how many there are, not the law of one field
_NOT_THE_LAW = frozenset({"name", "chunk", "device", "engine", "samples", "trajectories", "snapshots", "nonfinite",
                          "max_gb", "progress"})
