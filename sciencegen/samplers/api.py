"""``sciencegen.sample``: ensembles from a denoiser with any named sampler."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion import block_ends, make_grid, step_table
from . import noise as _noise
from .engine import Conditions, WalkStats
from .paradigms import paradigms_walk
from .picard import NEWTON, picard_walk
from .registry import DEFAULT_SAMPLER, DEFAULT_STEPS, resolve
from .sequential import sequential_walk

__all__ = ["SampleResult", "Sampler", "check_sampler", "sample", "sampler_table", "sequential_rounds"]


@dataclass
class SampleResult:
    """Samples and sampler statistics.

    Attributes
    ----------
    samples
        ``[members, *shape]`` at noise level 0 (EDM units of the denoiser).
    stats
        ``rounds`` (batched denoiser calls in sequence, summed over batches),
        ``nfe`` (mean network evaluations per member: denoiser calls times ``evaluations_per_call``, more
        than 1 for a guided denoiser's vector-Jacobian products), ``nfe_per_member``, ``calls`` (mean
        denoiser calls per member),
        ``rounds_per_member``, ``fallbacks`` (members' sequential fallbacks),
        ``residuals`` (per round, largest unaccepted residual), ``steps``,
        ``sampler`` and the resolved ``options``.
    """

    samples: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class _Ticker:
    """The walk's progress hook (called with the steps every member of the batch has accepted, after each round of
    a Picard walk, each step of a sequential one): advances a bar by members x newly accepted steps, and gives a
    callback the members done so far in this call, fractional (``before`` + the batch's members x k / steps)."""

    def __init__(self, bar: Any, members: int, report: Callable[[float], None] | None = None, before: int = 0,
                 steps: int = 1):
        self.bar, self.members, self.done = bar, members, 0
        self.report, self.before, self.steps = report, before, max(int(steps), 1)

    def __call__(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update((k - self.done) * self.members)
            self.done = k
        if self.report is not None:
            self.report(self.before + self.members * k / self.steps)


def sampler_table(sampler: str, steps: int, **options: Any):
    """The resolved options, step table and block ends a named sampler uses."""
    cfg = resolve(sampler, options)
    t = make_grid(steps, cfg["grid"], cfg["sigma_min"], cfg["sigma_max"])
    table = step_table(t, cfg["method"], cfg["form"], cfg.get("lag", "F"), order=int(cfg["order"]),
                       churn=float(cfg["churn"]), churn_min=float(cfg["churn_min"]),
                       churn_max=float(cfg["churn_max"]), churn_noise=float(cfg["churn_noise"]))
    ends = block_ends(table, cfg.get("blocks", 1))
    return cfg, table, ends


def sequential_rounds(sampler: str, steps: int, **options: Any) -> int:
    """Rounds (batched denoiser calls in sequence) of a sequential sampler's walk over ``steps`` steps.

    The same unit as a Picard sampler's ``rounds``: one step is one round, two where the step has a
    predictor stage (Heun: every step but the last), plus each Langevin corrector step at the interior
    block ends.

    Parameters
    ----------
    sampler
        A sequential name from :data:`~sciencegen.samplers.SAMPLERS` (e.g. a Picard sampler's
        :func:`~sciencegen.samplers.twin`).
    steps
        Steps of the grid.
    **options
        Its options.

    Raises
    ------
    ValueError
        A Picard sampler (its rounds depend on convergence), or an unknown name or option.
    """
    cfg, table, ends = sampler_table(sampler, steps, **options)
    if cfg["kind"] != "sequential":
        raise ValueError(f"sampler {sampler!r} is not sequential: its rounds depend on convergence")
    predictors = int((table.B3 != 0).sum()) if table.B3 is not None else 0
    corrector_at = {e for e in ends[:-1] if 0 < e < table.steps} if cfg["corrector_steps"] else set()
    return table.steps + predictors + int(cfg["corrector_steps"]) * len(corrector_at)


def check_sampler(sampler: str, steps: int, **options: Any) -> dict[str, Any]:
    """Resolve and validate a named sampler with options before any work; returns the resolved options.

    Raises
    ------
    ValueError
        An unknown sampler or option, or an invalid value.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    cfg = sampler_table(sampler, int(steps), **options)[0]
    _validate(cfg)
    return cfg


def _validate(cfg: dict[str, Any]) -> None:
    if cfg["kind"] == "paradigms" and cfg["method"] == "heun":
        raise ValueError("method='heun' does not fit the paradigms walk (sde or ode: one denoiser call per step)")
    if cfg["kind"] in ("picard", "paradigms"):
        tol = cfg["tol"]
        if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        w = cfg["window"]
        if w is not None and (int(w) != w or w < 1):
            raise ValueError(f"window must be an integer >= 1, got {w!r}")
        if cfg.get("newton", "none") not in NEWTON:
            raise ValueError(f"newton must be one of {list(NEWTON)}, got {cfg['newton']!r}")
        mi = cfg.get("max_iters")
        if mi is not None and (int(mi) != mi or mi < 1):
            raise ValueError(f"max_iters must be an integer >= 1, got {mi!r}")
    mb = cfg["max_batch"]
    if mb is not None and (int(mb) != mb or mb < 1):
        raise ValueError(f"max_batch must be an integer >= 1, got {mb!r}")
    cs = cfg.get("corrector_steps", 0)
    if int(cs) != cs or cs < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {cs!r}")


def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    members: int = 1,
    sampler: str = DEFAULT_SAMPLER,
    steps: int = DEFAULT_STEPS,
    seed: int | _noise.NoiseSeed = 0,
    batch_size: int | None = None,
    *,
    first_member: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | Callable[[float], None] = False,
    cond: torch.Tensor | None = None,
    noise_stream: str | None = None,
    **sampler_options: Any,
) -> SampleResult:
    """Draw an ensemble with a named sampler, unconditional or given a condition.

    Parameters
    ----------
    denoiser
        ``denoiser(x, sigma) -> E[x0 | x]`` for ``x = x0 + sigma·noise``; ``x`` is
        ``[B, *shape]`` and ``sigma`` is ``[B]``. With ``cond``: ``denoiser(x, sigma, c)`` with ``c``
        ``[B, C_cond, *grid]``, each item's member's condition.
    shape
        Shape of one member, e.g. ``(channels, ny, nx)``; any rank.
    members
        Ensemble size.
    sampler
        A name from :data:`sciencegen.samplers.SAMPLERS`. Default ``picard_dpm2m`` with 64 steps: the best
        accuracy per sequential round measured on the exact GRF (docs/samplers.md); on a saturated CPU,
        where wall time follows NFE, ``dpm2m`` (64 steps) is the cheaper choice.
    steps
        Steps of the reverse grid (the last goes to noise level 0).
    seed
        Member ``i`` depends only on ``(seed, i)``. An ``int``, or a :class:`~sciencegen.samplers.noise.NoiseSeed`
        that names its noise stream.
    batch_size
        Members sampled together (``None``: all).
    first_member
        Global index of the first member (for shards of a larger ensemble).
    device, dtype
        Where and in which precision to sample.
    progress
        ``True``: show a progress bar (member-steps). A callable: called after every round of a Picard sampler
        (every step of a sequential one) with the members done so far in this call, a float that counts each
        batch's members times the fraction of its steps that all of them have accepted (it ends at
        ``members``). The samples do not depend on it.
    cond
        Conditions (in the denoiser's units): ``[C_cond, *grid]``, one for every member, or
        ``[members, C_cond, *grid]``, one per member (``grid`` = ``shape[1:]``). Every sampler passes each
        item of a round its member's condition, gathered by index. For conditional ensembles of several
        cases, draw case ``c`` with ``seed=``:func:`~sciencegen.samplers.noise.condition_seed` ``(seed, c)``.
    noise_stream
        The noise stream (:data:`~sciencegen.samplers.noise.STREAMS`): ``"cpu"`` (a CPU generator per
        ``(seed, member, step)``, copied to the device) or ``"counter"`` (integer tensor ops on the device: a GPU
        never waits for CPU draws). ``None``: the seed's own (``"cpu"`` for an ``int``, which keeps every recorded
        number); ``sciencegen-generate`` writes new stores with ``"counter"``.
    **sampler_options
        Overrides of the sampler's configuration (``tol``, ``blocks``, ``window``,
        ``grid``, ``form``, ``lag``, ``max_batch``, …).

    Returns
    -------
    SampleResult
    """
    with torch.no_grad():  # a trainable network must not build an autograd graph across the steps
        return _sample(denoiser, shape, members, sampler, steps, seed, batch_size, first_member, device, dtype,
                       progress, sampler_options, cond, noise_stream)


def _check_inputs(denoiser: Any, shape: Sequence[int], members: int, steps: int, batch_size: int | None
                  ) -> tuple[int, ...]:
    """Validate the arguments of :func:`sample` (before the sampler's options); the shape as a tuple."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if int(members) != members or members < 1:
        raise ValueError(f"members must be an integer >= 1, got {members!r}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not callable(denoiser):
        raise ValueError("denoiser must be callable as denoiser(x, sigma)")
    shape = tuple(int(v) for v in shape)
    if not shape or any(v < 1 for v in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}")
    return shape


def _check_cond(cond: Any, shape: tuple[int, ...], members: int) -> bool:
    """Validate ``cond`` of :func:`sample`; whether it holds one condition per member."""
    if not isinstance(cond, torch.Tensor):
        raise ValueError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
    if len(shape) < 2:
        raise ValueError(f"a conditional sample needs a shape (channels, *grid), got {shape!r}")
    grid = shape[1:]
    per_member = cond.ndim == len(shape) + 1
    if cond.ndim not in (len(shape), len(shape) + 1) or tuple(cond.shape[-len(grid):]) != grid:
        raise ValueError(f"cond must have shape [C_cond, *{list(grid)}] or [members, C_cond, *{list(grid)}], "
                         f"got {tuple(cond.shape)}")
    if per_member and cond.shape[0] != members:
        raise ValueError(f"cond holds {cond.shape[0]} conditions for {members} members (one per member, or "
                         "one [C_cond, *grid] for all)")
    return per_member


def _batch_conditions(cond: torch.Tensor | None, per_member: bool, lo: int, hi: int) -> Conditions | None:
    if cond is None:
        return None
    return Conditions(cond[lo:hi] if per_member else cond[None])


def _sample(denoiser, shape, members, sampler, steps, seed, batch_size, first_member, device, dtype, progress,
            sampler_options, cond=None, noise_stream=None) -> SampleResult:
    shape = _check_inputs(denoiser, shape, members, steps, batch_size)
    seed = _noise.with_stream(seed, noise_stream)
    per_member = _check_cond(cond, shape, int(members)) if cond is not None else False
    cfg, table, ends = sampler_table(sampler, int(steps), **sampler_options)
    _validate(cfg)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if cond is not None:
        cond = cond.to(device=device, dtype=dtype)
    bs = int(batch_size or members)
    outs, runs = [], []
    bar, report = None, progress if callable(progress) else None
    if progress and report is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=members * table.steps, desc=sampler, unit="step", leave=False)
    counted = _counter(denoiser)
    for lo in range(0, members, bs):
        ids = list(range(first_member + lo, first_member + min(lo + bs, members)))
        x = float(table.sigma[0]) * _noise.normal(seed, ids, 0, shape, tag=_noise.INIT, dtype=dtype, device=device)
        y, st = _walk(denoiser, cfg, table, ends, x, ids, seed, _Ticker(bar, len(ids), report, lo, table.steps),
                      _batch_conditions(cond, per_member, lo, lo + len(ids)))
        outs.append(y)
        runs.append(st)
    if bar is not None:
        bar.close()
    cost = _cost(denoiser, counted)
    return SampleResult(samples=torch.cat(outs), stats=_stats(sampler, table.steps, ends, cfg, runs, cost))


def _counter(denoiser: Any) -> tuple[int, int] | None:
    """``(items, evaluations)`` of a denoiser that counts its own network work (e.g. a
    :class:`~sciencegen.samplers.guidance.Guided` one), else ``None``."""
    if hasattr(denoiser, "items") and hasattr(denoiser, "evaluations"):
        return int(denoiser.items), int(denoiser.evaluations)
    return None


def _cost(denoiser: Any, before: tuple[int, int] | None) -> float:
    """Network evaluations per denoiser call during this draw (1 unless the denoiser counts more)."""
    after = _counter(denoiser)
    if before is None or after is None or after[0] == before[0]:
        return 1.0
    return (after[1] - before[1]) / (after[0] - before[0])


def _walk(denoiser, cfg: dict[str, Any], table, ends: list[int], x: torch.Tensor, ids: list[int], seed: int,
          tick: _Ticker, cond: Conditions | None = None) -> tuple[torch.Tensor, WalkStats]:
    """One batch of members through the sampler's walk."""
    if cfg["kind"] == "paradigms":
        return paradigms_walk(denoiser, table, x, ids, seed, tol=float(cfg["tol"]),
                              window=int(cfg["window"] or table.steps), max_batch=cfg["max_batch"], progress=tick,
                              cond=cond)
    common = dict(max_batch=cfg["max_batch"], corrector_steps=int(cfg["corrector_steps"]),
                  corrector_size=float(cfg["corrector_size"]), progress=tick, cond=cond)
    if cfg["kind"] == "sequential":
        return sequential_walk(denoiser, table, x, ids, seed, corrector_at=ends[:-1], **common)
    longest_block = max(hi - lo for lo, hi in zip([0] + ends[:-1], ends, strict=True))
    return picard_walk(
        denoiser, table, x, ids, seed, tol=float(cfg["tol"]), window=int(cfg["window"] or longest_block),
        ends=ends, accept=cfg["accept"], max_iters=cfg["max_iters"], patience=int(cfg["patience"]),
        norm=cfg["norm"], newton=cfg["newton"], **common,
    )


def _stats(sampler: str, steps: int, ends: list[int], cfg: dict[str, Any], runs: list[WalkStats],
           cost: float = 1.0) -> dict[str, Any]:
    """The ``stats`` of a :class:`SampleResult` from the walks of its batches; ``cost``: network evaluations
    per denoiser call (a guided denoiser's vector-Jacobian products; 1 otherwise)."""
    calls = torch.cat([st.nfe_per_member for st in runs])
    nfe = calls if cost == 1.0 else calls.double() * cost
    fallbacks = torch.cat([st.fallbacks_per_member for st in runs])
    return {
        "sampler": sampler,
        "steps": steps,
        "rounds": sum(st.rounds for st in runs),
        "nfe": float(nfe.double().mean()),
        "nfe_per_member": nfe,
        "calls": float(calls.double().mean()),
        "evaluations_per_call": cost,
        "rounds_per_member": torch.cat([st.rounds_per_member for st in runs]),
        "fallbacks": int(fallbacks.sum()),
        "fallbacks_per_member": fallbacks,
        "residuals": [r for st in runs for r in st.residuals],
        "blocks": ends,
        "options": dict(cfg),
    }


class Sampler:
    """A named sampler with its options, callable like :func:`sample` — the ``_target_`` of ``conf/sampler``.

    Parameters
    ----------
    name
        A name from :data:`sciencegen.samplers.SAMPLERS`.
    steps
        Steps of the reverse grid.
    **options
        Overrides of the named configuration; ``None`` values mean "the registry's value".

    Notes
    -----
    A sampler of your own plugs into ``sciencegen-generate`` the same way: a class with ``name``, ``steps``,
    ``options``, ``resolved`` and this ``__call__``, named by ``_target_`` in a ``conf/sampler/NAME.yaml``.
    ``sciencegen-generate`` passes ``progress`` a callable (members done, after each round, as :func:`sample`);
    a sampler that ignores it still works, its progress then moves once per chunk.

    Raises
    ------
    ValueError
        An unknown name or option, or an invalid value (checked at construction, before any work).
    """

    def __init__(self, name: str, steps: int, **options: Any):
        self.name, self.steps = str(name), int(steps) if int(steps) == steps else steps
        self.options = {k: v for k, v in options.items() if v is not None}
        self.resolved = check_sampler(self.name, self.steps, **self.options)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in sorted(self.options.items()))
        return f"Sampler({self.name!r}, steps={self.steps}{opts})"

    def __call__(self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: Sequence[int],
                 members: int = 1, seed: int | _noise.NoiseSeed = 0, batch_size: int | None = None,
                 **kwargs: Any) -> SampleResult:
        """Draw ``members`` members: :func:`sample` with this sampler (``first_member``, ``device``, ``dtype``,
        ``progress``, ``cond``, ``noise_stream`` pass through)."""
        return sample(denoiser, shape, members, self.name, self.steps, seed, batch_size, **kwargs, **self.options)
