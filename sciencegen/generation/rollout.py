"""Sampling one chunk of a conditional ensemble: members ``a..b-1`` of condition ``c``, one step or a rollout.

Member ``i`` of condition ``c`` at lead time ``l`` is drawn by the sampler with ``seed=condition_seed(seed, c,
l)`` (``l = 0`` without rollouts) and ``first_member=i`` (:func:`sciencegen.samplers.noise.condition_seed`), so it
depends only on ``(seed, c, i)`` and its own condition. A forecast rollout (``generate.lead_times=L``; an
autoregressive rollout as in GenCast, Price et al., Nature 2024) feeds each member its own previous output, **as
the store holds it** (float32, physical units), in place of the inputs the ``state`` conditioning's ``feeds``
name; the static channels stay. Conditions reach a trained model normalised with the checkpoint's per-channel
mean/std, the exact oracle in physical units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..samplers.noise import condition_seed
from .conditions import Cases
from .masks import mask_members
from .model import ModelInfo
from .plan import GenerateError

__all__ = ["StaticConditioned", "feed", "physical", "sample_condition", "to_model"]


def _channels(values: np.ndarray, ref: np.ndarray, lead: int) -> np.ndarray:
    """``ref`` (one value per channel) shaped to broadcast over ``values`` whose channel axis is ``lead``."""
    return ref.reshape((1,) * lead + (-1,) + (1,) * (values.ndim - lead - 1))


def to_model(cond: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Physical conditions ``[..., C_cond, *field]`` in the model's units (normalised; physical for the oracle).

    NaN (masked points of an input, e.g. a member fed back) become 0, as the training loader fills them.
    """
    if info.cond_std is None:
        return cond
    lead = cond.ndim - 1 - len(info.field_shape)
    out = (cond - _channels(cond, info.cond_mean, lead)) / _channels(cond, info.cond_std, lead)
    return np.where(np.isnan(out), 0.0, out) if np.isnan(out).any() else out


def physical(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Members ``[n, V, *field]`` in the model's units to physical units (float64)."""
    if info.std is None:
        return x
    return x * _channels(x, info.std, 1) + _channels(x, info.mean, 1)


def feed(cond: np.ndarray, out: np.ndarray, cases: Cases, variables: tuple[str, ...]) -> np.ndarray:
    """Per-member conditions ``[n, C_cond, *field]`` of the next lead time: each fed input replaced by the member's
    own output ``out`` ``[n, V, *field]`` (physical) of the variable that feeds it."""
    nxt = cond.copy()
    feeds = (cases.layout.state or {}).get("feeds") or {}
    for k, name in enumerate(cases.layout.inputs):
        nxt[:, k] = out[:, variables.index(feeds[name])]
    return nxt


def _draw(sampler: Callable[..., Any], model: Any, info: ModelInfo, cond: np.ndarray, n: int, seed: int, a: int,
          batch: int, device: torch.device, dtype: torch.dtype, where: str) -> tuple[np.ndarray, Any]:
    """``n`` members from ``a`` given ``cond`` (physical); float32 physical members and the sampler's result."""
    shape = (len(info.variables), *info.field_shape)
    c = torch.as_tensor(to_model(cond, info), dtype=dtype, device=device)
    no_channels = c.shape[c.ndim - 1 - len(info.field_shape)] == 0  # observed cases of an unconditional dataset
    res = sampler(model, shape, n, seed=seed, batch_size=batch, first_member=a, device=device, dtype=dtype,
                  progress=False, cond=None if no_channels else c)
    x = physical(res.samples.detach().to("cpu", torch.float64).numpy(), info)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)).sum())
        raise GenerateError(f"{where}: {bad} sample(s) are not finite; the model or the sampler diverged "
                            "(nothing of this chunk was written)")
    return mask_members(x, info).astype(np.float32), res


def sample_condition(sampler: Callable[..., Any], model: Any, info: ModelInfo, cases: Cases, c: int, a: int, b: int,
                     *, seed: int, batch: int, device: torch.device, dtype: torch.dtype
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int]:
    """Members ``a..b-1`` of condition ``c``: one step, or ``cases.lead_times`` steps of a rollout.

    Returns
    -------
    fields, rounds, nfe, total
        Per variable ``[b - a, [L,] *field]`` float32 in physical units; per member the sequential rounds and the
        denoiser evaluations (summed over lead times); the rounds of all batched calls.
    """
    n, base = b - a, cases.condition(c)
    where = f"condition {c}, members {a}..{b - 1}"
    if not cases.lead_times:
        x, res = _draw(sampler, model, info, base, n, condition_seed(seed, c, 0), a, batch, device, dtype, where)
        return ({v: np.ascontiguousarray(x[:, i]) for i, v in enumerate(info.variables)},
                res.stats["rounds_per_member"].numpy(), res.stats["nfe_per_member"].numpy(), int(res.stats["rounds"]))
    cond, leads = base, []
    rounds, nfe, total = np.zeros(n, np.int64), np.zeros(n, np.int64), 0
    for lead in range(1, cases.lead_times + 1):
        x, res = _draw(sampler, model, info, cond, n, condition_seed(seed, c, lead), a, batch, device, dtype,
                       f"{where}, lead time {lead}")
        leads.append(x)
        rounds += res.stats["rounds_per_member"].numpy().astype(np.int64)
        nfe += res.stats["nfe_per_member"].numpy().astype(np.int64)
        total += int(res.stats["rounds"])
        per_member = np.broadcast_to(base, (n, *base.shape)) if cond.ndim == base.ndim else cond
        cond = feed(per_member, x.astype(np.float64), cases, info.variables)
    stacked = np.stack(leads, axis=1)  # [n, L, V, *field]
    return ({v: np.ascontiguousarray(stacked[:, :, i]) for i, v in enumerate(info.variables)}, rounds, nfe, total)


class StaticConditioned:
    """A denoiser called ``(x, sigma)`` that gives the model the same static condition channels every time.

    The denoiser of a dataset whose only conditioning is static maps (position, orography, a land-sea mask):
    the law is the same for every member, so the ensemble keeps the unconditional layout (member ``i``
    depends only on ``(seed, i)``) and every item of a round is given the maps (an expanded view, no copy).

    Parameters
    ----------
    denoiser
        ``denoiser(x, sigma, cond)``.
    static
        ``[C_cond, *field]`` in the model's units (:func:`to_model`).

    Attributes
    ----------
    spectral_jacobian
        ``False``: static maps make the law depend on position, so a Picard walk with ``newton="auto"`` walks
        plain Picard, as for any conditional walk (:func:`sciencegen.samplers.picard.resolve_newton`).
    """

    spectral_jacobian = False

    def __init__(self, denoiser: Any, static: np.ndarray):
        self.denoiser = denoiser
        self.static = torch.as_tensor(np.asarray(static, dtype=np.float32))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c = self.static.to(device=x.device, dtype=x.dtype)
        return self.denoiser(x, sigma, c.expand(x.shape[0], *c.shape))
