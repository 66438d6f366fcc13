"""Structured-config schemas (Hydra ConfigStore): typed keys, so a misspelt or mistyped key is an error.

The YAML files in ``sciencegen/conf/`` name these schemas in their ``defaults`` list; :func:`register` puts
them in the ConfigStore and every Hydra entry point calls it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["SamplerConfig", "register", "sampler_options"]


@dataclass
class SamplerConfig:
    """``sampler`` group: a named sampler of :data:`sciencegen.samplers.SAMPLERS` and its options.

    Every option left ``None`` takes the named sampler's value from the registry; see
    ``docs/samplers.md`` for their meaning.
    """

    name: str = "picard_sde"
    steps: int = 256
    # options every sampler takes (sciencegen.samplers.registry.COMMON)
    method: str | None = None
    order: int | None = None
    form: str | None = None
    grid: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    max_batch: int | None = None
    blocks: int | None = None
    corrector_steps: int | None = None
    corrector_size: float | None = None
    churn: float | None = None
    churn_min: float | None = None
    churn_max: float | None = None
    churn_noise: float | None = None
    # Picard-only options (sciencegen.samplers.registry.PICARD)
    lag: str | None = None
    tol: float | None = None
    window: int | None = None
    accept: str | None = None
    max_iters: int | None = None
    patience: int | None = None
    norm: str | None = None


def sampler_options(cfg: Any) -> dict[str, Any]:
    """The options set in a ``sampler`` config (those not ``None``), for :func:`sciencegen.sample`."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    return {f.name: get(f.name) for f in fields(SamplerConfig)
            if f.name not in ("name", "steps") and get(f.name) is not None}


_registered = False


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="sampler", name="schema", node=SamplerConfig)
    _registered = True
