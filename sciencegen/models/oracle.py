"""Analytic targets behind the model interface ``denoiser(x, sigma, cond=None)``, and the exact law of a dataset.

Tweedie/Wiener exact posterior means (see :mod:`sciencegen.targets`); Karras et al. 2022 conventions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..config import plain
from ..data.fields import DataError
from ..targets import AR1GRF, CoarseGRF, GaussianRandomField, StaticGRF

__all__ = ["Oracle", "exact_law"]


class Oracle(nn.Module):
    """Exact denoiser of an analytic target, with the interface of a trained model.

    Parameters
    ----------
    target
        Object with ``denoiser(x, s)`` over ``[B, *target.shape]`` and ``[B]`` noise
        levels, e.g. :class:`sciencegen.targets.GaussianRandomField`.  When it has a
        ``shape`` attribute, inputs are checked against it.  A target with
        ``conditional = True`` (:class:`~sciencegen.targets.CoarseGRF`,
        :class:`~sciencegen.targets.AR1GRF`) has ``denoiser(x, s, cond)`` instead and the
        oracle then needs ``cond``.

    Notes
    -----
    Registers no parameters or buffers; the target is held as a plain attribute,
    so ``.to()``/``.eval()`` leave it unchanged (the target casts to the input's
    device and dtype itself).  Conditions are in physical units (the analytic laws
    have no normalisation).
    """

    def __init__(self, target: Any):
        super().__init__()
        if not callable(getattr(target, "denoiser", None)):
            raise ValueError(f"target must have a callable .denoiser(x, s), got {type(target).__name__}")
        self.target = target

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of one sample of the target (``None`` when the target does not say)."""
        shape = getattr(self.target, "shape", None)
        return None if shape is None else tuple(shape)

    @property
    def conditional(self) -> bool:
        """Whether the target is a conditional law (the oracle then needs ``cond``)."""
        return bool(getattr(self.target, "conditional", False))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact ``E[x0 | x]`` for ``x = x0 + sigma·noise``.

        Parameters
        ----------
        x
            ``[B, *target.shape]``.
        sigma
            ``[B]`` noise levels (or a scalar for the whole batch).
        cond
            ``[B, C_cond, *grid]`` conditions for a conditional target (physical units), else ``None``.

        Returns
        -------
        torch.Tensor
            Shaped like ``x``.
        """
        name = type(self.target).__name__
        if cond is not None and not self.conditional:
            raise ValueError(f"Oracle of {name} is unconditional; got cond of shape {tuple(cond.shape)}")
        if cond is None and self.conditional:
            raise ValueError(f"Oracle of {name} is conditional: call it as oracle(x, sigma, cond) with cond "
                             "[B, C_cond, *grid]")
        shape = self.shape
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(f"Oracle of {type(self.target).__name__} expects x of shape [B, *{list(shape)}], "
                             f"got {tuple(x.shape)}")
        s = torch.as_tensor(sigma, device=x.device)
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape [B] = [{x.shape[0]}] (or be a scalar), got {tuple(s.shape)}")
        if cond is None:
            return self.target.denoiser(x, s)
        if cond.ndim != x.ndim or cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
            raise ValueError(f"Oracle of {name} expects cond of shape [{x.shape[0]}, C_cond, "
                             f"*{list(x.shape[2:])}], got {tuple(cond.shape)}")
        return self.target.denoiser(x, s, cond)

    def extra_repr(self) -> str:
        return f"target={type(self.target).__name__}, shape={self.shape}, conditional={self.conditional}"


#: the kinds of conditioning an exact law knows, by the end of their ``_target_``
_KINDS = (".State", ".Coarse", ".Static")


def exact_law(dataset: Mapping[str, Any]) -> Any | None:
    """The exact law of a dataset config: what ``model=oracle`` denoises with, and the evaluation's reference.

    * no ``conditioning``: the source's analytic law (``source.target()``: the GRF of ``dataset=grf``), or None;
    * a GRF dataset (``source.target()`` a :class:`~sciencegen.targets.GaussianRandomField`) whose
      ``conditioning`` kinds (recognised by their ``_target_`` ending in ``.Coarse``, ``.State``, ``.Static``)
      are one ``Coarse`` (``factor``, all variables) → :class:`~sciencegen.targets.CoarseGRF`; one ``State``
      (``lag``) of AR(1) data (the dataset key ``ar``) → :class:`~sciencegen.targets.AR1GRF` with coefficient
      ``ar ** lag``; only ``Static`` kinds → :class:`~sciencegen.targets.StaticGRF` (static maps are
      independent of the field; they are ignored by every law);
    * anything else (``Variables``, several non-static kinds, ``State`` without ``ar``, kolmogorov): None.

    Parameters
    ----------
    dataset
        The dataset config (a mapping or DictConfig with ``_target_``).

    Raises
    ------
    DataError
        The source cannot be built, or a kind's ``factor``/``lag`` does not fit the field (one line).
    """
    from ..data.prepare import make_source

    conf = dict(plain(dataset, DataError))
    conditioning = conf.pop("conditioning", None) or {}
    source = make_source(conf)
    target = source.target()
    if not conditioning:
        return target
    if not isinstance(target, GaussianRandomField):
        return None
    kinds = {name: dict(kind or {}) for name, kind in dict(conditioning).items()}
    suffix = {name: next((k for k in _KINDS if str(kind.get("_target_", "")).endswith(k)), None)
              for name, kind in kinds.items()}
    if None in suffix.values():
        return None
    active = [name for name, k in suffix.items() if k != ".Static"]
    if not active:
        return StaticGRF(target)
    if len(active) > 1:
        return None
    name, kind = active[0], kinds[active[0]]
    try:
        if suffix[name] == ".Coarse":
            chosen = kind.get("variables")
            if chosen is not None and list(chosen) != list(source.variables()):
                return None
            return CoarseGRF(target, kind.get("factor", 4))
        ar, lag = conf.get("ar"), kind.get("lag", 1)
        if ar is None or kind.get("dim", "time") != "time":
            return None
        if int(lag) != lag or lag < 1:
            raise ValueError(f"lag must be a positive integer, got {lag!r}")
        return AR1GRF(target, float(ar) ** int(lag))
    except ValueError as exc:
        raise DataError(f"dataset.conditioning.{name}: {exc}") from None
