"""Masks in generation: a checkpoint's masks, the denoiser that knows them, members written NaN where invalid.

A model trained on masked data (:mod:`sciencegen.data.masks`) records its masks in the checkpoint's meta
(``meta["data"]["masks"]``: per variable the source, the counts and the valid points, path-free), so generation
needs no prepared store. At the invalid points the training data are the fill value 0 (normalised) and the loss
ignores them; :class:`MaskedDenoiser` gives the exact denoiser of such data there (0, the fill value), so the
invalid points follow the law they had in training (``x = sigma n``) and never drift into the valid ones. It also
gives the model its mask channels (``static_valid_<v>``) when the dataset has no other conditioning.
:func:`mask_members` writes NaN at the invalid points of every member; :func:`ensemble_masks` is what the
ensemble store records (``valid_<v>`` and the root attribute ``sciencegen_masks``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.masks import decode_valid

if TYPE_CHECKING:
    from .model import ModelInfo

__all__ = ["MASK_KEYS", "MaskedDenoiser", "checkpoint_masks", "ensemble_masks", "mask_members", "mask_only",
           "with_masks"]

#: the keys of a mask's metadata (``meta["masks"][v]``) beside its encoded valid points
MASK_KEYS = ("source", "valid", "points")


def mask_only(conditioning: Mapping[str, Any] | None) -> bool:
    """Whether a (trained) conditioning is only the mask channels the data stage adds (no kinds, no inputs)."""
    if not conditioning:
        return False
    static = conditioning.get("static") or {}
    return (not conditioning.get("kinds") and not conditioning.get("inputs") and bool(static)
            and all((info or {}).get("source") == "mask" for info in static.values()))


def checkpoint_masks(data: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, dict[str, Any]]] | None:
    """``{variable: (valid points on the field, metadata)}`` of a checkpoint's ``meta["data"]`` (``None``: no masks)."""
    masks = data.get("masks") or {}
    out = {str(v): (decode_valid(m), {k: m[k] for k in MASK_KEYS if k in m}) for v, m in masks.items()}
    return out or None


class MaskedDenoiser:
    """A denoiser whose output is 0 (the normalised fill value) at the invalid points of each variable.

    Parameters
    ----------
    denoiser
        ``denoiser(x, sigma[, cond])`` in normalised units.
    valid
        ``[V, *field]`` bool: the valid points of each variable (all True for a variable without a mask).
    static
        ``[C_cond, *field]`` condition channels (model units) given to every call that brings none (the mask
        channels of a dataset without other conditioning); ``None``: calls pass their own ``cond``.

    Attributes
    ----------
    spectral_jacobian
        ``False``: a mask breaks the shift invariance the spectral Newton terms of a Picard walk assume, so
        ``newton="auto"`` walks a masked field by plain Picard, as before that option existed.
    """

    spectral_jacobian = False

    def __init__(self, denoiser: Callable[..., torch.Tensor], valid: np.ndarray, static: np.ndarray | None = None):
        self.denoiser = denoiser
        self.valid = torch.as_tensor(np.asarray(valid, dtype=bool))
        self.static = None if static is None else torch.as_tensor(np.asarray(static, dtype=np.float32))
        self._placed: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mask and the static channels on ``device`` (copied once, not in every call of a round)."""
        key = (device, dtype)
        if key not in self._placed:
            static = None if self.static is None else self.static.to(device=device, dtype=dtype)
            self._placed[key] = (self.valid.to(device), static)
        return self._placed[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``D(x, sigma, cond)`` at the valid points, 0 elsewhere."""
        keep, static = self._on(x.device, x.dtype)
        if cond is None and static is not None:
            cond = static.expand(x.shape[0], *static.shape)
        d = self.denoiser(x, sigma) if cond is None else self.denoiser(x, sigma, cond)
        return torch.where(keep, d, torch.zeros((), dtype=d.dtype, device=d.device))


def _static_channels(trained: Mapping[str, Any], masks: Mapping[str, tuple[np.ndarray, dict]]) -> np.ndarray:
    """The mask channels ``static_valid_<v>`` of a mask-only conditioning, normalised as in training."""
    values = [masks[info["variable"]][0].astype(np.float64) for info in (trained.get("static") or {}).values()]
    mean = np.asarray(trained["mean"], dtype=np.float64).reshape((-1,) + (1,) * values[0].ndim)
    std = np.asarray(trained["std"], dtype=np.float64).reshape((-1,) + (1,) * values[0].ndim)
    return (np.stack(values) - mean) / std


def with_masks(info: ModelInfo, data: Mapping[str, Any], trained: Mapping[str, Any] | None,
               given: bool) -> ModelInfo:
    """``info`` with the checkpoint's masks: :attr:`ModelInfo.masks` set and its denoiser a :class:`MaskedDenoiser`.

    Parameters
    ----------
    info
        The model (a trained checkpoint's).
    data
        The checkpoint's ``meta["data"]``.
    trained
        The checkpoint's conditioning.
    given
        Whether the dataset's conditioning was given (a conditional dataset: the conditions bring the channels);
        otherwise a mask-only conditioning's channels are given to the model here.
    """
    masks = checkpoint_masks(data)
    if masks is None:
        return info
    valid = np.ones((len(info.variables), *info.field_shape), dtype=bool)
    for i, v in enumerate(info.variables):
        if v in masks:
            valid[i] = masks[v][0]
    static = _static_channels(trained, masks) if (not given and mask_only(trained)) else None
    info.denoiser = MaskedDenoiser(info.denoiser, valid, static)
    info.masks = masks
    return info


def mask_members(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Members ``[n, V, *field]`` with NaN at the invalid points of each variable (as they are without masks)."""
    if not info.masks:
        return x
    x = np.array(x, copy=True)
    for i, v in enumerate(info.variables):
        if v in info.masks:
            x[:, i][:, ~info.masks[v][0]] = np.nan
    return x


def ensemble_masks(info: ModelInfo) -> dict[str, tuple[np.ndarray, dict[str, Any]]] | None:
    """What the ensemble store records of the masks (:func:`sciencegen.data.ensemble.template`'s ``masks``)."""
    return dict(info.masks) if info.masks else None
