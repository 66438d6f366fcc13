"""Named sampler configurations: every sampler is one configuration of the engine.

Chen, Ren, Ying & Rotskoff 2024 (picard_*, piadm_*); Shih et al. 2023 (paradigms); Lu et al. 2022 (sequential_*,
dpm2m*); Karras et al. 2022 (heun).
"""

from __future__ import annotations

from typing import Any

__all__ = ["COMMON", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "PICARD", "SAMPLERS", "resolve", "twin"]

#: default for learned models, by measurement (docs/samplers.md): the best accuracy per sequential round
#: on the exact GRF at 64² — 11 rounds, spectral error 0.014 (sequential 2M: 64 rounds, 0.014)
DEFAULT_SAMPLER, DEFAULT_STEPS = "picard_dpm2m", 64

#: options every sampler takes
COMMON: dict[str, Any] = {
    "method": "sde",  # "sde" | "ode" | "heun" (EDM's second-order ODE solver, two calls per step)
    "order": 1,  # 1 | 2: DPM-Solver++(2M) multistep for sde/ode (data form)
    "form": "data",  # "data" (DPM-Solver++ form) | "score" (the seed paper's form)
    "grid": "geometric",  # see sciencegen.diffusion.GRIDS
    "sigma_min": 2e-3,
    "sigma_max": 80.0,
    "max_batch": None,  # micro-batch of one denoiser call (items)
    "blocks": 1,  # equal log-SNR blocks (Picard windows never cross a block end)
    "corrector_steps": 0,  # Langevin steps at interior block ends
    "corrector_size": 0.1,  # step = corrector_size * sigma^2
    "churn": 0.0,  # heun: EDM S_churn (stochastic Heun when > 0)
    "churn_min": 0.0,  # heun: churn only where churn_min <= sigma <= churn_max (EDM S_tmin, S_tmax)
    "churn_max": float("inf"),
    "churn_noise": 1.0,  # heun: EDM S_noise
}

#: options only the Picard walk takes
PICARD: dict[str, Any] = {
    "lag": "F",  # "F": lag the denoiser only | "step": lag the whole increment (ParaDiGMS)
    "tol": 1e-3,
    "window": None,  # steps in flight per member; None: the whole block
    "accept": "prefix",  # "prefix": slide past the converged prefix | "block": whole block at once
    "max_iters": None,  # fixed iteration count per block (seed paper's K); None: until tol
    "patience": 4,  # rounds of growing residual before a sequential fallback
    "norm": "rms",  # "rms" | "fourier": how a point's change is measured
}

SAMPLERS: dict[str, dict[str, Any]] = {
    # one step per round
    "sequential_sde": {"kind": "sequential", "method": "sde"},
    "sequential_ode": {"kind": "sequential", "method": "ode"},
    # PIADM-SDE / PIADM-ODE (the seed paper's blocks of equal log-SNR), solved with a
    # sliding window inside each block and the whole increment lagged: measured on the
    # GRF target this needs ~2x fewer rounds than lagging the denoiser alone (docs/benchmarks.md)
    "picard_sde": {"kind": "picard", "method": "sde", "blocks": 4, "window": 128, "lag": "step", "tol": 0.1,
                   "norm": "fourier"},
    "picard_ode": {"kind": "picard", "method": "ode", "blocks": 4, "window": 128, "lag": "step", "tol": 0.05,
                   "norm": "fourier"},
    # the seed paper as written: score form, denoiser (score) lagged, whole blocks iterated together
    "piadm_sde": {"kind": "picard", "method": "sde", "form": "score", "blocks": 4, "accept": "block", "tol": 1e-3},
    "piadm_ode": {"kind": "picard", "method": "ode", "form": "score", "blocks": 4, "accept": "block", "tol": 1e-3,
                  "corrector_steps": 1},
    # ParaDiGMS: sliding window of p steps over the whole grid, whole increment lagged
    "paradigms": {"kind": "picard", "method": "sde", "lag": "step", "window": 64, "tol": 0.1},
    # beyond the seed: wavefront (no block barriers), data form, whole increment lagged
    "picard_wave": {"kind": "picard", "method": "sde", "window": 112, "lag": "step", "tol": 0.1, "norm": "fourier"},
    # second order, for few steps (learned models): EDM Heun and DPM-Solver++(2M), Karras grid
    "heun": {"kind": "sequential", "method": "heun", "grid": "karras"},
    "dpm2m": {"kind": "sequential", "method": "ode", "order": 2, "grid": "karras"},
    "dpm2m_sde": {"kind": "sequential", "method": "sde", "order": 2, "grid": "karras"},
    # their Picard forms: the same recurrences solved in parallel in time (Heun: the
    # predictor evaluated from the lagged D, in the same batched call as the sources)
    # (windows measured at 64 steps, 64²: picard_dpm2m w=32 needs the rounds of the whole grid, 11, at 0.8x
    # its NFE; picard_heun w=16: 16 rounds, 0.54x the NFE of the whole grid)
    "picard_heun": {"kind": "picard", "method": "heun", "grid": "karras", "window": 16, "lag": "step", "tol": 0.05,
                    "norm": "fourier"},
    "picard_dpm2m": {"kind": "picard", "method": "ode", "order": 2, "grid": "karras", "window": 32, "lag": "step",
                     "tol": 0.05, "norm": "fourier"},
    "picard_dpm2m_sde": {"kind": "picard", "method": "sde", "order": 2, "grid": "karras", "window": 32,
                         "lag": "step", "tol": 0.1, "norm": "fourier"},
}

#: the sequential sampler of each (method, order)
_SEQUENTIAL = {("sde", 1): "sequential_sde", ("ode", 1): "sequential_ode", ("heun", 1): "heun", ("heun", 2): "heun",
               ("ode", 2): "dpm2m", ("sde", 2): "dpm2m_sde"}
_TWIN_KEYS = ("form", "grid", "sigma_min", "sigma_max", "blocks", "corrector_steps", "corrector_size", "churn",
              "churn_min", "churn_max", "churn_noise")


def twin(name: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The sequential sampler (and options) that walks the same step table as ``name`` with ``options``."""
    cfg = resolve(name, dict(options or {}))
    seq = _SEQUENTIAL[(cfg["method"], int(cfg["order"]))]
    base = resolve(seq, {})
    return seq, {k: cfg[k] for k in _TWIN_KEYS if cfg[k] != base[k]}


def resolve(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Merge a named configuration with user options, rejecting unknown names and keys."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    spec = dict(SAMPLERS[name])
    kind = spec.pop("kind")
    allowed = dict(COMMON)
    if kind == "picard":
        allowed.update(PICARD)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for sampler {name!r}; valid: {sorted(allowed)}")
    cfg = {**allowed, **spec, **options}
    cfg["kind"] = kind
    return cfg
