"""Named sampler configurations: every sampler is one configuration of the engine.

Chen, Ren, Ying & Rotskoff 2024 (picard_*, piadm_*); Shih et al. 2023 (paradigms, picard_slide); Lu et al. 2022
(sequential_*, dpm2m*); Karras et al. 2022 (heun).

Every option is declared once in :data:`OPTIONS` with what it changes (its *kind*: the step ``table``, the
``walk`` over it, or only how the ``engine`` calls the network), the walks that take it and the methods it
applies to.  :func:`resolve` rejects an option its sampler cannot use; :func:`twin` derives the sequential
twin's options from the kinds (:func:`~sciencegen.samplers.api.sequential_rounds` counts the twin's rounds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..diffusion import SIGMA_MAX, SIGMA_MIN

__all__ = ["COMMON", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "KINDS", "OPTIONS", "PICARD", "SAMPLERS", "WALKS", "Option",
           "resolve", "twin"]

#: default for learned models, by measurement (docs/samplers.md): the best accuracy per sequential round
#: on the exact GRF at 64² — 11 rounds, spectral error 0.014 (sequential 2M: 64 rounds, 0.014)
DEFAULT_SAMPLER, DEFAULT_STEPS = "picard_dpm2m", 64

#: the walks of the engine (a sampler's ``kind``): ours, and ParaDiGMS as its pipeline does it (the peer baseline)
WALKS = ("sequential", "picard", "paradigms")
#: what an option changes: the step table, the walk over it, or only how the engine calls the network
KINDS = ("table", "walk", "engine")


@dataclass(frozen=True)
class Option:
    """One sampler option.

    Attributes
    ----------
    default
        The value when neither the named sampler nor the user sets it.
    kind
        ``"table"`` (changes the step table), ``"walk"`` (how the table is walked: blocks, corrector, Picard
        convergence) or ``"engine"`` (only how the network is called; results unchanged).
    help
        One line.
    walks
        The walks that take it (a sampler of another walk rejects it as unknown).
    methods
        The methods it applies to (``None``: all); under another method only its default is accepted.
    """

    default: Any
    kind: str
    help: str
    walks: tuple[str, ...] = WALKS
    methods: tuple[str, ...] | None = None


_HEUN = ("heun",)
_PIC = ("picard",)
_PAR = ("picard", "paradigms")  # the parallel-in-time walks
_STEPWISE = ("sequential", "picard")  # the walks with blocks and correctors (ParaDiGMS has neither)

#: every sampler option, declared once (the order is the order of a resolved configuration)
OPTIONS: dict[str, Option] = {
    "method": Option("sde", "table", "sde | ode | heun (EDM's second-order ODE solver, two calls per step)"),
    "order": Option(1, "table", "1 | 2: DPM-Solver++(2M) multistep for sde/ode (data form)"),
    "form": Option("data", "table", "data (DPM-Solver++ form) | score (the seed paper's form)"),
    "grid": Option("geometric", "table", "noise-level grid, see sciencegen.diffusion.GRIDS"),
    "sigma_min": Option(SIGMA_MIN, "table", "EDM noise level of the last point before 0"),
    "sigma_max": Option(SIGMA_MAX, "table", "EDM noise level of the first point (pure noise)"),
    "max_batch": Option(None, "engine", "micro-batch of one denoiser call (items)"),
    "blocks": Option(1, "walk", "equal log-SNR blocks (Picard windows never cross a block end)", walks=_STEPWISE),
    "corrector_steps": Option(0, "walk", "Langevin steps at interior block ends", walks=_STEPWISE),
    "corrector_size": Option(0.1, "walk", "Langevin step = corrector_size * sigma^2", walks=_STEPWISE),
    "churn": Option(0.0, "table", "EDM S_churn (stochastic Heun when > 0)", methods=_HEUN),
    "churn_min": Option(0.0, "table", "churn only where churn_min <= sigma <= churn_max (EDM S_tmin)",
                        methods=_HEUN),
    "churn_max": Option(float("inf"), "table", "upper end of the churn range (EDM S_tmax)", methods=_HEUN),
    "churn_noise": Option(1.0, "table", "EDM S_noise", methods=_HEUN),
    "lag": Option("F", "table", "F: lag the denoiser only | step: lag the whole increment (ParaDiGMS)", walks=_PIC),
    "tol": Option(1e-3, "walk", "convergence tolerance of a point's change (relative to sigma; paradigms: rms "
                  "over the step's noise std)", walks=_PAR),
    "window": Option(None, "walk", "steps in flight per member; None: the whole block", walks=_PAR),
    "accept": Option("prefix", "walk", "prefix: slide past the converged prefix | block: whole block at once",
                     walks=_PIC),
    "max_iters": Option(None, "walk", "fixed iteration count per block (seed paper's K); None: until tol",
                        walks=_PIC),
    "patience": Option(4, "walk", "rounds of growing residual before a sequential fallback", walks=_PIC),
    "norm": Option("rms", "walk", "rms | fourier: how a point's change is measured", walks=_PIC),
    "newton": Option("none", "walk", "none | spectral | auto: Newton terms in the window's scan (Fourier-shell "
                     "Jacobian); auto: spectral unless the denoiser sets spectral_jacobian = False", walks=_PIC),
}

#: defaults of the options the sequential walk takes (every walk does, but for blocks and correctors: not paradigms)
COMMON: dict[str, Any] = {k: o.default for k, o in OPTIONS.items() if "sequential" in o.walks}

#: defaults of the options only the parallel walks take (picard; tol and window also paradigms)
PICARD: dict[str, Any] = {k: o.default for k, o in OPTIONS.items() if "sequential" not in o.walks}

SAMPLERS: dict[str, dict[str, Any]] = {
    # one step per round
    "sequential_sde": {"kind": "sequential", "method": "sde"},
    "sequential_ode": {"kind": "sequential", "method": "ode"},
    # PIADM-SDE / PIADM-ODE (the seed paper's blocks of equal log-SNR), solved with a
    # sliding window inside each block and the whole increment lagged: measured on the
    # GRF target this needs ~2x fewer rounds than lagging the denoiser alone (docs/benchmarks.md)
    # (spectral Newton in the scan: 19 rounds instead of 22 for 1000 steps at 64², 20x closer to sequential)
    "picard_sde": {"kind": "picard", "method": "sde", "blocks": 4, "window": 128, "lag": "step", "tol": 0.1,
                   "norm": "fourier", "newton": "auto"},
    "picard_ode": {"kind": "picard", "method": "ode", "blocks": 4, "window": 128, "lag": "step", "tol": 0.05,
                   "norm": "fourier", "newton": "auto"},
    # the seed paper as written: score form, denoiser (score) lagged, whole blocks iterated together
    "piadm_sde": {"kind": "picard", "method": "sde", "form": "score", "blocks": 4, "accept": "block", "tol": 1e-3},
    "piadm_ode": {"kind": "picard", "method": "ode", "form": "score", "blocks": 4, "accept": "block", "tol": 1e-3,
                  "corrector_steps": 1},
    # ParaDiGMS as its pipeline does it (Shih et al. 2023): mean(change^2) / step variance <= tol^2, slide through
    # the first failing point, new window points copied from the last one; the whole increment is lagged
    "paradigms": {"kind": "paradigms", "method": "sde", "window": 64, "tol": 0.1},
    # our sliding window over the whole grid (ParaDiGMS' window with our walk's start, test and acceptance rules)
    "picard_slide": {"kind": "picard", "method": "sde", "lag": "step", "window": 64, "tol": 0.1},
    # beyond the seed: wavefront (no block barriers), data form, whole increment lagged, spectral Newton
    # (1000 steps at 64²: 12 rounds at 1.97x NFE, 4e-4 from sequential; window and tol measured, docs/benchmarks.md)
    "picard_wave": {"kind": "picard", "method": "sde", "window": 192, "lag": "step", "tol": 0.3, "norm": "fourier",
                    "newton": "auto"},
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
    # (spectral Newton: picard_dpm2m 6 rounds at 2.1x NFE instead of 10 at 3.9x; Heun measured no gain from it)
    "picard_dpm2m": {"kind": "picard", "method": "ode", "order": 2, "grid": "karras", "window": 32, "lag": "step",
                     "tol": 0.05, "norm": "fourier", "newton": "auto"},
    "picard_dpm2m_sde": {"kind": "picard", "method": "sde", "order": 2, "grid": "karras", "window": 32,
                         "lag": "step", "tol": 0.1, "norm": "fourier", "newton": "auto"},
}

#: the sequential sampler of each (method, order): these two options pick the twin, the others carry over
_PICKED_BY = ("method", "order")
_SEQUENTIAL = {("sde", 1): "sequential_sde", ("ode", 1): "sequential_ode", ("heun", 1): "heun", ("heun", 2): "heun",
               ("ode", 2): "dpm2m", ("sde", 2): "dpm2m_sde"}


def twin(name: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The sequential sampler (and options) that walks the same step table as ``name`` with ``options``.

    ``method`` and ``order`` pick the twin; it takes every other table and walk option of ``name`` that the
    sequential walk takes and that differs from the twin's own value (engine options such as ``max_batch``
    are left out).

    Parameters
    ----------
    name
        A name from :data:`SAMPLERS`.
    options
        Overrides of its configuration.

    Returns
    -------
    (str, dict)
        The twin's name and options.
    """
    cfg = resolve(name, dict(options or {}))
    method, order = (cfg[k] for k in _PICKED_BY)
    seq = _SEQUENTIAL[(method, int(order))]
    base = resolve(seq, {})
    return seq, {k: cfg[k] for k, o in OPTIONS.items()
                 if k not in _PICKED_BY and o.kind != "engine" and "sequential" in o.walks and k in cfg
                 and cfg[k] != base[k]}


def resolve(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Merge a named configuration with user options, rejecting unknown names and options it cannot use.

    Parameters
    ----------
    name
        A name from :data:`SAMPLERS`.
    options
        Overrides (keys of :data:`OPTIONS`).

    Returns
    -------
    dict
        Every option the sampler's walk takes, and ``kind`` (its walk).

    Raises
    ------
    ValueError
        An unknown name; an unknown option or one of another walk (e.g. ``tol`` for a sequential sampler);
        an option set away from its default under a method it does not apply to (``churn`` without Heun).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    spec = dict(SAMPLERS[name])
    kind = spec.pop("kind")
    allowed = {k: o.default for k, o in OPTIONS.items() if kind in o.walks}
    other = sorted(k for k in options if k in OPTIONS and k not in allowed)
    if other:
        walks = sorted({"picard" if w == "paradigms" else w for k in other for w in OPTIONS[k].walks})  # one family
        raise ValueError(f"unknown option(s) {other} for sampler {name!r}: {kind} samplers take no "
                         f"{', '.join(other)} (only {'/'.join(walks)} samplers do)")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for sampler {name!r}; valid: {sorted(allowed)}")
    cfg = {**allowed, **spec, **options}
    idle = sorted(k for k in options if OPTIONS[k].methods is not None and cfg["method"] not in OPTIONS[k].methods
                  and options[k] != OPTIONS[k].default)
    if idle:
        methods = sorted({m for k in idle for m in OPTIONS[k].methods})
        raise ValueError(f"option(s) {idle} of sampler {name!r} apply to method {'/'.join(methods)} only, "
                         f"not method={cfg['method']!r}")
    cfg["kind"] = kind
    return cfg
