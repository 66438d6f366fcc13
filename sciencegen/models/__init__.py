"""Denoiser models: a periodic-aware 2-D U-Net, EDM preconditioning and analytic oracles.

Every denoiser follows one interface, ``denoiser(x, sigma, cond=None) -> D ≈ E[x0 | x]``
with ``x = x0 + sigma·noise`` in normalised units, ``x`` ``[B, C, *field]`` and ``sigma`` ``[B]``.
Model configs (``conf/model/*.yaml``) are built by :mod:`sciencegen.models.build`.
"""

from .build import build_model, edm_unet, is_oracle, load_model, oracle_denoiser, resolve_model_config
from .oracle import Oracle
from .precond import (
    EDMPrecond,
    denoising_loss,
    edm_coefficients,
    edm_loss_weight,
    sample_sigma,
    score_from_denoiser,
)
from .unet import UNET_PRESETS, UNet, pad_field, unet_preset

__all__ = [
    "UNET_PRESETS",
    "EDMPrecond",
    "Oracle",
    "UNet",
    "build_model",
    "denoising_loss",
    "edm_coefficients",
    "edm_loss_weight",
    "edm_unet",
    "is_oracle",
    "load_model",
    "oracle_denoiser",
    "pad_field",
    "resolve_model_config",
    "sample_sigma",
    "score_from_denoiser",
    "unet_preset",
]
