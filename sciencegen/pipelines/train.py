"""``run_train(cfg)``: train an EDM denoiser on a prepared dataset; resumable, DDP-ready (the ``sciencegen-train`` job).

Karras et al. 2022 (EDM): denoising score matching with preconditioning, loss weight λ(σ) and ln σ ~ N(P_mean, P_std²).

One job = one run directory (Hydra's run dir, or ``cfg.run_dir`` when called without Hydra)::

    RUN/checkpoints/step_*.pt   # model, EMA, optimizer, schedule, counters, RNG states (atomic, keep-last-k)
    RUN/metrics.csv             # one row per log step; appended on resume (rows past the checkpoint dropped)
    RUN/figures/step_*.png      # EMA samples, training fields and radial spectra (vs the exact law for grf)
    RUN/tensorboard/            # the same scalars, when ``torch.utils.tensorboard`` imports

The training step, per global batch of ``train.batch_size`` fields (split evenly over the DDP ranks):

1. read normalised fields ``x0`` (the loader shards the store's chunks over ranks);
2. draw ``ln σ ~ N(p_mean, p_std²)`` and the noise ``n`` of every sample from a generator seeded by
   ``(seed, step, global sample position)`` -- the same numbers for any number of ranks;
3. loss = mean of ``λ(σ) ‖D(x0 + σ n, σ) − x0‖²`` (``λ = 1/c_out²``), backward, (DDP mean of gradients);
4. clip the gradient norm, set the learning rate (linear warm-up, then cosine or constant), AdamW step;
5. update the EMA weights (half-life in samples with EDM's ramp-up, or a fixed decay).

The EMA weights are what :func:`load_model` returns (and what generation uses).

Stopping: SIGINT (Ctrl-C) or SIGTERM (a scheduler's time limit or preemption) is acted on after the optimiser
step in flight (and its metrics row / periodic checkpoint): a checkpoint of that step is written (rank 0; the
ranks vote every step so all stop at the same one) and :class:`~sciencegen.errors.Interrupted` ends the job
(exit 130); rerunning the same command resumes from it exactly. A second Ctrl-C stops at once (no partial file:
checkpoint writes are atomic). A write that fails (disk full, read-only, quota) stops training with one line
naming the file and the last complete checkpoint, which stays usable; a run directory that cannot be written
is refused before any work.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import errno
import logging
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis.figures import plot_samples
from ..data.fields import DataError
from ..errors import Interrupted, SciencegenError, StopRequest, os_error_line, stop_requests
from ..models import EDMPrecond, Oracle, UNet, denoising_loss, unet_preset
from ..models.checkpoint import (
    CheckpointError,
    check_compatible,
    code_version,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ..samplers.noise import stream_key

__all__ = [
    "CSV_COLUMNS",
    "EMA",
    "TrainError",
    "build_model",
    "edm_unet",
    "ema_beta",
    "load_model",
    "lr_factor",
    "oracle_denoiser",
    "per_rank_batch",
    "plot_samples",
    "resolve_model_config",
    "resolve_run_dir",
    "run_train",
    "schedule_progress",
    "train_noise",
]

#: columns of ``RUN/metrics.csv``
CSV_COLUMNS = ("step", "epoch", "samples", "minutes", "lr", "loss", "grad_norm", "samples_per_s", "val_loss",
               "val_loss_raw", "spec_err")
#: noise-stream tags of the training and validation draws (see :func:`sciencegen.samplers.noise.stream_key`)
TRAIN_TAG, VALID_TAG = 5, 6
#: keyword arguments of :class:`UNet` that a model config may set (``null``: the preset's value)
UNET_KEYS = ("channels", "channel_mult", "blocks_per_level", "attention_levels", "dropout", "emb_dim",
             "padding_mode_nonperiodic")
#: keys of a model config that are about using a model, not about building it
_USE_KEYS = ("checkpoint",)
_PRECISIONS = ("auto", "fp32", "bf16")
_SCHEDULES = ("cosine", "constant")


logger = logging.getLogger(__name__)


class TrainError(SciencegenError):
    """A training job cannot start or continue; the message is one line meant for the user."""


class _DiskFault(TrainError):
    """The run directory cannot be written (disk full, read-only, quota): an operating-system fault (exit 1)."""

    exit_code = 1


# ------------------------------------------------------------------------------------------- model builders


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
        The dataset config (with ``_target_``) whose source has an analytic law (``dataset=grf``).

    Raises
    ------
    TrainError
        No dataset, or a dataset without an analytic law.
    """
    from .data import make_source

    if dataset is None:
        raise TrainError("model=oracle needs the dataset config of an analytic dataset (e.g. dataset=grf)")
    source = make_source(dataset)
    target = source.target()
    if target is None:
        raise TrainError(f"model=oracle needs a dataset with an exact law (dataset=grf); dataset {source.name} "
                         "has none: train model=unet instead")
    return Oracle(target)


def _builder(model_cfg: Mapping[str, Any]) -> Callable[..., nn.Module]:
    from hydra.utils import get_object

    target = model_cfg.get("_target_")
    if not target:
        raise TrainError("model config has no _target_ (pick one with model=unet|oracle)")
    try:
        return get_object(str(target))
    except Exception as exc:
        raise TrainError(f"model._target_ {target}: cannot import it ({type(exc).__name__})") from None


def _plain(cfg: Any) -> Any:
    """Resolved plain containers of a (Dict/List)Config or mapping."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(cfg, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as exc:
            key = getattr(exc, "full_key", None) or str(exc).split("\n")[0]
            raise TrainError(f"missing mandatory value: {key} (set it on the command line, e.g. {key}=...)") from None
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def resolve_model_config(model_cfg: Mapping[str, Any] | Any, *, channels: int, field_dims: Sequence[str],
                         field_shape: Sequence[int], periodic: Mapping[str, bool] | Sequence[bool]) -> dict[str, Any]:
    """Fill a model config from the data and check it: the model part of a checkpoint's meta.

    ``in_channels`` comes from the data (a different given value is an error), ``out_channels`` defaults to
    it, ``periodic`` comes from the data unless given, and a ``preset`` is expanded into explicit
    :class:`~sciencegen.models.UNet` arguments (so the checkpoint rebuilds without the preset table).

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

    Returns
    -------
    dict
        The resolved config (without ``checkpoint``), JSON-able.

    Raises
    ------
    TrainError
        Channel mismatch, conditioning asked for, a grid the U-Net cannot down-sample, an unknown preset
        or U-Net argument, a field that is not 2-D for a 2-D model.
    """
    conf = {k: v for k, v in _plain(model_cfg).items() if k not in _USE_KEYS}
    name = conf.get("name", "model")
    field_dims, field_shape = list(field_dims), [int(n) for n in field_shape]
    grid = "x".join(str(n) for n in field_shape)
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
    if int(conf.get("cond_channels") or 0) != 0:
        raise TrainError(f"model.cond_channels={conf['cond_channels']}: conditional training is not supported by "
                         "sciencegen-train yet (set it to 0)")
    if "periodic" in conf:
        if conf["periodic"] is None:
            flags = ([bool(periodic.get(d, False)) for d in field_dims] if isinstance(periodic, Mapping)
                     else [bool(p) for p in periodic])
        else:
            flags = [bool(p) for p in conf["periodic"]]
        conf["periodic"] = flags
    if "preset" in conf:  # a U-Net: expand the preset, check the grid
        if len(field_shape) != 2:
            raise TrainError(f"model={name} is a 2-D U-Net but the data have {len(field_shape)} field dim(s) "
                             f"{field_dims} ({grid})")
        if "periodic" in conf and len(conf["periodic"]) != 2:
            raise TrainError(f"model.periodic needs one flag per field dim {field_dims}, got {conf['periodic']}")
        overrides = {k: conf[k] for k in UNET_KEYS if conf.get(k) is not None}
        extra = sorted(k for k in conf if k not in UNET_KEYS and k not in (
            "_target_", "name", "preset", "sigma_data", "in_channels", "out_channels", "cond_channels", "periodic"))
        if extra:
            raise TrainError(f"model: unknown key(s) {extra}; U-Net keys are {list(UNET_KEYS)}")
        try:
            kw = unet_preset(str(conf["preset"]), **overrides)
        except ValueError as exc:
            raise TrainError(f"model.preset={conf['preset']}: {exc}") from None
        defaults = {k: p.default for k, p in _unet_signature().items() if k in UNET_KEYS}
        for k in UNET_KEYS:
            v = kw.get(k, defaults.get(k))
            conf[k] = list(v) if isinstance(v, tuple) else v
        levels = len(conf["channel_mult"])
        factor = 2 ** (levels - 1)
        bad = [f"{d}={n}" for d, n in zip(field_dims, field_shape, strict=True) if n % factor]
        if bad:
            raise TrainError(
                f"grid {grid} ({', '.join(field_dims)}) is not divisible by {factor}, the down-sampling factor of "
                f"model.preset={conf['preset']} (channel_mult {conf['channel_mult']}: {levels - 1} halving(s)); "
                f"{', '.join(bad)} -- use a grid divisible by {factor} or fewer levels (model.channel_mult)")
    return conf


def _unet_signature() -> dict[str, Any]:
    import inspect

    return dict(inspect.signature(UNet.__init__).parameters)


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
    import inspect

    conf = _plain(model_cfg)
    build = _builder(conf)
    kwargs = {k: v for k, v in conf.items() if k not in ("_target_", "name", *_USE_KEYS) and v is not None}
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


# ------------------------------------------------------------------------------------------- pure helpers


def schedule_progress(step: int, minutes: float, *, max_steps: int | None, max_minutes: float | None,
                      horizon_steps: int | None = None) -> float:
    """Fraction of the run done, in ``[0, 1]``: drives the cosine learning-rate decay.

    ``step / horizon_steps`` when a horizon is given, else the larger of ``step / max_steps`` and
    ``minutes / max_minutes`` (the bound that ends the run first ends the decay).
    """
    if horizon_steps:
        return min(1.0, step / horizon_steps)
    p = 0.0
    if max_steps:
        p = max(p, step / max_steps)
    if max_minutes:
        p = max(p, minutes / max_minutes)
    return min(1.0, p)


def lr_factor(step: int, progress: float, *, warmup_steps: int = 0, schedule: str = "cosine",
              final_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, times a cosine decay (or 1).

    Loshchilov & Hutter 2017 (SGDR, cosine annealing); Goyal et al. 2017 (linear warm-up).

    Parameters
    ----------
    step
        Optimizer step about to be taken (1-based).
    progress
        Fraction of the run done (:func:`schedule_progress`).
    warmup_steps
        Steps of the linear ramp ``step / warmup_steps``.
    schedule
        ``"cosine"`` (from 1 to ``final_ratio`` as progress goes 0 → 1) or ``"constant"``.
    final_ratio
        Multiplier at the end of the cosine.
    """
    w = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return w
    p = min(max(progress, 0.0), 1.0)
    return w * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def ema_beta(batch: int, samples_seen: int, *, halflife_samples: float | None = None, rampup: float | None = 0.05,
             decay: float | None = None) -> float:
    """EMA decay per step: ``0.5 ** (batch / half-life)`` with ramp-up, or a fixed ``decay``.

    Karras et al. 2022 (EDM training code): the half-life is ``min(halflife_samples, rampup · samples seen)``
    so short runs average over their recent past only.

    Parameters
    ----------
    batch
        Global samples per step.
    samples_seen
        Samples seen before this step.
    halflife_samples
        Half-life of the average, in samples.
    rampup
        Ramp-up ratio (``None`` or 0: none).
    decay
        Fixed decay; overrides the half-life when given.
    """
    if decay is not None:
        return float(decay)
    if not halflife_samples:
        return 0.0
    hl = float(halflife_samples)
    if rampup:
        hl = min(hl, samples_seen * float(rampup))
    return 0.5 ** (batch / max(hl, 1e-8))


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Per-rank batch of a global ``batch_size`` split over ``world_size`` ranks (must divide evenly)."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise TrainError(f"train.batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size % world_size:
        raise TrainError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                         f"{world_size} ranks (e.g. {max(1, batch_size // world_size) * world_size})")
    return batch_size // world_size


def train_noise(seed: int, step: int, indices: Sequence[int], shape: Sequence[int], *, p_mean: float = -1.2,
                p_std: float = 1.2, tag: int = TRAIN_TAG, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Noise levels and noise of training samples, seeded by ``(seed, step, global sample position)``.

    Karras et al. 2022, Sec. 5: ``ln σ ~ N(p_mean, p_std²)``. Sample ``indices[i]`` of step ``step`` gets
    the same ``σ`` and noise whichever rank draws it, so a DDP run and a single-process run of the same
    global batch see the same numbers (on the same device type).

    Returns
    -------
    sigma : torch.Tensor
        ``[len(indices)]``.
    noise : torch.Tensor
        ``[len(indices), *shape]`` standard normals.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    b = len(indices)
    z = torch.empty(b, dtype=torch.float32, device=device)
    noise = torch.empty((b, *shape), dtype=torch.float32, device=device)
    for i, idx in enumerate(indices):
        gen.manual_seed(stream_key(seed, int(idx), int(step), tag))
        torch.randn((1,), generator=gen, dtype=torch.float32, device=device, out=z[i : i + 1])
        torch.randn(tuple(shape), generator=gen, dtype=torch.float32, device=device, out=noise[i])
    sigma = (p_mean + p_std * z).exp()
    return sigma.to(dtype), noise.to(dtype)


class EMA:
    """Exponential moving average of a model's weights (Polyak & Juditsky 1992; EDM's half-life form).

    Parameters
    ----------
    model
        The model being trained; a frozen deep copy is kept.
    """

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        """``ema ← beta · ema + (1 − beta) · model`` for the parameters; buffers are copied."""
        ema_p = list(self.module.parameters())
        cur = [p.detach() for p in model.parameters()]
        if beta <= 0.0:
            torch._foreach_copy_(ema_p, cur)
        else:
            torch._foreach_lerp_(ema_p, cur, 1.0 - beta)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def resolve_run_dir(cfg: Any) -> Path:
    """The run directory: ``cfg.run_dir`` when set, else Hydra's output dir inside a Hydra job.

    Raises
    ------
    TrainError
        Neither is available.
    """
    from hydra.core.hydra_config import HydraConfig

    rd = cfg.get("run_dir") if hasattr(cfg, "get") else None
    if rd:
        return Path(str(rd))
    if HydraConfig.initialized():
        try:
            out = HydraConfig.get().runtime.output_dir
        except Exception:
            out = None
        if out:
            return Path(out)
    raise TrainError("no run directory: run sciencegen-train (Hydra's run dir) or set run_dir=PATH")


# ------------------------------------------------------------------------------------------- distributed


class _Dist:
    """Rank, world size, device and the few collectives the trainer uses (no-ops in one process)."""

    def __init__(self, device_opt: str):
        import torch.distributed as dist

        self.dist = dist
        self.created = False
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device_opt = str(device_opt or "auto")
        use_cuda = torch.cuda.is_available() if device_opt == "auto" else device_opt.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise TrainError(f"train.device={device_opt} but CUDA is not available (use train.device=cpu)")
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_available():
                raise TrainError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self.created = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        if use_cuda:
            self.device = torch.device(device_opt if ":" in device_opt else f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        nccl = self.world > 1 and dist.get_backend() == "nccl"
        self.comm_device = self.device if nccl else torch.device("cpu")
        # the per-step stop/fault vote runs on CPU tensors (gloo) so that it never waits for the GPU stream
        self.ctrl_group: Any = None
        if nccl:
            try:
                self.ctrl_group = dist.new_group(backend="gloo")
            except Exception:  # no gloo in this build: vote over NCCL (a GPU sync per step)
                self.ctrl_group = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def sum(self, values: Sequence[float] | torch.Tensor) -> list[float]:
        t = torch.as_tensor(values, dtype=torch.float64).to(self.comm_device)
        if self.world > 1:
            self.dist.all_reduce(t)
        return t.cpu().tolist()

    def max(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())

    def agree(self, code: int) -> int:
        """The largest of the ranks' ``code`` (every rank must call it at the same point of the loop)."""
        if self.world == 1:
            return code
        if self.ctrl_group is not None:
            t = torch.tensor([code], dtype=torch.int64)
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.ctrl_group)
        else:
            t = torch.tensor([code], dtype=torch.int64, device=self.comm_device)
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.created and self.dist.is_initialized():
            self.dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- options


#: fallbacks for keys missing from ``cfg.train`` (the same values as ``conf/train/default.yaml``, no bound)
_TRAIN_DEFAULTS: dict[str, Any] = {
    "max_steps": None, "max_minutes": None, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.0,
    "betas": [0.9, 0.99], "eps": 1e-8, "warmup_steps": 50, "schedule": "cosine", "final_lr_ratio": 0.02,
    "horizon_steps": None, "grad_clip": 1.0, "p_mean": -0.6, "p_std": 1.4,
    "ema": {"halflife_samples": 500_000, "rampup": 0.05, "decay": None},
    "holdout": 0.1, "shuffle": True, "seed": 0, "threads": None, "num_workers": 0, "device": "auto",
    "precision": "auto", "compile": False, "log_every": 10, "val_every": 200, "val_batches": 4,
    "ckpt_every_steps": 500, "ckpt_every_minutes": 5.0, "keep": 3, "figure_every": 1000, "figure_members": 8,
    "figure_steps": 32, "figure_sampler": "dpm2m", "progress": True, "tensorboard": True,
}


def _options(cfg: Any) -> dict[str, Any]:
    """The ``train`` config as a checked plain dict (defaults for missing keys)."""
    given = _plain(cfg.get("train") or {}) if hasattr(cfg, "get") else {}
    unknown = sorted(set(given) - set(_TRAIN_DEFAULTS))
    if unknown:
        raise TrainError(f"train: unknown key(s) {unknown} (see docs/training.md)")
    o = {**_TRAIN_DEFAULTS, **given}
    o["ema"] = {**_TRAIN_DEFAULTS["ema"], **(given.get("ema") or {})}
    if o["max_steps"] is None and o["max_minutes"] is None:
        raise TrainError("set train.max_steps or train.max_minutes (a run needs a bound)")

    def positive(key: str, integer: bool = False, allow_zero: bool = False, allow_none: bool = False) -> None:
        v = o[key]
        if v is None and allow_none:
            return
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v >= 0 if allow_zero else v > 0) and (not integer or int(v) == v)
        if not ok:
            kind = "an integer" if integer else "a number"
            raise TrainError(f"train.{key} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {v!r}")
        if integer:
            o[key] = int(v)

    positive("max_steps", True, allow_none=True)
    positive("max_minutes", allow_none=True)
    positive("batch_size", True)
    positive("lr")
    positive("weight_decay", allow_zero=True)
    positive("eps")
    positive("warmup_steps", True, allow_zero=True)
    positive("final_lr_ratio", allow_zero=True)
    positive("horizon_steps", True, allow_none=True)
    positive("grad_clip", allow_zero=True)
    positive("p_std")
    positive("seed", True, allow_zero=True)
    positive("threads", True, allow_none=True)
    positive("num_workers", True, allow_zero=True)
    positive("log_every", True)
    for key in ("val_every", "val_batches", "ckpt_every_steps", "figure_every", "figure_members", "figure_steps"):
        positive(key, True, allow_zero=True)
    positive("ckpt_every_minutes", allow_zero=True)
    positive("keep", True)
    if not isinstance(o["p_mean"], (int, float)) or not math.isfinite(o["p_mean"]):
        raise TrainError(f"train.p_mean must be a finite number, got {o['p_mean']!r}")
    if not 0.0 <= float(o["holdout"]) < 1.0:
        raise TrainError(f"train.holdout must be in [0, 1), got {o['holdout']!r}")
    if o["schedule"] not in _SCHEDULES:
        raise TrainError(f"train.schedule must be one of {', '.join(_SCHEDULES)}, got {o['schedule']!r}")
    if o["precision"] not in _PRECISIONS:
        raise TrainError(f"train.precision must be one of {', '.join(_PRECISIONS)}, got {o['precision']!r}")
    betas = o["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
        raise TrainError(f"train.betas must be two numbers in [0, 1), got {betas!r}")
    ema = o["ema"]
    unknown = sorted(set(ema) - set(_TRAIN_DEFAULTS["ema"]))
    if unknown:
        raise TrainError(f"train.ema: unknown key(s) {unknown}; use halflife_samples, rampup or decay")
    if ema["decay"] is not None and not 0.0 <= float(ema["decay"]) < 1.0:
        raise TrainError(f"train.ema.decay must be in [0, 1) (or null to use the half-life), got {ema['decay']!r}")
    return o


def _data_root(cfg: Any) -> str:
    root = cfg.get("data_root") if hasattr(cfg, "get") else None
    return str(root or os.environ.get("SCIENCEGEN_DATA_ROOT", "data"))


# ------------------------------------------------------------------------------------------- metrics


class _Metrics:
    """``RUN/metrics.csv`` (and TensorBoard): rank 0 only."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool):
        self.path = run_dir / "metrics.csv"
        self.failed = False
        self._truncate(start_step)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")  # closed in close()
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(CSV_COLUMNS)
            self.file.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed: CSV only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def _truncate(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from (atomically), or a foreign header."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        if tuple(header) != CSV_COLUMNS:
            backup = self.path.with_name(f"metrics.{int(time.time())}.csv")
            os.replace(self.path, backup)
            warnings.warn(f"{self.path} had other columns; moved to {backup}", stacklevel=3)
            return
        keep = [r for r in body if len(r) == len(CSV_COLUMNS) and _int(r[0]) is not None and _int(r[0]) <= step]
        if len(keep) == len(body):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(keep)
            os.replace(tmp, self.path)
        except OSError as exc:  # disk full: the old file stays as it was, no temp file is left
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(self.path)) from exc

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (flushed); an :class:`OSError` (disk full) names the CSV file."""
        try:
            self.writer.writerow([_fmt(row.get(c)) for c in CSV_COLUMNS])
            self.file.flush()
        except OSError as exc:
            self.failed = True
            if exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(self.path)) from exc
        if self.tb is not None:
            step = int(row["step"])
            for c in CSV_COLUMNS[4:]:
                v = row.get(c)
                if v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(c, float(v), step)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            if not self.failed:  # after a failed write the error was reported already
                raise
        if self.tb is not None:
            self.tb.close()


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: Ctrl-C and SLURM signal the whole process group, and the main
    process stops at a safe point and then shuts its workers down (a worker killed first would fail the loader)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Window:
    """Sums over the training steps since the last metrics row (on the training device: no sync per step)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.gn = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def add(self, loss: torch.Tensor, gn: torch.Tensor | None, seconds: float) -> None:
        self.loss += loss
        self.n += 1
        if gn is not None:
            self.gn += gn
            self.gn_n += 1
        self.time += seconds
        self.steps += 1

    def reset(self) -> None:
        self.loss.zero_()
        self.gn.zero_()
        self.n = self.gn_n = self.steps = 0
        self.time = 0.0


#: codes of the per-step vote of the ranks (the largest wins): go on, a signal (stop at this step), a disk fault
_SIGNAL_CODE = {"SIGINT": 1, "SIGTERM": 2}
_SIGNAL_NAME = {v: k for k, v in _SIGNAL_CODE.items()}
_FAULT = 3


# ------------------------------------------------------------------------------------------- the job


def run_train(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``sciencegen-train`` job: train (or resume) a denoiser on ``cfg.dataset``.

    Parameters
    ----------
    cfg
        The ``train.yaml`` config: ``dataset``, ``model``, ``train`` groups, ``data_root`` and (without
        Hydra) ``run_dir``. See docs/training.md for every key.

    Returns
    -------
    dict
        Summary: ``run_dir``, ``trained`` (False for a model with nothing to train or a finished run),
        ``step`` (global step reached), ``start_step``, ``epoch``, ``samples``, ``minutes`` (cumulative),
        ``loss`` and ``val_loss`` (last values), ``checkpoint`` (path of the newest checkpoint), ``stopped``
        (``"max_steps"``, ``"max_minutes"``, ``"done"`` or ``"nothing to train"``), ``samples_per_s``,
        ``parameters``, ``world_size``, ``device``, ``metrics`` (CSV path), ``figure`` (last figure path).

    Raises
    ------
    TrainError
        Bad options, a model that does not fit the data, a checkpoint of another model or dataset in the
        run directory, a non-finite loss (training stops; the last good checkpoint is kept).
    DataError
        The dataset cannot be prepared.
    """
    opts = _options(cfg)
    run_dir = resolve_run_dir(cfg)
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    model_cfg = _plain(cfg["model"])
    if _builder(model_cfg) is oracle_denoiser:
        return _oracle_summary(cfg, model_cfg, run_dir)
    dist = _Dist(opts["device"])
    try:
        return _Trainer(cfg, opts, run_dir, dist).run()
    finally:
        dist.close()


def _oracle_summary(cfg: Any, model_cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    from .data import make_source

    oracle_denoiser(model_cfg.get("dataset") or _plain(cfg["dataset"]))  # raises for a dataset without a law
    name = make_source(_plain(cfg["dataset"])).name
    msg = (f"model=oracle is the exact denoiser of dataset {name}: nothing to train "
           "(use model=oracle directly for generation)")
    print(f"sciencegen-train: {msg}", flush=True)
    return {"run_dir": str(run_dir), "trained": False, "stopped": "nothing to train", "message": msg, "step": 0,
            "start_step": 0, "checkpoint": None}


class _Trainer:
    """One training job; see :func:`run_train`."""

    def __init__(self, cfg: Any, opts: dict[str, Any], run_dir: Path, dist: _Dist):
        self.cfg, self.o, self.run_dir, self.d = cfg, opts, run_dir, dist
        self.dataset_cfg = _plain(cfg["dataset"])
        self.local_batch = per_rank_batch(opts["batch_size"], dist.world)
        self.device = dist.device
        self.amp = dist.device.type == "cuda" and opts["precision"] in ("auto", "bf16")
        if opts["precision"] == "bf16" and dist.device.type != "cuda":
            raise TrainError("train.precision=bf16 needs a GPU (bf16 autocast is used on CUDA only)")

    # -- setup ----------------------------------------------------------------------------------------------------

    def _prepare(self) -> Any:
        from .data import prepare

        kw = {"data_root": _data_root(self.cfg)}
        err = None
        prepared = None
        if self.d.main:  # rank 0 writes the store (once); the others reuse it
            try:
                prepared = prepare(self.cfg["dataset"], progress=bool(self.o["progress"]), **kw)
            except Exception as exc:  # tell the waiting ranks before raising, or they would hang
                err = exc
        failed = self.d.broadcast(None if err is None else str(err))
        if err is not None:
            raise err
        if failed is not None:
            raise TrainError(f"rank 0 could not prepare the data: {failed}")
        if not self.d.main:
            prepared = prepare(self.cfg["dataset"], progress=False, **kw)
        return prepared

    def _streams(self, store: Path) -> None:
        from ..data.loader import from_store, make_loader

        o = self.o
        try:
            self.stream = from_store(store, batch_size=self.local_batch, split="train", holdout=float(o["holdout"]),
                                     seed=o["seed"], shuffle=bool(o["shuffle"]), drop_last=True, rank=self.d.rank,
                                     world_size=self.d.world)
            self.val_stream = None
            if o["holdout"] > 0 and o["val_batches"] > 0 and self.d.main:
                self.val_stream = from_store(store, batch_size=o["batch_size"], split="validation",
                                             holdout=float(o["holdout"]), shuffle=False, rank=0, world_size=1)
        except (ValueError, FileNotFoundError) as exc:
            raise TrainError(f"data: {exc}") from None
        if len(self.stream) == 0:
            raise TrainError(f"data: the training split of {store} has {self.stream.n_samples} samples per "
                             f"epoch, fewer than one batch of {self.local_batch} per rank: lower train.batch_size "
                             "or train.holdout")
        self.loader = make_loader(self.stream, num_workers=o["num_workers"], pin_memory=self.device.type == "cuda",
                                  worker_init_fn=_ignore_stop_signals)

    def _setup(self) -> None:
        o = self.o
        prepared = self._prepare()
        spec = prepared.spec
        self.prepared = prepared
        self.field_shape = tuple(prepared.field_shape)
        self.channels = len(spec.variables)
        self.mean = np.asarray(prepared.mean, dtype=float)
        self.std = np.asarray(prepared.std, dtype=float)
        self.target = None
        with contextlib.suppress(Exception):
            from .data import make_source

            self.target = make_source(self.dataset_cfg).target()
        self.model_meta = resolve_model_config(self.cfg["model"], channels=self.channels,
                                               field_dims=spec.field_dims, field_shape=self.field_shape,
                                               periodic=spec.periodic)
        self.meta = {
            "model": self.model_meta,
            "dataset": self.dataset_cfg,
            "data": {**spec.as_dict(), "field_shape": list(self.field_shape), "mean": self.mean.tolist(),
                     "std": self.std.tolist(), "store": str(Path(prepared.path).resolve())},
            "train": {k: v for k, v in o.items()},
            "code": code_version(),
        }
        torch.manual_seed(o["seed"])
        self.core = build_model(self.model_meta, self.dataset_cfg).to(self.device)
        self.params = [p for p in self.core.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.params)
        self.sigma_data = float(getattr(self.core, "sigma_data", 1.0))
        self.ema = EMA(self.core)
        self.opt = torch.optim.AdamW(self.params, lr=o["lr"], betas=tuple(float(b) for b in o["betas"]),
                                     eps=float(o["eps"]), weight_decay=float(o["weight_decay"]))
        self.fwd: nn.Module = self.core
        if self.d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd = DDP(self.core, device_ids=ids)
        if o["compile"]:
            self.fwd = torch.compile(self.fwd)
        self._streams(Path(prepared.path))

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def _resume(self) -> Path | None:
        """Restore the newest valid checkpoint of the run directory, if any; returns its path."""
        path: Any = None
        ckpt: dict | None = None
        if self.d.main and list_checkpoints(self.run_dir):
            try:  # the newest valid one (damaged files are skipped with a warning); RNG states stay on the CPU
                path, ckpt = load_checkpoint(self.run_dir, map_location="cpu")
            except CheckpointError as exc:
                path = exc
        path = self.d.broadcast(path)
        if isinstance(path, CheckpointError):
            raise TrainError(f"{path} -- remove the damaged checkpoints or use another hydra.run.dir")
        if path is None:
            return None
        try:
            if ckpt is None:  # the other ranks load the file rank 0 chose
                _, ckpt = load_checkpoint(path, map_location="cpu")
            check_compatible(ckpt["meta"], self.meta, keys=("model", "dataset"), where=path)
        except CheckpointError as exc:
            raise TrainError(f"{exc}; resume with the same model and dataset or use another hydra.run.dir") from None
        st = ckpt["state"]
        self.core.load_state_dict(st["model"])
        self.ema.module.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["optimizer"])
        self.step, self.epoch = int(st["step"]), int(st["epoch"])
        self.batch_in_epoch, self.samples = int(st["batch_in_epoch"]), int(st["samples"])
        self.minutes = float(st["minutes"])
        rng = st.get("rng") or []
        if len(rng) == self.d.world:
            _set_rng_state(rng[self.d.rank], self.device)
        else:  # another world size: fresh but reproducible streams
            torch.manual_seed(self.o["seed"] + 1000003 * self.step + self.d.rank)
        return path

    def _save(self) -> Path | None:
        rng = self.d.gather(_rng_state(self.device))
        if not self.d.main:
            return None
        state = {
            "model": self.core.state_dict(), "ema": self.ema.module.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": {"lr": self.lr, "progress": self._progress(), "warmup_steps": self.o["warmup_steps"],
                          "schedule": self.o["schedule"]},
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "samples": self.samples,
            "minutes": self.minutes, "rng": rng, "world_size": self.d.world,
        }
        try:
            self.checkpoint = save_checkpoint(self.run_dir, self.step, state, keep=self.o["keep"], meta=self.meta)
        except OSError as exc:  # disk full: nothing of this save is left; the ranks stop together (see _poll)
            if exc.errno is None:
                raise
            self._fault = self._fault or exc
            return None
        self.saved_step, self.saved_minutes = self.step, self.minutes
        return self.checkpoint

    def _check_run_dir(self) -> None:
        """Stop before any work when rank 0 cannot write the run directory (read-only, full, no permission)."""
        line = None
        if self.d.main:
            probe = self.run_dir / f".write-test-{os.getpid()}"
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                with open(probe, "wb") as f:
                    f.write(b"0")
                    f.flush()
                probe.unlink()
            except OSError as exc:
                with contextlib.suppress(OSError):
                    probe.unlink()
                if exc.errno is None:
                    raise
                line = os_error_line(OSError(exc.errno, exc.strerror, os.fspath(self.run_dir)))
        line = self.d.broadcast(line)
        if line is not None:
            raise _DiskFault(f"{line}; nothing was trained: the run directory must be writable (checkpoints, "
                             "metrics.csv): fix it or choose another (hydra.run.dir=... or run_dir=...)")

    # -- pieces of a step -----------------------------------------------------------------------------------------

    def _bar_progress(self, minutes: float | None = None) -> float:
        o = self.o
        return schedule_progress(self.step, self.minutes if minutes is None else minutes,
                                 max_steps=o["max_steps"], max_minutes=o["max_minutes"])

    def _progress(self) -> float:
        return schedule_progress(self.step, self.minutes, max_steps=self.o["max_steps"],
                                 max_minutes=self.o["max_minutes"], horizon_steps=self.o["horizon_steps"])

    def _autocast(self) -> Any:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self) -> Iterator[torch.Tensor]:
        """Batches forever, advancing the epoch; the first epoch resumes after ``batch_in_epoch`` batches."""
        skip = self.batch_in_epoch
        while True:
            self.stream.set_epoch(self.epoch)
            for i, x in enumerate(self.loader):
                if i < skip:
                    continue
                yield x
            skip = 0
            self.epoch += 1
            self.batch_in_epoch = 0

    def _train_step(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        o = self.o
        x0 = x0.to(self.device, non_blocking=True)
        first = self.d.rank * self.local_batch
        sigma, noise = train_noise(o["seed"], self.step, range(first, first + x0.shape[0]), x0.shape[1:],
                                   p_mean=float(o["p_mean"]), p_std=float(o["p_std"]), device=self.device)
        self.fwd.train()
        with self._autocast():
            loss = denoising_loss(self.fwd, x0, sigma, noise, sigma_data=self.sigma_data).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.params, o["grad_clip"]) if o["grad_clip"] > 0 else None
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        self.opt.step()
        beta = ema_beta(o["batch_size"], self.samples, **self.o["ema"])
        self.ema.update(self.core, beta)
        return loss.detach(), (gn.detach() if gn is not None else None)

    @torch.no_grad()
    def _validate(self) -> tuple[float | None, float | None]:
        """Validation loss of the EMA and of the raw model on fixed σ and noise (rank 0; ``None`` without data)."""
        if self.val_stream is None:
            return None, None
        o = self.o
        totals = {"ema": 0.0, "raw": 0.0}
        n = 0
        for b, x0 in enumerate(self.val_stream):
            if b >= o["val_batches"]:
                break
            x0 = x0.to(self.device)
            sigma, noise = train_noise(o["seed"], 0, range(n, n + x0.shape[0]), x0.shape[1:],
                                       p_mean=float(o["p_mean"]), p_std=float(o["p_std"]), tag=VALID_TAG,
                                       device=self.device)
            for key, model in (("ema", self.ema.module), ("raw", self.core)):
                was = model.training
                model.eval()
                with self._autocast():
                    totals[key] += float(denoising_loss(model, x0, sigma, noise, sigma_data=self.sigma_data).sum())
                model.train(was)
            n += x0.shape[0]
        if n == 0:
            return None, None
        return totals["ema"] / n, totals["raw"] / n

    def _figure(self) -> float | None:
        """Samples of the EMA model: ``RUN/figures/step_*.png``; returns the spectral error (analytic data)."""
        import sciencegen

        o = self.o
        if o["figure_members"] < 1 or len(self.field_shape) != 2:
            return None
        try:
            model = self.ema.module
            shape = (self.channels, *self.field_shape)
            res = sciencegen.sample(model, shape, o["figure_members"], o["figure_sampler"], o["figure_steps"],
                                    seed=o["seed"], device=self.device, dtype=torch.float32)
            scale = torch.as_tensor(self.std, dtype=torch.float64).reshape(1, -1, 1, 1)
            shift = torch.as_tensor(self.mean, dtype=torch.float64).reshape(1, -1, 1, 1)
            samples = res.samples.double().cpu() * scale + shift
            data = None
            if self.fig_data is not None:
                data = self.fig_data * scale + shift
            path = self.run_dir / "figures" / f"step_{self.step:09d}.png"
            title = (f"{self.dataset_cfg.get('name', 'data')} {'x'.join(map(str, self.field_shape))}, "
                     f"{self.model_meta.get('name', 'model')}, step {self.step}, {self.minutes:.1f} min "
                     f"(EMA, {o['figure_sampler']} {o['figure_steps']} steps)")
            err = plot_samples(samples, path, data=data, target=self.target, title=title,
                               data_label=getattr(self, "fig_label", "training data"))
            self.figure = path
            return err
        except OSError as exc:
            if exc.errno is not None:  # disk full: stops training like a failed checkpoint or metrics row
                raise
            warnings.warn(f"figure at step {self.step} failed: {type(exc).__name__}: {exc}", stacklevel=2)
            return None
        except Exception as exc:  # a figure must never stop training
            warnings.warn(f"figure at step {self.step} failed: {type(exc).__name__}: {exc}", stacklevel=2)
            return None

    # -- the loop -------------------------------------------------------------------------------------------------

    def _done(self) -> str | None:
        if self.o["max_steps"] is not None and self.step >= self.o["max_steps"]:
            return "max_steps"
        if self.o["max_minutes"] is not None and self.minutes >= self.o["max_minutes"]:
            return "max_minutes"
        return None

    def run(self) -> dict[str, Any]:
        o, d = self.o, self.d
        self._fault: OSError | None = None  # rank 0's failed write, raised on all ranks at the next safe point
        self._check_run_dir()
        self._setup()
        self.step = self.epoch = self.batch_in_epoch = self.samples = 0
        self.minutes = 0.0
        self.checkpoint: Path | None = None
        self.figure: Path | None = None
        resumed = self._resume()
        self.checkpoint = resumed
        self.saved_step, self.saved_minutes = self.step, self.minutes
        start_step = self.step
        self.lr = o["lr"] * lr_factor(max(self.step, 1), self._progress(), warmup_steps=o["warmup_steps"],
                                      schedule=o["schedule"], final_ratio=o["final_lr_ratio"])
        base = self._summary(start_step, None, None, None, resumed)
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            where = f"resumed from {resumed} (step {self.step}, {self.minutes:.2f} min)" if resumed else "new run"
            print(f"sciencegen-train: {where}; {self.n_params:,} parameters, data {self.prepared.path} "
                  f"({self.channels} channel(s), {'x'.join(map(str, self.field_shape))}), global batch "
                  f"{o['batch_size']} on {d.world} rank(s), device {self.device}", flush=True)
        stopped = self._done()
        if stopped:
            base.update(trained=False, stopped="done")
            if d.main:
                print(f"sciencegen-train: nothing to do: step {self.step}, {self.minutes:.2f} min already reach "
                      f"the bounds (train.max_steps={o['max_steps']}, train.max_minutes={o['max_minutes']}); "
                      f"raise them to continue. Checkpoint: {resumed}", flush=True)
            return base
        metrics = self._open_metrics()
        self.fig_data = None
        if d.main and o["figure_members"] > 0:
            with contextlib.suppress(Exception):
                src = self.val_stream if self.val_stream is not None else self.stream
                self.fig_data = next(iter(src))[: o["figure_members"]].double().cpu()
                self.fig_label = "held-out data" if self.val_stream is not None else "training data"
        try:
            return self._loop(metrics, start_step, resumed)
        finally:
            if metrics is not None:
                metrics.close()

    def _open_metrics(self) -> _Metrics | None:
        """``metrics.csv`` of rank 0 (rows past the checkpoint dropped); a disk fault stops every rank here."""
        metrics = None
        if self.d.main:
            try:
                metrics = _Metrics(self.run_dir, self.step, bool(self.o["tensorboard"]))
            except OSError as exc:
                if exc.errno is None:
                    raise
                self._fault = exc
        if self.d.agree(_FAULT if self._fault is not None else 0) == _FAULT:
            raise self._fault_error()
        return metrics

    def _loop(self, metrics: _Metrics | None, start_step: int, resumed: Path | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        o, d = self.o, self.d
        # the bar shows the fraction of the run done by whichever bound ends it first (steps or minutes),
        # so its ETA is right when train.max_minutes binds; the step count is in the postfix
        bar = tqdm(total=100.0, initial=round(100 * self._bar_progress(), 1), desc="train", dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
                   disable=not (d.main and o["progress"]), file=sys.stderr, leave=True)
        self._window = _Window(self.device)
        self._last: dict[str, float | None] = {"loss": None, "val": None, "sps": None}
        self._t_run, self._minutes0 = time.perf_counter(), self.minutes
        batches = self._batches()
        stopped: str | None = None
        try:
            with stop_requests() as stop:
                while stopped is None:
                    stopped = self._iteration(batches, bar, metrics)
                    self._poll(stop, stopped)  # the safe point: after an optimiser step and its row/checkpoint
        finally:
            bar.close()
        last_loss, last_val, sps = self._last["loss"], self._last["val"], self._last["sps"]
        summary = self._summary(start_step, last_loss, last_val, sps, resumed)
        summary.update(trained=True, stopped=stopped)
        if d.main:
            val = f", val {last_val:.4g}" if last_val is not None else ""
            print(f"sciencegen-train: {self.step - start_step} steps this run (step {self.step}, epoch {self.epoch}, "
                  f"{self.minutes:.2f} min in all, stopped by {stopped}), {sps or 0:.0f} samples/s; "
                  f"loss {last_loss:.4g}{val}; checkpoint {self.checkpoint}", flush=True)
        return summary

    def _local_minutes(self) -> float:
        return self._minutes0 + (time.perf_counter() - self._t_run) / 60.0

    def _iteration(self, batches: Iterator[torch.Tensor], bar: Any, metrics: _Metrics | None) -> str | None:
        """One optimiser step, then (at log steps and the end) a metrics row and a due checkpoint.

        Returns the bound that ends the run (``"max_steps"``/``"max_minutes"``) or ``None``.
        """
        o, d = self.o, self.d
        t0 = time.perf_counter()
        x0 = next(batches)
        self.batch_in_epoch += 1
        self.step += 1
        self.lr = o["lr"] * lr_factor(self.step, self._progress(), warmup_steps=o["warmup_steps"],
                                      schedule=o["schedule"], final_ratio=o["final_lr_ratio"])
        loss, gn = self._train_step(x0)
        self.samples += o["batch_size"]
        self._window.add(loss, gn, time.perf_counter() - t0)
        local_minutes = self._local_minutes()
        bar.n = round(100 * self._bar_progress(local_minutes), 1)
        if self.step % 10 == 0:
            bar.refresh()
        if self.device.type == "cpu" and d.world == 1 and not math.isfinite(float(loss)):  # costs nothing on CPU
            self._nonfinite(float(loss), metrics)
        is_log = self.step % o["log_every"] == 0
        max_steps_hit = o["max_steps"] is not None and self.step >= o["max_steps"]
        if d.world == 1 or is_log or max_steps_hit:  # ranks agree on the time at log steps
            self.minutes = d.max(local_minutes)
        stopped = self._done()
        if is_log or stopped:
            self._row(metrics, bar, stopped)
            due = (o["ckpt_every_steps"] and self.step % o["ckpt_every_steps"] == 0) or (
                o["ckpt_every_minutes"] and self.minutes - self.saved_minutes >= o["ckpt_every_minutes"])
            if due or stopped:
                self._save()
        return stopped

    def _row(self, metrics: _Metrics | None, bar: Any, stopped: str | None) -> None:
        """Reduce the window across ranks, check it, validate, draw a figure and write the metrics row."""
        o, d, w = self.o, self.d, self._window
        tot_loss, tot_n, tot_time = d.sum([float(w.loss), w.n, w.time])
        mean_loss = tot_loss / max(tot_n, 1)
        if not math.isfinite(mean_loss):
            self._nonfinite(mean_loss, metrics)
        row: dict[str, Any] = {
            "step": self.step, "epoch": self.epoch, "samples": self.samples, "minutes": self.minutes,
            "lr": self.lr, "loss": mean_loss, "grad_norm": float(w.gn) / w.gn_n if w.gn_n else None,
        }
        sps = o["batch_size"] * w.steps / max(tot_time / d.world, 1e-9)
        row["samples_per_s"] = sps
        self._last.update(loss=mean_loss, sps=sps)
        w.reset()
        if not d.main:
            return
        try:
            if (o["val_every"] and self.step % o["val_every"] == 0) or stopped:
                row["val_loss"], row["val_loss_raw"] = self._validate()
                if row["val_loss"] is not None:
                    self._last["val"] = row["val_loss"]
            if o["figure_members"] and ((o["figure_every"] and self.step % o["figure_every"] == 0) or stopped):
                row["spec_err"] = self._figure()
            assert metrics is not None
            metrics.write(row)
        except OSError as exc:  # disk full: the ranks stop together at the next safe point (see _poll)
            if exc.errno is None:
                raise
            self._fault = self._fault or exc
        bar.set_postfix({"step": self.step, "loss": f"{mean_loss:.4g}", "samples/s": f"{sps:.0f}",
                         "min": f"{self.minutes:.1f}"}, refresh=False)

    # -- stopping at a safe point ---------------------------------------------------------------------------------

    def _poll(self, stop: StopRequest, stopped: str | None) -> None:
        """All ranks vote on stopping: a disk fault of rank 0 ends the job, a signal checkpoints and interrupts.

        A signal that arrives in the last step of a run changes nothing: the run ends normally with its checkpoint.
        """
        code = self.d.agree(_FAULT if self._fault is not None else _SIGNAL_CODE.get(stop.signal or "", 0))
        if code == _FAULT:
            raise self._fault_error()
        if code and stopped is None:
            self._interrupt(_SIGNAL_NAME[code])

    def _interrupt(self, signame: str) -> None:
        """Write a checkpoint of the current step (unless it has one) and raise :class:`Interrupted`."""
        self.minutes = self.d.max(self._local_minutes())
        if self.checkpoint is None or self.saved_step != self.step:
            self._save()
        if self.d.agree(_FAULT if self._fault is not None else 0) == _FAULT:
            raise self._fault_error()
        where = self.checkpoint if self.d.main else f"{self.run_dir} by rank 0"
        if self.d.main:
            logger.info("%s at step %d: checkpoint written to %s", signame, self.step, where)
        raise Interrupted(f"interrupted ({signame}); checkpoint step {self.step} written to {where}, rerun the "
                          "same command to resume")

    def _fault_error(self) -> TrainError:
        """The one-line error of a failed write of rank 0, naming the file and the checkpoint that stays usable."""
        if self._fault is None:  # another rank's view: rank 0 prints the details
            return _DiskFault(f"training stopped at step {self.step}: rank 0 could not write to {self.run_dir} "
                              "(see its message); rerun the same command to resume from the last checkpoint")
        exc = self._fault
        if self.checkpoint is not None:
            kept = f"the last complete checkpoint, step {self.saved_step} ({self.checkpoint}), stays usable"
        else:
            kept = "no checkpoint was written yet"
        fix = "once there is room" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "once it can be written"
        return _DiskFault(f"{os_error_line(exc)}; training stopped at step {self.step}; {kept}: rerun the same "
                          f"command {fix} to resume")

    def _nonfinite(self, value: float, metrics: _Metrics | None) -> None:
        good = f"the last good checkpoint is {self.checkpoint}" if self.checkpoint else "no checkpoint was saved"
        if metrics is not None:
            with contextlib.suppress(OSError):  # the loss is the news; a full disk would hide it
                metrics.write({"step": self.step, "epoch": self.epoch, "samples": self.samples,
                               "minutes": self.minutes, "lr": self.lr, "loss": value})
        raise TrainError(f"the loss became {value} at step {self.step} (lr {self.lr:.3g}): training stopped without "
                         f"saving this state; {good} (lower train.lr, raise train.warmup_steps or check the data)")

    def _summary(self, start_step: int, loss: float | None, val: float | None, sps: float | None,
                 resumed: Path | None) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "trained": False, "step": self.step, "start_step": start_step,
            "epoch": self.epoch, "samples": self.samples, "minutes": self.minutes, "loss": loss, "val_loss": val,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None, "resumed_from": str(resumed)
            if resumed else None, "stopped": None, "samples_per_s": sps, "parameters": self.n_params,
            "world_size": self.d.world, "device": str(self.device), "metrics": str(self.run_dir / "metrics.csv"),
            "figure": str(self.figure) if getattr(self, "figure", None) else None,
        }
